"""What a run writes so that it can be read, compared and reproduced.

- ``metrics.jsonl``: one JSON object per line, ``{"step", "epoch", "split", "time", ...values}``,
  appended and flushed on every write, so a crashed run keeps everything it logged.
- ``manifest.json``: seed, resolved config, data fingerprint, package versions, git
  commit, host; enough to say exactly what produced a run.
- A tqdm progress bar with a rate-limited ``loss / lr / samples/s`` postfix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm.auto import tqdm

from torchformer.config import config_to_dict
from torchformer.io import atomic_write_text

__all__ = [
    "MetricsLogger",
    "ProgressPostfix",
    "fingerprint_records",
    "git_info",
    "package_versions",
    "progress_bar",
    "read_metrics",
    "write_manifest",
]

_RESERVED = ("step", "epoch", "split", "time")
_VERSIONED_PACKAGES = ("torchformer", "torch", "numpy", "tokenizers", "safetensors", "transformers")


def _scalar(value: Any) -> Any:
    """Turn 0-d tensors and NumPy scalars into Python numbers (for JSON)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, str):
        return value.item()  # numpy scalar
    return value


# ---------------------------------------------------------------------------
# metrics.jsonl
# ---------------------------------------------------------------------------


class MetricsLogger:
    """Appends metric records to ``run_dir/metrics.jsonl``, one flushed line per call.

    Use as a context manager, or call :meth:`close`. Values should be Python numbers;
    a tensor is converted with ``.item()`` (a device sync: log every N steps, not every
    step). Non-finite floats are written as ``NaN``/``Infinity``, which Python's ``json``
    reads back.
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, filename: str = "metrics.jsonl"):
        self.path = Path(run_dir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = self.path.open("a", encoding="utf-8")

    def log(
        self,
        values: Mapping[str, Any],
        *,
        step: int,
        epoch: float | None = None,
        split: str = "train",
    ) -> dict[str, Any]:
        """Append one record and flush it; returns the record written.

        Raises:
            ValueError: a value key collides with ``step``, ``epoch``, ``split`` or ``time``.
        """
        if self._file is None:
            raise ValueError(f"MetricsLogger for {self.path} is closed")
        clash = [k for k in values if k in _RESERVED]
        if clash:
            raise ValueError(f"metric names {clash} are reserved ({', '.join(_RESERVED)})")
        record = {"step": int(step), "epoch": epoch, "split": split, "time": round(time.time(), 3)}
        record.update({str(k): _scalar(v) for k, v in values.items()})
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()
        return record

    def drop_after(self, step: int, *, keep_at_step: tuple[str, ...] = ("train", "val")) -> int:
        """Remove the records a resumed run will write again, so that the file holds each
        once: those of steps after ``step`` (the checkpoint's), and those at ``step`` of
        splits other than ``keep_at_step`` (what the end of a run logs: summary, test
        scores; logged after its last checkpoint). Rewritten atomically; returns how
        many records were removed (a line cut short by a kill counts as one)."""
        if self._file is None:
            raise ValueError(f"MetricsLogger for {self.path} is closed")
        self._file.close()
        text = self.path.read_text(encoding="utf-8")
        kept, dropped = [], 0
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                dropped += bool(line.strip())
                continue
            at = int(record.get("step", 0))
            if at > step or (at == step and record.get("split") not in keep_at_step):
                dropped += 1
            else:
                kept.append(line)
        if dropped or (text and not text.endswith("\n")):
            atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))
        self._file = self.path.open("a", encoding="utf-8")
        return dropped

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | os.PathLike[str], *, split: str | None = None) -> list[dict[str, Any]]:
    """Read the records of a ``metrics.jsonl`` file (or of the run directory holding one).

    A truncated last line (the run was killed mid-write) is skipped with a warning;
    a malformed line anywhere else is an error.

    Raises:
        ValueError: a malformed line; the message names the file and line number.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines):
                warnings.warn(f"{path}:{lineno}: skipping truncated last line", stacklevel=2)
                continue
            raise ValueError(f"{path}:{lineno}: not a JSON record: {e}") from e
        if split is None or record.get("split") == split:
            records.append(record)
    return records


