"""Ablations: one config trained as is and with each change, over several seeds, in one table.

    torchformer ablate imdb-demo --variants frozen="--model.freeze_encoder true" \\
        lr3="--train.lr 3e-4" --seeds 3 --out runs/ablation-demo

Every (variant, seed) is one run of ``torchformer.api.train`` on ``task_config(config,
overrides)``: the baseline (no overrides) and each variant, on the same data and
budget, the seed set through ``train.seed`` (the config's seed, +1, +2, ...). Each run
lives in ``OUT/VARIANT/seed-N`` and, once finished, holds ``ablation_run.json`` (test
accuracy and macro F1 from its ``eval/test/metrics.json``, wall time, trainable
parameters); a rerun skips those, resumes an interrupted one from its checkpoint, and
refuses a finished run whose overrides differ from the ones asked for.

``ablation.json`` and ``ablation.md`` give per variant the mean ± sample standard
deviation over seeds and an honest reading against the baseline: "within noise" when
|mean − baseline mean| ≤ the larger of the two standard deviations, else "gain" or
"loss" (with a single seed there is no estimate of the noise, and no reading). Since every
variant's seed-N run draws the same data sample as the baseline's seed-N run, each row
also gives the paired difference to the baseline (mean ± std over seeds of the per-seed
differences), which removes the spread that comes from the samples themselves.

With ``--ensemble NAME ...`` a variant's seed runs are also combined into one ensemble
(probability averaging, ``OUT/NAME/ensemble``), scored on each seed's own test sample
(``api.evaluate_on_config``), and reported as the row ``NAME-ensemble``: paired with
the baseline run of the same seed, at the cost of training all its members.
"""

from __future__ import annotations

import json
import re
import shlex
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from torchformer import api
from torchformer.config import read_yaml
from torchformer.io import atomic_write_text

__all__ = [
    "BASELINE",
    "ENSEMBLE_SUFFIX",
    "RUN_RECORD",
    "Variant",
    "format_markdown",
    "parse_variant",
    "reading",
    "run_ablation",
    "summarize",
    "write_ablation",
]

BASELINE = "baseline"
RUN_RECORD = "ablation_run.json"
ENSEMBLE_DIR = "ensemble"  # OUT/VARIANT/ensemble: the ensemble of the variant's seed runs
ENSEMBLE_RECORD = "ablation_ensemble.json"
ENSEMBLE_SUFFIX = "-ensemble"
METRICS = ("accuracy", "macro_f1")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class Variant:
    """A named set of dotted config overrides (``["--train.lr", "3e-4"]``)."""

    name: str
    overrides: list[str] = field(default_factory=list)


def parse_variant(text: str) -> Variant:
    """``NAME=--train.x v --model.y w`` as a :class:`Variant` (the value split as a shell would).

    Raises:
        ValueError: no ``=``, a name that is not a plain folder name or is "baseline",
            or no overrides.
    """
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not _NAME.match(name):
        raise ValueError(
            f'--variants {text!r}: expected NAME="--dotted.key value ..." with NAME a plain '
            "name (letters, digits, _ . + -)"
        )
    if name == BASELINE:
        raise ValueError(f"--variants {text!r}: {BASELINE!r} is the run without overrides")
    overrides = shlex.split(value)
    if not overrides or not overrides[0].startswith("--"):
        raise ValueError(f"--variants {text!r}: expected overrides like --train.lr 3e-4")
    return Variant(name, overrides)


def _task_of(config_path: Path) -> str:
    task = read_yaml(config_path).get("task", "classification")
    if not isinstance(task, str):
        raise ValueError(f"{config_path}: task: expected a task name, found {task!r}")
    return task


def _test_metrics(run_dir: Path) -> dict[str, float]:
    path = run_dir / "eval" / "test" / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir}: no eval/test/metrics.json; an ablation compares test metrics, so the "
            "config needs a test split (data.test_file, or IMDB's test set)"
        )
    metrics = json.loads(path.read_text(encoding="utf-8"))
    return {k: float(metrics[k]) for k in METRICS}


