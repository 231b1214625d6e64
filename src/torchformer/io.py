"""Atomic file writes: a crash mid-write never leaves a broken or missing file.

Write to a temp file in the same directory, flush and fsync it, ``os.replace``
it onto the final name, fsync the directory. Used for checkpoints, model
directories, configs and evaluation files. Standard library only, so every
layer may use it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, TypeVar

__all__ = [
    "JsonSettings",
    "atomic_write_bytes",
    "atomic_write_text",
    "read_json_settings",
    "recover_dir",
    "replace_dir",
    "write_json_settings",
]


T = TypeVar("T")


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


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{suffix}")


def recover_dir(path: str | os.PathLike[str]) -> Path:
    """Finish an interrupted :func:`replace_dir`: if ``path`` is missing but its previous
    version was set aside, put the previous version back. Returns ``path``."""
    path = Path(path)
    old = _sibling(path, "old")
    if not path.exists() and old.is_dir():
        old.rename(path)
        _fsync_dir(path.parent)
    return path


@contextmanager
def replace_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a directory (a model directory such as ``best/``) so that a crash leaves
    either the old or the new version, never a half-written one.

    Yields a temporary sibling directory to fill; on success the old directory is set
    aside, the new one renamed into place and the old one deleted. If the process dies
    between the two renames, :func:`recover_dir` (called by whoever reads ``path``)
    restores the old version. On an exception the temporary directory is removed and
    ``path`` is untouched.
    """
    path = Path(path)
    recover_dir(path)
    tmp, old = _sibling(path, "tmp"), _sibling(path, "old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


class JsonSettings:
    """Mixin for a settings dataclass kept as one JSON file (``FILE_NAME``) in a model
    directory: ``Settings.read(model_dir)`` and ``settings.write(model_dir)``."""

    FILE_NAME: ClassVar[str]

    @classmethod
    def read(cls, model_dir: str | os.PathLike[str]) -> Any:
        return read_json_settings(cls, Path(model_dir) / cls.FILE_NAME)

    def write(self, model_dir: str | os.PathLike[str]) -> Path:
        return write_json_settings(self, Path(model_dir) / self.FILE_NAME)


def read_json_settings(cls: type[T], path: str | os.PathLike[str]) -> T:
    """A settings dataclass ``cls`` from the JSON object in ``path`` (a model directory's
    sidecar): its defaults when the file is absent, keys it does not know ignored.

    Raises:
        ValueError: the file is not a JSON object (names the file).
    """
    path = Path(path)
    if not path.is_file():
        return cls()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def write_json_settings(settings: Any, path: str | os.PathLike[str]) -> Path:
    """Atomically write a settings dataclass as indented JSON."""
    return atomic_write_text(path, json.dumps(dataclasses.asdict(settings), indent=2) + "\n")
