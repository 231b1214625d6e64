"""Absolute positional encodings.

- Sinusoidal (Vaswani et al. 2017, section 3.5): PE(pos, 2i) = sin(pos / 10000^(2i/D)),
  PE(pos, 2i+1) = cos(pos / 10000^(2i/D)). Fixed, not learned; extrapolates in form.
- Learned (BERT, GPT-2): one trained vector per position up to ``max_len``.

Both map positions (B, T) or (T,) to vectors (..., T, D).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_table(max_len: int, d_model: int) -> Tensor:
    """The (max_len, D) sinusoid table; even columns sine, odd columns cosine."""
    position = torch.arange(max_len, dtype=torch.float32)[:, None]  # (L, 1)
    div_term = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model)
    )
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term[: d_model // 2])
    return table  # (L, D)


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoidal positions (a buffer, not saved in checkpoints).

    Args:
        d_model: width D.
        max_len: longest sequence supported.
    """

    def __init__(self, d_model: int, max_len: int = 5000) -> None:
        super().__init__()
        self.register_buffer("table", sinusoidal_table(max_len, d_model), persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        """positions: integer tensor (T,) or (B, T) -> (..., T, D)."""
        return self.table[positions]


class LearnedPositionalEmbedding(nn.Embedding):
    """A trained vector per absolute position (BERT, GPT-2)."""

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__(max_len, d_model)
