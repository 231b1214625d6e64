"""Key/value cache for incremental (token-by-token) decoding.

At decoding step t a causal self-attention layer needs the keys and values of
positions 0..t. Recomputing them is O(t) work per step; caching them makes a
step O(1) in the projections. Cross-attention keys and values depend only on
the encoder output, so they are computed once and kept.

Shapes: B batch (or batch x beams), H heads, S cached length, Dh head dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class LayerCache:
    """One layer's cached self-attention and cross-attention keys/values.

    Self-attention keys/values live in buffers with room to grow: a new step writes
    into the free slots, and a full buffer doubles its capacity. Appending is then
    amortised O(1) per token instead of the O(S) copy of concatenating the whole
    past at every step. ``k``/``v`` are views of the filled part. The cache is for
    inference: its buffers are written in place. With autograd on (a cached forward
    that is differentiated), appending concatenates instead, as a plain cache would.
    """

    cross_k: Tensor | None = None  # (B, H, S_src, Dh)
    cross_v: Tensor | None = None  # (B, H, S_src, Dh)
    length: int = 0  # positions filled
    _k: Tensor | None = field(default=None, repr=False)  # (B, H, capacity, Dh)
    _v: Tensor | None = field(default=None, repr=False)  # (B, H, capacity, Dh)

    @property
    def k(self) -> Tensor | None:
        """Cached keys (B, H, S, Dh), or None before the first step."""
        return None if self._k is None else self._k[:, :, : self.length]

    @property
    def v(self) -> Tensor | None:
        """Cached values (B, H, S, Dh), or None before the first step."""
        return None if self._v is None else self._v[:, :, : self.length]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add this step's keys/values (B, H, T, Dh) and return all of them."""
        if self._k is None:  # the first step (the prompt): kept as it is, no copy
            self._k, self._v, self.length = k, v, k.size(2)
            return k, v
        if torch.is_grad_enabled() and (k.requires_grad or self._k.requires_grad):
            # Autograd saved views of the buffer for backward: never write into it.
            self._k = torch.cat([self._k[:, :, : self.length], k], dim=2)
            self._v = torch.cat([self._v[:, :, : self.length], v], dim=2)
            self.length = self._k.size(2)
            return self._k, self._v
        end = self.length + k.size(2)
        if end > self._k.size(2):
            capacity = max(end, 2 * self._k.size(2))
            self._k, self._v = (self._grow(buf, capacity) for buf in (self._k, self._v))
        self._k[:, :, self.length : end] = k
        self._v[:, :, self.length : end] = v
        self.length = end
        return self.k, self.v

    def _grow(self, buffer: Tensor, capacity: int) -> Tensor:
        B, H, _, Dh = buffer.shape
        grown = buffer.new_empty(B, H, capacity, Dh)
        grown[:, :, : self.length] = buffer[:, :, : self.length]
        return grown

    def select(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search reorders hypotheses)."""
        for name in ("_k", "_v", "cross_k", "cross_v"):
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
        return self.layers[0].length

    def select(self, index: Tensor) -> None:
        """Reorder/select batch rows in every layer, e.g. after a beam search step."""
        for layer in self.layers:
            layer.select(index)


class SegmentMemory:
    """Transformer-XL's memory: each layer's input over the last ``length`` positions.

    After a segment, ``update`` appends every layer's input hidden states (B, T, D) to
    that layer's memory, keeps the newest ``length`` positions and detaches them: the
    next segment attends to them, but no gradient flows back into the segment they came
    from (Dai et al. 2019, section 3.2). Used for training (segment after segment) and
    for generation (``length`` new positions, one token at a time), where ``select``
    reorders rows as ``KVCache.select`` does.

    Args:
        n_layers: layers L.
        length: positions kept (0: no memory).
    """

    def __init__(self, n_layers: int, length: int) -> None:
        if length < 0:
            raise ValueError(f"memory length must be >= 0, got {length}")
        self.length = length
        self.layers: list[Tensor | None] = [None] * n_layers

    def __getitem__(self, i: int) -> Tensor | None:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def seq_len(self) -> int:
        """Positions held (0 before the first segment)."""
        first = self.layers[0]
        return 0 if first is None else first.size(1)

    def update(self, inputs: list[Tensor]) -> None:
        """Append each layer's input (B, T, D) and keep the last ``length`` positions."""
        if self.length == 0:
            return
        for i, new in enumerate(inputs):
            old = self.layers[i]
            joined = new if old is None else torch.cat([old, new], dim=1)  # (B, M + T, D)
            self.layers[i] = joined[:, -self.length :].detach()

    def select(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search reorders hypotheses)."""
        self.layers = [None if m is None else m.index_select(0, index) for m in self.layers]

    def state_dict(self) -> dict[str, Tensor]:
        return {str(i): m for i, m in enumerate(self.layers) if m is not None}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.layers = [state.get(str(i)) for i in range(len(self.layers))]
