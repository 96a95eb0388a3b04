"""Word error rate of a transcript against the gold utterance, as MELD papers count it."""

from __future__ import annotations

import re

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


def words_moved(reference: list[str], hypothesis: list[str | None]) -> list[tuple[str, int, int]]:
    """Words attributed to the wrong clip: (word, its clip in ``reference``, the clip that got
    it in ``hypothesis``), for consecutive clips' texts (a shard, in order).

    The clips' words are joined into one sequence each side and matched (difflib's longest
    matching blocks, in order); a matched word whose clip differs has crossed a boundary.
    A word heard wrongly is an error for WER, not a move.
    """
    import difflib

    ref = [(w, i) for i, t in enumerate(reference) for w in normalise_for_wer(t or "").split()]
    hyp = [(w, i) for i, t in enumerate(hypothesis) for w in normalise_for_wer(t or "").split()]
    matcher = difflib.SequenceMatcher(a=[w for w, _ in ref], b=[w for w, _ in hyp],
                                      autojunk=False)
    return [(ref[a + k][0], ref[a + k][1], hyp[b + k][1])
            for a, b, n in matcher.get_matching_blocks() for k in range(n)
            if ref[a + k][1] != hyp[b + k][1]]
