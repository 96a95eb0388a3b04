"""What the README and docs say about the project's own files matches those files."""
import re

import yaml
from helpers import REPO

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
    assert found >= 2  # docs/cluster.md and config/ablation.yaml say it


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


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a Markdown file's headings (lower case, punctuation dropped,
    spaces as hyphens; a repeated heading gets -1, -2, ...)."""
    out: set[str] = set()
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n, candidate = 0, slug
        while candidate in out:
            n += 1
            candidate = f"{slug}-{n}"
        out.add(candidate)
    return out


MARKDOWN = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]


def link_problems(path, text: str) -> list[str]:
    """Every relative link of a Markdown file whose file or section does not exist."""
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", text, flags=re.S)):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            problems.append(f"{path.name}: {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            problems.append(f"{path.name}: {target}: no such section")
    return problems


def test_every_link_in_the_readme_docs_and_changelog_resolves():
    problems = [p for path in MARKDOWN for p in link_problems(path, path.read_text())]
    assert not problems, problems


def test_the_link_check_finds_a_missing_file_and_a_missing_section():
    readme = REPO / "README.md"
    found = link_problems(readme, "[a](docs/nothing.md) [b](docs/cluster.md#no-such-part) "
                                  "[c](#performance) [d](https://example.org/x)")
    assert found == ["README.md: docs/nothing.md: no such file",
                     "README.md: docs/cluster.md#no-such-part: no such section"]


CODE = [*(REPO / "src" / "meldflow").rglob("*.py"), *(REPO / "workflow").rglob("*.*"),
        REPO / "Snakefile", REPO / "Makefile", *(REPO / "cluster").rglob("*.*"),
        *(REPO / "config").glob("*.yaml"), *(REPO / "benchmarks").glob("*.py")]


def reference_problems(text: str) -> list[str]:
    """References to the docs in code, rules and profiles that point nowhere: a
    `docs/X.md` that does not exist, its `#anchor` or `, "Section"` that it does not hold,
    and the README cited by a section it does not have or by no section at all."""
    problems = []
    for file, anchor, section in re.findall(
            r"\b(docs/[\w-]+\.md|README\.md)(?:#([\w-]+)|,? \"([^\"]+)\")?", text):
        dest = REPO / file
        if not dest.is_file():
            problems.append(f"{file}: no such file")
            continue
        have = anchors(dest.read_text())
        for wanted in filter(None, (anchor, section and re.sub(
                r"[^\w\- ]", "", section.lower()).replace(" ", "-"))):
            if wanted not in have:
                problems.append(f"{file}: no section {anchor or section!r}")
    for vague in re.findall(r"(?:the|in the) README(?:'s)?\b(?!\.md)[^.\n]*", text):
        problems.append(f"cites the README without saying where: {vague!r}")
    return problems


def test_every_reference_to_the_docs_in_code_rules_and_profiles_resolves():
    problems = [f"{path.relative_to(REPO)}: {p}" for path in CODE if path.is_file()
                for p in reference_problems(path.read_text(errors="replace"))]
    assert not problems, problems


def test_the_reference_check_finds_stale_references():
    assert reference_problems('see docs/cluster.md, "Sizing a full MELD run"') == []
    assert reference_problems('(docs/cluster.md, "Partitions of old")') == [
        "docs/cluster.md: no section 'Partitions of old'"]
    assert reference_problems("docs/nothing.md") == ["docs/nothing.md: no such file"]
    assert reference_problems("README.md#performance") == []
    assert reference_problems("shards (schema in the README).") == [
        "cites the README without saying where: 'in the README)'"]


# What names the project's own code in prose: `meldflow.a.b` (a module, or a name in one),
# `module.name` (a module by its unique basename), and paths of the repository's files.
_DOTTED = re.compile(r"\bmeldflow(?:\.[A-Za-z_]\w*)+")
_SHORT = re.compile(r"`+([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?:\(\))?`+")
_PATH = re.compile(r"(?<![\w/.<{-])((?:src|tests|workflow|docs|benchmarks|cluster|envs|config|"
                   r"preprocess|training|slurm|model_cache)/[\w./-]+\.(?:py|smk|md|yaml|sh|"
                   r"toml|rst))\b")
_SUFFIXES = {"yaml", "json", "py", "md", "smk", "tsv", "txt", "parquet", "log", "csv", "pt",
             "html", "png", "toml", "sh", "rst", "safetensors", "bin", "mp4", "lock"}


def _resolves(name: str) -> bool:
    import importlib

    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def stale_names(texts: dict[str, str]) -> list[str]:
    """Each name in ``texts`` ({where: text}) of a module, function or file that does not
    exist; a path may be the repository's or, as the docs write tests, under tests/."""
    src = REPO / "src"
    modules = {p.stem if p.stem != "__init__" else p.parent.name:
               ".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
               for p in (src / "meldflow").rglob("*.py")}
    found = []
    for where, text in texts.items():
        found += [f"{where}: {m[0]}" for m in _DOTTED.finditer(text) if not _resolves(m[0])]
        for m in _SHORT.finditer(text):
            first, *rest = m[1].split(".")
            if first in modules and first != "meldflow" and rest[-1] not in _SUFFIXES \
                    and not _resolves(".".join([modules[first], *rest])):
                found.append(f"{where}: {m[1]}")
        for m in _PATH.finditer(text):
            if not any((root / m[1]).exists() for root in
                       (REPO, REPO / "tests", REPO / "src" / "meldflow")):
                found.append(f"{where}: {m[1]}")
    return found


def test_no_comment_docstring_or_doc_names_what_no_longer_exists():
    """The sample's README named src/meldflow/samplegen.py, docs named tests that had
    moved, launch.py a constant of a module that had gone."""
    files = [*sorted((REPO / "src").rglob("*.py")), *sorted((REPO / "workflow").rglob("*.smk")),
             *sorted((REPO / "benchmarks").glob("*.py")), *DOCS,
             REPO / "src" / "meldflow" / "data" / "sample" / "README.md"]
    texts = {str(p.relative_to(REPO)): p.read_text() for p in files}
    assert stale_names(texts) == []


def test_the_stale_name_check_finds_each_kind():
    texts = {"a.py": "# see `live.join_queue`, `live.gone_now()` and `states.TERMINAL`",
             "b.md": "meldflow.slurm.monitor.TERMINAL and meldflow.slurm.states.TERMINAL",
             "c.md": "(src/meldflow/samplegen.py) and src/meldflow/sample_data.py, "
                     "`workflow/test_workflow.py` and `preprocess/test_gone.py`"}
    assert stale_names(texts) == ["a.py: live.gone_now", "b.md: meldflow.slurm.monitor.TERMINAL",
                                  "c.md: src/meldflow/samplegen.py",
                                  "c.md: preprocess/test_gone.py"]


def test_the_readme_is_a_guide_and_the_changelog_brief():
    """The README had grown to 341 lines with a dated benchmark table and bootstrap
    intervals; the CHANGELOG's entries ran to 95 lines of prose."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 260
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b|interval", readme)
    entries = re.split(r"^## ", (REPO / "CHANGELOG.md").read_text(), flags=re.M)[1:]
    for entry in entries:
        bullets = re.split(r"^- ", entry, flags=re.M)[1:]
        assert bullets and all(len(b.strip().splitlines()) <= 3 for b in bullets), entry[:60]
