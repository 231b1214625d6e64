"""Atomic file writes: a crash mid-write never leaves a broken or missing file.

Write to a temp file in the same directory, flush and fsync it, ``os.replace``
it onto the final name, fsync the directory. Used for checkpoints, model
directories, configs and evaluation files. Standard library only, so every
layer may use it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write_bytes", "atomic_write_text"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: fsync the directory entry (a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_path_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes | Callable[[BinaryIO], object]
) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + ``os.replace``).

    ``data`` is bytes, or a callable ``write(fileobj)`` that streams into the open file
    (so large states are not held twice in memory).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_path_prefix(path), dir=path.parent)
    os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text (configs, manifests, reports)."""
    return atomic_write_bytes(path, text.encode("utf-8"))
