"""torchformer: transformers from the attention equation to a served model.

import torchformer as tf
clf = tf.load("runs/imdb-minilm/best")      # or any BERT-family HF directory
clf.predict(["great film", "dull"])
"""

from __future__ import annotations

import os
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(path: str | os.PathLike, **overrides: Any) -> Any:
    """Load a trained run or model directory; see :func:`torchformer.api.load`.

    Imported on first use so that ``import torchformer`` stays light.
    """
    from torchformer.api import load as load_

    return load_(path, **overrides)
