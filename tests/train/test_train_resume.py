"""The train/ pieces together: exact resume and stopping cleanly on a non-finite loss.

The tiny loop below is the shape a task module's loop takes: seed, build, resume from
the latest checkpoint if any, then step / check / clip / schedule / evaluate / save.
"""

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchformer.train import (
    CheckpointManager,
    EarlyStopping,
    NonFiniteLossError,
    build_optimizer,
    build_scheduler,
    check_finite,
    optimizer_step,
    restore_training_state,
    seed_everything,
    training_state,
)

TOTAL_STEPS = 9


SAVE_EVERY = 3


class ShuffledOrder:
    """A minimal resumable sampler: a seeded permutation per epoch and a position in it."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch, self.position = size, seed, 0, 0

    def next_batch(self, batch_size: int) -> torch.Tensor:
        if self.position + batch_size > self.size:
            self.epoch, self.position = self.epoch + 1, 0
        order = torch.randperm(
            self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)
        )
        batch = order[self.position : self.position + batch_size]
        self.position += batch_size
        return batch

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state):
        self.epoch, self.position = state["epoch"], state["position"]


def run(ckpt_dir, *, seed=0, stop_after=None, nan_at=None):
    """Train from the latest checkpoint in ``ckpt_dir`` (or from scratch); return the model."""
    seed_everything(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.ReLU(), nn.Dropout(0.3),
                          nn.Linear(16, 3))  # fmt: skip
    optimizer = build_optimizer(model, lr=0.05, weight_decay=0.01)
    scheduler = build_scheduler(optimizer, "cosine", warmup_steps=2, total_steps=TOTAL_STEPS)
    stopper = EarlyStopping("loss", mode="min", patience=10)
    sampler = ShuffledOrder(40, seed=7)  # part of the config, unlike the global RNG state
    manager = CheckpointManager(ckpt_dir, keep_last=2)
    inputs = torch.arange(40 * 6, dtype=torch.float32).reshape(40, 6).sin()
    labels = torch.arange(40) % 3
    objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler,
               "sampler": sampler, "early_stopping": stopper}  # fmt: skip

    step = 0
    if (ckpt := manager.latest()) is not None:
        step, _ = restore_training_state(ckpt.state, **objects)

    while step < TOTAL_STEPS:
        step += 1
        batch = sampler.next_batch(16)
        # every global generator is used too, so a missed RNG restore changes the result
        noise = np.random.normal(0, 0.01) + random.uniform(-0.01, 0.01) + torch.randn(1) * 0.01
        loss = F.cross_entropy(model(inputs[batch] + noise), labels[batch])  # (and dropout)
        if step == nan_at:
            loss = loss * float("nan")
        check_finite(loss, step)
        loss.backward()
        optimizer_step(model, optimizer, scheduler, max_grad_norm=1.0)
        if step % SAVE_EVERY == 0:
            stopper.update(loss.item(), step=step)
            state = training_state(step=step, epoch=sampler.epoch, **objects,
                                   metadata={"loss": loss.item()})  # fmt: skip
            manager.save(step, state)
        if step == stop_after:
            break
    return model


def test_resume_gives_the_same_weights_as_not_stopping(tmp_path):
    straight = run(tmp_path / "straight")
    run(tmp_path / "resumed", stop_after=6)
    resumed = run(tmp_path / "resumed", seed=12345)  # a different seed: state must come from disk
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    # and the check is sensitive: a run without resume differs
    fresh = run(tmp_path / "other", seed=12345)
    assert not torch.equal(fresh[0].weight, straight[0].weight)


def test_non_finite_loss_stops_with_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match="at step 5") as err:
        run(tmp_path, nan_at=5)
    assert err.value.step == 5
    latest = CheckpointManager(tmp_path).latest()
    assert latest is not None and latest.step == 3
    assert all(torch.isfinite(t).all() for t in latest.state["model"].values())
    assert latest.state["metadata"]["loss"] > 0 and latest.state["epoch"] == 1  # 48 of 40 rows
