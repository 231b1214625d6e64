"""The public API: ``load()``, the types of what it returns, and ``train()``.

    from torchformer.api import load
    clf = load("runs/imdb-minilm")            # a run, its best/, or an HF directory
    clf.predict(["great film", "dull"])

This module sits above ``tasks/`` and below ``viz/``, ``export/``, ``serve/``,
``bench/`` and ``cli/`` (DESIGN.md, "Layers"): those use a loaded model through
the names exported here and never import a task's internals.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torchformer.checkpoints.hf import resolve_model_dir
from torchformer.config import load_config, read_yaml
from torchformer.io import recover_dir
from torchformer.tasks.classifier import SIDECAR_NAME, InferenceSettings, TextClassifier
from torchformer.tasks.ensemble import EnsembleClassifier, write_ensemble
from torchformer.tasks.image_classifier import ImageClassifier, ImageSettings, Normalization
from torchformer.tasks.registry import ENSEMBLE_FILE, task_module, task_of_model_dir
from torchformer.tasks.translator import Translator, generate_ids

__all__ = [
    "SIDECAR_NAME",
    "EnsembleClassifier",
    "ImageClassifier",
    "ImageSettings",
    "InferenceSettings",
    "Normalization",
    "TextClassifier",
    "Translator",
    "check_config",
    "evaluate_on_config",
    "generate_ids",
    "load",
    "task_config",
    "train",
    "trainable_parameters",
    "write_ensemble",
]


def load(path: str | os.PathLike, **overrides: Any) -> Any:
    """Load a trained run or model directory (a run, its ``best/``, or an HF layout directory).

    The task is the one the directory records (``torchformer.json`` / ``translation.json``),
    or, for a plain Hugging Face directory, the one task that claims its ``model_type``.
    Returns that task's object: a ``TextClassifier`` for classification, an
    ``ImageClassifier`` for image classification, a ``Translator`` for translation, and
    an ``EnsembleClassifier`` for an ensemble directory (``ensemble.json``).

    Args:
        path: a run directory, a model directory, or a cached Hugging Face Hub name.
        overrides: model config fields to change (e.g. ``attn_impl="sdpa"``).

    Raises:
        FileNotFoundError: the path is neither a directory nor a cached hub name, or
            holds no ``config.json``.
        ValueError: the directory belongs to no torchformer task (e.g. a GPT-2 checkpoint).
        CheckpointError: the weights do not fit the task's model.
    """
    run_or_model = resolve_model_dir(path)
    if (run_or_model / ENSEMBLE_FILE).is_file():
        return EnsembleClassifier.from_dir(run_or_model, **overrides)
    recover_dir(run_or_model / "best")  # a crash while the run replaced best/
    best = run_or_model / "best"
    model_dir = best if (best / "config.json").is_file() else run_or_model
    # The task's own load() resolves the run again: classification takes best/, translation
    # the model the run selected (selected_model.json: best/ or averaged/).
    return task_module(task_of_model_dir(model_dir)).load(run_or_model, **overrides)


def task_config(
    task: str,
    path: str | os.PathLike | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
) -> Any:
    """The config of ``task`` (a registered task name) from a YAML file and dotted overrides.

    See :func:`torchformer.config.load_config` for the forms of ``overrides``.

    Raises:
        ValueError: an unknown task (naming the known ones), or a ``ConfigError``.
    """
    return load_config(task_module(task).CONFIG, path, overrides)


def train(config: Any, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Train the task ``config.task`` names (a config from :func:`task_config`);
    returns the run directory."""
    return task_module(config.task).train(config, resume=resume, overwrite=overwrite)


def check_config(config: Any) -> None:
    """Refuse settings the task of ``config`` cannot train with, before any run starts
    (a task module's ``check_config``, where it has one).

    Raises:
        ValueError: naming the config key at fault.
    """
    checker = getattr(task_module(config.task), "check_config", None)
    if checker is not None:
        checker(config)


def evaluate_on_config(
    model: Any, config: Any, split: str = "test", *, batch_size: int | None = None
) -> dict:
    """Metrics of a loaded model on a split of the data a task config describes, drawn
    exactly as a run with that config draws it (same files, same seeded samples).

    Classification only (a ``TextClassifier`` or an ``EnsembleClassifier``): used by
    ``torchformer ablate --ensemble`` to score an ensemble of seeds on each seed's
    own test sample.

    Raises:
        ValueError: a task without this evaluation, or a split the config lacks.
    """
    evaluate = getattr(task_module(config.task), "evaluate_on_config", None)
    if evaluate is None:
        raise ValueError(f"task {config.task!r} has no evaluation on a config's split")
    return evaluate(model, config, split, batch_size=batch_size)


def trainable_parameters(run_dir: str | os.PathLike) -> int | None:
    """How many parameters a run trained (those with ``requires_grad``).

    Read from the run's ``manifest.json`` when it records ``trainable_parameters``;
    otherwise a classification run's model is built again from its ``config.yaml`` as
    training built it (its saved tokenizer, frozen parts frozen) and counted. None for
    the other tasks when the manifest does not say.

    Raises:
        FileNotFoundError: ``run_dir`` holds no ``config.yaml``.
    """
    run_dir = Path(run_dir)
    manifest_file = run_dir / "manifest.json"
    if manifest_file.is_file():
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        for where in (manifest, manifest.get("extra") or {}):
            if isinstance(where.get("trainable_parameters"), int):
                return where["trainable_parameters"]
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml; not a run directory")
    if read_yaml(config_file).get("task", "classification") != "classification":
        return None
    from torchformer.tasks.classify import ClassificationTask, ClassifyConfig

    config = load_config(ClassifyConfig, config_file)
    config.run_dir = str(run_dir)  # its saved tokenizer, wherever the run was started from
    # As the loop prepares the model of a process that reads what rank 0 wrote.
    model = ClassificationTask(config).prepare(run_dir, resume=True, main=False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
