"""The tutorials (docs/tutorials/*.md) are executed: a page that stops working fails here.

Every ```python block of a page runs, in order, as one program
(``mktestdocs.check_md_file(page, memory=True)``), in a fresh temporary working directory
under the suite's fixtures (one CPU thread). Why mktestdocs rather than
pytest-markdown-docs: a tutorial is one story whose blocks build on each other (a model
trained in one block is used in the next); mktestdocs runs them as one program with no
markup on each fence, and it is a plain function called from this ordinary test, so the
pages run under ``make test`` (which collects tests/ only) with our fixtures and data
skips. pytest-markdown-docs is a plugin that collects Markdown files itself and runs
each block as its own test, sharing state only through a ``continuation`` marker on
every fence.

Conventions the pages follow (checked below):

- ```python blocks run; ```py and ```bash blocks are shown only (downloads, full-size
  runs). mktestdocs would skip a fence such as ```python title="x" silently, so any
  other info string starting with "python" is refused.
- A page that needs a data set or an optional package says so on its first line,
  ``<!-- needs: imdb -->`` (data sets: imdb, multi30k, tinyshakespeare; anything else
  is a module name); it is skipped, with the reason, when that is missing.
- Each numbered chapter ends with "## The same thing at full size": a ``torchformer``
  command, a link to the results page, and only numbers that appear in docs/results.md.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
from pathlib import Path

import pytest

mktestdocs = pytest.importorskip(
    "mktestdocs", reason="mktestdocs is not installed (dev extra): pip install -e '.[dev]'"
)

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in (DOCS / "tutorials").glob("*.md") if p.name != "index.md")
CHAPTERS = [p for p in PAGES if re.match(r"\d\d-", p.name)]
FULL_SIZE = "## The same thing at full size"
FENCE = re.compile(r"^\s*```(.*)$")


def fence_languages(text: str) -> list[str]:
    """The info string of every opening fence, in order."""
    languages, inside = [], False
    for line in text.splitlines():
        match = FENCE.match(line)
        if match:
            if not inside:
                languages.append(match.group(1).strip())
            inside = not inside
    return languages


def check_fences(text: str, name: str) -> None:
    for language in fence_languages(text):
        if language.startswith("python") and language != "python":
            raise ValueError(
                f"{name}: a ```{language} fence would be skipped silently by mktestdocs; "
                "write ```python (run) or ```py (shown only)"
            )


def executed_code(text: str) -> str:
    """The program a page runs: its ```python blocks, joined in order."""
    return "\n".join(mktestdocs.grab_code_blocks(text, lang="python"))


def run_page(path: Path) -> None:
    """Run a page's ```python blocks as one program (raises what the code raises)."""
    text = path.read_text(encoding="utf-8")
    check_fences(text, path.name)
    mktestdocs.check_md_file(path, memory=True)


def needs(text: str) -> list[str]:
    match = re.match(r"\s*<!--\s*needs:\s*(.*?)\s*-->", text)
    return [n for n in re.split(r"[,\s]+", match.group(1)) if n] if match else []


def missing(need: str) -> str | None:
    """Why ``need`` is not available here (None: it is)."""
    from torchformer.data.paths import data_dir

    finders = {
        "imdb": "torchformer.data.imdb:find_imdb",
        "multi30k": "torchformer.data.parallel:find_multi30k",
        "tinyshakespeare": "torchformer.data.corpus:find_tinyshakespeare",
    }
    if need in finders:
        module, name = finders[need].split(":")
        try:
            getattr(importlib.import_module(module), name)(data_dir())
        except FileNotFoundError as error:
            return f"{need} data absent (set TORCHFORMER_DATA): {error}"
        return None
    if importlib.util.find_spec(need) is None:
        return f"the {need} package is not installed (pip install -e '.[dev]')"
    return None


def page_param(path: Path):
    data_sets = {"imdb", "multi30k", "tinyshakespeare"}
    uses_data = bool(data_sets & set(needs(path.read_text(encoding="utf-8"))))
    return pytest.param(path, id=path.stem, marks=[pytest.mark.data] if uses_data else [])


@pytest.fixture
def fresh_workdir(tmp_path, monkeypatch):
    """Run a page from an empty directory; relative paths (runs/...) land there."""
    data = os.environ.get("TORCHFORMER_DATA")
    if data:  # a relative data directory must survive the change of directory
        monkeypatch.setenv("TORCHFORMER_DATA", str(Path(data).resolve()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a page never downloads: fail fast if one tries
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- the pages run --------------------------------------------------------------------------
@pytest.mark.parametrize("page", [page_param(p) for p in PAGES])
def test_tutorial_runs(page, fresh_workdir):
    reasons = [r for r in map(missing, needs(page.read_text(encoding="utf-8"))) if r]
    if reasons:
        pytest.skip("; ".join(reasons))
    run_page(page)


# --- what the pages must hold -----------------------------------------------------------------
def test_the_learning_path_has_its_nine_chapters_and_the_transformers_page():
    assert [p.name[:2] for p in CHAPTERS] == [f"{i:02d}" for i in range(1, 10)]
    assert (DOCS / "tutorials" / "from-transformers.md") in PAGES
    index = (DOCS / "tutorials" / "index.md").read_text(encoding="utf-8")
    for page in PAGES:
        assert f"({page.name})" in index, f"tutorials/index.md does not link {page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_every_page_asserts_what_it_shows(page):
    text = page.read_text(encoding="utf-8")
    check_fences(text, page.name)
    tree = ast.parse(executed_code(text))
    asserts = sum(isinstance(node, ast.Assert) for node in ast.walk(tree))
    checks = sum(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr.startswith("assert_")
        for node in ast.walk(tree)
    )
    assert asserts + checks >= 5, f"{page.name}: {asserts + checks} checks; a tutorial asserts"
    prints = sum(
        isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"
        for node in ast.walk(tree)
    )
    assert prints == 0, f"{page.name}: shows with assertions, not prints"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_each_chapter_ends_with_the_full_size_recipe_and_its_measured_result(chapter):
    text = chapter.read_text(encoding="utf-8")
    assert text.count(FULL_SIZE) == 1, f"{chapter.name}: no '{FULL_SIZE}' section"
    section = text.split(FULL_SIZE, 1)[1]
    assert "\n## " not in section, f"{chapter.name}: the full-size section must come last"
    assert re.search(r"```bash\n(.*\n)*?.*torchformer \w", section), "no torchformer command"
    assert "](../results.md" in section, f"{chapter.name}: no link to the results page"
    # Numbers are copied from the results page, never made up: every decimal number and
    # every duration in the prose of the section appears there as written.
    results = (DOCS / "results.md").read_text(encoding="utf-8")
    prose = re.sub(r"```.*?```", "", section, flags=re.DOTALL)
    quoted = re.findall(r"(?<![\w.])\d[\d,]*\.\d+", prose)
    quoted += re.findall(r"\d+ h \d+ min(?: \d+ s)?|\d+ min \d+ s", prose)
    assert quoted, f"{chapter.name}: no measured number in the full-size section"
    for number in quoted:
        assert number in results, f"{chapter.name}: {number!r} is not in docs/results.md"


# --- the runner fails on a broken page ----------------------------------------------------------
def write_page(folder: Path, *blocks: tuple[str, str]) -> Path:
    body = "\n\n".join(f"```{language}\n{code}\n```" for language, code in blocks)
    path = folder / "page.md"
    path.write_text(f"# A page\n\nSome text.\n\n{body}\n", encoding="utf-8")
    return path


def test_a_wrong_assertion_fails_the_page(tmp_path, capsys):
    page = write_page(tmp_path, ("python", "x = 1 + 1"), ("python", "assert x == 3"))
    with pytest.raises(AssertionError):
        run_page(page)
    capsys.readouterr()  # mktestdocs prints the failing program; keep it out of the log


def test_an_error_in_a_later_block_fails_the_page(tmp_path, capsys):
    page = write_page(tmp_path, ("python", "x = 2"), ("python", "y = undefined_name + x"))
    with pytest.raises(NameError):
        run_page(page)
    capsys.readouterr()


def test_blocks_share_one_namespace_and_shown_blocks_do_not_run(tmp_path):
    page = write_page(
        tmp_path,
        ("python", "import math\nx = math.sqrt(16)"),
        ("py", "raise SystemExit('a shown-only block must not run')"),
        ("bash", "exit 1"),
        ("python", "assert x == 4.0"),
    )
    run_page(page)  # passes: the second python block sees x; py and bash are not run


def test_a_python_fence_with_attributes_is_refused(tmp_path):
    page = write_page(tmp_path, ("python", "x = 1"), ('python title="x"', "assert False"))
    with pytest.raises(ValueError, match="skipped silently"):
        run_page(page)
