"""The conda environments in envs/ must pin exactly what pyproject.toml pins."""

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
