"""Word error rate of a transcript against the gold utterance, as MELD papers count it."""

from __future__ import annotations

import difflib
import re
from collections import Counter

from meldflow.annotations import normalise_text


def normalise_for_wer(text: str) -> str:
    """Lower case, ASCII punctuation removed (apostrophes inside words kept), single spaces."""
    text = normalise_text(text).lower()
    text = re.sub(r"[^a-z0-9']+", " ", text)
    text = re.sub(r"(?<![a-z0-9])'|'(?![a-z0-9])", " ", text)
    return " ".join(text.split())


def word_error_rate(reference: str, hypothesis: str) -> float | None:
    """WER of ``hypothesis`` against the gold ``reference``; ``None`` if the gold is empty."""
    ref, hyp = normalise_for_wer(reference), normalise_for_wer(hypothesis)
    if not ref:
        return None
    if not hyp:
        return 1.0
    import jiwer

    return float(jiwer.wer(ref, hyp))


def words_moved(reference: list[str], hypothesis: list[str | None],
                spoken: list[str] | None = None) -> list[tuple[str, int, int]]:
    """Words attributed to the wrong clip: (word, its clip in ``reference``, the clip that got
    it in ``hypothesis``), for consecutive clips' texts (a shard, in order).

    The clips' words are joined into one sequence each side and matched (difflib's longest
    matching blocks, in order); a matched word whose clip differs has crossed a boundary,
    unless the clip that got it was heard saying it: the ``spoken`` (gold) text of that clip
    has the word at least as often as the hypothesis does (default: ``reference``). Without
    that, a reference that misheard two neighbours (one clip per call, say) lets the matcher
    pair a word with its namesake in the next clip. A word heard wrongly is an error for
    WER, not a move.
    """
    def clip_words(texts: list[str | None]) -> list[tuple[str, int]]:
        return [(w, i) for i, t in enumerate(texts) for w in normalise_for_wer(t or "").split()]

    ref, hyp = clip_words(reference), clip_words(hypothesis)
    said = [Counter(normalise_for_wer(t or "").split()) for t in spoken or reference]
    heard = [Counter(normalise_for_wer(t or "").split()) for t in hypothesis]
    matcher = difflib.SequenceMatcher(a=[w for w, _ in ref], b=[w for w, _ in hyp],
                                      autojunk=False)
    return [(w, i, j) for a, b, n in matcher.get_matching_blocks() for k in range(n)
            for (w, i), (_, j) in [(ref[a + k], hyp[b + k])]
            if i != j and not (j < len(said) and heard[j][w] <= said[j][w])]
