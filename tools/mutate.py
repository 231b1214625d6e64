"""Mutation testing in scopes: ``python tools/mutate.py train|generate|evaluate|tasks [--resume]``.

mutmut 3 reads one ``[tool.mutmut]`` table and maps each mutated function to every
selected test that reaches it. Mutating the loop (``train/``) against the task tests
would run dozens of small training runs per surviving mutant, so each scope gets its own
work directory, ``build/mutate/<scope>/``: a copy of ``src/``, ``tests/`` and
``pyproject.toml`` whose ``[tool.mutmut]`` table is the scope's (below). mutmut writes its
results there (``mutants/``) as it goes; ``--resume`` keeps them and goes on with the
mutants not yet tried. The summary is printed and written to
``build/mutate/<scope>/mutants/mutmut-cicd-stats.json``. What survived and why:
docs/mutation.md.

``--sample N`` tries N mutants drawn uniformly at random (``--seed``) instead of all of
them, and reports the killed share of the sample with its 95% (Wilson) interval: an
unbiased estimate when the whole scope would take hours; each sampled mutant's status is
written to ``build/mutate/<scope>/sample-seed<seed>.json``. ``--resume --sample N`` draws
the same sample and tries the ones not yet tried.

``--recheck`` (with ``--sample``) runs each sampled mutant that survived again against the
whole test files its mapped tests are in. mutmut maps a function to the tests that called
it, and a module- or session-scoped fixture's calls (a tiny training run shared by a
file's tests) count for the first test that requested the fixture only: the later tests
that check the fixture's run are never run against that function's mutants. A mutant a
file's test fails on is counted as killed in ``killed_with_recheck``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Scope -> (packages mutated, tests run against them). The task packages' tests are the
# small end-to-end runs of each task; tier-4 (slow) tests stay out, as in CI.
SCOPES: dict[str, tuple[list[str], list[str]]] = {
    "train": (["src/torchformer/train/"], ["tests/train/"]),
    # Decoding (greedy, sampling, beam search) and the metrics, against their own tests.
    "generate": (["src/torchformer/generate/"], ["tests/generate/"]),
    "evaluate": (["src/torchformer/evaluate/"], ["tests/evaluate/"]),
    "tasks": (
        ["src/torchformer/tasks/"],
        [
            "tests/tasks/",
            "tests/translate/",
            "tests/lm/",
            "tests/vision/",
            "tests/generate/",
            "tests/test_api.py",
        ],
    ),
}


# Calls to the logger are not mutated (their text, level and arguments are what an operator
# reads, not behaviour a test can pin without restating the message): mutmut skips every
# expression starting on a line that matches, as PIT's ``avoidCallsTo`` leaves calls to the
# common logging packages alone by default. Warnings and errors stay mutated: a user's code
# can catch them.
DO_NOT_MUTATE_PATTERNS = [r"^\s*logger\.(?:debug|info|warning|error|exception|critical)\("]


def mutmut_table(scope: str) -> str:
    sources, tests = SCOPES[scope]
    return (
        "[tool.mutmut]\n"
        f"source_paths = {json.dumps(sources)}\n"
        'also_copy = ["src/torchformer/", "tests/", "configs"]\n'
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-m", "not slow"]\n'
        f"do_not_mutate_patterns = {json.dumps(DO_NOT_MUTATE_PATTERNS)}\n"
    )


def prepare(scope: str, work: Path, resume: bool) -> None:
    if work.exists() and not resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for name in ("src", "tests"):
        shutil.rmtree(work / name, ignore_errors=True)
        shutil.copytree(
            ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    if not (work / "configs").exists():
        (work / "configs").symlink_to("src/torchformer/configs")
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (work / "pyproject.toml").write_text(scope_pyproject(text, scope), encoding="utf-8")


def scope_pyproject(text: str, scope: str) -> str:
    """``pyproject.toml``'s text with its [tool.mutmut] table (up to the next table or the
    end) replaced by the scope's."""
    table = mutmut_table(scope)  # a function as the replacement: its backslashes stay as they are
    text, n = re.subn(r"^\[tool\.mutmut\]\n(?:(?!\[).*\n?)*", lambda _: table, text, flags=re.M)
    if n != 1:
        raise SystemExit("pyproject.toml: expected exactly one [tool.mutmut] table")
    return text