def _train_seconds(run_dir: Path) -> float | None:
    """The loop's own training time (forward, backward, steps; summed over resumes)."""
    path = run_dir / "metrics.jsonl"
    seconds = None
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("split") == "summary" and "train_seconds" in row:
            seconds = float(row["train_seconds"])
    return seconds


def _run_one(
    task: str,
    config_path: Path,
    variant: Variant,
    seed: int,
    run_dir: Path,
    common: list[str],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Train (or resume) one (variant, seed) run and write its ``ablation_run.json``."""
    overrides = [*common, *variant.overrides]
    config = api.task_config(
        task, config_path, [*overrides, "--train.seed", str(seed), "--run_dir", str(run_dir)]
    )
    # interrupted before its record (a run writes its tokenizer before config.yaml)
    resumed = run_dir.is_dir() and any(run_dir.iterdir())
    log(f"{variant.name} seed {seed}: {'resuming' if resumed else 'training'} in {run_dir}")
    start = time.perf_counter()
    api.train(config, resume=resumed)
    wall_s = time.perf_counter() - start
    record = {
        "variant": variant.name,
        "seed": seed,
        "overrides": overrides,
        "run_dir": str(run_dir),
        "test": _test_metrics(run_dir),
        "wall_s": wall_s,
        "resumed": resumed,  # wall_s then counts this process only; train_s all of it
        "train_s": _train_seconds(run_dir),
        "trainable_parameters": api.trainable_parameters(run_dir),
    }
    atomic_write_text(run_dir / RUN_RECORD, json.dumps(record, indent=2) + "\n")
    return record


def _finished(run_dir: Path, variant: Variant, seed: int, common: list[str]) -> dict | None:
    """The record of a finished run, or None; a finished run made with other overrides
    is an error (its numbers would be filed under the wrong variant)."""
    path = run_dir / RUN_RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    wanted = [*common, *variant.overrides]
    if record.get("overrides") != wanted or record.get("seed") != seed:
        raise ValueError(
            f"{path}: this run was made with overrides {record.get('overrides')} and seed "
            f"{record.get('seed')}, not {wanted} and {seed}; use another --out or remove "
            f"{run_dir}"
        )
    return record


def run_ablation(
    config_path: str | Path,
    variants: Sequence[Variant],
    *,
    seeds: int = 3,
    out_dir: str | Path | None = None,
    common: Sequence[str] = (),
    ensembles: Sequence[str] = (),
    log: Callable[[str], None] = print,
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Train the baseline and every variant with ``seeds`` seeds (skipping finished runs)
    and return the report (also written as ``OUT/ablation.json`` and ``ablation.md``).

    Args:
        config_path: the YAML config every run starts from.
        variants: the changes to compare with the baseline (unique names).
        seeds: runs per variant; seeds are the config's ``train.seed`` + 0, 1, ...
        out_dir: where the runs and the table go (default ``runs/ablation-CONFIG``).
        common: overrides applied to every run, the baseline included.
        ensembles: variants (``baseline`` included) whose seed runs are also combined
            into an ensemble and reported as the row ``NAME-ensemble``.
        log: progress messages.
        command: the command line that asked for it (recorded).

    Raises:
        ValueError: ``seeds`` < 1, duplicate variant names, a bad config or override, a
            finished run made with other overrides, or an ensemble of an unknown variant
            or of a single seed.
    """
    config_path = Path(config_path)
    names = [v.name for v in variants]
    if len(set(names)) != len(names) or BASELINE in names:
        raise ValueError(f"variant names must be unique and not {BASELINE!r}: {names}")
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: at least one seed")
    unknown = sorted(set(ensembles) - {BASELINE, *names})
    if unknown:
        raise ValueError(f"--ensemble {unknown}: not among the variants {[BASELINE, *names]}")
    if ensembles and seeds < 2:
        raise ValueError("--ensemble needs --seeds 2 or more (an ensemble of the seed runs)")
    task, common = _task_of(config_path), list(common)
    base_seed = api.task_config(task, config_path, common).train.seed  # checks the overrides
    for v in variants:  # every variant is checked before the first run
        api.check_config(api.task_config(task, config_path, [*common, *v.overrides]))
    out = Path(out_dir) if out_dir else Path("runs") / f"ablation-{config_path.stem}"
    all_variants = [Variant(BASELINE, []), *variants]
    seed_list = [base_seed + i for i in range(seeds)]
    runs = []
    for variant in all_variants:
        for seed in seed_list:
            run_dir = out / variant.name / f"seed-{seed}"
            record = _finished(run_dir, variant, seed, common)
            if record is not None:
                log(f"{variant.name} seed {seed}: finished earlier, skipped")
            else:
                record = _run_one(task, config_path, variant, seed, run_dir, common, log)
            runs.append(record)
    rows = list(all_variants)
    for variant in all_variants:
        if variant.name in ensembles:
            members = [r for r in runs if r["variant"] == variant.name]
            runs += _ensemble_runs(task, config_path, variant, members, out, common, log)
            rows.append(Variant(variant.name + ENSEMBLE_SUFFIX, variant.overrides))
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": list(command) if command else None,
        "config": str(config_path),
        "task": task,
        "common_overrides": common,
        "seeds": seed_list,
        "variants": summarize(runs, rows),
        "runs": runs,
    }
    write_ablation(report, out)
    return report


