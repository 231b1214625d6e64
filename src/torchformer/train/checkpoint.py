"""Atomic, ``weights_only``-safe training checkpoints.

A checkpoint is one ``torch.save`` file holding a plain dict, for example::

    {"step": 1200, "epoch": 2,
     "model": model.state_dict(), "optimizer": optimizer.state_dict(),
     "scheduler": scheduler.state_dict(), "rng": capture_rng_state(),
     "sampler": sampler.state_dict(), "early_stopping": stopper.state_dict(),
     "metadata": {"best_f1": 0.91}}

Writes are atomic: the bytes go to a temporary file in the same directory, are
flushed and fsynced, and the file is renamed onto its final name with
``os.replace`` (atomic on POSIX and Windows); then the directory is fsynced so
the rename itself survives a power loss. A crash at any point leaves either the
old file or the new one, never a torn one.

Reads use ``torch.load(weights_only=True)``, so a checkpoint can hold only
tensors, dicts, lists, tuples, strings, numbers, booleans and ``None``.
:func:`save_checkpoint` checks this *before* writing and names the offending
key, rather than producing a file that will not load back.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from torchformer.io import atomic_write_bytes, atomic_write_text
from torchformer.train.seed import capture_rng_state, restore_rng_state

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointWriteError",
    "Stateful",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_weights_only_safe",
    "load_checkpoint",
    "restore_training_state",
    "save_checkpoint",
    "training_state",
    "unwrap_model",
]

_SAFE_LEAVES = (
    str,
    bytes,
    int,
    float,
    complex,
    bool,
    type(None),
    torch.Tensor,
    torch.dtype,
    torch.Size,
    torch.device,
)


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or holds unsafe objects."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, ...): the run stops. The message
    names the last good checkpoint, which the atomic write left intact."""


# ---------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------


