"""What a training run is: its verified model snapshot and its identity.

Kept free of torch: ``meldflow train`` computes the identity before it submits, and that
process only waits for the job (one per experiment and seed on a login node).
"""

from __future__ import annotations

from pathlib import Path

from meldflow.provenance import run_identity
from meldflow.stage import FLORENCE_FILES, FLORENCE_TINY_REPO, verified_snapshot


def florence_snapshot(hf_home: str | Path, repo_id: str,
                      revision: str = "main") -> tuple[Path, dict[str, str]]:
    """The staged, verified model folder and its file hashes; fails in seconds, naming
    ``meldflow stage``, if it is missing, incomplete or damaged."""
    hint = (f"run `meldflow stage --hf-home {hf_home} --models florence "
            + ("--tiny`" if repo_id == FLORENCE_TINY_REPO else f"--florence-repo {repo_id}`")
            + " first (on a node that reaches the Hub, for a real checkpoint)")
    return verified_snapshot(hf_home, repo_id, revision, FLORENCE_FILES, "Florence-2 model",
                             hint)


def identity_of(cfg, world: int) -> dict:
    """The run identity of ``cfg`` trained by ``world`` processes (see meldflow.provenance)."""
    snap, files = florence_snapshot(cfg.hf_home, cfg.model_repo, cfg.revision)
    return run_identity(cfg, cfg.streams or world, snap.name, files)
