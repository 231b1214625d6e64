"""Learning-rate schedules behind one interface.

A training loop calls ``scheduler.step()`` after every optimizer step and
``scheduler.step_metric(value)`` after every evaluation (a no-op except for
``"plateau"``), and stores ``scheduler.state_dict()`` in its checkpoints.

Step convention (the same as Hugging Face ``get_*_schedule_with_warmup``): after
``n`` calls to ``step()`` each parameter group's learning rate is
``base_lr * multiplier(n)``, where ``base_lr`` is the group's lr when the
scheduler was built. With warm-up, ``multiplier(0) = 0``: warm-up runs over
steps ``0 .. warmup_steps`` and reaches the full rate at ``n = warmup_steps``.

=================  ==========================================================
``linear``         0 -> 1 over warm-up, then linearly down to 0 at ``total_steps``
``cosine``         warm-up, then half a cosine from 1 to ``min_lr_ratio``
``constant``       warm-up, then 1
``inverse_sqrt``   warm-up, then ``sqrt(warmup_steps / n)`` (fairseq): peaks at base lr
``noam``           ``scale * d_model**-0.5 * min(n**-0.5, n * warmup**-1.5)``
                   (Vaswani et al., 2017, eq. 3); *replaces* the optimizer's lr
``plateau``        warm-up, then multiply by ``plateau_factor`` whenever the
                   evaluation metric has not improved for ``plateau_patience``
                   evaluations (like ``ReduceLROnPlateau``), floored at ``min_lr_ratio``
``stlr``           slanted triangular (Howard & Ruder, 2018, eq. 3): with
                   ``cut = floor(T * cut_frac)``, ``p = n / cut`` while ``n < cut``,
                   else ``1 - (n - cut) / (cut * (1 / cut_frac - 1))``, and the factor
                   is ``(1 + p * (ratio - 1)) / ratio``: a linear rise from
                   ``1 / ratio`` to 1 over ``cut`` steps, then a linear fall back to
                   ``1 / ratio`` at ``T = total_steps``; its rise is the warm-up
=================  ==========================================================

Every schedule scales each parameter group's own base rate, so the ratios between
groups (discriminative learning rates, ``train.optim``) hold at every step; ``noam``
keeps them too, relative to the group with the highest rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch

__all__ = [
    "SCHEDULES",
    "ScheduleName",
    "Scheduler",
    "build_scheduler",
    "lr_multiplier",
    "slanted_triangular",
]

ScheduleName = Literal[  # for config dataclasses: `schedule: ScheduleName = "linear"`
    "linear", "cosine", "constant", "inverse_sqrt", "noam", "plateau", "stlr"
]
SCHEDULES: tuple[str, ...] = get_args(ScheduleName)


def _warmup(step: int, warmup_steps: int) -> float:
    return min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0


def lr_multiplier(
    name: str,
    step: int,
    *,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    min_lr_ratio: float = 0.0,
    cut_frac: float = 0.1,
    ratio: float = 32.0,
) -> float:
    """The factor applied to the base learning rate after ``step`` optimizer steps.

    ``noam`` returns ``min(step**-0.5, step * warmup**-1.5)``; the scheduler multiplies it
    by ``scale * d_model**-0.5``. ``plateau`` returns the warm-up factor only. ``stlr``
    uses ``cut_frac`` and ``ratio`` (see :func:`slanted_triangular`).
    """
    if name in ("linear", "cosine") and step < warmup_steps:
        return step / warmup_steps
    if name == "linear":
        assert total_steps is not None
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    if name == "cosine":
        assert total_steps is not None
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if name in ("constant", "plateau"):
        return _warmup(step, warmup_steps)
    if name == "inverse_sqrt":
        if step < warmup_steps:
            return step / warmup_steps
        return math.sqrt(max(1, warmup_steps) / max(1, step))
    if name == "noam":
        if step == 0:
            return 0.0
        return min(step**-0.5, step * max(1, warmup_steps) ** -1.5)
    if name == "stlr":
        assert total_steps is not None
        return slanted_triangular(step, total_steps, cut_frac=cut_frac, ratio=ratio)
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def slanted_triangular(step: int, total_steps: int, *, cut_frac: float, ratio: float) -> float:
    """ULMFiT's slanted triangular factor ``(1 + p * (ratio - 1)) / ratio`` (Howard & Ruder,
    2018, eq. 3), with ``t = step`` and ``T = total_steps``.

    ``p`` is clamped at 0: when ``T * cut_frac`` is not whole, the paper's fall
    (over ``cut * (1 / cut_frac - 1)`` steps, slightly fewer than ``T - cut``) would
    otherwise take the rate below ``1 / ratio``, and below 0, before step ``T``. A run
    too short for a rise (``cut = 0``) falls over its ``T`` steps.
    """
    cut = math.floor(total_steps * cut_frac)
    if step < cut:
        p = step / cut
    else:
        fall = cut * (1.0 / cut_frac - 1.0) if cut > 0 else total_steps
        p = max(0.0, 1.0 - (step - cut) / fall)
    return (1.0 + p * (ratio - 1.0)) / ratio


class Scheduler:
    """Sets each parameter group's lr from a step count (and, for ``plateau``, a metric).

    Build it with :func:`build_scheduler`. State (step count, base rates, plateau
    bookkeeping) round-trips through :meth:`state_dict` / :meth:`load_state_dict` as
    plain numbers, so it is ``weights_only``-loadable.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        name: str,
        multiplier: Callable[[int], float],
        *,
        base_lrs: list[float] | None = None,
        plateau: _Plateau | None = None,
        min_lr_ratio: float = 0.0,
    ):
        self.optimizer = optimizer
        self.name = name
        self.multiplier = multiplier
        self.base_lrs = base_lrs or [float(g["lr"]) for g in optimizer.param_groups]
        self.plateau = plateau
        self.min_lr_ratio = min_lr_ratio
        self.last_step = 0
        self._apply()

    @property
    def lr(self) -> float:
        """The current learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def get_last_lr(self) -> list[float]:
        """The current learning rate of every parameter group."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def step(self) -> None:
        """Advance one optimizer step and set the learning rates for the next one."""
        self.last_step += 1
        self._apply()

    def step_metric(self, value: float) -> bool:
        """Report an evaluation metric; returns True when the lr was just reduced.

        A no-op (returning False) for every schedule except ``plateau``. During warm-up the
        best value is tracked but evaluations without improvement do not count.
        """
        if self.plateau is None:
            return False
        in_warmup = self.multiplier(self.last_step) < 1.0
        reduced = self.plateau.update(float(value), allow_reduce=not in_warmup)
        self._apply()
        return reduced

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "last_step": self.last_step,
            "base_lrs": list(self.base_lrs),
            "plateau": self.plateau.state_dict() if self.plateau else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved state and re-apply the learning rate it implies.

        Raises:
            ValueError: the state belongs to a different schedule.
        """
        if state["name"] != self.name:
            raise ValueError(
                f"scheduler state is for schedule {state['name']!r}, not {self.name!r}"
            )
        self.last_step = int(state["last_step"])
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        if self.plateau is not None and state.get("plateau") is not None:
            self.plateau.load_state_dict(state["plateau"])
        self._apply()

    def _apply(self) -> None:
        factor = self.multiplier(self.last_step)
        if self.plateau is not None:
            factor *= max(self.plateau.scale, self.min_lr_ratio)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * factor

    def __repr__(self) -> str:
        return f"Scheduler({self.name!r}, step={self.last_step}, lr={self.lr:.3g})"


class _Plateau:
    """``ReduceLROnPlateau``'s bookkeeping as a multiplicative ``scale``."""

    def __init__(self, *, mode: str, factor: float, patience: int, threshold: float):
        if mode not in ("min", "max"):
            raise ValueError(f"plateau_mode must be 'min' or 'max', got {mode!r}")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"plateau_factor must be in (0, 1), got {factor}")
        self.mode, self.factor, self.patience, self.threshold = mode, factor, patience, threshold
        self.scale = 1.0
        self.best: float | None = None
        self.bad_evals = 0

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return not math.isnan(value)
        margin = abs(self.best) * self.threshold  # relative threshold, as in torch's "rel"
        return value < self.best - margin if self.mode == "min" else value > self.best + margin

    def update(self, value: float, *, allow_reduce: bool) -> bool:
        if self._improved(value):
            self.best, self.bad_evals = value, 0
            return False
        if not allow_reduce:  # patience only starts counting after warm-up
            return False
        self.bad_evals += 1
        if self.bad_evals > self.patience:
            self.scale *= self.factor
            self.bad_evals = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = float(state["scale"])
        self.best = None if state["best"] is None else float(state["best"])
        self.bad_evals = int(state["bad_evals"])


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    *,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    min_lr_ratio: float = 0.0,
    d_model: int | None = None,
    scale: float = 1.0,
    plateau_mode: Literal["min", "max"] = "max",
    plateau_factor: float = 0.5,
    plateau_patience: int = 2,
    plateau_threshold: float = 1e-4,
    cut_frac: float = 0.1,
    ratio: float = 32.0,
) -> Scheduler:
    """Build a :class:`Scheduler` (see the module docstring for each schedule's formula).

    Args:
        optimizer: its groups' current ``lr`` are the base rates (ignored by ``noam``).
        name: one of :data:`SCHEDULES`.
        warmup_steps: steps of linear warm-up from 0.
        total_steps: required by ``linear``, ``cosine`` and ``stlr``.
        min_lr_ratio: ``cosine``'s final rate and ``plateau``'s floor, as a fraction of base.
        d_model, scale: ``noam`` only; the peak rate is ``scale * (d_model * warmup)**-0.5``
            (times each group's lr over the highest group lr).
        plateau_*: ``plateau`` only; ``mode`` says whether the metric should go up or down.
        cut_frac, ratio: ``stlr`` only: the fraction of the steps the rate rises for, and
            how much smaller the lowest rate is than the peak (ULMFiT: 0.1 and 32).

    Raises:
        ValueError: unknown name, or a parameter the schedule needs is missing or invalid.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if name in ("linear", "cosine", "stlr"):
        if total_steps is None or total_steps <= 0:
            raise ValueError(f"schedule {name!r} needs total_steps > 0, got {total_steps}")
        if warmup_steps > total_steps:
            raise ValueError(f"warmup_steps ({warmup_steps}) > total_steps ({total_steps})")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if name == "stlr":
        _check_stlr(warmup_steps, cut_frac, ratio)

    def multiplier(step: int) -> float:
        return lr_multiplier(
            name,
            step,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            min_lr_ratio=min_lr_ratio,
            cut_frac=cut_frac,
            ratio=ratio,
        )

    base_lrs = None
    if name == "noam":
        if d_model is None or d_model <= 0:
            raise ValueError("schedule 'noam' needs d_model > 0")
        # Groups with different rates (discriminative lrs) keep their ratios.
        group_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        top = max(group_lrs)
        base_lrs = [scale * d_model**-0.5 * (lr / top if top > 0 else 1.0) for lr in group_lrs]
    plateau = None
    if name == "plateau":
        plateau = _Plateau(
            mode=plateau_mode,
            factor=plateau_factor,
            patience=plateau_patience,
            threshold=plateau_threshold,
        )
    return Scheduler(
        optimizer,
        name,
        multiplier,
        base_lrs=base_lrs,
        plateau=plateau,
        min_lr_ratio=min_lr_ratio if name == "plateau" else 0.0,
    )


def _check_stlr(warmup_steps: int, cut_frac: float, ratio: float) -> None:
    if warmup_steps:
        raise ValueError(
            f"schedule 'stlr' rises over its first cut_frac of the steps (its own warm-up); "
            f"set the warm-up to 0, got warmup_steps={warmup_steps}"
        )
    if not 0.0 < cut_frac < 1.0:
        raise ValueError(f"stlr cut_frac must be in (0, 1), got {cut_frac}")
    if ratio < 1.0:
        raise ValueError(f"stlr ratio must be >= 1, got {ratio}")