def mutant_statuses(mutmut: list[str], work: Path, env: dict) -> dict[str, str]:
    """Every mutant of the work directory and its status ("killed", "survived", "not
    checked", ...), from ``mutmut results --all true``."""
    out = subprocess.run([*mutmut, "results", "--all", "true"], cwd=work, env=env, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    pairs = (line.strip().rsplit(": ", 1) for line in out.splitlines() if ": " in line)
    return {name: status for name, status in pairs}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def run_sample(mutmut: list[str], work: Path, env: dict, args) -> dict:
    """Try a seeded uniform sample of the scope's mutants; its result with a 95% interval."""
    if not (work / "mutants").is_dir():  # mutmut generates the mutants on its first run
        subprocess.run([*mutmut, "run", "--max-children", "1", "no-such-mutant"], cwd=work,
                       env=env, capture_output=True)  # fmt: skip
    statuses = mutant_statuses(mutmut, work, env)
    sample = sorted(random.Random(args.seed).sample(sorted(statuses), args.sample))
    todo = [name for name in sample if statuses[name] == "not checked"]
    if todo:
        subprocess.run([*mutmut, "run", "--max-children", str(args.max_children), *todo],
                       cwd=work, env=env)  # fmt: skip
    statuses = mutant_statuses(mutmut, work, env)
    counts: dict[str, int] = {}
    for name in sample:
        counts[statuses[name]] = counts.get(statuses[name], 0) + 1
    killed = counts.get("killed", 0)
    low, high = wilson(killed, len(sample))
    (work / f"sample-seed{args.seed}.json").write_text(json.dumps({"seed": args.seed, "mutants": sample,
        "status": {n: statuses[n] for n in sample}}, indent=1))  # fmt: skip
    return {"scope": args.scope, "population": len(statuses), "sample": len(sample),
            "seed": args.seed, **counts, "killed_pct": round(100 * killed / len(sample), 1),
            "killed_pct_95ci": [round(100 * low, 1), round(100 * high, 1)]}  # fmt: skip


def recheck(mutmut: list[str], work: Path, env: dict, names: list[str], workers: int) -> dict:
    """Run each mutant against the whole test files of its mapped tests; name -> killed."""

    def files_of(name: str) -> list[str]:
        out = subprocess.run([*mutmut, "tests-for-mutant", name], cwd=work, env=env,
                             capture_output=True, text=True).stdout  # fmt: skip
        return sorted({line.split("::")[0] for line in out.split() if "::" in line})

    def killed(name: str) -> bool:
        files = files_of(name)
        if not files:
            return False
        run_env = dict(env, MUTANT_UNDER_TEST=name, PYTHONPATH=str(work / "mutants" / "src"))
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
               "-m", "not slow", *files]  # fmt: skip
        try:
            result = subprocess.run(cmd, cwd=work / "mutants", env=run_env,
                                    capture_output=True, timeout=900)  # fmt: skip
        except subprocess.TimeoutExpired:
            return True  # as mutmut counts a timeout: the mutant hangs a test
        return result.returncode == 1  # 1: a test failed (other codes: could not run)

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(names, pool.map(killed, names)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scope", choices=sorted(SCOPES))
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep build/mutate/<scope>/mutants and try only the mutants left",
    )
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--sample", type=int, default=0, help="try this many mutants drawn at random (0: all)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample's draw")
    parser.add_argument(
        "--recheck",
        action="store_true",
        help="with --sample: run survivors against their tests' whole files",
    )
    args = parser.parse_args(argv)

    work = ROOT / "build" / "mutate" / args.scope
    prepare(args.scope, work, args.resume)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.setdefault("TORCHFORMER_DATA", str(ROOT.parent / "shared" / "data"))
    mutmut = [sys.executable, "-m", "mutmut"]
    if args.sample:
        result = run_sample(mutmut, work, env, args)
        if args.recheck:
            record = json.loads((work / f"sample-seed{args.seed}.json").read_text())
            left = [n for n, status in record["status"].items() if status != "killed"]
            again = recheck(mutmut, work, env, left, args.max_children)
            record["recheck"] = again
            (work / f"sample-seed{args.seed}.json").write_text(json.dumps(record, indent=1))
            killed = result.get("killed", 0) + sum(again.values())
            low, high = wilson(killed, result["sample"])
            result |= {"killed_with_recheck": killed,
                       "killed_with_recheck_pct": round(100 * killed / result["sample"], 1),
                       "killed_with_recheck_pct_95ci": [round(100 * low, 1), round(100 * high, 1)]}  # fmt: skip
        print(json.dumps(result))
        return 0
    # mutmut exits non-zero when mutants survive; the stats below are the result.
    subprocess.run([*mutmut, "run", "--max-children", str(args.max_children)], cwd=work, env=env)
    subprocess.run([*mutmut, "export-cicd-stats"], cwd=work, env=env, check=True)
    stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
    # Killed over every mutant made: timeouts, mutants no test reaches and mutants not
    # tried yet (an interrupted run) all count against the score.
    pct = 100.0 * stats["killed"] / max(stats["total"], 1)
    print(json.dumps({"scope": args.scope, **stats, "killed_pct": round(pct, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
