"""tools/mutate.py: the [tool.mutmut] table each scope gets, and what it keeps out of mutation."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mutate():
    spec = importlib.util.spec_from_file_location("mutate_tool", ROOT / "tools" / "mutate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("scope", ["train", "generate", "evaluate", "tasks"])
def test_each_scope_table_is_valid_toml_naming_its_sources_tests_and_patterns(mutate, scope):
    table = tomllib.loads(mutate.mutmut_table(scope))["tool"]["mutmut"]
    sources, tests = mutate.SCOPES[scope]
    assert table["source_paths"] == sources
    assert table["pytest_add_cli_args_test_selection"] == tests
    assert table["pytest_add_cli_args"][-2:] == ["-m", "not slow"]
    assert table["do_not_mutate_patterns"] == mutate.DO_NOT_MUTATE_PATTERNS
    for path in sources + tests:
        assert (ROOT / path).exists(), path


@pytest.mark.parametrize(
    ("line", "skipped"),
    [
        ('    logger.info("epoch %d", epoch)', True),
        ("        logger.warning(", True),
        ("logger.exception(error)", True),
        ('    warnings.warn("bf16 is slow here", stacklevel=2)', False),
        ('    raise ValueError(f"{path}: field {name!r}")', False),
        ("    log_metrics(path, record)", False),
        ("    loggers.info(x)", False),
        ("    x = logger.info", False),
        ('    print("done")', False),
    ],
)
def test_only_logger_calls_are_kept_out_of_mutation(mutate, line, skipped):
    assert any(re.search(p, line) for p in mutate.DO_NOT_MUTATE_PATTERNS) is skipped


def test_every_line_the_patterns_match_in_the_mutated_packages_is_a_logger_call(mutate):
    matched = []
    for scope in mutate.SCOPES.values():
        for source in scope[0]:
            for path in sorted((ROOT / source).rglob("*.py")):
                for line in path.read_text(encoding="utf-8").splitlines():
                    if any(re.search(p, line) for p in mutate.DO_NOT_MUTATE_PATTERNS):
                        matched.append(line.strip())
    assert matched, "no logger call found: the pattern no longer matches the code's logging"
    assert all(line.startswith("logger.") for line in matched)


@pytest.mark.parametrize("scope", ["train", "tasks"])
def test_the_work_directorys_pyproject_is_the_projects_with_the_scopes_table(mutate, scope):
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    written = tomllib.loads(mutate.scope_pyproject(text, scope))
    project = tomllib.loads(text)
    assert written["tool"]["mutmut"] == tomllib.loads(mutate.mutmut_table(scope))["tool"]["mutmut"]
    assert written["project"] == project["project"]  # the rest of the file is kept
    assert {k: v for k, v in written["tool"].items() if k != "mutmut"} == {
        k: v for k, v in project["tool"].items() if k != "mutmut"
    }
