"""What a training run is: its verified model snapshot, its identity, and how its inputs
were prepared (what ``meldflow predict`` must repeat for new clips).

Kept free of torch: ``meldflow train`` computes the identity before it submits, and that
process only waits for the job (one per experiment and seed on a login node).
"""

from __future__ import annotations

from pathlib import Path

from meldflow import MeldflowError
from meldflow.model_cache.snapshots import snapshot_verified_before, verified_snapshot
from meldflow.model_cache.stage import FLORENCE_FILES
from meldflow.provenance import run_identity
from meldflow.settings import recorded_settings
from meldflow.storage import read_metadata


def florence_snapshot(cfg) -> tuple[Path, dict[str, str]]:
    """The staged, verified model folder of a run (``cfg``: its hf_home, florence_repo and
    florence_revision) and its file hashes; fails in seconds, naming ``meldflow stage``,
    if it is missing, incomplete or damaged."""
    hf_home, repo_id = cfg.hf_home, cfg.florence_repo
    hint = (f"run `meldflow stage --hf-home {hf_home} --models florence --florence-repo "
            f"{repo_id}` first (on a node that reaches the Hub, for a real checkpoint)")
    return verified_snapshot(hf_home, repo_id, cfg.florence_revision, FLORENCE_FILES,
                             "Florence-2 model", hint)


def run_snapshot(identity: dict, hf_home: str | Path) -> Path:
    """The model folder ``identity`` was computed from, verified then: a job's ranks find it
    by the recorded hashes instead of hashing the snapshot again."""
    model = identity["parts"]["model"]
    return snapshot_verified_before(hf_home, model["repo"], model["revision"], model["files"])


def identity_of(cfg, world: int) -> dict:
    """The run identity of ``cfg`` trained by ``world`` processes (see meldflow.provenance),
    with how its inputs were prepared (``preprocessing``, recorded in run.json)."""
    snap, files = florence_snapshot(cfg)
    return run_identity(cfg, cfg.streams or world, snap.name, files) | {
        "preprocessing": preprocessing_of(cfg)}


def preprocessing_of(cfg) -> dict:
    """How the run's inputs were made, from the aligned shards' own metadata: frames per
    utterance, frame size, the clip cap, the text the prompt reads and, for transcripts,
    the Whisper model (with its file hashes), decoding options and transcription method.
    Shards made with different settings are an error: one model cannot have been trained
    on both."""
    if not (cfg.train or cfg.dev or cfg.test):
        return {"source": "annotation CSVs", "text_source": cfg.text_source}

    seen: dict[str, tuple[str, dict]] = {}
    for path in [*cfg.train, *cfg.dev, *cfg.test]:
        meta = read_metadata(path)
        frames, asr = meta.get("meldflow_frames"), meta.get("meldflow_transcribe")
        if frames is None or asr is None or "whisper_model" not in asr:
            raise MeldflowError(f"{path} does not record how it was made (written by an older "
                                f"meldflow): delete it and run the preprocess target again")
        record = {k: frames[k] for k in recorded_settings("frames")}
        if cfg.text_source == "whisper":
            record["whisper"] = {k: asr.get(k) for k in (*recorded_settings("transcribe"),
                                                         "model_files",
                                                         "method")}
        seen.setdefault(repr(sorted(record.items())), (path, record))
    if len(seen) > 1:
        (a, ra), (b, rb) = list(seen.values())[:2]
        differ = sorted(k for k in ra if ra[k] != rb.get(k))
        raise MeldflowError(f"the shards were made with different preprocessing settings "
                            f"({', '.join(differ)}: {a} has {[ra[k] for k in differ]}, {b} "
                            f"has {[rb[k] for k in differ]}); rebuild them with one "
                            f"configuration")
    return {"source": "aligned shards", "text_source": cfg.text_source,
            **next(iter(seen.values()))[1]}
