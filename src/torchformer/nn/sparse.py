"""Sparse attention patterns: which keys each query may see, and a kernel whose cost
grows with the pattern, not with T².

Full attention compares every query with every key: time and memory O(T²). A sliding
window (Beltagy et al. 2020, "Longformer"; Child et al. 2019) lets token i see only the
keys within ``window`` positions — |i − j| ≤ w, or 0 ≤ i − j ≤ w for a causal decoder —
so each query costs O(w) and a sequence O(T·w). A few *global* positions (Longformer's
[CLS] or question tokens) see and are seen by every position; ``dilation`` d spreads
the window (|i − j| ≤ w·d, only every d-th key), reaching further for the same cost.

Two paths compute the same thing, as for full attention (``nn.attention``):

- ``pattern_mask`` builds the pattern as an explicit (1, 1, T, S) boolean mask for the
  readable reference path (and the parity tests): still O(T²) memory.
- ``sliding_window_attention`` computes it in chunks: the sequence is cut into chunks
  of c = w·d queries; chunk n sees the keys of chunks n−1, n and n+1 (3c keys; causal:
  n−1 and n, 2c), which hold every key within reach, and a band mask inside them keeps
  exactly the pattern. The neighbouring chunks are slices of the keys, not copies;
  scores are (B, H, T/c, c, 3c): O(T·w) time and memory. Global keys are appended to
  every chunk's keys (and hidden where the band already has them); global queries are
  computed apart, against all keys.

Conventions of other libraries: Longformer's ``attention_window`` is the two-sided
width, our ``window`` = attention_window / 2; Mistral's ``sliding_window`` W counts the
token itself, our causal ``window`` = W − 1.

Shapes: B batch, H heads, T queries, S keys (S = T: self-attention), Dh head dim,
G global positions.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from torchformer.nn.block_sparse import block_sparse_mask

__all__ = [
    "AttentionPattern",
    "fallbacks",
    "pattern_mask",
    "record_fallback",
    "sliding_window_attention",
]

logger = logging.getLogger(__name__)
# The chunked kernel's score block per step (see the kernel). Measured fwd+bwd, H = 4,
# w = 256, T = 2k/4k/8k/16k on a 32 MiB L3: 8 MiB 66/133/281/781 ms, 16 MiB
# 64/131/277/600, 32 MiB 60/113/240/553, 64 MiB 59/110/240/668; one group 76/228/488/-.
GROUP_BYTES = 32 * 2**20
_FALLBACKS: Counter = Counter()


def record_fallback(pattern: AttentionPattern, reason: str) -> None:
    """Count a call that ran as dense masked attention (and log the first of each reason)."""
    key = f"{pattern.kind}: {reason}"
    if key not in _FALLBACKS:
        logger.warning(
            "%s: the chunked kernel does not take it; dense attention under the pattern's "
            "mask instead (fallback: dense; same result, O(T²) time and memory)",
            key,
        )
    _FALLBACKS[key] += 1


def fallbacks(*, reset: bool = False) -> dict[str, int]:
    """Calls that fell back to dense attention so far, by kind and reason."""
    out = dict(_FALLBACKS)
    if reset:
        _FALLBACKS.clear()
    return out


Kind = Literal["full", "sliding_window", "block_sparse", "lsh"]
KINDS = ("full", "sliding_window", "block_sparse", "lsh")


@dataclass(frozen=True)
class AttentionPattern:
    """Which keys a query may attend to (``kind``) and its settings.

    Attributes:
        kind: "full" (every key), "sliding_window" (this module), "block_sparse" (BigBird,
            ``nn.block_sparse``) or "lsh" (Reformer, ``nn.lsh``).
        window: sliding_window: one-sided reach w, in positions (w·dilation keys away).
        dilation: sliding_window: d ≥ 1: only keys at multiples of d, up to w·d away.
        global_tokens: sliding_window: positions that attend to, and are attended by,
            every position.
        block_size: block_sparse: b, tokens per block.
        window_blocks: block_sparse: neighbouring blocks seen on each side (BigBird: 1,
            three blocks in all).
        global_blocks: block_sparse: blocks that see and are seen by every block; negative
            numbers count from the end (BigBird's ITC: the first and the last, (0, -1)).
        random_blocks: block_sparse: r further key blocks per query block, drawn from
            the others with a generator seeded by ``seed`` (the same for every call on a
            sequence of the same number of blocks).
        random_eval: block_sparse: the random blocks outside training. "sampled"
            (default, the paper's pattern): the same seeded draw as in training.
            "first_block": r copies of block 0, counted r more times in the softmax —
            what ``transformers``' BigBird does in eval mode (its random indices are
            then all zero); set by the BigBird checkpoint loader for equal outputs.
        buckets: lsh: hash buckets per round (even).
        hash_rounds: lsh: independent hashings whose attentions are combined.
        chunk_size: lsh: queries per chunk of the sorted sequence; a chunk sees its own
            and the previous chunk's keys.
        seed: block_sparse's random blocks and lsh's random rotations.
        causal: a decoder's pattern: keys after the query are hidden too (sliding_window,
            lsh). ``MultiHeadAttention`` applies a causal pattern itself only to calls
            without a mask and without a cache (training on unpadded blocks); a decoder's
            own mask (padding, generation) must then already hold the pattern.
        fallback: what the fast path does with a call its kernel cannot take (a mask
            other than key padding, an additive bias): "error" (default) raises naming the
            kind and the shape; "dense" computes the same result as dense attention under
            the pattern's mask (O(T²)), logs it once and counts it (``fallbacks()``, which
            the training loop writes into the run's ``metrics.jsonl``).
    """

    kind: Kind = "full"
    window: int = 128
    dilation: int = 1
    global_tokens: tuple[int, ...] = field(default_factory=tuple)
    block_size: int = 64
    window_blocks: int = 1
    global_blocks: tuple[int, ...] = (0, -1)
    random_blocks: int = 3
    random_eval: Literal["sampled", "first_block"] = "sampled"
    buckets: int = 32
    hash_rounds: int = 2
    chunk_size: int = 64
    seed: int = 0
    causal: bool = False
    fallback: Literal["error", "dense"] = "error"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"attention kind must be one of {KINDS}, got {self.kind!r}")
        positive = ("block_size", "window_blocks", "buckets", "hash_rounds", "chunk_size")
        bad = [f"{name}={getattr(self, name)}" for name in positive if getattr(self, name) < 1]
        if self.random_blocks < 0:
            bad.append(f"random_blocks={self.random_blocks}")
        if self.causal and self.kind == "block_sparse":
            bad.append("causal=True (BigBird's pattern is bidirectional)")
        if self.buckets % 2:
            bad.append(f"buckets={self.buckets} (must be even: ±rotations)")
        if bad:
            raise ValueError(f"attention kind {self.kind!r}: bad settings {', '.join(bad)}")
        if self.window < 1 or self.dilation < 1:
            raise ValueError(
                f"sliding_window needs window ≥ 1 and dilation ≥ 1, got window={self.window}, "
                f"dilation={self.dilation}"
            )
        if self.random_eval not in ("sampled", "first_block"):
            raise ValueError(
                f"random_eval must be 'sampled' or 'first_block', got {self.random_eval!r}"
            )
        if self.fallback not in ("error", "dense"):
            raise ValueError(
                f"attention fallback must be 'error' or 'dense', got {self.fallback!r}"
            )
        if any(p < 0 for p in self.global_tokens):
            raise ValueError(f"global_tokens must be positions ≥ 0, got {self.global_tokens}")
        object.__setattr__(self, "global_tokens", tuple(sorted(set(self.global_tokens))))
        object.__setattr__(self, "global_blocks", tuple(self.global_blocks))

    @property
    def reach(self) -> int:
        """The farthest key a query sees in the window: w·d positions."""
        return self.window * self.dilation


def pattern_mask(
    pattern: AttentionPattern,
    t: int,
    *,
    causal: bool = False,
    device: torch.device | None = None,
    training: bool = False,
) -> Tensor | None:
    """The pattern as an explicit (1, 1, T, T) keep-mask (None for full non-causal attention).

    Causal when asked or when the pattern is. LSH has no mask of positions: its keys depend
    on the data (``nn.lsh.lsh_bias``). ``training``: block_sparse's random blocks follow
    ``random_eval`` outside training."""
    causal = causal or pattern.causal
    if pattern.kind == "lsh":
        raise ValueError("the lsh pattern depends on the data: build it with nn.lsh.lsh_bias")
    if pattern.kind == "block_sparse":
        if causal:
            raise ValueError(
                "block_sparse is BigBird's bidirectional pattern; it has no causal form"
            )
        return block_sparse_mask(pattern, t, device=device, training=training)
    i = torch.arange(t, device=device)[:, None]  # (T, 1) queries
    j = torch.arange(t, device=device)[None, :]  # (1, T) keys
    if pattern.kind == "full":
        keep = j <= i if causal else None
        return None if keep is None else keep[None, None]
    offset = i - j
    keep = offset.abs() <= pattern.reach
    if pattern.dilation > 1:
        keep &= offset % pattern.dilation == 0
    globals_ = _global_index(pattern.global_tokens, t, device)
    if globals_.numel():  # (a comparison, not a scatter: the mask also goes into ONNX)
        is_global = (torch.arange(t, device=device)[:, None] == globals_[None, :]).any(-1)
        keep |= is_global[:, None] | is_global[None, :]
    if causal:
        keep &= offset >= 0
    return keep[None, None]  # (1, 1, T, T)


def _global_index(positions: Sequence[int], t: int, device: torch.device | None) -> Tensor:
    return torch.tensor([p for p in positions if p < t], dtype=torch.long, device=device)


def sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pattern: AttentionPattern,
    *,
    causal: bool = False,
    key_mask: Tensor | None = None,
    scale: float | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> Tensor:
    """Sliding-window (+ global) self-attention in O(T·w) time and memory.

    Args:
        q, k, v: (B, H, T, Dh) (self-attention: queries and keys at the same positions).
        pattern: a "sliding_window" pattern.
        causal: hide keys after the query too.
        key_mask: (B, T) boolean, True for real tokens (padding hidden).
        scale: score multiplier (default 1/sqrt(Dh)).
        dropout / training: dropout on the attention probabilities (training only).

    Returns:
        (B, H, T, Dh), equal (up to rounding) to dense attention under ``pattern_mask``
        for every query that sees at least one real key. (A query that sees none — only
        padding in reach — gets an average over its band, where the dense reference
        averages all keys: padding positions' outputs are not defined either way.)
    """
    B, H, T, Dh = q.shape
    scale = 1.0 / math.sqrt(Dh) if scale is None else scale
    c = pattern.reach  # chunk size: a chunk and its two neighbours hold every key in reach
    n = -(-T // c)
    pad = n * c - T
    neg = torch.finfo(q.dtype).min

    # Keys and values with one empty chunk either side, as (B, H, n + 2, c, Dh) views: chunk
    # i's neighbours are rows i, i + 1, i + 2 — slices, never copies of the band.
    kp = F.pad(k, (0, 0, c, c + pad)).view(B, H, n + 2, c, Dh)
    vp = F.pad(v, (0, 0, c, c + pad)).view(B, H, n + 2, c, Dh)
    parts = (0, 1) if causal else (0, 1, 2)  # previous, own, next chunk (causal: no next)
    W = len(parts) * c  # band width
    qc = F.pad(q, (0, 0, 0, pad)).view(B, H, n, c, Dh)  # (B, H, n, c, Dh)
    device = q.device
    globals_ = _global_index(pattern.global_tokens, T, device)
    in_band_global = None
    if globals_.numel():  # a global key is seen through the global columns below, not twice
        slots = torch.arange(T + 2 * c + pad, device=device) - c  # padded slot -> position
        in_band_global = (slots[:, None] == globals_[None, :]).any(-1)  # (no scatter: ONNX)
        in_band_global = in_band_global.unfold(0, W, c)[:n]  # (n, W)
    real = None
    if key_mask is not None:
        real = F.pad(key_mask.bool(), (c, c + pad)).unfold(1, W, c)[:, :n]  # (B, n, W)

    def band(s: int, e: int) -> Tensor:
        """Output of query chunks s..e-1: (B, H, e - s, c, Dh)."""
        m = e - s
        scores = torch.cat(
            [
                torch.matmul(qc[:, :, s:e], kp[:, :, s + j : s + j + m].transpose(-1, -2))
                for j in parts
            ],
            dim=-1,
        ).mul_(scale)  # (B, H, m, c, W)
        rows = torch.arange(s, e, device=device)[:, None] * c
        qpos = rows + torch.arange(c, device=device)  # (m, c)
        kpos = rows - c + torch.arange(W, device=device)  # (m, W)
        offset = qpos[:, :, None] - kpos[:, None, :]  # (m, c, W)
        keep = (offset.abs() <= c) & (kpos[:, None, :] >= 0) & (kpos[:, None, :] < T)
        if pattern.dilation > 1:
            keep &= offset % pattern.dilation == 0
        if causal:
            keep &= offset >= 0
        if in_band_global is not None:
            keep &= ~in_band_global[s:e, None, :]
        keep = keep[None, None]  # (1, 1, m, c, W)
        if real is not None:
            keep = keep & real[:, None, s:e, None, :]
        scores = scores.masked_fill_(~keep, neg)
        if globals_.numel():  # every query also sees the global keys
            kg = k[:, :, globals_]  # (B, H, G, Dh)
            gscores = torch.matmul(qc[:, :, s:e], kg[:, :, None].transpose(-1, -2)) * scale
            gkeep = torch.ones(m, c, len(globals_), dtype=torch.bool, device=device)
            if causal:
                gkeep &= globals_[None, None, :] <= qpos[:, :, None]
            gkeep = gkeep[None, None]
            if key_mask is not None:
                gkeep = gkeep & key_mask.bool()[:, globals_][:, None, None, None, :]
            gscores = gscores.masked_fill(~gkeep, neg)
            scores = torch.cat([scores, gscores], dim=-1)  # (B, H, m, c, W + G)
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        if dropout and training:
            probs = F.dropout(probs, p=dropout)
        out = sum(
            torch.matmul(probs[..., i * c : (i + 1) * c], vp[:, :, s + j : s + j + m])
            for i, j in enumerate(parts)
        )  # (B, H, m, c, Dh)
        if globals_.numel():
            out = out + torch.matmul(probs[..., W:], v[:, :, globals_][:, :, None])
        return out

    # Chunks in groups whose score block stays within GROUP_BYTES: each step's operands
    # then stay in the CPU's cache between the matmul, the mask and the softmax (one pass
    # over all of them at once falls out of a 32 MiB L3 from T = 4k with H = 4, c = 256,
    # and cost 3× per doubling there instead of 2×; much smaller groups cost per-step
    # overhead instead).
    per_chunk = B * H * c * (W + globals_.numel()) * q.element_size()
    group = max(1, GROUP_BYTES // per_chunk)
    out = torch.cat([band(s, min(s + group, n)) for s in range(0, n, group)], dim=2)
    out = out.reshape(B, H, n * c, Dh)[:, :, :T]

    if globals_.numel():  # global queries see every key: dense rows, G of them
        full_keep = None
        if causal:
            full_keep = torch.arange(T, device=device)[None, :] <= globals_[:, None]  # (G, T)
            full_keep = full_keep[None, None]
        if key_mask is not None:
            real = key_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
            full_keep = real if full_keep is None else full_keep & real
        gq = q[:, :, globals_]  # (B, H, G, Dh)
        s = torch.matmul(gq, k.transpose(-1, -2)) * scale  # (B, H, G, T)
        if full_keep is not None:
            s = s.masked_fill(~full_keep, neg)
        gprobs = F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
        if dropout and training:
            gprobs = F.dropout(gprobs, p=dropout)
        gout = torch.matmul(gprobs, v)  # (B, H, G, Dh)
        # Put the G rows in place with a gather and a select (index_copy's scatter does
        # not survive ONNX export with a dynamic length).
        is_global = torch.arange(T, device=device)[:, None] == globals_[None, :]  # (T, G)
        row = is_global.long().argmax(-1)  # (T,) which global row, 0 elsewhere
        out = torch.where(is_global.any(-1)[:, None], gout[:, :, row], out)
    return out
