"""Gradient accumulation and the optimizer step (unscale, clip, step, schedule, zero).

A loop with ``accum_steps`` micro-batches per optimizer step::

    for micro_step, batch in enumerate(batches, start=1):
        boundary = is_accumulation_boundary(micro_step, accum_steps)
        with sync_gradients(model, sync=boundary):  # skips the DDP all-reduce in between
            loss = model(**batch).loss / accum_steps
            loss.backward()
        if boundary:
            grad_norm = optimizer_step(model, optimizer, scheduler, max_grad_norm=1.0)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from torchformer.train.guards import check_finite
from torchformer.train.schedules import Scheduler

__all__ = ["is_accumulation_boundary", "optimizer_step", "sync_gradients"]


def is_accumulation_boundary(micro_step: int, accum_steps: int, *, last: bool = False) -> bool:
    """True when micro-batch ``micro_step`` (1-based) ends an accumulation window.

    ``last=True`` marks the final micro-batch of an epoch, which always steps so that no
    gradient is carried across epochs.
    """
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
    return last or micro_step % accum_steps == 0


@contextlib.contextmanager
def sync_gradients(model: nn.Module, *, sync: bool) -> Iterator[None]:
    """Inside, a distributed model skips its gradient reduction unless ``sync``: DDP's
    all-reduce (``no_sync``), FSDP2's reduce-scatter (``set_requires_gradient_sync``)."""
    set_sync = getattr(model, "set_requires_gradient_sync", None)  # FSDP2 (fully_shard)
    if set_sync is not None and not sync:
        set_sync(False)
        try:
            yield
        finally:
            set_sync(True)
        return
    no_sync = getattr(model, "no_sync", None)
    if sync or no_sync is None:
        yield
    else:
        with no_sync():
            yield


def optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Scheduler | torch.optim.lr_scheduler.LRScheduler | None,
    *,
    max_grad_norm: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
    check_step: int | None = None,
) -> torch.Tensor:
    """Clip, step the optimizer and the scheduler, and clear the gradients.

    Args:
        max_grad_norm: clip the global L2 norm of all gradients to this; ``None`` or
            ``<= 0`` only measures it.
        scaler: an fp16 ``GradScaler``; gradients are unscaled before clipping and a step
            with non-finite gradients is skipped by the scaler
            (and then the scheduler does not advance either).
        check_step: without a scaler, raise ``NonFiniteLossError`` (naming this step)
            *before* the update when the gradient norm is NaN/inf, so that an overflow
            never reaches the weights (one host sync per optimizer step).

    Returns:
        The total gradient norm *before* clipping, as a 0-d tensor on the parameters'
        device (call ``.item()`` only when logging, to avoid a sync every step).
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    limit = max_grad_norm if max_grad_norm is not None and max_grad_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, limit) if params else torch.tensor(0.0)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a replicated DTensor
        grad_norm = grad_norm.full_tensor()
    if check_step is not None and scaler is None:
        check_finite(grad_norm, check_step, quantity="grad_norm")
    stepped = True
    if scaler is not None:
        scale_before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        stepped = scaler.get_scale() >= scale_before  # the scale drops when a step is skipped
    else:
        optimizer.step()
    if scheduler is not None and stepped:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
