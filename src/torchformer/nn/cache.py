"""Key/value cache for incremental (token-by-token) decoding.

At decoding step t a causal self-attention layer needs the keys and values of
positions 0..t. Recomputing them is O(t) work per step; caching them makes a
step O(1) in the projections. Cross-attention keys and values depend only on
the encoder output, so they are computed once and kept.

Shapes: B batch (or batch x beams), H heads, S cached length, Dh head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LayerCache:
    """One layer's cached self-attention and cross-attention keys/values."""

    k: Tensor | None = None  # (B, H, S, Dh)
    v: Tensor | None = None  # (B, H, S, Dh)
    cross_k: Tensor | None = None  # (B, H, S_src, Dh)
    cross_v: Tensor | None = None  # (B, H, S_src, Dh)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add this step's keys/values (B, H, T, Dh) and return all of them."""
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat([self.k, k], dim=2)  # (B, H, S + T, Dh)
            self.v = torch.cat([self.v, v], dim=2)  # (B, H, S + T, Dh)
        return self.k, self.v

    def select(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search reorders hypotheses)."""
        for name in ("k", "v", "cross_k", "cross_v"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, index))


class KVCache:
    """Per-layer caches of a decoder stack.

    Args:
        n_layers: number of decoder layers.
    """

    def __init__(self, n_layers: int) -> None:
        self.layers = [LayerCache() for _ in range(n_layers)]

    def __getitem__(self, i: int) -> LayerCache:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def seq_len(self) -> int:
        """Number of positions already cached (0 before the first step)."""
        k = self.layers[0].k
        return 0 if k is None else k.size(2)

    def select(self, index: Tensor) -> None:
        """Reorder/select batch rows in every layer, e.g. after a beam search step."""
        for layer in self.layers:
            layer.select(index)
