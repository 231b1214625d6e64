"""R-Drop (Liang et al., 2021, "R-Drop: Regularized Dropout for Neural Networks").

Each batch goes through the model twice, with different dropout masks (in one forward
pass of the batch stacked twice, as the authors' code does), and the loss is

    0.5 * (CE(P1, y) + CE(P2, y)) + alpha * 0.5 * (KL(P1 || P2) + KL(P2 || P1))

with each term a mean over the batch (the cross-entropy optionally class-weighted). This
is the authors' BERT fine-tuning loss; the paper's eq. 3 is twice it with ``alpha``
doubled. With ``alpha = 0`` it is the mean of two ordinary losses.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["rdrop_loss"]


def rdrop_loss(
    logits1: Tensor,
    logits2: Tensor,
    labels: Tensor,
    *,
    alpha: float,
    class_weights: Tensor | None = None,
) -> Tensor:
    """R-Drop's loss of two predictions (B, C) of the same batch (module docstring)."""
    logits1, logits2 = logits1.float(), logits2.float()
    ce = 0.5 * (
        F.cross_entropy(logits1, labels, weight=class_weights)
        + F.cross_entropy(logits2, labels, weight=class_weights)
    )
    log_p1, log_p2 = F.log_softmax(logits1, dim=-1), F.log_softmax(logits2, dim=-1)
    # kl_div(input, target) = KL(target || input), summed over classes, mean over the batch
    kl_12 = F.kl_div(log_p2, log_p1, reduction="batchmean", log_target=True)
    kl_21 = F.kl_div(log_p1, log_p2, reduction="batchmean", log_target=True)
    return ce + alpha * 0.5 * (kl_12 + kl_21)
