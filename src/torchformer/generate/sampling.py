"""Choosing the next token by sampling: temperature, top-k and nucleus (top-p).

- Temperature divides the logits: < 1 sharpens the distribution, > 1 flattens it.
- Top-k keeps the k most likely tokens (Fan et al. 2018, "Hierarchical Neural
  Story Generation").
- Top-p keeps the smallest set of most likely tokens whose probability reaches
  p (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration").

Filtering sets the dropped logits to -inf; the most likely token always survives.
Shapes: B batch, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (B, V); the rest become -inf."""
    if k <= 0:
        raise ValueError(f"top_k must be positive, got {k}")
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep the smallest top set of each row whose probability mass reaches ``p``."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
    # Drop a token when the mass before it already reaches p; the first token always stays.
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= p  # (B, V)
    drop_sorted[..., 0] = False  # even when p rounds to 0 in float32 (p=5e-324)
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token per row from ``logits`` (B, V) -> ids (B,).

    Args:
        temperature: > 0; divides the logits before filtering.
        top_k: keep only the k most likely tokens.
        top_p: keep only the nucleus of probability mass p.
        generator: the random source (seed it for reproducible samples).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; use greedy decoding instead")
    # The temperature is used as a float32, within its range (one that rounds to 0 or inf
    # would make 0/0 or -inf/inf: NaN). A tiny one (or repetition penalty) overflows logits
    # to +inf, whose softmax is NaN: they become the largest float, still the most likely.
    finfo = torch.finfo(torch.float32)
    temperature = min(max(temperature, finfo.tiny), finfo.max)
    logits = (logits.float() / temperature).clamp(max=finfo.max)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]  # (B,)