# ---------------------------------------------------------------------------
# manifest.json
# ---------------------------------------------------------------------------


def package_versions() -> dict[str, str | None]:
    """Versions of Python and the packages that decide numerics (``None`` = not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["cuda"] = torch.version.cuda
    return versions


def git_info(directory: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` for the git work tree holding ``directory``.

    Defaults to the torchformer source tree. Returns ``None`` outside a repository, without
    commits, or without a ``git`` executable; never raises.
    """
    cwd = Path(directory) if directory is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def _host_info() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else [],
    }


def write_manifest(
    run_dir: str | os.PathLike[str],
    *,
    config: Mapping[str, Any] | Any,
    seed: int,
    data_fingerprint: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``run_dir/manifest.json`` describing how the run was produced.

    Args:
        config: the resolved config, as a dict or a config dataclass.
        seed: the seed given to :func:`~torchformer.train.seed.seed_everything`.
        data_fingerprint: e.g. :func:`fingerprint_records` of the training texts.
        extra: anything else small and JSON-serialisable (dataset sizes, model name).

    Returns:
        The manifest path (written atomically).
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = config_to_dict(config)
    manifest = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": seed,
        "data_fingerprint": data_fingerprint,
        "config": dict(config),
        "versions": package_versions(),
        "git": git_info(),
        "host": _host_info(),
        "command": list(sys.argv),
        "extra": dict(extra or {}),
    }
    path = Path(run_dir) / "manifest.json"
    return atomic_write_text(path, json.dumps(manifest, indent=2, default=str) + "\n")


def fingerprint_records(records: Iterable[str]) -> str:
    """SHA-256 hex digest of an ordered sequence of strings.

    Each record is length-prefixed, so ``["ab", "c"]`` and ``["a", "bc"]`` differ. Order
    matters: fingerprint the records in the order the run reads them (or sorted, to
    fingerprint the set).
    """
    digest = hashlib.sha256()
    for record in records:
        data = record.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# Progress bar
# ---------------------------------------------------------------------------


def progress_bar(total: int | None, desc: str, *, disable: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar counting optimizer steps; extra keyword arguments go to ``tqdm``."""
    kwargs.setdefault("unit", "step")
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(total=total, desc=desc, disable=disable, **kwargs)


class ProgressPostfix:
    """Shows ``loss``, ``lr`` and ``samples/s`` on a bar at most every ``min_interval_s``.

    ``loss`` may be a device tensor: it is read (one sync) only when the postfix is
    redrawn, so calling :meth:`update` every step costs nothing on the GPU.
    Samples per second are measured over the samples seen since the last redraw.
    """

    def __init__(
        self,
        bar: tqdm,
        *,
        min_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.bar = bar
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._last_time = clock()
        self._samples = 0
        self.postfix: dict[str, str] = {}

    def update(
        self, *, loss: float | torch.Tensor | None = None, lr: float | None = None, samples: int = 0
    ) -> bool:
        """Count ``samples``; redraw when ``min_interval_s`` has passed. Returns True if redrawn."""
        self._samples += samples
        now = self.clock()
        elapsed = now - self._last_time
        if elapsed < self.min_interval_s:
            return False
        postfix = {}
        if loss is not None:
            value = float(_scalar(loss))
            postfix["loss"] = f"{value:.4f}" if math.isfinite(value) else str(value)
        if lr is not None:
            postfix["lr"] = f"{lr:.2e}"
        if self._samples:
            postfix["samples/s"] = f"{self._samples / elapsed:.1f}"
        self.postfix = postfix
        self.bar.set_postfix(postfix, refresh=False)
        self._last_time, self._samples = now, 0
        return True
