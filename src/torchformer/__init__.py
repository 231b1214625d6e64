"""torchformer: transformers from the attention equation to a served model.

import torchformer as tf
clf = tf.load("runs/imdb-minilm/best")      # or any BERT-family HF directory
clf.predict(["great film", "dull"])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(path: str | os.PathLike, **overrides: Any):
    """Load a trained model directory (a run's ``best/`` or an HF layout directory).

    Returns the task object that fits the directory: a ``TextClassifier`` for
    BERT-family classifiers, a ``Translator`` for translation runs.

    Raises:
        FileNotFoundError: the path is neither a directory nor a cached hub name.
        CheckpointError: the model type is not supported.
    """
    from torchformer.checkpoints.hf import read_config, resolve_model_dir
    from torchformer.io import recover_dir

    run_or_model = resolve_model_dir(path)
    recover_dir(run_or_model / "best")  # a crash while the run replaced best/
    model_dir = (
        run_or_model / "best" if (run_or_model / "best" / "config.json").is_file() else run_or_model
    )
    model_type = read_config(Path(model_dir)).get("model_type")
    if model_type == "bert":
        from torchformer.tasks.classifier import TextClassifier

        return TextClassifier.from_dir(model_dir, **overrides)
    from torchformer.tasks import translator

    # A translation run directory may have selected averaged/ over best/ (from_dir reads that).
    return translator.Translator.from_dir(run_or_model, **overrides)
