"""The task registry: task names → the package that implements them.

``torchformer train``, ``torchformer.load()``, ``evaluate`` and the shipped-config
test find a task here, by the name a config (``task:``) or a model directory
(``torchformer.json`` / ``translation.json``: ``"task"``) records; never by the
checkpoint's ``model_type`` alone (a GPT-2 directory is not a translator).

Each task module exposes:

- ``CONFIG``: the config dataclass (``task``, ``run_dir``, ``data``, ``model``, ``train``, ...);
- ``TASK``: the object the one training loop (``train.loop``) drives;
- ``train(config, *, resume=False, overwrite=False, stop_at_step=None) -> Path``;
- ``load(path, **overrides)``: a trained model directory (or run) ready for use.

Adding a task is one package plus one entry in ``TASKS``. Modules are imported
lazily so that ``torchformer --help`` and ``load()`` import only what they use.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

__all__ = ["ENSEMBLE_FILE", "TASKS", "TaskEntry", "get_task", "task_module", "task_of_model_dir"]

# An ensemble directory (``tasks.ensemble``) holds this file instead of weights: the
# member model directories and their weights; its ``"task"`` is the members' task.
ENSEMBLE_FILE = "ensemble.json"


@dataclass(frozen=True)
class TaskEntry:
    """Where a task lives and how a model directory says it belongs to it.

    Attributes:
        name: the value of ``task:`` in a config and of ``"task"`` in a model's sidecar.
        module: the module with ``CONFIG``, ``TASK``, ``train`` and ``load``.
        sidecar: the JSON file the task writes next to the weights (holds ``"task"``).
        model_types: ``config.json`` model types that mean this task when a directory
            has no sidecar (a plain Hugging Face directory).
    """

    name: str
    module: str
    sidecar: str
    model_types: tuple[str, ...] = ()


TASKS: dict[str, TaskEntry] = {
    entry.name: entry
    for entry in (
        TaskEntry(
            "classification",
            "torchformer.tasks.classify",
            "torchformer.json",
            ("bert", "roberta", "distilbert", "longformer", "big_bird"),
        ),
        TaskEntry(
            "language_model",
            "torchformer.tasks.language_model",
            "language_model.json",
            ("gpt2", "llama", "mistral", "qwen2"),
        ),
        TaskEntry(
            "image_classification",
            "torchformer.tasks.image_classify",
            "image_classification.json",
            ("vit",),
        ),
        TaskEntry("denoising", "torchformer.tasks.denoising", "denoising.json"),
        TaskEntry("masked_lm", "torchformer.tasks.masked_lm", "masked_lm.json"),
        TaskEntry(
            "translation",
            "torchformer.tasks.translate",
            "translation.json",
            ("torchformer-transformer", "torchformer-rnn"),
        ),
    )
}


def get_task(name: str) -> TaskEntry:
    """The registry entry of ``name``; a ``ValueError`` listing the known tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}"
        ) from None


def task_module(name: str) -> ModuleType:
    """The imported module of task ``name``."""
    return importlib.import_module(get_task(name).module)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def task_of_model_dir(model_dir: str | os.PathLike) -> str:
    """The task a model directory belongs to.

    Read from a task's sidecar (its ``"task"`` field) or an ensemble's ``ensemble.json``;
    for a plain Hugging Face directory, from ``config.json``'s ``model_type`` when exactly one task claims it.

    Raises:
        ValueError: the directory names an unknown task, or its model type belongs to no
            task (the message names the directory, the model type and the known tasks).
        FileNotFoundError: no ``config.json`` and no sidecar.
    """
    model_dir = Path(model_dir)
    if (model_dir / ENSEMBLE_FILE).is_file():  # an ensemble of this task's models
        name = _read_json(model_dir / ENSEMBLE_FILE).get("task", "classification")
        get_task(name)
        return name
    for entry in TASKS.values():
        sidecar = model_dir / entry.sidecar
        if sidecar.is_file():
            name = _read_json(sidecar).get("task", entry.name)
            get_task(name)  # an unknown name is an error, not a guess
            return name
    config = model_dir / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json, not a model directory")
    model_type = _read_json(config).get("model_type")
    owners = [e.name for e in TASKS.values() if model_type in e.model_types]
    if len(owners) == 1:
        return owners[0]
    raise ValueError(
        f"{model_dir}: a {model_type!r} model directory records no torchformer task "
        f"(no {' / '.join(e.sidecar for e in TASKS.values())}); torchformer.load() serves the "
        f"tasks {', '.join(sorted(TASKS))}. Load the bare network with "
        f"torchformer.checkpoints.load_pretrained instead."
    )
