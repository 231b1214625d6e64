"""AdamW with weight-decay parameter groups.

Which parameters get weight decay follows Hugging Face's Trainer and the BERT
recipe (Devlin et al., 2019): every weight *matrix* is decayed, including the
token and position embeddings; biases and normalisation gains are not. We
identify the latter by structure rather than by name: all parameters owned by a
normalisation module (``LayerNorm``, ``RMSNorm``, ``GroupNorm``, batch norms, or
any module whose class name ends in ``Norm``) and every parameter with fewer
than two dimensions (biases, gains, scalars). Decaying embeddings is the HF
default; pass ``decay_embeddings=False`` to follow the GPT-2/nanoGPT choice of
leaving them undecayed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["build_optimizer", "param_groups"]

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or type(module).__name__.endswith("Norm")


def param_groups(
    model: nn.Module, weight_decay: float, *, decay_embeddings: bool = True
) -> list[dict[str, Any]]:
    """Split the trainable parameters of ``model`` into a decayed and an undecayed group.

    Frozen parameters (``requires_grad=False``) are left out; a parameter shared by
    two modules (tied embeddings) appears once. Empty groups are dropped.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay, "group_name": "decay",
        "param_names": [...]}, {... "weight_decay": 0.0, "group_name": "no_decay" ...}]``.
    """
    no_decay_ids: set[int] = set()
    for module in model.modules():
        skip_all = _is_norm(module) or (not decay_embeddings and isinstance(module, nn.Embedding))
        for param in module.parameters(recurse=False):
            if skip_all or param.ndim < 2:
                no_decay_ids.add(id(param))

    decay: dict[str, nn.Parameter] = {}
    no_decay: dict[str, nn.Parameter] = {}
    for name, param in model.named_parameters():  # deduplicates shared parameters
        if param.requires_grad:
            (no_decay if id(param) in no_decay_ids else decay)[name] = param

    groups = [
        {
            "params": list(decay.values()),
            "weight_decay": weight_decay,
            "group_name": "decay",
            "param_names": list(decay),
        },
        {
            "params": list(no_decay.values()),
            "weight_decay": 0.0,
            "group_name": "no_decay",
            "param_names": list(no_decay),
        },
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    decay_embeddings: bool = True,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, with the fastest implementation for the device.

    When every parameter is on CUDA the fused kernel is used (one launch for all
    parameters); otherwise PyTorch picks (multi-tensor ``foreach`` where supported).

    Raises:
        ValueError: the model has no trainable parameters.
    """
    groups = param_groups(model, weight_decay, decay_embeddings=decay_embeddings)
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    params = [p for g in groups for p in g["params"]]
    fused = True if _all_on_cuda(params) else None
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)


def _all_on_cuda(params: Iterable[torch.Tensor]) -> bool:
    return all(p.is_cuda and p.is_floating_point() for p in params)