def _ensemble_runs(
    task: str,
    config_path: Path,
    variant: Variant,
    members: list[dict[str, Any]],
    out: Path,
    common: list[str],
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """The ensemble of ``variant``'s seed runs, scored on each seed's test sample: one
    record per seed, like a run's (wall time and trainable parameters: all members')."""
    ens_dir = out / variant.name / ENSEMBLE_DIR
    record_file = ens_dir / ENSEMBLE_RECORD
    member_dirs = [m["run_dir"] for m in members]
    if record_file.is_file():
        saved = json.loads(record_file.read_text(encoding="utf-8"))
        if saved.get("members") == member_dirs:
            log(f"{variant.name}{ENSEMBLE_SUFFIX}: scored earlier, skipped")
            return saved["runs"]
    log(f"{variant.name}{ENSEMBLE_SUFFIX}: {len(members)} members, scoring on each seed's test")
    ensemble = api.write_ensemble(ens_dir, member_dirs, overwrite=True)
    params = [m["trainable_parameters"] for m in members]
    records = []
    for member in members:
        config = api.task_config(
            task, config_path, [*common, *variant.overrides, "--train.seed", str(member["seed"])]
        )
        metrics = api.evaluate_on_config(ensemble, config, "test")
        records.append(
            {
                "variant": variant.name + ENSEMBLE_SUFFIX,
                "seed": member["seed"],  # the test sample of this seed
                "overrides": member["overrides"],
                "run_dir": str(ens_dir),
                "test": {k: float(metrics[k]) for k in METRICS},
                # each member on this same sample, from the same pass: what averaging adds
                "members_test": [
                    {k: float(m[k]) for k in METRICS} for m in metrics.get("members", [])
                ],
                "wall_s": sum(m["wall_s"] for m in members),
                "train_s": None,
                "trainable_parameters": None if None in params else sum(params),
            }
        )
    atomic_write_text(
        record_file,
        json.dumps({"members": member_dirs, "runs": records}, indent=2) + "\n",
    )
    return records


def paired_difference(
    runs: list[dict[str, Any]], name: str, metric: str
) -> dict[str, float | None] | None:
    """Mean ± std over seeds of (``name``'s metric − the baseline's) for the seeds both
    have; None when they share none."""
    base = {r["seed"]: r["test"][metric] for r in runs if r["variant"] == BASELINE}
    diffs = [
        r["test"][metric] - base[r["seed"]]
        for r in runs
        if r["variant"] == name and r["seed"] in base
    ]
    if not diffs:
        return None
    mean, std = _mean_std(diffs)
    return {"mean": mean, "std": std}


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def reading(mean: float, std: float | None, base_mean: float, base_std: float | None) -> str:
    """ "gain" / "loss" when the difference to the baseline exceeds the larger standard
    deviation, else "within noise"; "no estimate (1 seed)" without a deviation."""
    if std is None or base_std is None:
        return "no estimate (1 seed)"
    if abs(mean - base_mean) <= max(std, base_std):
        return "within noise"
    return "gain" if mean > base_mean else "loss"


def summarize(runs: list[dict[str, Any]], variants: Sequence[Variant]) -> list[dict[str, Any]]:
    """Per variant (the baseline first): runs, mean ± std of each test metric, the
    reading against the baseline, mean wall time and the trainable parameters."""
    rows = []
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant.name]
        row: dict[str, Any] = {
            "variant": variant.name,
            "overrides": variant.overrides,
            "seeds": [r["seed"] for r in mine],
        }
        for metric in METRICS:
            mean, std = _mean_std([r["test"][metric] for r in mine])
            row[metric] = {"mean": mean, "std": std}
        row["paired_difference"] = {
            metric: paired_difference(runs, variant.name, metric) for metric in METRICS
        }
        row["wall_s"] = statistics.mean(r["wall_s"] for r in mine)
        params = sorted({r["trainable_parameters"] for r in mine}, key=lambda p: (p is None, p))
        row["trainable_parameters"] = params[0] if len(params) == 1 else params
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["reading"] = {
            metric: BASELINE
            if row is base
            else reading(
                row[metric]["mean"],
                row[metric]["std"],
                base[metric]["mean"],
                base[metric]["std"],
            )
            for metric in METRICS
        }
    return rows


