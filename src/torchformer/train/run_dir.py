"""The run directory: claimed by a fresh run, reopened by a resumed one.

A fresh run never writes into a directory that holds another run: its checkpoints
would be pruned against the old ones by step number, its tokenizer silently reused and
its metrics appended to the old file. It refuses (naming what is there) unless told to
overwrite; ``torchformer demo`` takes the next free name instead (``runs/imdb-demo-2``).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from torchformer.config import ConfigError, config_to_dict
from torchformer.io import recover_dir

__all__ = [
    "RunDirError",
    "check_resume_config",
    "claim_run_dir",
    "next_free_run_dir",
    "run_contents",
]

logger = logging.getLogger(__name__)

# Settings that change how a run executes or what it writes after training, not the
# weights it computes: free to differ on resume.
RUNTIME_KEYS = frozenset({
    "run_dir", "report", "data.data_dir", "data.imdb_dir", "train.threads", "train.device",
    "train.progress", "train.eval_batch_size", "train.keep_checkpoints", "eval.batch_size",
})  # fmt: skip

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


def clear_run(run_dir: str | os.PathLike[str]) -> None:
    """Delete what a run wrote in ``run_dir`` (and nothing else: a user's files stay)."""
    run_dir = Path(run_dir)
    for name in (*RUN_MARKERS, *RUN_FILES):
        for path in (run_dir / name, run_dir / f".{name}.tmp", run_dir / f".{name}.old"):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def claim_run_dir(
    run_dir: str | os.PathLike[str], *, resume: bool, overwrite: bool = False,
    config: Any = None,
) -> Path:  # fmt: skip
    """Create ``run_dir`` for a run and return it, with its model directories whole.

    Args:
        resume: the run continues from its newest checkpoint. When it has none (killed
            before the first), what it wrote is cleared and it starts afresh.
        overwrite: a fresh run may replace the run already in the directory.
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
        clear_run(run_dir)
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
    saved = _flatten(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
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
