"""Combining trained text classifiers: ensembles (probability averaging) and checkpoint averaging.

- An ensemble directory holds ``ensemble.json``: the member model directories (a run's
  ``best/``, stored relative to the ensemble directory when possible), optional weights
  and the task. ``EnsembleClassifier`` answers with the ``TextClassifier`` inference API
  (``labels``, ``clean``, ``predict_proba``, ``predict``); its probabilities are the
  weighted mean of its members' (Dietterich 2000, "Ensemble Methods in Machine
  Learning"). Each member cleans, truncates and tokenizes the texts with its own saved
  preprocessor, so members with different tokenizers or max lengths combine. Members
  must share the label set; columns are aligned by label name.
- Checkpoint averaging (Vaswani et al. 2017, 6.1): ``average_run`` writes a normal
  classifier model directory whose weights are the mean of a run's last N checkpoints
  up to its best step (the window translation's ``averaged/`` uses), with the run's
  tokenizer and preprocessing settings.

    write_ensemble("runs/ens", ["runs/seed1", "runs/seed2"], weights=[1, 2])
    torchformer.load("runs/ens").predict(["a fine film"])

Shapes: N texts, C classes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from torchformer.config import read_yaml
from torchformer.io import atomic_write_text, recover_dir, replace_dir
from torchformer.tasks.classifier import TextClassifier, predictions_of, validate_texts
from torchformer.tasks.registry import ENSEMBLE_FILE, task_of_model_dir

__all__ = [
    "AVERAGING_FILE",
    "ENSEMBLE_FILE",
    "EnsembleClassifier",
    "average_run",
    "member_model_dir",
    "read_ensemble",
    "write_ensemble",
]

AVERAGING_FILE = "averaging.json"  # what an averaged model directory was made from


def member_model_dir(path: str | os.PathLike) -> Path:
    """The classifier model directory of ``path``: a run's ``best/`` or a model directory.

    Raises:
        FileNotFoundError: no such directory, or no model in it.
        ValueError: an ensemble directory (ensembles do not nest), or a model of
            another task.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run or model directory")
    recover_dir(path / "best")  # a crash while the run replaced best/
    model_dir = path / "best" if (path / "best" / "config.json").is_file() else path
    if (model_dir / ENSEMBLE_FILE).is_file():
        raise ValueError(f"{model_dir} is an ensemble; list its members instead (no nesting)")
    task = task_of_model_dir(model_dir)
    if task != "classification":
        raise ValueError(f"{model_dir} is a {task} model; an ensemble takes text classifiers")
    return model_dir


def _normalized_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Weights summing to 1 (equal when None); each must be finite and positive."""
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} ensemble members; give one per member")
    bad = [w for w in weights if not (math.isfinite(w) and w > 0)]
    if bad:
        raise ValueError(f"ensemble weights must be finite and positive, got {bad}")
    total = sum(weights)
    return [w / total for w in weights]


class EnsembleCleaner:
    """What ``evaluate`` reads as a classifier's ``cleaner``: members clean with their own
    steps inside ``predict_proba``, so the texts stay as given; a text that any member's
    cleaning empties is reported by index."""

    def __init__(self, members: Sequence[TextClassifier]) -> None:
        self.members = list(members)
        self.steps = list(dict.fromkeys(s for m in self.members for s in m.cleaner.steps))

    def clean_and_find_empty(self, texts) -> tuple[list[str], list[int]]:
        """The texts unchanged, and the indices of those some member's cleaning empties."""
        texts = list(texts)
        empty: set[int] = set()
        for member in self.members:
            empty.update(member.cleaner.clean_and_find_empty(texts)[1])
        return texts, sorted(empty)


