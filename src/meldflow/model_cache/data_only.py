"""A model meldflow stages or loads is data, never code.

transformers runs a repository's code where its files ask for it: ``auto_map`` in a
config (custom classes; ``trust_remote_code`` is meant to guard it, and CVE-2026-5241
bypassed that), an attention or experts implementation naming a Hub repository (a kernel
fetched and run: CVE-2026-4372, which bypassed ``trust_remote_code`` entirely), ``.py``
files beside the weights, and pickle weights (``torch.load`` runs what the pickle says).
Staging and every load refuse all of these, by reading the files, before transformers
sees them; loads also pass ``trust_remote_code=False`` and ``use_safetensors=True``.
"""

from __future__ import annotations

import json
from pathlib import Path

from meldflow import MeldflowError

# Files a loader may import or unpickle.
CODE_SUFFIXES = (".py", ".pyc", ".pyd", ".so")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Config keys that name code to run: any value of these.
CODE_KEYS = ("auto_map", "custom_pipelines", "kernel_config")
# Config keys whose value is an implementation name: a Hub repository ("org/name") there
# is a kernel downloaded and run.
IMPLEMENTATION_KEYS = ("attn_implementation", "_attn_implementation",
                       "_attn_implementation_internal", "experts_implementation",
                       "_experts_implementation", "_experts_implementation_internal")

LOAD_OPTIONS = {"local_files_only": True, "trust_remote_code": False}
MODEL_LOAD_OPTIONS = LOAD_OPTIONS | {"use_safetensors": True}


def _names_a_repository(value) -> bool:
    if isinstance(value, str):
        return "/" in value
    if isinstance(value, dict):
        return any(_names_a_repository(v) for v in value.values())
    return False


def _code_in(value, where: str = "") -> str | None:
    """The first key path in a parsed JSON document that asks for code, or None."""
    if isinstance(value, dict):
        for key, sub in value.items():
            path = f"{where}.{key}" if where else key
            if key in CODE_KEYS and sub not in (None, {}, [], ""):
                return path
            if key == "use_kernels" and sub:
                return path
            if key in IMPLEMENTATION_KEYS and _names_a_repository(sub):
                return f"{path} = {sub!r}"
            found = _code_in(sub, path)
            if found:
                return found
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            found = _code_in(sub, f"{where}[{i}]")
            if found:
                return found
    return None


def code_in_model(folder: str | Path) -> str | None:
    """What in ``folder`` would make transformers run code ("file: key"), or None."""
    folder = Path(folder)
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            continue
        rel = path.relative_to(folder).as_posix()
        if path.name.endswith(CODE_SUFFIXES):
            return f"{rel}: Python code"
        if path.name.endswith(PICKLE_SUFFIXES):
            return f"{rel}: pickle weights (loading them runs code; use safetensors)"
        if path.suffix == ".json":
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                return f"{rel}: unreadable JSON ({exc})"
            found = _code_in(doc)
            if found:
                return f"{rel}: {found}"
    return None


def refuse_code(folder: str | Path, what: str = "model") -> None:
    """A MeldflowError naming the file and key when ``folder`` holds anything that runs
    code on load."""
    found = code_in_model(folder)
    if found:
        raise MeldflowError(
            f"{what} in {folder} would run code when loaded ({found}); meldflow loads "
            f"models as data only: use a repository without it (native Florence-2: "
            f"florence-community/Florence-2-base or -large)")


def load_florence_dir(path: str | Path):
    """(Florence-2 model, processor) from a local folder, checked first, as data only, with
    the PIL image processor (torchvision is not installed)."""
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    refuse_code(path)
    model = Florence2ForConditionalGeneration.from_pretrained(path, **MODEL_LOAD_OPTIONS)
    processor = AutoProcessor.from_pretrained(path, backend="pil", **LOAD_OPTIONS)
    return model, processor
