"""T5 relative position bias (Raffel et al. 2020, section 2.1; Shaw et al. 2018).

Instead of adding positions to the input, T5 adds a learned scalar per head to
every attention score, chosen by the bucketed distance (key - query). Small
distances get their own bucket; larger ones share log-spaced buckets up to
``max_distance``. The encoder is bidirectional (half the buckets for each
direction); the decoder is causal (only the past).

Returns a bias of shape (1, H, T, S) added to the scores of every layer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


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
