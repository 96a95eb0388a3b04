"""The conda environments in envs/ must pin exactly what pyproject.toml pins, and no pin falls
below a security floor (envs/security-floors.toml)."""

import re
import tomllib

import yaml
from helpers import REPO


def pins(lines):
    out = {}
    for line in lines:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)\s*", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_env_pins_match_pyproject():
    project = pins(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert {p.stem for p in envs} == {"transcription", "frames", "training"}
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
        env_pins = pins(pip)
        assert env_pins, env
        for name, version in env_pins.items():
            assert project.get(name) == version, f"{env.name}: {name}=={version} vs pyproject"
        assert (env.parent / f"{env.stem}.post-deploy.sh").is_file()


def test_every_rule_names_an_env():
    text = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    rules = re.findall(r"^(?:rule|checkpoint) (\w+):\n((?:    .*\n|\n)*)", text, re.M)
    job_rules = [(name, body) for name, body in rules if "shell:" in body]
    assert len(job_rules) >= 7
    for name, body in job_rules:
        assert "conda:" in body and "log:" in body and "benchmark:" in body, name


def floors():
    return tomllib.loads((REPO / "envs" / "security-floors.toml").read_text())["advisory"]


def test_every_advisory_names_a_package_we_pin_and_a_release():
    from packaging.version import Version

    project = pins(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    assert floors()
    for advisory in floors():
        assert advisory["id"] and advisory["summary"] and advisory["package"] in project
        Version(advisory["fixed"])


def test_no_pin_and_no_installed_release_is_below_a_security_floor():
    """transformers 4.57.6 (the pin before issue 35) is below CVE-2026-4372's 5.3.0."""
    from importlib.metadata import version

    from packaging.version import Version

    project = pins(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    envs = {p.name: pins(next(d["pip"] for d in yaml.safe_load(p.read_text())["dependencies"]
                              if isinstance(d, dict)))
            for p in sorted((REPO / "envs").glob("*.yaml"))}
    below = []
    for advisory in floors():
        name, fixed = advisory["package"], Version(advisory["fixed"])
        found = {"pyproject.toml": project.get(name), "installed": version(name)}
        found |= {env: env_pins[name] for env, env_pins in envs.items() if name in env_pins}
        below += [f"{where}: {name} {v} < {fixed} ({advisory['id']})"
                  for where, v in found.items() if Version(v) < fixed]
    assert not below, below
