"""What the README and docs say about the project's own files matches those files."""
import re

import yaml
from conftest import REPO

ABLATION = yaml.safe_load((REPO / "config" / "ablation.yaml").read_text())
DOCS = [REPO / "README.md", REPO / "config" / "ablation.yaml",
        *sorted((REPO / "docs").glob("*.md"))]


def test_every_count_given_for_the_ablation_matches_config_ablation_yaml():
    """"3 experiments x 5 seeds = 15" had stayed in the README after the file grew to 5."""
    experiments, seeds = len(ABLATION["experiments"]), len(ABLATION["seeds"])
    found = 0
    for path in DOCS:
        for m in re.finditer(r"(\d+)\s+experiments\s+x\s+(\d+)\s+seeds(?:\s*=\s*(\d+))?",
                             path.read_text()):
            found += 1
            assert (int(m.group(1)), int(m.group(2))) == (experiments, seeds), (path, m[0])
            assert m.group(3) is None or int(m.group(3)) == experiments * seeds, (path, m[0])
    assert found >= 3


def test_the_readmes_experiments_block_is_config_ablation_yaml():
    block = re.search(r"```yaml\n(experiments:.*?)```", (REPO / "README.md").read_text(),
                      re.S).group(1)
    shown = yaml.safe_load(block)
    assert shown == {"experiments": ABLATION["experiments"], "seeds": ABLATION["seeds"]}


def test_the_readmes_demo_output_is_what_make_demo_prints():
    """The block after "ends with:" holds the lines the demo prints: the summary's and the
    results' headers (the workflow's onsuccess) and the Makefile's closing lines."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"ends with:\n\n```\n(.*?)```", readme, re.S).group(1).splitlines()
    smk = (REPO / "workflow" / "rules" / "common.smk").read_text()
    make = (REPO / "Makefile").read_text()
    for line in block:
        if line.startswith("meldflow: "):
            assert line.split("(")[0].removeprefix("meldflow: ") in smk, line
        if line.strip().startswith(("Done.", "Manifests:", "Training runs:", "Comparison:",
                                    "HTML report:", "Logs per job:")):
            assert f'@echo "{line}"' in make, line
