"""Where datasets live on this machine.

One setting: the environment variable ``TORCHFORMER_DATA``. Without it, datasets are
looked up in (and downloaded to) ``$XDG_CACHE_HOME/torchformer/data``, by default
``~/.cache/torchformer/data``. No machine-specific path is written in code.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV_VAR", "data_dir"]

DATA_ENV_VAR = "TORCHFORMER_DATA"


def data_dir() -> Path:
    """The data directory: ``$TORCHFORMER_DATA``, else the user cache directory.

    The directory is not created (readers only look; downloaders create it).
    """
    configured = os.environ.get(DATA_ENV_VAR)
    if configured:
        return Path(configured).expanduser().resolve()
    cache_home = os.environ.get("XDG_CACHE_HOME")
    cache = Path(cache_home).expanduser() if cache_home else Path.home() / ".cache"
    return cache / "torchformer" / "data"
