"""Early stopping on an evaluation metric."""

from __future__ import annotations

import math
from typing import Any, Literal

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """Stop when ``metric`` has not improved by more than ``min_delta`` for ``patience`` evals.

    ``update`` returns whether the value is a new best, which is also the moment to save
    the best model. A NaN never counts as an improvement.

    Example::

        stopper = EarlyStopping("f1", mode="max", patience=3)
        for epoch in ...:
            if stopper.update(evaluate()["f1"], step=step):
                save_best()
            if stopper.should_stop:
                break
    """

    def __init__(
        self,
        metric: str,
        *,
        mode: Literal["min", "max"] = "max",
        patience: int = 3,
        min_delta: float = 0.0,
    ):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if patience < 0 or min_delta < 0:
            raise ValueError(f"patience and min_delta must be >= 0, got {patience}, {min_delta}")
        self.metric = metric
        self.mode = mode
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0  # evaluations since the last improvement

    def is_improvement(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta``."""
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def update(self, value: float, *, step: int | None = None) -> bool:
        """Record one evaluation; returns True when it is a new best."""
        value = float(value)
        if self.is_improvement(value):
            self.best, self.best_step, self.bad_evals = value, step, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` evaluations in a row (at least one) have not improved."""
        return self.bad_evals >= max(1, self.patience)

    def state_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "mode": self.mode,
            "best": self.best,
            "best_step": self.best_step,
            "bad_evals": self.bad_evals,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved state.

        Raises:
            ValueError: the state tracked a different metric or direction.
        """
        if (state["metric"], state["mode"]) != (self.metric, self.mode):
            raise ValueError(
                f"early-stopping state tracks {state['mode']} {state['metric']!r}, "
                f"not {self.mode} {self.metric!r}"
            )
        self.best = None if state["best"] is None else float(state["best"])
        self.best_step = state["best_step"]
        self.bad_evals = int(state["bad_evals"])

    def __repr__(self) -> str:
        return (
            f"EarlyStopping({self.metric!r}, mode={self.mode!r}, best={self.best}, "
            f"bad_evals={self.bad_evals}/{self.patience})"
        )
