"""Block-sparse attention (BigBird, Zaheer et al. 2020): window + global + random blocks.

The sequence is cut into n blocks of b tokens. Query block i sees the key blocks

- of its window: i − w … i + w (BigBird: w = 1, three blocks),
- the global blocks (BigBird's ITC: the first and the last), and
- r random other blocks, drawn once per (seed, n) — the same for every layer and call,

and a global block sees, and is seen by, every block. Each query block then costs
(2w + 1 + g + r)·b keys: O(T) for a fixed pattern. BigBird's paper shows the three
parts together keep the expressive power of full attention (a universal approximator
of sequence functions, Turing complete), which a window alone does not.

Two paths compute the same thing, as for the sliding window (``nn.sparse``):

- ``block_sparse_mask``: the pattern as an explicit (1, 1, T, T) mask (reference path).
- ``block_sparse_attention``: gathers each query block's key blocks into one
  (n, K·b) band and attends within it; global query blocks are dense rows.

Unlike Hugging Face's ``BigBirdModel``, which silently switches to full attention when
the sequence is shorter than (5 + 2r)·b tokens, this kernel runs the pattern at every
length: a short sequence simply has fewer blocks to choose from (a query block sees
every block when n ≤ 2w + 1 + g + r).

Shapes: B batch, H heads, T tokens, Dh head dim, n = ⌈T / b⌉ blocks, K key blocks per
query block.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

# Score block per step; fwd+bwd, H = 4, b = 64, T = 2k/4k/8k/16k: 8 MiB 79/157/325/665 ms,
# 32 MiB 68/135/282/786.
GROUP_BYTES = 8 * 2**20

if TYPE_CHECKING:
    from torchformer.nn.sparse import AttentionPattern


def global_block_index(pattern: AttentionPattern, n: int) -> list[int]:
    """The global blocks of a sequence of n blocks (negative ones counted from the end)."""
    return sorted({g % n for g in pattern.global_blocks if -n <= g < n})


@lru_cache(maxsize=64)
def _layout(
    window: int,
    global_blocks: tuple[int, ...],
    random_blocks: int,
    seed: int,
    n: int,
    first_block: bool = False,
) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    globals_ = sorted({g % n for g in global_blocks if -n <= g < n})
    rows = []
    for i in range(n):  # in order: block i's draw depends on (seed, n, i) only
        seen = [j for j in range(i - window, i + window + 1) if 0 <= j < n]
        seen += [g for g in globals_ if g not in seen]
        if first_block:  # transformers' eval mode: r copies of block 0 (global rows: dense)
            rows.append(seen + ([0] * random_blocks if i not in globals_ else []))
            continue
        others = [j for j in range(n) if j not in seen]
        picks = torch.randperm(len(others), generator=generator)[:random_blocks].tolist()
        rows.append(seen + sorted(others[p] for p in picks))
    width = max(len(r) for r in rows)
    index = torch.full((n, width), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        index[i, : len(row)] = torch.tensor(row)
    return index, index >= 0


def block_layout(
    pattern: AttentionPattern, n: int, *, training: bool = False
) -> tuple[Tensor, Tensor]:
    """The key blocks each of n query blocks sees: window, global, then random blocks.

    Outside training a pattern with ``random_eval="first_block"`` lists block 0 r more
    times instead of the random blocks (a block may then appear more than once).

    Returns:
        (index (n, K) long, valid (n, K) bool): row i lists block i's key blocks, padded
        with -1 (``valid`` False) where it has fewer than K.
    """
    first_block = pattern.random_eval == "first_block" and not training
    return _layout(
        pattern.window_blocks,
        pattern.global_blocks,
        pattern.random_blocks,
        pattern.seed,
        n,
        first_block,
    )


def block_counts(pattern: AttentionPattern, n: int, *, training: bool = False) -> Tensor:
    """(n, n) long: how many times query block i sees key block j (0: not at all; more
    than 1 only for ``random_eval="first_block"`` outside training). Global rows and
    columns see each block once."""
    index, valid = block_layout(pattern, n, training=training)
    counts = torch.zeros(n, n, dtype=torch.long)
    rows = torch.arange(n)[:, None].expand_as(index)
    counts.index_put_((rows[valid], index[valid]), torch.ones_like(index[valid]), accumulate=True)
    globals_ = global_block_index(pattern, n)
    counts[globals_, :] = 1
    counts[:, globals_] = counts[:, globals_].clamp(min=1)
    return counts


def block_table(pattern: AttentionPattern, n: int, *, training: bool = False) -> Tensor:
    """(n, n) bool: whether query block i sees key block j (global rows and columns full)."""
    return block_counts(pattern, n, training=training) > 0


def block_sparse_mask(pattern: AttentionPattern, t: int, device=None, *, training=False) -> Tensor:
    """The pattern as an explicit (1, 1, T, T) keep-mask."""
    b = pattern.block_size
    blocks = block_table(pattern, math.ceil(t / b), training=training)
    keep = blocks.repeat_interleave(b, 0).repeat_interleave(b, 1)[:t, :t]
    return keep[None, None].to(device)


def block_sparse_bias(
    pattern: AttentionPattern, t: int, device=None, *, training=False
) -> Tensor | None:
    """The log of each key's multiplicity, (1, 1, T, T), added to the scores of the
    reference path so that it counts a repeated block as the kernel does; None when no
    block repeats (every pattern except ``random_eval="first_block"`` outside training)."""
    b = pattern.block_size
    counts = block_counts(pattern, math.ceil(t / b), training=training)
    if counts.max() <= 1:
        return None
    logs = counts.clamp(min=1).float().log()
    bias = logs.repeat_interleave(b, 0).repeat_interleave(b, 1)[:t, :t]
    return bias[None, None].to(device)


def block_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pattern: AttentionPattern,
    *,
    key_mask: Tensor | None = None,
    scale: float | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> Tensor:
    """Block-sparse self-attention in O(T·K·b) time and memory.

    Args:
        q, k, v: (B, H, T, Dh) self-attention.
        pattern: a "block_sparse" pattern.
        key_mask: (B, T) boolean, True for real tokens.
        scale: score multiplier (default 1/sqrt(Dh)).

    Returns:
        (B, H, T, Dh), equal (up to rounding) to dense attention under
        ``block_sparse_mask`` for every query that sees at least one real key.
    """
    B, H, T, Dh = q.shape
    scale = 1.0 / math.sqrt(Dh) if scale is None else scale
    b = pattern.block_size
    n = math.ceil(T / b)
    pad = n * b - T
    device, neg = q.device, torch.finfo(q.dtype).min
    index, valid = (t.to(device) for t in block_layout(pattern, n, training=training))  # (n, K)
    K = index.size(1)
    safe = index.clamp(min=0)

    qb = F.pad(q, (0, 0, 0, pad)).view(B, H, n, b, Dh)
    kb = F.pad(k, (0, 0, 0, pad)).view(B, H, n, b, Dh)
    vb = F.pad(v, (0, 0, 0, pad)).view(B, H, n, b, Dh)
    kpos = (safe[:, :, None] * b + torch.arange(b, device=device)).reshape(n, K * b)  # (n, K·b)
    keep = (valid[:, :, None].expand(n, K, b).reshape(n, K * b) & (kpos < T))[None]  # (1, n, K·b)
    if key_mask is not None:
        real = F.pad(key_mask.bool(), (0, pad))  # (B, n·b)
        keep = keep & real[:, kpos]  # (B, n, K·b)

    def rows(s: int, e: int) -> Tensor:
        """Output of query blocks s..e-1: (B, H, e - s, b, Dh)."""
        m = e - s
        keys, values = kb[:, :, safe[s:e]], vb[:, :, safe[s:e]]  # (B, H, m, K, b, Dh)
        scores = torch.einsum("bhnqd,bhnkcd->bhnqkc", qb[:, :, s:e], keys)
        scores = scores.reshape(B, H, m, b, K * b) * scale
        scores = scores.masked_fill(~keep[:, None, s:e, None, :], neg)
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        if dropout and training:
            probs = F.dropout(probs, p=dropout)
        return torch.einsum("bhnqkc,bhnkcd->bhnqd", probs.view(B, H, m, b, K, b), values)

    # Query blocks in groups whose score block stays within GROUP_BYTES (cache-resident
    # steps, as the sliding-window kernel does).
    group = max(1, GROUP_BYTES // (B * H * b * K * b * q.element_size()))
    out = torch.cat([rows(s, min(s + group, n)) for s in range(0, n, group)], dim=2)
    out = out.reshape(B, H, n * b, Dh)[:, :, :T]

    globals_ = global_block_index(pattern, n)
    if globals_:  # a global block's queries see every key: dense rows
        rows = torch.cat([torch.arange(g * b, min((g + 1) * b, T)) for g in globals_]).to(device)
        s = torch.matmul(q[:, :, rows], k.transpose(-1, -2)) * scale  # (B, H, G·b, T)
        if key_mask is not None:
            s = s.masked_fill(~key_mask.bool()[:, None, None, :], neg)
        gprobs = F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
        if dropout and training:
            gprobs = F.dropout(gprobs, p=dropout)
        out = out.index_copy(2, rows, torch.matmul(gprobs, v))
    return out
