"""The run directory: claimed by a fresh run, reopened by a resumed one.

A fresh run never writes into a directory that holds another run: its checkpoints
would be pruned against the old ones by step number, its tokenizer silently reused and
its metrics appended to the old file. It refuses (naming what is there) unless told to
overwrite; ``torchformer demo`` takes the next free name instead (``runs/imdb-demo-2``).

Overwriting deletes nothing at first: the old run is moved into ``.previous-run/`` and
deleted (:func:`discard_previous_run`) only once the new run has read its data and built
its model; a failure before that (:func:`restore_previous_run`), or a crash (the next
:func:`claim_run_dir`), puts it back.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from torchformer.config import ConfigError, config_to_dict, read_yaml
from torchformer.io import recover_dir

__all__ = [
    "RunDirError",
    "check_resume_config",
    "claim_run_dir",
    "discard_previous_run",
    "next_free_run_dir",
    "restore_previous_run",
    "run_contents",
]

logger = logging.getLogger(__name__)

# Settings that change how a run executes or what it writes after training, not the
# weights it computes: free to differ on resume.
RUNTIME_KEYS = frozenset(
    {
        "run_dir",
        "report",
        "data.data_dir",
        "data.imdb_dir",
        "train.threads",
        "train.device",
        "train.progress",
        "train.eval_batch_size",
        "train.keep_checkpoints",
        "eval.batch_size",
    }
)

# What a run leaves behind (a directory with only other files is not a run).
RUN_MARKERS = (
    "checkpoints",
    "best",
    "averaged",
    "eval",
    "metrics.jsonl",
    "tokenizer.json",
    "source_tokenizer.json",
    "target_tokenizer.json",
)


# Files a run writes besides those (deleted with it, never counted as "a run is here").
RUN_FILES = ("config.yaml", "manifest.json", "selected_model.json", "report.html")

# Where an overwritten run waits until its replacement has set up (then it is deleted).
PREVIOUS_RUN = ".previous-run"


class RunDirError(FileExistsError):
    """A fresh run was pointed at a directory that already holds a run."""


def run_contents(run_dir: str | os.PathLike[str]) -> list[str]:
    """The run files present in ``run_dir`` (empty when it is not a run)."""
    run_dir = Path(run_dir)
    present = []
    for name in RUN_MARKERS:
        p = run_dir / name
        if p.is_file() or (p.is_dir() and any(p.iterdir())):
            present.append(name)
    return present


def _run_paths(run_dir: Path) -> list[Path]:
    """What a run wrote in ``run_dir`` (and nothing else: a user's files stay)."""
    names = (*RUN_MARKERS, *RUN_FILES)
    paths = (run_dir / p for name in names for p in (name, f".{name}.tmp", f".{name}.old"))
    return [p for p in paths if p.is_symlink() or p.exists()]


def clear_run(run_dir: str | os.PathLike[str]) -> None:
    """Delete what a run wrote in ``run_dir`` (and nothing else: a user's files stay)."""
    for path in _run_paths(Path(run_dir)):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _set_aside_run(run_dir: Path) -> None:
    """Move what a run wrote into ``run_dir/.previous-run`` (renames: nothing is copied).

    The entries go to a staging folder first, renamed to ``.previous-run`` once all are
    in: ``.previous-run`` always holds the whole old run (see :func:`_recover`)."""
    staging = run_dir / f"{PREVIOUS_RUN}.tmp"
    staging.mkdir(exist_ok=True)
    for path in _run_paths(run_dir):
        path.rename(staging / path.name)
    staging.rename(run_dir / PREVIOUS_RUN)


def restore_previous_run(run_dir: str | os.PathLike[str]) -> bool:
    """Put back the run an unfinished ``--overwrite`` set aside, deleting what the new run
    wrote meanwhile; returns whether there was one."""
    run_dir = Path(run_dir)
    held = run_dir / PREVIOUS_RUN
    if not held.is_dir():
        return False
    restoring = held / ".restoring"  # once there, what run_dir holds is the old run's
    if not restoring.exists():
        clear_run(run_dir)
        restoring.touch()
    for path in held.iterdir():
        if path != restoring:
            path.rename(run_dir / path.name)
    restoring.unlink()
    held.rmdir()
    return True


def discard_previous_run(run_dir: str | os.PathLike[str]) -> None:
    """Delete the run an ``--overwrite`` set aside, now that its replacement has set up.

    Renamed first, so that a crash halfway through the deletion cannot bring back a part
    of it (:func:`claim_run_dir` deletes the rest)."""
    run_dir = Path(run_dir)
    held, doomed = run_dir / PREVIOUS_RUN, run_dir / f"{PREVIOUS_RUN}.deleted"
    if held.is_dir():
        held.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _recover(run_dir: Path) -> None:
    """Finish what a killed ``--overwrite`` left behind, so that the old run is whole."""
    staging = run_dir / f"{PREVIOUS_RUN}.tmp"
    if staging.is_dir():  # killed while setting the old run aside: all of it is the old run
        for path in staging.iterdir():
            path.rename(run_dir / path.name)
        staging.rmdir()
    if restore_previous_run(run_dir):  # killed before the new run had set up
        logger.warning("%s: put back the run an interrupted --overwrite had set aside", run_dir)
    discard_previous_run(run_dir)  # the rest of one whose deletion was cut short


def claim_run_dir(
    run_dir: str | os.PathLike[str],
    *,
    resume: bool,
    overwrite: bool = False,
    config: Any = None,
) -> Path:
    """Create ``run_dir`` for a run and return it, with its model directories whole.

    Args:
        resume: the run continues from its newest checkpoint. When it has none (killed
            before the first), what it wrote is cleared and it starts afresh.
        overwrite: a fresh run may replace the run already in the directory. The old
            run is set aside, not deleted: the caller deletes it with
            :func:`discard_previous_run` once the new run has set up, or puts it back
            with :func:`restore_previous_run` when that fails.
        config: the run's config; a resumed run must have the settings it started with
            (:func:`check_resume_config`).

    Raises:
        RunDirError: a fresh run, ``overwrite`` off, and the directory holds a run.
        ConfigError: resuming with changed settings.
        ValueError: both ``resume`` and ``overwrite``.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ValueError("--resume continues the run in run_dir, --overwrite replaces it: pick one")
    _recover(run_dir)
    present = run_contents(run_dir)
    checkpoints = run_dir / "checkpoints"
    has_checkpoint = any(checkpoints.glob("step-*.pt")) or any(checkpoints.glob("step-*.dcp"))
    if resume and present and not has_checkpoint:
        logger.warning("%s has no checkpoint to resume from: starting the run afresh", run_dir)
        clear_run(run_dir)
    elif not resume and present:
        if not overwrite:
            raise RunDirError(
                f"{run_dir} already holds a run ({', '.join(present)}); pass --resume to "
                "continue it, --overwrite to replace it, or set --run_dir to a new directory"
            )
        _set_aside_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("best", "averaged"):  # a crash while one of them was being replaced
        recover_dir(run_dir / name)
    if resume and config is not None:
        check_resume_config(run_dir, config)
    return run_dir


def next_free_run_dir(run_dir: str | os.PathLike[str]) -> Path:
    """``run_dir`` if it holds no run, else the first of ``run_dir-2``, ``-3``, ... that does not."""
    run_dir = Path(run_dir)
    candidate, n = run_dir, 1
    while run_contents(candidate):
        n += 1
        candidate = run_dir.with_name(f"{run_dir.name}-{n}")
    return candidate


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def check_resume_config(run_dir: str | os.PathLike[str], config: Any) -> None:
    """Refuse to resume a run with settings other than those it was started with.

    Exact resume restores the optimizer, schedule and sampler of the saved run; a changed
    ``train.epochs`` or ``train.lr`` would silently give another schedule. Runtime
    settings (threads, device, progress bar, data directory) may change.

    Raises:
        ConfigError: names the saved config file and each changed key with both values.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return
    saved = _flatten(read_yaml(path))
    # Through YAML, so both sides have the same types (tuples as lists, and so on).
    current = _flatten(yaml.safe_load(yaml.safe_dump(config_to_dict(config))))
    # A key the saved config lacks is a setting added since the run started: its default
    # is what the run had (only keys both have, or keys removed since, can differ).
    changed = [
        f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
        for key in sorted(saved)
        if key not in RUNTIME_KEYS and saved.get(key) != current.get(key)
    ]
    if changed:
        raise ConfigError(
            f"{path}: --resume with settings that differ from the run's "
            f"({'; '.join(changed)}); resume with the run's own config "
            f"(torchformer train {path} --resume) or start a new run"
        )
