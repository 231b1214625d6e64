"""Adversarial training on the embedding output: FGM and PGD.

FGM (Miyato et al., 2017, "Adversarial Training Methods for Semi-Supervised Text
Classification"): with ``g`` the gradient of the clean loss with respect to the output
of the embedding layer ``e`` (B, T, D), the perturbation of each example is
``r = epsilon * g / ||g||``, the norm taken over that example's (T, D) with the padding
positions left out (they are neither perturbed nor counted). The adversarial loss is the
loss of a second forward pass with ``e + r``; ``r`` is a constant (no gradient flows
through it), so the parameters get the gradient of ``clean + weight * adversarial``.

PGD (Madry et al., 2018, "Towards Deep Learning Models Resistant to Adversarial
Attacks"): from ``delta = 0``, ``steps`` ascent steps ``delta <- P(delta + alpha * g /
||g||)``, ``g`` the gradient of the loss at ``e + delta``, ``P`` the projection of each
example onto the ball ``||delta|| <= epsilon``; the adversarial loss is taken at the
last ``delta``. The first ascent step reuses the clean pass's gradient (``delta = 0``),
so PGD costs ``steps + 1`` forward passes.

The perturbation is added by a forward hook on the embedding module that lives only
inside :func:`embedding_adversarial_loss`: nothing of it remains after the call, and the
embedding weights change only through the optimizer's update. A chunk-and-pool model
encodes each chunk as a sequence: there the "example" of the norm is a chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["AdversarialLoss", "embedding_adversarial_loss"]


@dataclass
class AdversarialLoss:
    """The clean loss, the loss under the perturbation, and the perturbation (B, T, D)."""

    clean: Tensor
    adversarial: Tensor
    perturbation: Tensor


class _EmbeddingTap:
    """A forward hook on the embedding module: records its output and the non-padding
    mask of its input ids, and adds ``delta`` (masked) to the output when set."""

    def __init__(self, embeddings: nn.Module, pad_id: int) -> None:
        self.pad_id = pad_id
        self.delta: Tensor | None = None
        self.output: Tensor | None = None
        self.mask: Tensor | None = None
        self.handle = embeddings.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        self.mask = (args[0] != self.pad_id).unsqueeze(-1)  # (B, T, 1)
        if self.delta is not None:
            output = output + self.delta * self.mask.to(self.delta.dtype)  # (B, T, D)
        elif not output.requires_grad:  # frozen embeddings: the gradient still reaches here
            output = output.detach().requires_grad_()
        self.output = output
        return output


def _per_example_unit(g: Tensor, mask: Tensor) -> Tensor:
    """``g / ||g||`` per example (norm over all but the first dim), padding zeroed."""
    g = g.float() * mask
    norm = g.flatten(1).norm(dim=1).clamp(min=1e-12)  # (B,)
    return g / norm.view(-1, *([1] * (g.dim() - 1)))


def _project(delta: Tensor, epsilon: float) -> Tensor:
    """Each example's ``delta`` scaled into the ball of radius ``epsilon``."""
    norm = delta.flatten(1).norm(dim=1).clamp(min=1e-12)  # (B,)
    scale = (epsilon / norm).clamp(max=1.0)
    return delta * scale.view(-1, *([1] * (delta.dim() - 1)))


def embedding_adversarial_loss(
    loss_of: Callable[[], Tensor],
    embeddings: nn.Module,
    *,
    pad_id: int,
    method: Literal["fgm", "pgd"] = "fgm",
    epsilon: float = 1.0,
    steps: int = 3,
    alpha: float = 0.3,
) -> AdversarialLoss:
    """The clean and the adversarial loss of one batch (see the module docstring).

    Args:
        loss_of: runs the model's forward pass on the batch and returns its loss; it is
            called once for the clean loss, ``steps - 1`` times for PGD's ascent and once
            under the final perturbation.
        embeddings: the module whose output is perturbed; its first input is the ids
            (B, T), whose ``pad_id`` positions are not perturbed.
        method: "fgm" (one step of size ``epsilon``) or "pgd".
        epsilon: the radius of the perturbation, per example.
        steps, alpha: PGD's number of ascent steps and their size.

    Raises:
        ValueError: an unknown method, ``epsilon <= 0``, ``steps < 1`` or ``alpha <= 0``.
    """
    if method not in ("fgm", "pgd"):
        raise ValueError(f"adversarial method must be 'fgm' or 'pgd', got {method!r}")
    if epsilon <= 0 or steps < 1 or alpha <= 0:
        raise ValueError(
            f"adversarial training needs epsilon > 0, steps >= 1 and alpha > 0; got "
            f"epsilon={epsilon}, steps={steps}, alpha={alpha}"
        )
    tap = _EmbeddingTap(embeddings, pad_id)
    try:
        clean = loss_of()
        (g,) = torch.autograd.grad(clean, tap.output, retain_graph=True)  # (B, T, D)
        mask = tap.mask
        if method == "fgm":
            delta = epsilon * _per_example_unit(g, mask)
        else:
            delta = torch.zeros_like(g, dtype=torch.float32)
            for step in range(steps):
                if step > 0:  # the gradient at the current delta
                    tap.delta = delta.requires_grad_()
                    (g,) = torch.autograd.grad(loss_of(), tap.delta)
                delta = _project(delta.detach() + alpha * _per_example_unit(g, mask), epsilon)
        tap.delta = delta.detach()
        adversarial = loss_of()
    finally:
        tap.handle.remove()
    return AdversarialLoss(clean, adversarial, tap.delta * mask)
