"""Guards that stop a run before a bad value reaches the weights or a checkpoint."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["NonFiniteLossError", "check_finite", "stop_on_non_finite"]


class NonFiniteLossError(FloatingPointError):
    """A loss (or gradient norm) became NaN or infinite.

    Attributes:
        step: the optimizer step at which it happened.
        value: the offending value.
        quantity: what was checked (``"loss"``, ``"grad_norm"``).
    """

    def __init__(self, step: int, value: float, quantity: str = "loss", *, note: str | None = None):
        self.step, self.value, self.quantity = step, value, quantity
        super().__init__(
            f"non-finite {quantity} ({value}) at step {step}; the weights from before this "
            "step are intact: lower the learning rate, check the data near this step, or "
            "enable gradient clipping" + (f"; {note}" if note else "")
        )


def check_finite(value: float | torch.Tensor, step: int, *, quantity: str = "loss") -> None:
    """Raise :class:`NonFiniteLossError` if ``value`` is NaN or infinite.

    A tensor is read with ``.item()``, a host-device sync: on GPU, check every few steps
    (the weights are only corrupted by the *optimizer* step, so check before it).
    """
    number = float(value.detach().float().item()) if isinstance(value, torch.Tensor) else value
    if not math.isfinite(number):
        raise NonFiniteLossError(step, number, quantity)


@contextmanager
def stop_on_non_finite(
    log: Any, *, step: int, epoch: int, note: Callable[[], str]
) -> Iterator[None]:
    """Let a :class:`NonFiniteLossError` raised inside stop the run, with ``note()`` (e.g.
    which checkpoint is kept) added to its message and the message logged as the
    ``error`` of a train record of ``log`` (a ``MetricsLogger``)."""
    try:
        yield
    except NonFiniteLossError as e:
        stopped = NonFiniteLossError(e.step, e.value, e.quantity, note=note())
        log.log({"error": str(stopped)}, step=step, epoch=epoch, split="train")
        raise stopped from e