def _pm(value: dict[str, float | None]) -> str:
    std = value["std"]
    return f"{value['mean']:.4f} ± {std:.4f}" if std is not None else f"{value['mean']:.4f}"


def _paired(row: dict[str, Any]) -> str:
    diff = (row.get("paired_difference") or {}).get("accuracy")
    if row["variant"] == BASELINE or diff is None:
        return "—"
    std = f" ± {100 * diff['std']:.2f}" if diff["std"] is not None else ""
    return f"{100 * diff['mean']:+.2f}{std}"


def _params(value: Any) -> str:
    if isinstance(value, list):
        return " / ".join(_params(v) for v in value)
    return "?" if value is None else f"{value:,}"


def format_markdown(report: dict[str, Any]) -> str:
    """``ablation.md``: the table and how to read it."""
    seeds = report["seeds"]
    lines = [
        f"# Ablation of {report['config']}",
        "",
        f"Task {report['task']}; seeds {', '.join(map(str, seeds))}; overrides of every run: "
        f"{' '.join(report['common_overrides']) or 'none'}. Test metrics of each run's best "
        "model, mean ± sample standard deviation over seeds.",
        "",
        "| variant | overrides | runs | test accuracy | test macro F1 | reading (accuracy) "
        "| reading (macro F1) | Δ accuracy, paired | wall time (s) | trainable parameters |",
        "|---|---|---:|---|---|---|---|---|---:|---:|",
    ]
    for row in report["variants"]:
        overrides = " ".join(row["overrides"]) or "—"
        lines.append(
            f"| {row['variant']} | `{overrides}` | {len(row['seeds'])} | {_pm(row['accuracy'])} "
            f"| {_pm(row['macro_f1'])} | {row['reading']['accuracy']} "
            f"| {row['reading']['macro_f1']} | {_paired(row)} | {row['wall_s']:.1f} "
            f"| {_params(row['trainable_parameters'])} |"
        )
    lines += [
        "",
        "Reading: *within noise* when |mean − baseline mean| ≤ the larger of the two standard "
        "deviations; otherwise *gain* or *loss*. With few seeds this is a rough screen, not "
        "a significance test. *Δ accuracy, paired*: the mean ± std over seeds of (this "
        "run − the baseline run of the same seed, which drew the same data sample), in "
        "points.",
        "",
    ]
    if any(row["variant"].endswith(ENSEMBLE_SUFFIX) for row in report["variants"]):
        lines += [
            f"*NAME{ENSEMBLE_SUFFIX}*: the probability average of NAME's seed runs, scored on "
            "each seed's test sample; its wall time and trainable parameters are all its "
            "members' together.",
            "",
        ]
    if report.get("command"):
        lines += [f"Command: `{shlex.join(report['command'])}`", ""]
    return "\n".join(lines)


def write_ablation(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``ablation.json`` and ``ablation.md`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = atomic_write_text(out / "ablation.json", json.dumps(report, indent=2) + "\n")
    md_path = atomic_write_text(out / "ablation.md", format_markdown(report))
    return json_path, md_path
