"""The code's shape: small modules and functions, folders that mirror the workflow."""

import ast
import re

from conftest import REPO

SRC = REPO / "src" / "meldflow"


def test_no_module_over_400_lines_and_no_function_over_80():
    too_big = []
    for path in sorted(SRC.rglob("*.py")) + sorted((REPO / "benchmarks").glob("*.py")):
        text = path.read_text()
        if path.is_relative_to(SRC) and len(text.splitlines()) > 400:
            too_big.append(f"{path.relative_to(REPO)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    too_big.append(f"{path.relative_to(REPO)}: {node.name}, {length} lines")
    assert not too_big, too_big


def test_each_rule_runs_the_command_of_its_name_from_the_module_of_its_step():
    """A newcomer finds a rule's command and module by the rule's name."""
    rules = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    step_modules = {"ingest": "preprocess/ingest.py", "transcribe": "preprocess/transcribe.py",
                    "frames": "preprocess/frames.py", "align": "preprocess/align.py",
                    "manifest": "preprocess/manifest.py", "summary": "preprocess/summary.py",
                    "train": "training/launch.py", "evaluate": "training/evaluate.py"}
    for rule, module in step_modules.items():
        body = re.search(rf"(?:rule|checkpoint) {rule}:\n(.*?)(?=\n(?:rule|checkpoint) |\Z)",
                         rules, re.S).group(1)
        assert f'"meldflow {rule} ' in body, rule
        assert (SRC / module).is_file(), module
