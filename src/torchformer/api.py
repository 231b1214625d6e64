"""The public API: ``load()``, the types of what it returns, and ``train()``.

    from torchformer.api import load
    clf = load("runs/imdb-minilm")            # a run, its best/, or an HF directory
    clf.predict(["great film", "dull"])

This module sits above ``tasks/`` and below ``viz/``, ``export/``, ``serve/``,
``bench/`` and ``cli/`` (DESIGN.md, "Layers"): those use a loaded model through
the names exported here and never import a task's internals.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torchformer.checkpoints.hf import resolve_model_dir
from torchformer.config import load_config
from torchformer.io import recover_dir
from torchformer.tasks.classifier import SIDECAR_NAME, InferenceSettings, TextClassifier
from torchformer.tasks.image_classifier import ImageClassifier, ImageSettings, Normalization
from torchformer.tasks.registry import task_module, task_of_model_dir
from torchformer.tasks.translator import Translator, generate_ids

__all__ = [
    "SIDECAR_NAME",
    "ImageClassifier",
    "ImageSettings",
    "InferenceSettings",
    "Normalization",
    "TextClassifier",
    "Translator",
    "generate_ids",
    "load",
    "task_config",
    "train",
]


def load(path: str | os.PathLike, **overrides: Any) -> Any:
    """Load a trained run or model directory (a run, its ``best/``, or an HF layout directory).

    The task is the one the directory records (``torchformer.json`` / ``translation.json``),
    or, for a plain Hugging Face directory, the one task that claims its ``model_type``.
    Returns that task's object: a ``TextClassifier`` for classification, an
    ``ImageClassifier`` for image classification, a ``Translator`` for translation.

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
