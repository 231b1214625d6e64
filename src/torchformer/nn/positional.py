"""Absolute positional encodings.

- Sinusoidal (Vaswani et al. 2017, section 3.5): PE(pos, 2i) = sin(pos / 10000^(2i/D)),
  PE(pos, 2i+1) = cos(pos / 10000^(2i/D)). Fixed, not learned; extrapolates in form.
- Learned (BERT, GPT-2): one trained vector per position up to ``max_len``.

Both map positions (B, T) or (T,) to vectors (..., T, D).

- Rotary (RoPE, Su et al. 2021, "RoFormer"; Llama, Mistral, Qwen2): instead of adding a
  vector to the input, every attention layer rotates each pair of query/key features
  by an angle proportional to the position, pos * theta^(-2i/Dh), so that q·k depends on
  the positions only through their difference. Pairs are (i, i + Dh/2) — the "rotate
  half" layout of the Hugging Face Llama checkpoints.
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


class RotaryEmbedding(nn.Module):
    """cos/sin of the rotary angles for given positions.

    Args:
        head_dim: per-head width Dh (even).
        theta: the base of the angle frequencies (10,000 in RoFormer and Llama 2;
            500,000 in Llama 3; 1,000,000 in Qwen2).
    """

    def __init__(self, head_dim: int, *, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {head_dim}")
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        self.register_buffer("inv_freq", 1.0 / theta**exponents, persistent=False)  # (Dh/2,)

    def forward(
        self, positions: Tensor, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """positions (B, T) or (1, T) -> (cos, sin), each (B or 1, 1, T, Dh), in ``dtype``."""
        angles = positions.float()[..., None] * self.inv_freq  # (B, T, Dh/2), computed in fp32
        angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, T, Dh)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the feature pairs (i, i + Dh/2) of ``x`` (B, H, T, Dh) by the angles' cos/sin."""
    half = x.size(-1) // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # (B, H, T, Dh)
    return x * cos + rotated * sin
