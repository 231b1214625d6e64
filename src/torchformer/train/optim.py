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

Discriminative (layer-wise) learning rates, ``layer_lr_decay = d``: the parameters are
grouped by depth from the top (:func:`layer_groups`): the head (classifier, pooler and
anything else outside the encoder's stack) gets ``lr``, the top layer ``lr * d``, the
next ``lr * d**2``, ..., the embeddings ``lr * d**(L + 1)``: the layer-wise decay of
BEiT (Bao et al., 2022; ELECTRA's differs by one power of ``d``: its top layer gets
``lr * d**2``). ULMFiT's rule (Howard & Ruder, 2018, sec. 3.2)
``eta^(l-1) = eta^l / 2.6`` is ``d = 1 / 2.6``. Inside each depth the decay / no-decay
split above still holds: groups ``head.decay``, ``head.no_decay``, ``layer_3.decay``
(the encoder's ``layers.3``), ..., ``embeddings.no_decay``. Schedules scale each group's
own rate, so the ratios hold at every step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["build_optimizer", "layer_groups", "param_groups"]

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


def layer_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """The parameter names of ``model`` by depth, from the top: ``[("head", [...]),
    ("layer_{L-1}", [...]), ..., ("layer_0", [...]), ("embeddings", [...])]``.

    The stack is the one module that has both an ``embeddings`` module and a ``layers``
    ``ModuleList`` (``models.encoder.Encoder``); everything outside those two is the
    head. Every parameter appears once (shared ones under their first name), frozen
    ones included.

    Raises:
        ValueError: no such module, or more than one.
    """
    stacks = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "layers", None), nn.ModuleList)
        and isinstance(getattr(module, "embeddings", None), nn.Module)
    ]
    if len(stacks) != 1:
        found = [name or "(the model)" for name, _ in stacks] or "none"
        raise ValueError(
            "layer groups need one module with 'embeddings' and a 'layers' ModuleList "
            f"(an encoder); found {found} in {type(model).__name__}"
        )
    prefix, stack = stacks[0]
    prefix = f"{prefix}." if prefix else ""
    n_layers = len(stack.layers)
    labels = ["head", *(f"layer_{i}" for i in reversed(range(n_layers))), "embeddings"]
    names: list[list[str]] = [[] for _ in labels]
    for name, _ in model.named_parameters():
        depth = 0
        if name.startswith(f"{prefix}embeddings."):
            depth = n_layers + 1
        elif name.startswith(f"{prefix}layers."):
            depth = n_layers - int(name[len(prefix) + len("layers.") :].split(".")[0])
        names[depth].append(name)
    return list(zip(labels, names))


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    decay_embeddings: bool = True,
    lr: float | None = None,
    layer_lr_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Split the trainable parameters of ``model`` into a decayed and an undecayed group
    (per depth, with ``lr * layer_lr_decay**depth``, when ``layer_lr_decay`` is given).

    Frozen parameters (``requires_grad=False``) are left out; a parameter shared by
    two modules (tied embeddings) appears once. Empty groups are dropped.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay, "group_name": "decay",
        "param_names": [...]}, {... "weight_decay": 0.0, "group_name": "no_decay" ...}]``;
        with ``layer_lr_decay`` the same pair for every depth of :func:`layer_groups`,
        top first, named ``"head.decay"``, ``"layer_3.no_decay"``, ..., each with its
        ``"lr"``.

    Raises:
        ValueError: ``layer_lr_decay`` outside (0, 1], or given without ``lr``.
    """
    if layer_lr_decay is None:
        return _decay_split(model, weight_decay, decay_embeddings, model.named_parameters())
    if not 0.0 < layer_lr_decay <= 1.0:
        raise ValueError(f"layer_lr_decay must be in (0, 1], got {layer_lr_decay}")
    if lr is None:
        raise ValueError("param_groups: layer_lr_decay needs the peak lr")
    params = dict(model.named_parameters())
    groups = []
    for depth, (label, names) in enumerate(layer_groups(model)):
        for group in _decay_split(
            model, weight_decay, decay_embeddings, ((n, params[n]) for n in names)
        ):
            group["group_name"] = f"{label}.{group['group_name']}"
            group["lr"] = lr * layer_lr_decay**depth
            groups.append(group)
    return groups


def _decay_split(
    model: nn.Module,
    weight_decay: float,
    decay_embeddings: bool,
    named: Iterable[tuple[str, nn.Parameter]],
) -> list[dict[str, Any]]:
    no_decay_ids: set[int] = set()
    for module in model.modules():
        skip_all = _is_norm(module) or (not decay_embeddings and isinstance(module, nn.Embedding))
        for param in module.parameters(recurse=False):
            if skip_all or param.ndim < 2:
                no_decay_ids.add(id(param))

    decay: dict[str, nn.Parameter] = {}
    no_decay: dict[str, nn.Parameter] = {}
    for name, param in named:  # named_parameters() deduplicates shared parameters
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
    layer_lr_decay: float | None = None,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, with the fastest implementation for the device.

    When every parameter is on CUDA the fused kernel is used (one launch for all
    parameters); otherwise PyTorch picks (multi-tensor ``foreach`` where supported).
    ``layer_lr_decay``: discriminative learning rates (the module docstring); ``lr`` is
    then the head's rate. A parameter frozen later (gradual unfreezing) is still
    stepped only when it has a gradient: AdamW skips parameters whose ``grad`` is
    None, weight decay included.

    Raises:
        ValueError: the model has no trainable parameters.
    """
    groups = param_groups(
        model,
        weight_decay,
        decay_embeddings=decay_embeddings,
        lr=lr,
        layer_lr_decay=layer_lr_decay,
    )
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    params = [p for g in groups for p in g["params"]]
    fused = True if _all_on_cuda(params) else None
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)


def _all_on_cuda(params: Iterable[torch.Tensor]) -> bool:
    return all(p.is_cuda and p.is_floating_point() for p in params)
