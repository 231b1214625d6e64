"""Relative positions: T5's bias and Transformer-XL's attention.

T5 relative position bias (Raffel et al. 2020, section 2.1; Shaw et al. 2018).

Instead of adding positions to the input, T5 adds a learned scalar per head to
every attention score, chosen by the bucketed distance (key - query). Small
distances get their own bucket; larger ones share log-spaced buckets up to
``max_distance``. The encoder is bidirectional (half the buckets for each
direction); the decoder is causal (only the past).

Returns a bias of shape (1, H, T, S) added to the scores of every layer.

Transformer-XL (Dai et al. 2019) instead scores every query–key pair with the sinusoid
of their distance through learned projections (``RelativeMultiHeadAttention``), which
lets a layer attend to a memory of the previous segment's hidden states.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from torchformer.nn.attention import (
    AttnImpl,
    MultiHeadAttention,
    fast_attention,
    reference_attention,
)
from torchformer.nn.linear import Linear
from torchformer.nn.positional import sinusoidal_table


def relative_position_bucket(
    relative_position: Tensor, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> Tensor:
    """Map signed distances (key - query) to bucket indices in [0, num_buckets)."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = -torch.clamp(relative_position, max=0)  # only the past: distance >= 0
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # Log-spaced buckets between max_exact and max_distance.
    log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(
        max_distance / max_exact
    )
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """Learned per-head bias by bucketed relative distance.

    Args:
        n_heads: heads H.
        num_buckets: number of distance buckets (T5: 32).
        max_distance: distance beyond which all share the last bucket (T5: 128).
        bidirectional: True for the encoder, False for the causal decoder.
    """

    def __init__(
        self,
        n_heads: int,
        *,
        num_buckets: int = 32,
        max_distance: int = 128,
        bidirectional: bool = True,
    ) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.embedding = nn.Embedding(num_buckets, n_heads)

    def forward(self, t: int, s: int, *, offset: int = 0) -> Tensor:
        """Bias for T queries at positions offset..offset+T-1 over S keys 0..S-1.

        Returns:
            (1, H, T, S) float bias.
        """
        device = self.embedding.weight.device
        q_pos = torch.arange(offset, offset + t, device=device)[:, None]  # (T, 1)
        k_pos = torch.arange(s, device=device)[None, :]  # (1, S)
        buckets = relative_position_bucket(
            k_pos - q_pos,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )  # (T, S)
        return self.embedding(buckets).permute(2, 0, 1)[None]  # (1, H, T, S)


class RelativeMultiHeadAttention(MultiHeadAttention):
    """Transformer-XL's attention: relative positions and a memory of the previous segment.

    Dai et al. 2019 ("Transformer-XL", section 3.3) score query i against key j as

        A_ij = (q_i + u)·k_j + (q_i + v)·W_R R_(i-j)

    (content, plus a global content bias u; position, plus a global position bias v):
    R_(i-j) is the fixed sinusoid of the *distance* i − j, projected by W_R
    (``pos_proj``), so no absolute position enters the model and a memory of earlier
    hidden states can be attended to at its true distance. u and v are learned per head.

    The queries are the T new positions; the keys and values are the M memory positions
    followed by the T new ones (S = M + T), so query i sits at slot M + i. The term
    (q_i + v)·W_R R_d is computed once for every distance d in [0, S) and gathered into
    (T, S) by d = M + i − j — the same numbers as the paper's "relative shift", written
    as an index. Both kernels of ``MultiHeadAttention`` run it: the position term is an
    additive bias, u is added to the queries.

    Args: as ``MultiHeadAttention`` (no grouped-query heads, no sparse pattern).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        bias: bool = True,
        dropout: float = 0.0,
        attn_impl: AttnImpl = "sdpa",
    ) -> None:
        super().__init__(d_model, n_heads, bias=bias, dropout=dropout, attn_impl=attn_impl)
        inner = n_heads * self.head_dim
        self.pos_proj = Linear(d_model, inner, bias=False)  # W_R
        self.content_bias = nn.Parameter(torch.zeros(n_heads, self.head_dim))  # u
        self.position_bias = nn.Parameter(torch.zeros(n_heads, self.head_dim))  # v

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        *,
        memory: Tensor | None = None,
        distances: Tensor | None = None,
        return_attentions: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend causally from the new positions ``x`` (B, T, D) to ``memory`` (B, M, D)
        and ``x``: every query sees the whole memory and the new keys up to itself.

        ``distances``: ``sinusoidal_table(S, D)``, the sinusoids of distances 0..S−1
        (computed here when None; a stack passes one table to all its layers).

        Returns:
            (output (B, T, D), probabilities (B, H, T, S) or None).
        """
        B, T, D = x.shape
        context = x if memory is None else torch.cat([memory, x], dim=1)  # (B, S, D)
        S = context.size(1)
        M = S - T
        q = self._split_heads(self.q_proj(x))  # (B, H, T, Dh)
        k = self._split_heads(self.k_proj(context))  # (B, H, S, Dh)
        v = self._split_heads(self.v_proj(context))  # (B, H, S, Dh)
        if distances is None:
            distances = sinusoidal_table(S, D).to(device=x.device, dtype=x.dtype)  # (S, D)
        r = (
            self.pos_proj(distances).view(S, self.n_heads, self.head_dim).transpose(0, 1)
        )  # (H, S, Dh)
        by_distance = torch.matmul(q + self.position_bias[:, None], r.transpose(-1, -2))
        # (B, H, T, S): column d holds distance d; query i, key j are M + i - j apart.
        distance = (
            torch.arange(M, M + T, device=x.device)[:, None]
            - torch.arange(S, device=x.device)[None, :]
        )  # (T, S)
        index = distance.clamp(0, S - 1).expand(B, self.n_heads, T, S)
        scale = 1.0 / math.sqrt(self.head_dim)
        position_term = by_distance.gather(-1, index) * scale  # (B, H, T, S)
        mask = (distance >= 0)[None, None]  # (1, 1, T, S) causal
        q = q + self.content_bias[:, None]  # (B, H, T, Dh)
        p = self.dropout if self.training else 0.0
        probs = None
        if return_attentions or self.attn_impl == "reference":
            out, probs = reference_attention(
                q,
                k,
                v,
                mask=mask,
                bias=position_term,
                scale=scale,
                dropout=p,
                training=self.training,
            )
        else:
            out = fast_attention(
                q,
                k,
                v,
                mask=mask,
                bias=position_term,
                scale=scale,
                dropout=p,
                training=self.training,
            )
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.out_proj(out), (probs if return_attentions else None)