def check_weights_only_safe(obj: Any, where: str = "state") -> None:
    """Raise ``TypeError`` naming the first value ``torch.load(weights_only=True)`` rejects.

    Types are checked exactly: a ``numpy.float64`` is a ``float`` subclass but does not load.
    """
    if type(obj) in _SAFE_LEAVES or isinstance(obj, torch.Tensor):
        return
    if type(obj) in (dict, collections.OrderedDict):
        for key, value in obj.items():
            if type(key) not in _SAFE_LEAVES:
                raise TypeError(f"{where}: key {key!r} of type {type(key).__name__} is not allowed")
            check_weights_only_safe(value, f"{where}[{key!r}]")
        return
    if type(obj) in (list, tuple, set):
        for i, value in enumerate(obj):
            check_weights_only_safe(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where}: {type(obj).__module__}.{type(obj).__qualname__} cannot be loaded with "
        "torch.load(weights_only=True); convert it to tensors, lists or plain numbers"
    )


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Atomically write ``state`` to ``path`` with ``torch.save``.

    Raises:
        TypeError: ``state`` holds something ``weights_only`` loading would reject
            (nothing is written then).
    """
    if not isinstance(state, dict):
        raise TypeError(f"a checkpoint state must be a dict, got {type(state).__name__}")
    check_weights_only_safe(state)
    return atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint onto the CPU with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is truncated, corrupt or holds non-tensor objects;
            the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        size = path.stat().st_size
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({size} bytes; truncated or corrupt?): "
            f"{type(e).__name__}: {e}"
        ) from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(state).__name__}")
    return state


# ---------------------------------------------------------------------------
# The state of a training loop
# ---------------------------------------------------------------------------


class Stateful(Protocol):
    """Anything with ``state_dict()`` / ``load_state_dict()`` (schedulers, samplers, ...)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module under ``DistributedDataParallel`` (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers, so checkpoint keys carry no wrapper prefixes."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def training_state(
    *,
    step: int,
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Stateful | None = None,
    sampler: Stateful | None = None,
    early_stopping: Stateful | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything needed to resume exactly, as one ``weights_only``-loadable dict.

    Includes the global RNG states (:func:`~torchformer.train.seed.capture_rng_state`).
    ``metadata`` is for small JSON-like values (best score, config hash).
    """

    def state_of(obj: Stateful | None) -> dict[str, Any] | None:
        return obj.state_dict() if obj is not None else None

    return {
        "step": int(step),
        "epoch": int(epoch),
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": state_of(scheduler),
        "sampler": state_of(sampler),
        "early_stopping": state_of(early_stopping),
        "rng": capture_rng_state(),
        "metadata": dict(metadata or {}),
    }


def restore_training_state(
    state: dict[str, Any],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Stateful | None = None,
    sampler: Stateful | None = None,
    early_stopping: Stateful | None = None,
    restore_rng: bool = True,
) -> tuple[int, int]:
    """Load a :func:`training_state` dict into live objects; returns ``(step, epoch)``.

    Objects passed as ``None`` are skipped (e.g. no optimizer when only evaluating).

    Raises:
        KeyError: an object was passed but the checkpoint holds no state for it.
    """
    unwrap_model(model).load_state_dict(state["model"])
    parts = {
        "optimizer": optimizer,
        "scheduler": scheduler,
        "sampler": sampler,
        "early_stopping": early_stopping,
    }
    for name, obj in parts.items():
        if obj is None:
            continue
        if state.get(name) is None:
            raise KeyError(f"the checkpoint holds no {name} state")
        obj.load_state_dict(state[name])
    if restore_rng:
        restore_rng_state(state["rng"])
    return int(state["step"]), int(state["epoch"])


# ---------------------------------------------------------------------------
# A directory of step-numbered checkpoints
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: where it came from, its step and its state."""

    path: Path
    step: int
    state: dict[str, Any]


class CheckpointManager:
    """Keeps ``step-000123.pt`` files in ``directory``, pruning all but the newest ``keep_last``.

    A single process writes (rank 0 under distributed training). Leftover temporary
    files from a crashed write are removed when the manager is created.

    Example::

        manager = CheckpointManager(run_dir / "checkpoints", keep_last=2)
        if (ckpt := manager.latest()) is not None:
            model.load_state_dict(ckpt.state["model"]); ...
        manager.save(step, state)
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, keep_last: int = 3, sharded: bool = False
    ):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        # Sharded (FSDP2) checkpoints are ``step-000123.dcp`` directories (``train.fsdp``).
        self.suffix = ".dcp" if sharded else ".pt"
        self._pattern = re.compile(rf"^step-(\d+){re.escape(self.suffix)}$")
        # path -> ((size, mtime), loads): each file is read once to know whether it counts.
        self._readable: dict[Path, tuple[tuple[int, int], bool]] = {}
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temp_files()

    def path_for(self, step: int) -> Path:
        return self.directory / f"step-{step:06d}{self.suffix}"

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints present, oldest first."""
        found = (self._pattern.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def prune(self, keep: Path | None = None) -> None:
        """Delete all but the newest ``keep_last`` readable checkpoints.

        ``keep`` (the checkpoint just written) is never deleted and counts first. A file
        that does not load takes no kept slot: it is moved aside to ``<name>.corrupt``
        with a ``RuntimeWarning`` (never deleted: it may be all that is left of a run).
        """
        kept = 0 if keep is None else 1
        for step in reversed(self.steps()):
            path = self.path_for(step)
            if path == keep:
                continue
            if not self._is_readable(path):
                self._set_aside(path)
            elif kept < self.keep_last:
                kept += 1
            elif path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def kept_note(self) -> str:
        """Which checkpoint a stopped run leaves to resume from, for its error message."""
        steps = self.steps()
        if not steps:
            return f"no checkpoint had been written yet (nothing in {self.directory})"
        return f"the last good checkpoint (step {steps[-1]}) is kept in {self.directory}"

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Atomically write ``state`` for ``step``, then :meth:`prune` the older ones.

        Raises:
            CheckpointWriteError: the write failed (a full disk, ...); the message names
                the last good checkpoint, untouched.
        """
        path = self.path_for(step)
        try:
            save_checkpoint(path, state)
        except OSError as e:  # torch.save's own cleanup fails too: one error, not a chain
            raise self.write_error(step, e) from None
        self._remember(path, True)
        self.prune(keep=path)
        return path

    def write_error(self, step: int, error: OSError) -> CheckpointWriteError:
        """The error that stops a run whose checkpoint of ``step`` could not be written:
        it names the newest checkpoint that loads (atomic writes left it intact)."""
        good = [s for s in self.steps() if s != step and self._is_readable(self.path_for(s))]
        last = (
            f"the last good checkpoint, intact, is {self.path_for(good[-1])} (step {good[-1]}); "
            "continue from it with --resume once the cause is fixed"
            if good
            else f"no checkpoint had been written yet (nothing in {self.directory})"
        )
        message = (
            f"{self.path_for(step)}: cannot write the checkpoint of step {step} "
            f"({error.strerror or error}); {last}"
        )
        if error.errno is None:
            return CheckpointWriteError(message)
        return CheckpointWriteError(error.errno, message)

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that loads, or ``None`` when there is none.

        A corrupt or unreadable file is skipped with a ``RuntimeWarning`` naming it, and
        the next older one is tried.
        """
        for step in reversed(self.steps()):
            path = self.path_for(step)
            try:
                checkpoint = Checkpoint(path=path, step=step, state=load_checkpoint(path))
            except (CheckpointError, OSError) as e:
                warnings.warn(f"skipping unreadable checkpoint: {e}", RuntimeWarning, stacklevel=2)
                self._remember(path, False)
                continue
            self._remember(path, True)
            return checkpoint
        return None

    def _remember(self, path: Path, readable: bool) -> None:
        if path.is_file():
            stat = path.stat()
            self._readable[path] = ((stat.st_size, stat.st_mtime_ns), readable)

    def _is_readable(self, path: Path) -> bool:
        """Whether the checkpoint at ``path`` loads (a sharded one is renamed into place
        only when whole). Each file is read once, memory-mapped: no tensor is copied."""
        if path.is_dir():
            return True
        try:
            stat = path.stat()
        except OSError:
            return False
        known = self._readable.get(path)
        if known is not None and known[0] == (stat.st_size, stat.st_mtime_ns):
            return known[1]
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            readable = isinstance(state, dict)
        except Exception:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
            readable = False
        self._remember(path, readable)
        return readable

    def _set_aside(self, path: Path) -> None:
        aside = path.with_name(f"{path.name}.corrupt")
        os.replace(path, aside)
        self._readable.pop(path, None)
        warnings.warn(
            f"{path} is not a readable checkpoint: moved aside to {aside} (it takes no "
            f"kept slot; delete it once you have looked at it)",
            RuntimeWarning,
            stacklevel=3,
        )

    def _remove_stale_temp_files(self) -> None:
        for tmp in self.directory.glob(".step-*.pt.tmp-*"):
            tmp.unlink(missing_ok=True)
        for tmp in self.directory.glob(".step-*.dcp.tmp"):  # a sharded save cut short
            shutil.rmtree(tmp, ignore_errors=True)
