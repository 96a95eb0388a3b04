"""How much WER the ``tight`` clips (speech to both edges) cost against ``full``, and how
sure that figure is: bench_preprocess.py's (e).

A shard of 88 clips holds about 900 words, too few to resolve a gap of 0.01: there the two
variants differ by 0.02 (interval +0.002 to +0.043), where 1,000 utterances show -0.002
(docs/benchmarks.md). The gap is therefore given with a paired bootstrap interval (clips
drawn with replacement, the same clips for both variants), and measured again on a larger
draw of the same utterances.
"""

from __future__ import annotations

import numpy as np


def clip_errors(gold: list[str], hypotheses: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(word errors, reference words) of each clip, as corpus WER counts them."""
    import jiwer

    from meldflow.preprocess.wer import normalise_for_wer

    errors, words = [], []
    for g, h in zip(gold, hypotheses, strict=True):
        ref, hyp = normalise_for_wer(g), normalise_for_wer(h or "")
        n = len(ref.split())
        if not hyp:
            errors.append(n)
        else:
            out = jiwer.process_words(ref, hyp)
            errors.append(out.substitutions + out.deletions + out.insertions)
        words.append(n)
    return np.array(errors, float), np.array(words, float)


def paired_gap(gold: list[str], full: list[str | None], tight: list[str | None],
               resamples: int = 4000, seed: int = 0) -> tuple[float, ...]:
    """(corpus WER of ``full``, of ``tight``, their difference, and its 2.5th and 97.5th
    percentile over ``resamples`` paired bootstrap draws of the clips)."""
    e_full, words = clip_errors(gold, full)
    e_tight, _ = clip_errors(gold, tight)
    wer_full, wer_tight = e_full.sum() / words.sum(), e_tight.sum() / words.sum()
    draws = np.random.default_rng(seed).integers(0, len(gold), (resamples, len(gold)))
    boot = (e_tight[draws].sum(1) - e_full[draws].sum(1)) / words[draws].sum(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return (float(wer_full), float(wer_tight), float(wer_tight - wer_full), float(lo),
            float(hi))


def gap_line(name: str, gold, full, tight, target: float | None = None) -> str:
    """One printed line: both WERs, the gap and its interval, and the target if any."""
    wer_full, wer_tight, gap, lo, hi = paired_gap(gold, full, tight)
    verdict = (f"  (target <= {target:g}: {'met' if gap <= target else 'NOT met'})"
               if target is not None else "")
    return (f"    {name:6s} full {wer_full:.3f}  tight {wer_tight:.3f}  gap {gap:+.3f} "
            f"(95% interval {lo:+.3f} to {hi:+.3f}){verdict}")


def ingest_table(clips, times):
    """An ingest table of ``clips`` ((path, gold text), named as MELD's) with the CSV's
    ``times``, one shard."""
    import pyarrow as pa
    from workflow_run import clip_key

    n = len(clips)
    keys = [clip_key(c) for c, _ in clips]
    return pa.table({"split": ["train"] * n, "dialogue_id": [d for d, _ in keys],
                     "utterance_id": [u for _, u in keys],
                     "clip_path": [str(c) for c, _ in clips],
                     "status": ["ok"] * n, "utterance": [t for _, t in clips],
                     "start_s": [s for s, _ in times], "end_s": [e for _, e in times]})


def naive_transcripts(model, clips) -> list[str]:
    """The naive loop: one clip per call, beam 5, word timestamps, Whisper's defaults."""
    out = []
    for c, _ in clips:
        segs, _ = model.transcribe(str(c), beam_size=5, word_timestamps=True)
        out.append(" ".join(s.text.strip() for s in segs))
    return out


def larger_draw(csv, n: int, ours, naive_model) -> None:
    """(e): the gap on ``n`` utterances of the same draw (the timed shard is their prefix),
    cached clips of both variants, one in-process pass of meldflow and of the naive loop."""
    from meld_like import make_meld_like_clips

    from meldflow.preprocess.transcribe import transcribe_rows
    from meldflow.preprocess.wer import words_moved

    texts = {}
    for variant in ("full", "tight"):
        folder, made = make_meld_like_clips(csv, n, tight=variant == "tight")
        clips = [(folder / r["clip"], r["text"]) for r in made]
        rows = ingest_table(clips, [(r["start"], r["end"]) for r in made])
        texts[variant] = (transcribe_rows(rows, ours).column("transcript").to_pylist(),
                          naive_transcripts(naive_model, clips))
    gold = [t for _, t in clips]
    print(f"\n(e) WER of tight against full on {len(gold)} utterances of the same draw (the "
          "timed shard is their prefix), one in-process pass each, 95% paired bootstrap "
          "interval over the clips:")
    print(gap_line("ours", gold, texts["full"][0], texts["tight"][0], target=0.01))
    print(gap_line("naive", gold, texts["full"][1], texts["tight"][1]))
    moved = {v: (len(words_moved(gold, texts[v][0])), len(words_moved(gold, texts[v][1])))
             for v in texts}
    print(f"    words moved against the gold text, ours / naive: full {moved['full'][0]} / "
          f"{moved['full'][1]}, tight {moved['tight'][0]} / {moved['tight'][1]} (the naive "
          "loop cannot move a word: its count is the metric's chance pairings)")
