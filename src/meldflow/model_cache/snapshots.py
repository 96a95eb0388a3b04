"""The offline Hugging Face cache: its layout, and models verified against it.

In the cache a file is a link to a blob named by its content hash (SHA-256 for large
files, the git blob SHA-1 for small ones), so a damaged copy is found offline, by staging
and by every job that loads a model.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from meldflow import MeldflowError
from meldflow.storage import sha256_file, write_text


def hub_cache(hf_home: str | Path) -> Path:
    return Path(hf_home) / "hub"


# The branch a model built or copied here (not downloaded) is filed under, as the Hub's own.
LOCAL_REF = "main"


def use_offline_cache(hf_home: str | Path) -> None:
    """Point Hugging Face at the cache ``hf_home`` and forbid it the network. Hugging Face
    reads both at import: call this before anything imports transformers or faster-whisper."""
    os.environ["HF_HOME"] = str(Path(hf_home).resolve())
    os.environ["HF_HUB_OFFLINE"] = "1"


def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def blob_matches(blob: Path) -> bool | None:
    """Whether a cache blob's content matches its name; ``None`` if the name is no hash."""
    if re.fullmatch(r"[0-9a-f]{64}", blob.name):
        return sha256_file(blob) == blob.name
    if re.fullmatch(r"[0-9a-f]{40}", blob.name):
        return _git_blob_sha1(blob) == blob.name
    return None


def missing_files(snap: Path, required: tuple) -> list[str]:
    """The required files ``snap`` lacks; an entry that is a tuple is met by any one of its
    names (a file that a newer library writes under another name)."""
    missing = []
    for entry in required:
        names = entry if isinstance(entry, tuple) else (entry,)
        if not any((snap / n).exists() for n in names):
            missing.append(" or ".join(names))
    return missing


def verify_snapshot(snap: Path) -> tuple[dict[str, str], list[str]]:
    """({file: content hash}, problems) for every file of a cache snapshot folder."""
    files, problems = {}, []
    for p in sorted(snap.rglob("*")):
        if p.is_dir():
            continue
        rel = p.relative_to(snap).as_posix()
        target = p.resolve()
        if not target.is_file():
            problems.append(f"{rel}: its blob {target} is missing")
            continue
        ok = blob_matches(target)
        if ok is False:
            problems.append(f"{rel}: content does not match its hash ({target.name[:12]}...)")
        files[rel] = target.name if ok else f"sha256:{sha256_file(target)}"
    return files, problems


def verified_snapshot(hf_home: str | Path, repo_id: str, revision: str, required: tuple,
                      what: str, hint: str) -> tuple[Path, dict[str, str]]:
    """The snapshot of ``repo_id`` and its file hashes, or a :class:`MeldflowError` that
    says what is missing or damaged and names the ``meldflow stage`` command (``hint``)."""
    snap = cached_snapshot(hf_home, repo_id, revision)
    if snap is None:
        raise MeldflowError(f"{what} {repo_id} is not in the offline cache {hf_home}; {hint}")
    missing = missing_files(snap, required)
    if missing:
        raise MeldflowError(f"{what} {repo_id} in {snap} is incomplete "
                            f"(missing {', '.join(missing)}); {hint}")
    files, problems = verify_snapshot(snap)
    if problems:
        raise MeldflowError(f"{what} {repo_id} in {snap} is damaged ({'; '.join(problems)}); "
                            f"{hint}")
    return snap, files


def snapshot_verified_before(hf_home: str | Path, repo_id: str, revision: str,
                             files: dict[str, str]) -> Path:
    """The snapshot that ``verified_snapshot`` found with these ``files`` earlier in the
    job's life (at launch), found again without hashing a byte: each file must still link
    to the blob of the hash recorded, so a re-staged or re-linked model is caught."""
    snap = cached_snapshot(hf_home, repo_id, revision)
    if snap is None:
        raise MeldflowError(f"model {repo_id} snapshot {revision[:12]} left the cache "
                            f"{hf_home} after the job was launched; stage it and rerun")
    for rel, digest in files.items():
        target = (snap / rel).resolve()
        if not target.is_file() or (":" not in digest and target.name != digest):
            raise MeldflowError(f"model {repo_id} in {snap} changed after the job was "
                                f"launched ({rel}); stage it again and rerun")
    return snap


def _repo_folder(hf_home: str | Path, repo_id: str) -> Path:
    return hub_cache(hf_home) / ("models--" + repo_id.replace("/", "--"))


def cached_snapshot(hf_home: str | Path, repo_id: str, revision: str) -> Path | None:
    """The snapshot folder of ``repo_id`` in the cache, or ``None``; never touches the network."""
    folder = _repo_folder(hf_home, repo_id)
    ref = folder / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snap = folder / "snapshots" / commit
    return snap if snap.is_dir() and any(snap.iterdir()) else None


def place_in_cache(src_dir: str | Path, hf_home: str | Path, repo_id: str) -> tuple[Path, str]:
    """Copy a model folder into the cache layout Hugging Face itself writes.

    Files become content-addressed blobs with relative symlinks from a snapshot named by
    a commit-like hash of the contents, and ``refs/main`` points at it, so
    ``snapshot_download(..., local_files_only=True)`` resolves it like a downloaded model.
    """
    src_dir = Path(src_dir)
    files = sorted(p for p in src_dir.rglob("*") if p.is_file())
    if not files:
        raise MeldflowError(f"nothing to stage in {src_dir}")
    folder = _repo_folder(hf_home, repo_id)
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    tree = hashlib.sha1()
    entries = []
    for p in files:
        digest = sha256_file(p)
        rel = p.relative_to(src_dir).as_posix()
        tree.update(f"{rel}\0{digest}\n".encode())
        entries.append((p, rel, digest))
    commit = tree.hexdigest()
    snap = folder / "snapshots" / commit
    tmp_snap = folder / "snapshots" / f".{commit}.tmp{os.getpid()}"
    shutil.rmtree(tmp_snap, ignore_errors=True)
    for p, rel, blob in entries:
        blob_path = folder / "blobs" / blob
        if not blob_path.is_file() or not blob_matches(blob_path):  # absent or damaged
            tmp = blob_path.with_name(f".{blob}.tmp{os.getpid()}")
            shutil.copyfile(p, tmp)
            os.replace(tmp, blob_path)
        link = tmp_snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob_path, link.parent))
    if snap.exists():  # replace rather than trust it: a partial snapshot is healed
        old = snap.with_name(f".{commit}.old{os.getpid()}")
        os.replace(snap, old)
        os.replace(tmp_snap, snap)
        shutil.rmtree(old)
    else:
        os.replace(tmp_snap, snap)
    (folder / "refs").mkdir(exist_ok=True)
    write_text(commit, folder / "refs" / LOCAL_REF)
    return snap, commit
