"""Run ``torchformer`` in this process and SIGKILL it at a chosen point (issue 18, fault
injection); used by ``test_kill_resume.py`` as ``python kill_points.py PLAN ARGS...``.

PLAN is JSON: ``{"count": FILE}`` counts how often each kill point is reached in a whole run
and writes the counts to FILE at exit; ``{"point": P, "at": N, "phase": PH}`` kills the
process on the N-th time point P is reached. The points wrap the functions that write what a
run leaves behind, so a kill lands inside those writes:

- ``checkpoint``: ``save_checkpoint``. Phase ``torn``: half the bytes are in the temporary
  file (fsynced) when the process dies; ``written``: the new checkpoint is in place and the
  older ones not yet pruned.
- ``best``: ``replace_dir`` of ``best/``. Phase ``filled``: the new model directory is written
  beside the old one; ``swapping``: the old ``best/`` has been set aside and the new one not
  yet renamed into place (on the first ``best/``, right after it is in place).
- ``metrics``: ``MetricsLogger.log``: half of the JSON line is written and flushed.
- ``step``: ``optimizer_step``. Phase ``before``: the gradients are computed, the weights not
  yet updated; ``after``: the weights are updated, the step not yet counted.

No environment variable and no change to the package: the wrappers are installed here,
before the command runs.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pathlib
import signal
import sys
from collections import Counter

POINTS = ("checkpoint", "best", "metrics", "step")
PHASES = {
    "checkpoint": ("torn", "written"),
    "best": ("filled", "swapping"),
    "metrics": ("half",),
    "step": ("before", "after"),
}


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(plan: dict) -> Counter:
    import torch

    from torchformer.train import checkpoint, loop, run
    from torchformer.train.logging import MetricsLogger

    counts: Counter = Counter()
    point, at, phase = plan.get("point"), plan.get("at"), plan.get("phase")

    def reached(name: str) -> bool:
        counts[name] += 1
        return name == point and counts[name] == at

    real_save_checkpoint = checkpoint.save_checkpoint

    def save_checkpoint(path, state):
        if not reached("checkpoint"):
            return real_save_checkpoint(path, state)
        if phase == "written":
            real_save_checkpoint(path, state)
            die()
        real_torch_save = torch.save

        def save_half(obj, f, *args, **kwargs):
            real_torch_save(obj, f, *args, **kwargs)
            f.truncate(f.tell() // 2)
            f.flush()
            os.fsync(f.fileno())
            die()

        torch.save = save_half
        real_save_checkpoint(path, state)

    real_replace_dir = run.replace_dir

    @contextlib.contextmanager
    def replace_dir(path):
        if not reached("best"):
            with real_replace_dir(path) as tmp:
                yield tmp
            return
        if phase == "swapping":
            aside = pathlib.Path(path).with_name(f".{pathlib.Path(path).name}.old")
            real_rename = pathlib.Path.rename

            def rename(self, target):
                moved = real_rename(self, target)
                if pathlib.Path(target) == aside:
                    die()
                return moved

            pathlib.Path.rename = rename
        with real_replace_dir(path) as tmp:
            yield tmp
            if phase == "filled":
                die()
        die()

    real_log = MetricsLogger.log

    def log(self, values, *, step, epoch=None, split="train"):
        if not reached("metrics"):
            return real_log(self, values, step=step, epoch=epoch, split=split)
        line = json.dumps({"step": step, "epoch": epoch, "split": split, **values}, default=str)
        self._file.write(line[: len(line) // 2])
        self._file.flush()
        die()

    real_optimizer_step = loop.optimizer_step

    def optimizer_step(*args, **kwargs):
        if not reached("step"):
            return real_optimizer_step(*args, **kwargs)
        if phase == "before":
            die()
        real_optimizer_step(*args, **kwargs)
        die()

    checkpoint.save_checkpoint = save_checkpoint
    run.replace_dir = replace_dir
    MetricsLogger.log = log
    loop.optimizer_step = optimizer_step
    return counts


def main() -> int:
    plan, argv = json.loads(sys.argv[1]), sys.argv[2:]
    counts = install(plan)
    if "count" in plan:
        atexit.register(lambda: pathlib.Path(plan["count"]).write_text(json.dumps(counts)))
    from torchformer.cli import main as torchformer

    return torchformer(argv)


if __name__ == "__main__":
    sys.exit(main())
