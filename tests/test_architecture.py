"""The architecture: small modules and functions, folders that mirror the workflow and the
package, and floors that imports only go down."""

import ast
import re
from pathlib import Path

from helpers import REPO

SRC = REPO / "src" / "meldflow"


def python_modules() -> list:
    """Every Python module of the project: the package, its tests and benchmarks."""
    return sorted(p for folder in ("src", "tests", "benchmarks")
                  for p in (REPO / folder).rglob("*.py"))


def test_every_module_under_400_lines_and_no_function_over_80():
    too_big = []
    for path in python_modules():
        text = path.read_text()
        if len(text.splitlines()) >= 400:
            too_big.append(f"{path.relative_to(REPO)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    too_big.append(f"{path.relative_to(REPO)}: {node.name}, {length} lines")
    assert not too_big, too_big


def test_no_two_modules_of_the_package_share_a_name():
    """A module's name alone finds it (no options.py beside training/options.py)."""
    names = [p.name for p in SRC.rglob("*.py") if p.name != "__init__.py"]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_tests_mirror_the_package_and_share_helpers_not_conftest():
    """One test folder per subpackage (plus the workflow's); the top level holds the tests
    of the top-level modules. Helpers live in helpers.py, fixtures in conftest.py."""
    tests = REPO / "tests"
    subpackages = {p.parent.name for p in SRC.glob("*/__init__.py")}
    folders = {p.name for p in tests.iterdir() if p.is_dir() and p.name not in
               ("data", "__pycache__")}
    assert folders == subpackages | {"workflow"}
    for folder in folders:
        assert list((tests / folder).glob("test_*.py")), folder
    importing_conftest = [str(p.relative_to(tests)) for p in tests.rglob("*.py")
                          if re.search(r"^\s*(from conftest |import conftest)",
                                       p.read_text(), re.M)]
    assert importing_conftest == []


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


# The package's floors, lowest first: a module may import from its own floor or below,
# never from above (the most specific prefix places a module). The base holds what every
# step stands on: errors, labels, file writes and hashes, the option machinery, the MELD
# CSV reader, row statuses, SLURM's job states.
FLOORS = (
    ("meldflow", "meldflow.labels", "meldflow.logs", "meldflow.storage", "meldflow.options",
     "meldflow.annotations", "meldflow.row_status", "meldflow.shard_schema",
     "meldflow.slurm.states"),
    ("meldflow.settings", "meldflow.provenance"),
    ("meldflow.model_cache", "meldflow.slurm"),
    ("meldflow.preprocess",),
    ("meldflow.training",),
    ("meldflow.config", "meldflow.check", "meldflow.cli", "meldflow.sample_data"),
)


def import_graph() -> dict[str, set[str]]:
    """Every module of the package -> the package's modules it imports, anywhere in it
    (function-level imports included)."""
    modules = {".".join(("meldflow", *p.relative_to(SRC).with_suffix("").parts))
               .removesuffix(".__init__"): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("meldflow"):
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                         else node.module for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("meldflow")}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def floor(module: str) -> int:
    places = [(len(prefix), level) for level, prefixes in enumerate(FLOORS)
              for prefix in prefixes if module == prefix or module.startswith(prefix + ".")]
    assert places, f"{module} is on no floor: add it to FLOORS"
    return max(places)[1]


def layering_problems(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a higher floor, and import cycles, of ``graph``."""
    problems = sorted(f"upward: {a} -> {b}" for a, deps in graph.items() for b in deps
                      if floor(b) > floor(a))
    seen: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> None:
        if module in path:
            problems.append("cycle: " + " -> ".join(path[path.index(module):] + [module]))
            return
        if module in seen:
            return
        seen.add(module)
        path.append(module)
        for dep in sorted(graph[module]):
            visit(dep)
        path.pop()

    for module in sorted(graph):
        visit(module)
    return problems


def test_no_import_cycle_and_no_import_from_a_higher_floor():
    assert layering_problems(import_graph()) == []


def test_the_import_check_finds_a_cycle_and_an_upward_import():
    """The check can fail: the cycle issue 26 found (settings <-> training.options, by a
    function-level import) put back into the graph, and an upward import on its own."""
    graph = import_graph()
    back = graph | {"meldflow.settings": graph["meldflow.settings"]
                    | {"meldflow.training.train_options"}}
    found = layering_problems(back)
    assert "upward: meldflow.settings -> meldflow.training.train_options" in found
    assert any(p.startswith("cycle: ") and "meldflow.training.train_options" in p for p in found)
    found = layering_problems(graph | {"meldflow.provenance": {"meldflow.model_cache.snapshots"}})
    assert found == ["upward: meldflow.provenance -> meldflow.model_cache.snapshots"]


def test_imports_are_at_the_top_but_where_a_heavy_library_would_load():
    """In-package imports inside functions only in the CLI's entry points and, at most 12
    times, where the module would otherwise load a heavy library (each says why, on the
    import's line or the line above); standard-library imports always at the top."""
    import sys

    lazy, std = [], []
    for path in sorted(SRC.rglob("*.py")):
        rel, lines = str(path.relative_to(SRC)), path.read_text().splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, ast.Import | ast.ImportFrom):
                    continue
                mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                if mod.split(".")[0] in sys.stdlib_module_names:
                    std.append(f"{rel}:{node.lineno} {mod}")
                elif mod.startswith("meldflow") and rel != "cli.py":
                    said = "#" in lines[node.end_lineno - 1] or \
                        lines[node.lineno - 2].strip().startswith("#")
                    lazy.append((f"{rel}:{node.lineno} {mod}", said))
    assert std == []
    assert len(lazy) <= 12 and all(said for _, said in lazy), lazy


def test_meldflow_help_is_quick_and_loads_no_heavy_library():
    import subprocess
    import sys
    import time

    code = ("import sys, time; t = time.perf_counter(); from meldflow.cli import build_parser;"
            " build_parser().format_help(); print(time.perf_counter() - t); print(*sorted("
            "m for m in ('torch', 'transformers', 'faster_whisper', 'submitit', 'av', "
            "'pyarrow') if m in sys.modules))")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert time.perf_counter() - start < 2.0  # the interpreter's start included
    assert float(out[0]) < 0.3 and out[1:] in ([], [""]), out


# Modules tested where a test of their own would repeat another's: module -> (the test
# file that covers them, why).
COVERED_ELSEWHERE = {
    "labels.py": ("test_annotations.py", "two constants: every label read from the real "
                  "MELD CSVs"),
    "model_cache/snapshots.py": ("model_cache/test_stage.py", "the cache's checks, through "
                                 "staging a damaged, incomplete or unlocked model"),
    "model_cache/whisper.py": ("preprocess/test_transcribe.py", "finding and loading the "
                               "Whisper model, through transcription"),
    "preprocess/audio.py": ("preprocess/test_transcribe.py", "a clip's audio, through "
                            "transcription and its clip faults"),
    "preprocess/audit.py": ("preprocess/test_summary.py", "the audit is part of the summary"),
    "preprocess/layout.py": ("preprocess/test_ingest.py", "MELD.Raw's folders, checked "
                             "where ingest reads them"),
    "provenance.py": ("training/test_checkpoint.py", "run folders and run.json, through "
                      "resuming and archiving runs"),
    "training/batches.py": ("training/test_dataset.py", "micro-batches of the reader's rows"),
    "training/distributed.py": ("training/test_loop.py", "DDP equivalence and CPU ranks"),
    "training/scoring.py": ("training/test_predict.py", "a model on new inputs, as on dev "
                            "and test"),
}


def test_each_module_has_a_test_file_of_its_name_or_says_where_it_is_tested():
    """20 of 49 modules had a test file of their name; tests/test_settings.py tested five
    modules and `meldflow status`."""
    tests = REPO / "tests"
    modules = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                     if p.name != "__init__.py")
    own = [m for m in modules
           if (tests / Path(m).parent / f"test_{Path(m).stem}.py").is_file()]
    missing = sorted(set(modules) - set(own) - set(COVERED_ELSEWHERE))
    assert missing == []
    for module, (test, _) in COVERED_ELSEWHERE.items():
        assert module in modules and module not in own, module
        assert (tests / test).is_file(), test
    assert len(own) >= 0.8 * len(modules), (len(own), len(modules))