class EnsembleClassifier:
    """Text classifiers whose probabilities are averaged (weighted), ready for ``predict()``.

    Args:
        members: the loaded classifiers (any tokenizers and preprocessing).
        weights: one positive weight per member (normalised to sum to 1; default equal).
        names: how errors and ``ensemble.json`` name the members (default ``member 0``, ...).
        path: the ensemble directory it was loaded from, if any.

    Raises:
        ValueError: fewer than two members, bad weights, or a member whose label set
            differs from the first member's (naming the member and the labels).
    """

    backend = "pytorch"

    def __init__(
        self,
        members: Sequence[TextClassifier],
        weights: Sequence[float] | None = None,
        *,
        names: Sequence[str] | None = None,
        path: Path | None = None,
    ) -> None:
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
        self.members = list(members)
        self.names = [f"member {i}" for i in range(len(members))] if names is None else list(names)
        self.weights = _normalized_weights(weights, len(self.members))
        self.path = path
        self.labels = list(self.members[0].labels)
        for name, member in zip(self.names[1:], self.members[1:]):
            if sorted(member.labels) != sorted(self.labels):
                only_member = sorted(set(member.labels) - set(self.labels))
                only_first = sorted(set(self.labels) - set(member.labels))
                raise ValueError(
                    f"ensemble member {name}: labels {member.labels} differ from those of "
                    f"{self.names[0]} {self.labels} (only in {name}: {only_member}; only in "
                    f"{self.names[0]}: {only_first}); members must share one label set"
                )
        # Column j of the ensemble is column orders[i][j] of member i (aligned by name).
        self.orders = [[m.labels.index(label) for label in self.labels] for m in self.members]
        self.cleaner = EnsembleCleaner(self.members)

    @classmethod
    def from_dir(cls, path: str | os.PathLike, **overrides: Any) -> EnsembleClassifier:
        """Load an ensemble directory (``ensemble.json``); ``overrides`` go to every member
        (model config fields, e.g. ``attn_impl="sdpa"``)."""
        path = Path(path)
        member_dirs, weights, names = read_ensemble(path)
        members = [TextClassifier.from_dir(d, **overrides) for d in member_dirs]
        return cls(members, weights, names=names, path=path)

    def clean(self, texts: list[str]) -> list[str]:
        """The texts as given, once every member's cleaning leaves each of them non-empty;
        else the ``ValueError`` of the first member that empties one (naming its index)."""
        texts = validate_texts(texts)
        for member in self.members:
            member.clean(texts)
        return texts

    @torch.inference_mode()
    def predict_proba(
        self,
        texts: list[str] | str,
        *,
        batch_size: int = 32,
        cleaned: bool = False,
        return_members: bool = False,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Class probabilities (N, C) in ``labels`` order: the weighted mean of the
        members'. ``cleaned`` is accepted for the ``TextClassifier`` contract: the texts
        ``clean()`` returns are the texts as given, and each member cleans them itself.
        With ``return_members``: also each member's own probabilities (N, C), in
        ``labels`` order (what ``evaluate`` scores the members by, in the same pass)."""
        texts = validate_texts(texts)
        probs = torch.zeros(len(texts), len(self.labels))
        members = []
        for member, weight, order in zip(self.members, self.weights, self.orders):
            member_probs = member.predict_proba(texts, batch_size=batch_size)[:, order]  # (N, C)
            probs += weight * member_probs
            members.append(member_probs)
        return (probs, members) if return_members else probs

    def predict(self, texts: list[str] | str, *, batch_size: int = 32) -> list[dict]:
        """For each text: ``{"label", "confidence", "probabilities": {label: p}}``.

        Raises:
            TypeError / ValueError: a non-string text, or one that is empty (or empty
                after a member's cleaning), naming its index.
        """
        return predictions_of(self.predict_proba(texts, batch_size=batch_size), self.labels)


def read_ensemble(path: str | os.PathLike) -> tuple[list[Path], list[float] | None, list[str]]:
    """The member model directories (resolved against ``path``), weights and stored names.

    Raises:
        FileNotFoundError: no ``ensemble.json``, or a member directory is missing.
        ValueError: the file is not a valid ensemble description.
    """
    path = Path(path)
    spec_file = path / ENSEMBLE_FILE
    if not spec_file.is_file():
        raise FileNotFoundError(f"{path}: no {ENSEMBLE_FILE}; not an ensemble directory")
    try:
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{spec_file}: not valid JSON ({e})") from e
    members = spec.get("members") if isinstance(spec, dict) else None
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise ValueError(f"{spec_file}: members: expected a list of model directories")
    weights = spec.get("weights")
    if weights is not None and not (
        isinstance(weights, list) and all(isinstance(w, (int, float)) for w in weights)
    ):
        raise ValueError(f"{spec_file}: weights: expected a list of numbers or null")
    dirs = [path / m for m in members]  # an absolute member stays absolute
    for name, d in zip(members, dirs):
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"{spec_file}: member {name}: no model directory at {d}")
    return dirs, weights, members


def _stored_path(member: Path, ensemble_dir: Path) -> str:
    """``member`` relative to the ensemble directory when possible (the pair can move
    together), else absolute."""
    try:
        return os.path.relpath(member.resolve(), ensemble_dir.resolve())
    except ValueError:  # another drive (Windows): no relative path
        return str(member.resolve())


def write_ensemble(
    out_dir: str | os.PathLike,
    members: Sequence[str | os.PathLike],
    *,
    weights: Sequence[float] | None = None,
    overwrite: bool = False,
) -> EnsembleClassifier:
    """Write an ensemble directory (``ensemble.json``) over ``members`` and return it loaded.

    Args:
        out_dir: the directory to write.
        members: run directories (their ``best/``) or classifier model directories.
        weights: one positive weight per member (default: equal).
        overwrite: replace an existing ``out_dir``.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is off.
        ValueError: see :class:`EnsembleClassifier` and :func:`member_model_dir`.
    """
    out = Path(out_dir)
    member_dirs = [member_model_dir(m) for m in members]
    _check_output(out, [Path(m) for m in members] + member_dirs, overwrite=overwrite)
    names = [str(m) for m in members]
    loaded = [TextClassifier.from_dir(d) for d in member_dirs]
    ensemble = EnsembleClassifier(loaded, weights, names=names)  # checks labels and weights
    spec = {
        "task": "classification",
        "combine": "weighted mean of the members' probabilities",
        "members": [_stored_path(d, out) for d in member_dirs],
        "weights": [float(w) for w in weights] if weights is not None else None,
    }
    with replace_dir(out) as tmp:
        atomic_write_text(tmp / ENSEMBLE_FILE, json.dumps(spec, indent=2) + "\n")
    ensemble.path = out
    return ensemble


def _check_output(out: Path, inputs: Sequence[Path], *, overwrite: bool) -> None:
    """Refuse to write ``out`` over what it is made from, or over a directory that is
    not one of ours (an ensemble or averaged model) even with ``overwrite``.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is off, or it holds something
            other than an earlier ensemble / averaged model.
        ValueError: ``out`` is, contains or lies inside one of ``inputs``.
    """
    target = out.resolve()
    for source in inputs:
        src = source.resolve()
        if target == src or src.is_relative_to(target) or target.is_relative_to(src):
            raise ValueError(f"--out {out}: would overwrite {source}, which it is built from")
    if not out.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    ours = (out / ENSEMBLE_FILE).is_file() or (out / AVERAGING_FILE).is_file()
    if not ours and any(out.iterdir()):
        raise FileExistsError(
            f"{out} holds files that are not an ensemble or averaged model; not replaced"
        )


# ----------------------------------------------------------------------- checkpoint averaging
def checkpoint_paths(run_dir: Path) -> dict[int, Path]:
    """``{step: path}`` of the run's complete checkpoints (``step-N.pt`` or ``.dcp``)."""
    found = {}
    for path in (run_dir / "checkpoints").glob("step-*"):
        stem, _, suffix = path.name.partition(".")
        if suffix in ("pt", "dcp") and stem[5:].isdigit():
            found[int(stem[5:])] = path
    return dict(sorted(found.items()))


def best_step_of(run_dir: Path) -> int | None:
    """The step whose validation saved ``best/``: the run's early stopping replayed over
    the ``val`` rows of ``metrics.jsonl`` (None when it never validated)."""
    from torchformer.train.early_stopping import EarlyStopping

    metric = read_yaml(run_dir / "config.yaml").get("train", {}).get("metric", "accuracy")
    stopper = EarlyStopping(metric, mode="min" if metric == "loss" else "max", patience=1)
    log = run_dir / "metrics.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines() if log.is_file() else []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # a line cut by a crash
            continue
        if row.get("split") == "val" and metric in row:
            stopper.update(row[metric], step=row["step"])
    return stopper.best_step


def average_run(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, last: int, overwrite: bool = False
) -> Path:
    """Write a classifier model directory whose weights are the mean of the run's last
    ``last`` checkpoints up to its best step, with ``best/``'s tokenizer and settings.

    Raises:
        FileNotFoundError: ``run_dir`` is not a finished run (no ``best/``).
        FileExistsError: ``out_dir`` exists and ``overwrite`` is off.
        ValueError: ``last`` < 2, fewer than ``last`` checkpoints kept up to the best
            step (the message says which are there and how to keep more), or a run of
            another task.
    """
    from torchformer.tasks.translate import average_checkpoints, averaging_window

    run, out = Path(run_dir), Path(out_dir)
    if last < 2:
        raise ValueError(f"--last {last}: averaging needs at least 2 checkpoints")
    if not (run / "best" / "config.json").is_file():
        raise FileNotFoundError(f"{run}: no best/ model; expected a finished classification run")
    best = member_model_dir(run)
    _check_output(out, [run, best], overwrite=overwrite)
    paths = checkpoint_paths(run)
    best_step = best_step_of(run)
    window = averaging_window(list(paths), last, best_step)
    if len(window) < last:
        raise ValueError(
            f"{run}: {len(window)} checkpoint(s) up to the best step {best_step} "
            f"(steps {window}; all kept: {list(paths)}), {last} needed; train with "
            f"--train.keep_checkpoints (at least {last} plus the patience) and "
            "--train.eval_every or --train.checkpoint_every so that enough are kept"
        )
    averaged = average_checkpoints([paths[s] for s in window])
    if any(".lora_A." in key for key in averaged):
        raise ValueError(
            f"{run}: a LoRA run (model.lora_r); the mean of the adapters' A and B matrices "
            "is not the mean of their updates B·A, so its checkpoints are not averaged"
        )
    clf = TextClassifier.from_dir(best)
    clf.model.load_state_dict(averaged)
    record = {"run": str(run.resolve()), "steps": window, "best_step": best_step}
    with replace_dir(out) as tmp:
        clf.save(tmp)
        atomic_write_text(tmp / AVERAGING_FILE, json.dumps(record, indent=2) + "\n")
    return out
