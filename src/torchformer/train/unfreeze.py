"""Gradual unfreezing (Howard & Ruder, 2018, "Universal Language Model Fine-tuning for
Text Classification", sec. 3.2).

Training starts with only the head trainable; one more layer group is unfrozen from the
top down every epoch (ULMFiT's schedule) or every ``N`` optimizer steps, until all are
trainable. The groups are :func:`train.optim.layer_groups`: the head, the top encoder
layer, ..., the bottom layer, the embeddings.

The optimizer is built over every parameter before anything is frozen, so every group
already exists in it (and in its checkpoints); a frozen parameter gets no gradient, and
AdamW skips a parameter whose ``grad`` is None entirely: no moment update and no weight
decay. A newly unfrozen parameter starts its AdamW moments (and bias correction) at its
first step. Which groups are trainable is a function of the step count and the epoch
alone, both restored on resume, so a resumed run freezes the same parameters at the
same step as an unbroken one.

    unfreezing = GradualUnfreezing(model, every="epoch")  # after building the optimizer
    unfreezing.apply(step=steps_done, epoch=epoch)  # before each batch's forward
"""

from __future__ import annotations

import logging
from typing import Literal

from torch import nn

from torchformer.train.optim import layer_groups

__all__ = ["GradualUnfreezing"]

logger = logging.getLogger(__name__)


class GradualUnfreezing:
    """Sets ``requires_grad`` of ``model``'s layer groups from the training position.

    Args:
        model: a model with an encoder stack (see :func:`train.optim.layer_groups`).
        every: "epoch" (one more group each epoch) or a number of optimizer steps.

    Parameters frozen before this object was built (``model.freeze_encoder``) stay frozen.

    Raises:
        ValueError: ``every`` is neither "epoch" nor a positive integer.
    """

    def __init__(self, model: nn.Module, every: Literal["epoch"] | int) -> None:
        if every != "epoch" and not (isinstance(every, int) and every >= 1):
            raise ValueError(f"unfreeze must be 'epoch' or a number of steps >= 1, got {every!r}")
        self.every = every
        params = dict(model.named_parameters())
        self.groups = [
            (label, [params[n] for n in names if params[n].requires_grad])
            for label, names in layer_groups(model)
        ]
        self.trainable = -1  # groups trainable now (-1: not applied yet)

    def groups_trainable(self, *, step: int, epoch: int) -> int:
        """How many groups, from the top, are trainable after ``step`` optimizer steps
        in epoch ``epoch`` (both 0-based): ``1 + epoch`` or ``1 + step // every``."""
        unfrozen = epoch if self.every == "epoch" else step // int(self.every)
        return min(len(self.groups), 1 + unfrozen)

    def apply(self, *, step: int, epoch: int) -> int:
        """Freeze and unfreeze for the next optimizer step; returns the groups trainable."""
        count = self.groups_trainable(step=step, epoch=epoch)
        if count == self.trainable:
            return count
        for depth, (_, params) in enumerate(self.groups):
            for param in params:
                param.requires_grad_(depth < count)
                if depth >= count:
                    param.grad = None
        if self.trainable != -1 or count < len(self.groups):
            labels = [label for label, _ in self.groups[:count]]
            logger.info("gradual unfreezing at step %d: training %s", step, ", ".join(labels))
        self.trainable = count
        return count
