"""The position patterns on PyTorch's FlexAttention (``attn_impl="flex"``).

``torch.nn.attention.flex_attention`` takes a *mask_mod* — a function (batch, head,
query, key) -> keep — and ``create_block_mask`` turns it into a block mask: tiles of
128 × 128 (query, key) positions that are wholly hidden are skipped, so a sliding window
or BigBird's blocks cost O(T·w) in the compiled kernel (Triton on GPU, C++ on CPU),
without the chunked kernels of ``nn.sparse`` and ``nn.block_sparse``.

The mask_mods below are the patterns' definitions (the same sets as ``pattern_mask``),
plus key padding. LSH has no fixed positions (its buckets depend on the data) and is
not offered here.

FlexAttention is meant to run compiled (``torch.compile``): uncompiled it computes the
dense score matrix and warns. The first call compiles (on a 2-core CPU: minutes; on a
GPU: seconds), later calls with the same shapes reuse it. ``COMPILE = False`` (tests)
runs it eagerly: the same numbers, O(T²) memory.

Shapes: B batch, H heads, T tokens, Dh head dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache, lru_cache

import torch
from torch import Tensor

from torchformer.nn.block_sparse import block_table
from torchformer.nn.sparse import AttentionPattern

COMPILE = True  # tests set False: eager, the same numbers


def pattern_mask_mod(
    pattern: AttentionPattern, t: int, *, key_mask: Tensor | None = None, device=None
) -> Callable:
    """The pattern (and key padding, (B, T) bool) as a FlexAttention mask_mod."""
    if pattern.kind == "sliding_window":
        reach, dilation = pattern.reach, pattern.dilation
        is_global = torch.zeros(t, dtype=torch.bool, device=device)
        is_global[[p for p in pattern.global_tokens if p < t]] = True

        def keep(b, h, q, k):
            offset = q - k
            inside = offset.abs() <= reach
            if dilation > 1:
                inside = inside & (offset % dilation == 0)
            return inside | is_global[q] | is_global[k]

    elif pattern.kind == "block_sparse":
        size = pattern.block_size
        blocks = block_table(pattern, math.ceil(t / size)).to(device)

        def keep(b, h, q, k):
            return blocks[q // size, k // size]

    elif pattern.kind == "full":

        def keep(b, h, q, k):
            return q >= 0  # every key

    else:
        raise ValueError(
            f"attention kind {pattern.kind!r} has no FlexAttention mask (its keys depend on "
            "the data); use attn_impl 'sdpa' or 'reference'"
        )
    if pattern.causal:
        unmasked = keep

        def keep(b, h, q, k):
            return unmasked(b, h, q, k) & (k <= q)

    if key_mask is None:
        return keep
    real = key_mask.bool()

    def keep_real(b, h, q, k):
        return keep(b, h, q, k) & real[b, k]

    return keep_real


@lru_cache(maxsize=32)
def _position_block_mask(pattern: AttentionPattern, t: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    mod = pattern_mask_mod(pattern, t, device=device)
    return create_block_mask(mod, None, None, t, t, device=device)


@cache
def _compiled():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_pattern_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pattern: AttentionPattern,
    *,
    key_mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Self-attention under ``pattern`` on FlexAttention: (B, H, T, Dh), equal to dense
    attention under ``pattern_mask`` (and the key padding) for every query that sees a
    real key."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, _, T, _ = q.shape
    if key_mask is None:  # the same for every layer and call of this length: built once
        block_mask = _position_block_mask(pattern, T, str(q.device))
    else:
        mod = pattern_mask_mod(pattern, T, key_mask=key_mask, device=q.device)
        block_mask = create_block_mask(mod, B, None, T, T, device=q.device)
    run = _compiled() if COMPILE else flex_attention
    return run(q, k, v, block_mask=block_mask, scale=scale)
