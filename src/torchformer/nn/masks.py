"""Attention mask builders.

All masks here are boolean "may attend" masks: True keeps a key position,
False hides it. They broadcast against attention scores of shape (B, H, T, S).
"""

from __future__ import annotations

import torch
from torch import Tensor


def padding_mask(attention_mask: Tensor) -> Tensor:
    """Hide padded keys.

    Args:
        attention_mask: (B, S) with 1 (or True) for real tokens, 0 for padding.

    Returns:
        (B, 1, 1, S) boolean mask.
    """
    return attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)


def padding_mask_if_padded(attention_mask: Tensor | None) -> Tensor | None:
    """``padding_mask(attention_mask)``, or None when no position is padded.

    Without a mask, PyTorch's SDPA takes its fastest kernel: at batch 1 (never padded) the
    masked call took ~1.4x as long on a 2-core CPU (docs/results.md, issue 17). The check
    reads the mask's values, so while a graph is traced, compiled or exported the mask is
    always kept (the graph must serve padded inputs too).
    """
    if attention_mask is None:
        return None
    tracing = (
        torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.onnx.is_in_onnx_export()
    )
    if not tracing and bool(attention_mask.all()):
        return None
    return padding_mask(attention_mask)


def causal_mask(t: int, s: int | None = None, *, device: torch.device | None = None) -> Tensor:
    """Hide the future: query i may see keys 0..i (+ offset when S > T).

    With a KV cache the T new queries sit at the end of S keys, so query i
    is at absolute position S - T + i.

    Returns:
        (1, 1, T, S) boolean mask.
    """
    s = t if s is None else s
    q_pos = torch.arange(s - t, s, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(s, device=device)[None, :]  # (1, S)
    return (k_pos <= q_pos)[None, None]  # (1, 1, T, S)


def combine_masks(*masks: Tensor | None) -> Tensor | None:
    """Logical AND of any number of broadcastable masks (None is 'no mask')."""
    out = None
    for m in masks:
        if m is None:
            continue
        out = m if out is None else out & m
    return out


def causal_padding_mask(attention_mask: Tensor | None, t: int, s: int | None = None) -> Tensor:
    """Causal mask combined with a key padding mask of shape (B, S).

    Returns:
        (B or 1, 1, T, S) boolean mask.
    """
    s = t if s is None else s
    device = attention_mask.device if attention_mask is not None else None
    causal = causal_mask(t, s, device=device)
    return causal if attention_mask is None else causal & padding_mask(attention_mask)
