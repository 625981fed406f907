"""The shape of the code and the docs, checked statically (no stage runs; a few seconds):
no import circle among the project's modules, `model/` free of `pipeline/`, one `cvf` entry
point whose jobs are real modules, the data contract in place, a README that routes (small,
naming the set-up commands, every link resolving), and a tree that speaks of the project alone."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "flows", "labeling", "model")


def module_files() -> dict[str, Path]:
    """{dotted module name: file} of every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The project's modules `name` imports anywhere in its file (a function-level import
    closes a circle just as surely as one at the top)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            out.add(base)
            out |= {f"{base}.{alias.name}" for alias in node.names}  # `from pipeline import bulk`
    return {m for m in out if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_among_the_projects_modules():
    graph = import_graph()
    assert "pipeline.render" in graph and "pipeline.pdffigures" in graph  # the scan sees them
    assert circles(graph) == []


def test_the_model_package_imports_nothing_of_pipeline():
    offenders = {name: sorted(d for d in deps if d.split(".")[0] == "pipeline")
                 for name, deps in import_graph().items() if name.split(".")[0] == "model"}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_the_renderer_leaves_pillows_globals_alone():
    script = ("from PIL import Image, ImageFile; before = (Image.MAX_IMAGE_PIXELS, "
              "ImageFile.LOAD_TRUNCATED_IMAGES)\n"
              "import pipeline.render, pipeline.pdffigures, pipeline.extract\n"
              "assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before, before")
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert run.returncode == 0, run.stderr[-2000:]


# --- one entry point ------------------------------------------------------------------------------

def cvf(*args: str) -> subprocess.CompletedProcess:
    """`cvf ARGS` as the console script runs it (`pipeline.cli:main`), from this checkout."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          timeout=120)


def test_pyproject_declares_the_cvf_script():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["cvf"] == "pipeline.cli:main"
    # the machine-specific torch pin lives in the set-up's constraints, not in the metadata
    torch = [d for d in project["dependencies"] if re.match(r"torch\b", d)]
    assert torch and "==" not in torch[0], torch
    assert re.search(r"^torch==", (REPO / "constraints.txt").read_text(), re.M)
    assert "-c constraints.txt" in (REPO / "Makefile").read_text()


def test_cvf_lists_every_job_with_one_line_each():
    from pipeline.cli import JOBS

    for args in ((), ("--help",)):
        run = cvf(*args)
        assert run.returncode == 0 and run.stderr == ""
        listed = re.findall(r"^  (\S+)  ", run.stdout, re.M)
        assert listed == list(JOBS), listed
    for job in ("crawl", "extract", "classify", "contamination", "filter", "publish", "train",
                "evaluate", "report"):
        assert job in JOBS
    # every job names a module of this project (a missing one fails clearly, below)
    files = module_files()
    assert set(JOBS.values()) <= set(files)


def test_a_cvf_job_is_its_module():
    ours, theirs = cvf("filter", "--threshold", "2"), subprocess.run(
        [sys.executable, "-m", "pipeline.filter", "--threshold", "2"], cwd=REPO,
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert (ours.returncode, ours.stdout, ours.stderr) == (theirs.returncode, theirs.stdout,
                                                           theirs.stderr)
    assert ours.returncode == 2 and "error: argument --threshold" in ours.stderr
    run = cvf("replay", "--help")  # a package run by its __main__
    assert run.returncode == 0 and "generate" in run.stdout


def test_an_unknown_job_or_a_missing_module_is_one_error_line(monkeypatch, capsys):
    run = cvf("no-such-job")
    assert run.returncode == 2 and run.stderr.startswith("error: ") and len(
        run.stderr.strip().splitlines()) == 1
    from pipeline import cli

    monkeypatch.setitem(cli.JOBS, "gone", "pipeline.no_such_module")
    assert cli.main(["gone", "--help"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pipeline.no_such_module" in err and len(err.splitlines()) == 1


# --- the data contract ------------------------------------------------------------------------------

def test_the_data_contract_names_the_figures_eprint():
    contract = REPO / "pipeline" / "contract.py"
    assert contract.is_file(), "pipeline/contract.py holds every stage's schema"
    assert "eprint_sha256" in contract.read_text()


# --- the README and the docs ------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(m) for m in re.findall(r"^#+\s+(.*)$", text, re.M)}


def broken_links(path: Path) -> list[str]:
    broken = []
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    return broken


def test_the_readme_routes():
    readme = REPO / "README.md"
    assert readme.stat().st_size <= 12 * 1024, readme.stat().st_size
    text = readme.read_text()
    assert "make demo" in text and "make test" in text
    assert broken_links(readme) == []


def test_the_docs_links_resolve():
    pages = sorted((REPO / "docs").glob("*.md"))
    assert {p.name for p in pages} >= {"ARCHITECTURE.md", "acquire.md", "extract.md", "labeling.md",
                                       "curate-and-publish.md", "model.md", "operations.md",
                                       "benchmarks.md", "threat-model.md"}
    assert {p.name: broken_links(p) for p in pages if broken_links(p)} == {}


# Words that belong to one lab's way of working, not to the project: instructions for borrowed
# machines and their tools, work-item numbers, a sibling folder of the checkout in user docs.
FORBIDDEN = [
    r"run\(command=", r"carry=\[", r"\blent\b", r"\bdevice machines?\b", r"\bissue\s*#?\d+",
    r"\b(?:this|a|each|every|another|helper|work) session\b(?![ -](?:cookie|token|scope|fixture|-wide))",
    r"\bthis workplace\b",
]
USER_DOCS_ONLY = [r"\.\./shared\b", r"\bshared/reference\b"]


def tree_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "Makefile", REPO / "pyproject.toml", REPO / "constraints.txt"]
    for folder in ("docs", "benchmarks", "pipeline", "model", "flows", "labeling", "tests",
                   "scripts", ".ci"):
        files += [p for p in (REPO / folder).rglob("*") if p.is_file()
                  and p.suffix in ("", ".py", ".md", ".sh", ".toml", ".yaml", ".html", ".txt")]
    return [f for f in files if f.exists() and "__pycache__" not in f.parts]


def test_the_project_speaks_of_itself_alone():
    hits = []
    for path in tree_files():
        text = path.read_text(errors="replace")
        patterns = FORBIDDEN
        if path.suffix == ".md" and ("docs" in path.relative_to(REPO).parts or path.name == "README.md"):
            patterns = FORBIDDEN + USER_DOCS_ONLY
        for pattern in patterns:
            if path == Path(__file__) and pattern in FORBIDDEN + USER_DOCS_ONLY:
                continue  # this file names them to forbid them
            for m in re.finditer(pattern, text, re.I):
                line = text.count("\n", 0, m.start()) + 1
                hits.append(f"{path.relative_to(REPO)}:{line}: {m.group(0)!r}")
    assert hits == []


@pytest.mark.parametrize("text, bad", [("see " + "is" + "sue 13", True), ("run(" + "command=\"x\")", True),
                                       ("the " + "le" + "nt machines", True), ("a session cookie", False),
                                       ("boto3.session.Session()", False), ("in this session", True)])
def test_the_forbidden_words_are_found(text, bad):
    assert any(re.search(p, text, re.I) for p in FORBIDDEN) == bad


def test_a_broken_link_or_anchor_is_found(tmp_path):
    assert slug("Bulk sources (arXiv's requester-pays S3 bucket)") == "bulk-sources-arxivs-requester-pays-s3-bucket"
    (tmp_path / "b.md").write_text("# Title\n\n## Some section: here (`x.y`)\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#some-section-here-xy) [gone](c.md) [bad anchor](b.md#nope) "
                    "[web](https://example.org/x.md)\n```\n[in code](d.md)\n```\n")
    assert broken_links(page) == ["c.md", "b.md#nope"]
