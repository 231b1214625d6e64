"""Fault injection (issue 18): a tiny classification run SIGKILLed at seeded random points —
inside a checkpoint write, inside the replacement of ``best/``, inside a metrics append, in
the middle of an optimizer step — then resumed with ``torchformer train --resume``, ends with
the weights of a run never interrupted, bit for bit: ``best/`` and the last checkpoint's
model state, and the same test metrics and logged training curve.

Each trial is two processes (``kill_points.py`` installs the kill, see there): the run killed
at its point, then the resume to the end. One trial per kind of kill (7) runs with the unit
tests; ``KILL_RESUME_TRIALS`` (20, a parameter of this module) take about three minutes on 2
cores, hence ``slow``. Records ``kill_resume_trials`` and ``kill_resume_identical_pct``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import deploy_fixtures
import pytest
import torch
from fuzzing import record_stats
from kill_points import PHASES, POINTS
from safetensors.torch import load_file

from torchformer.text.tokenizer import Tokenizer
from torchformer.train.checkpoint import load_checkpoint

KILL_RESUME_TRIALS = 20
SEED = 18
KILLER = Path(__file__).with_name("kill_points.py")


def _is_timing(key: str) -> bool:
    """Values that differ from run to run: wall-clock and CPU times and rates, not results."""
    return key == "time" or key.endswith(("_s", "_seconds")) or "_per_" in key


def _config(tmp: Path, run_dir: Path) -> Path:
    """A tiny from-scratch run: 27 steps, a checkpoint every 2, an evaluation every 4, dropout
    (so that the random state must be restored too), best/ on the validation loss."""
    data = tmp / "data"
    if not data.is_dir():
        data.mkdir()
        deploy_fixtures.write_jsonl(deploy_fixtures.toy_records(96, seed=0), data / "train.jsonl")
        deploy_fixtures.write_jsonl(deploy_fixtures.toy_records(32, seed=1), data / "test.jsonl")
        # One tokenizer for every run: WordPiece breaks ties differently in each process.
        texts = [t for t, _ in deploy_fixtures.toy_records(96, seed=0)]
        Tokenizer.train_wordpiece(texts, vocab_size=200, min_frequency=1).save(data / "tok.json")
    config = tmp / f"{run_dir.name}.yaml"
    config.write_text(
        "task: classification\n"
        f"run_dir: {run_dir}\n"
        "report: false\n"
        f"data: {{source: {data / 'train.jsonl'}, test_file: {data / 'test.jsonl'}, "
        "val_fraction: 0.25, max_length: 32}\n"
        "model: {base: scratch, preset: tiny, pooling: mean, classifier_dropout: 0.3}\n"
        f"tokenizer: {{path: {data / 'tok.json'}}}\n"
        "train: {epochs: 3, batch_size: 8, lr: 0.003, warmup_ratio: 0.1, progress: false,\n"
        "        patience: 10, metric: loss, checkpoint_every: 2, eval_every: 4, threads: 1}\n"
    )
    return config


def _torchformer(plan: dict, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(KILLER), json.dumps(plan), *args],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def _outcome(run_dir: Path) -> dict:
    """What must not depend on interruptions: the weights, test metrics, training curve."""
    last = sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1]
    state = load_checkpoint(last)
    curve = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        curve.append({k: v for k, v in record.items() if not _is_timing(k)})
    return {
        "best": load_file(run_dir / "best" / "model.safetensors"),
        "last_step": state["step"],
        "last": state["model"],
        "test": json.loads((run_dir / "eval" / "test" / "metrics.json").read_text()),
        "curve": curve,
    }


def _differences(a: dict, b: dict) -> list[str]:
    out = [k for k in ("last_step", "test", "curve") if a[k] != b[k]]
    for part in ("best", "last"):
        if a[part].keys() != b[part].keys():
            out.append(f"{part}: other tensors")
        out += [f"{part}/{k}" for k in a[part] if k in b[part] and not torch.equal(a[part][k], b[part][k])]  # fmt: skip
    return out


def _left_half_done(plan: dict, run_dir: Path) -> bool:
    """Whether the kill left the write it interrupted visibly unfinished (where it can)."""
    point, phase = plan["point"], plan["phase"]
    if (point, phase) == ("checkpoint", "torn"):
        return any((run_dir / "checkpoints").glob(".step-*.pt.tmp-*"))
    if (point, phase) == ("best", "filled"):
        return (run_dir / ".best.tmp").is_dir()
    if (point, phase) == ("best", "swapping"):  # the old best/ set aside (or the first in place)
        first = plan["at"] == 1 and (run_dir / "best").is_dir()
        return first or ((run_dir / ".best.old").is_dir() and not (run_dir / "best").exists())
    if point == "metrics":
        return not (run_dir / "metrics.jsonl").read_text().endswith("\n")
    return True  # the checkpoint written but not pruned, a step half done: nothing to see


# Every kind of kill point in every phase, in turn.
KILLS = [(point, phase) for point in POINTS for phase in PHASES[point]]


def _trials(counts: dict, n: int) -> list[dict]:
    """``n`` seeded kill points: the kinds in turn, each at a random occurrence."""
    rng = random.Random(SEED)
    return [
        {"point": point, "phase": phase, "at": rng.randint(1, counts[point])}
        for point, phase in (KILLS[i % len(KILLS)] for i in range(n))
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict, dict]:
    """A run never interrupted: its directory, its outcome, how often it passed each point."""
    tmp = tmp_path_factory.mktemp("kill_resume")
    counts_file = tmp / "counts.json"
    done = _torchformer({"count": str(counts_file)}, "train", str(_config(tmp, tmp / "reference")))
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(counts_file.read_text())
    assert all(counts.get(p, 0) >= 2 for p in POINTS), counts  # every point is reached
    return tmp, _outcome(tmp / "reference"), counts


@pytest.mark.parametrize(
    "trials",
    [len(KILLS), pytest.param(KILL_RESUME_TRIALS, marks=pytest.mark.slow)],
    ids=lambda n: f"{n}-trials",
)
def test_runs_killed_anywhere_resume_to_the_same_weights(reference, trials):
    tmp, expected, counts = reference
    identical, failures = 0, []
    for i, plan in enumerate(_trials(counts, trials)):
        run_dir = tmp / f"trial-{trials}-{i}"
        config = str(_config(tmp, run_dir))
        killed = _torchformer(plan, "train", config)
        assert killed.returncode == -signal.SIGKILL, (plan, killed.stderr[-3000:])
        assert _left_half_done(plan, run_dir), plan
        resumed = _torchformer({}, "train", config, "--resume")
        if resumed.returncode != 0:
            failures.append(f"{plan}: resume failed: {resumed.stderr[-1500:]}")
            continue
        differences = _differences(expected, _outcome(run_dir))
        identical += not differences
        if differences:
            failures.append(f"{plan}: differs in {differences[:5]}")
        else:
            shutil.rmtree(run_dir)

    record_stats(
        kill_resume_trials=trials, kill_resume_identical_pct=round(100 * identical / trials, 2)
    )
    assert not failures, "\n".join(failures)


def test_the_trials_cover_every_kill_point_and_phase():
    counts = dict.fromkeys(POINTS, 30)
    plans = _trials(counts, len(KILLS))
    assert _trials(counts, len(KILLS)) == plans  # seeded
    assert [(p["point"], p["phase"]) for p in plans] == KILLS
    assert all(1 <= p["at"] <= 30 for p in _trials(counts, KILL_RESUME_TRIALS))
