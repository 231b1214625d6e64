"""LSH attention (Reformer, Kitaev et al. 2020): attend within hash buckets.

Softmax attention is dominated by the keys most similar to the query. Reformer finds
them with locality-sensitive hashing instead of comparing with every key:

- queries and keys are shared (Q = K, keys normalised to unit length), so a token's
  query and key fall in the same bucket;
- a round hashes every key with a random rotation R (Dh × buckets/2):
  h(x) = argmax([xR; −xR]) (angular LSH, Andoni et al. 2015);
- the sequence is sorted by (bucket, position) and cut into chunks of m tokens; each
  chunk's queries attend to the keys of their own, the previous and (not causal) the
  next chunk that share their bucket — every key of a bucket of at most m tokens is
  found (Reformer looks one chunk back; its ``num_chunks_after`` is our one ahead);
- a token attends to itself only when nothing else is in reach (its score gets −1e5:
  with Q = K it would otherwise dominate);
- ``hash_rounds`` independent hashings run in parallel and are combined by their
  softmax normalisers: out_i = Σ_r exp(lse_r,i − logsumexp_r lse_r,i) · o_r,i.

The definition this implements (``lsh_bias``, the reference path): dense attention in
which key j gets the additive term log N_ij, N_ij = the number of rounds in which i and
j share a bucket (−∞ when none), and −1e5 on the diagonal. The chunked kernel
(``lsh_attention``) equals it whenever no bucket holds more than m tokens; a bigger
bucket loses the keys outside the window (the paper's approximation). Time and memory
O(T·m·rounds).

The rotations are drawn from a generator seeded by the pattern's ``seed``: every call
hashes alike, so training and inference agree and the parity tests are reproducible.

Shapes: B batch, H heads, T tokens, Dh head dim, R rounds, m chunk size, n chunks.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from torchformer.nn.sparse import AttentionPattern

SELF_SCORE = -1e5  # Reformer's value for a token attending to itself


def shared_keys(q: Tensor) -> Tensor:
    """Reformer's shared-QK keys: the queries at unit length. (B, H, T, Dh)."""
    return F.normalize(q, dim=-1)


@lru_cache(maxsize=64)
def _rotations(seed: int, head_dim: int, rounds: int, half: int) -> Tensor:
    """The seeded random rotations (Dh, R, buckets/2): drawn once, not per layer and call."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(head_dim, rounds, half, generator=generator)


def lsh_buckets(keys: Tensor, pattern: AttentionPattern) -> Tensor:
    """Bucket of every key in every round: (B, H, R, T) long in [0, buckets)."""
    rotations = _rotations(pattern.seed, keys.size(-1), pattern.hash_rounds, pattern.buckets // 2)
    rotated = torch.einsum("bhtd,drk->bhrtk", keys.float(), rotations.to(keys.device))
    return torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)  # (B, H, R, T)


def lsh_bias(
    q: Tensor,
    pattern: AttentionPattern,
    *,
    key_mask: Tensor | None = None,
    causal: bool = False,
) -> Tensor:
    """The definition as an additive (B, H, T, T) bias for dense attention with keys
    ``shared_keys(q)``: log N_ij where i and j share a bucket in N_ij > 0 rounds,
    −inf (the dtype's min) otherwise, −1e5 on the diagonal."""
    T = q.size(2)
    buckets = lsh_buckets(shared_keys(q), pattern)  # (B, H, R, T)
    shared = (buckets[..., :, None] == buckets[..., None, :]).sum(2)  # (B, H, T, T)
    keep = shared > 0
    if key_mask is not None:
        keep = keep & key_mask.bool()[:, None, None, :]
    if causal:
        keep = keep & torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    neg = torch.finfo(q.dtype).min
    bias = shared.clamp(min=1).to(q.dtype).log().masked_fill(~keep, neg)
    eye = torch.eye(T, dtype=torch.bool, device=q.device)
    return bias + torch.where(eye & keep, SELF_SCORE, 0.0).to(q.dtype)


def lsh_attention(
    q: Tensor,
    v: Tensor,
    pattern: AttentionPattern,
    *,
    key_mask: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> Tensor:
    """Chunked LSH self-attention with shared queries and keys.

    Args:
        q, v: (B, H, T, Dh) queries (also the keys, normalised) and values.
        pattern: an "lsh" pattern (buckets, hash_rounds, chunk_size, seed).
        key_mask: (B, T) boolean, True for real tokens.
        causal: hide keys after the query.
        scale: score multiplier (default 1/sqrt(Dh)).

    Returns:
        (B, H, T, Dh).
    """
    B, H, T, Dh = q.shape
    scale = 1.0 / math.sqrt(Dh) if scale is None else scale
    R, m = pattern.hash_rounds, pattern.chunk_size
    n = math.ceil(T / m)
    Tp = n * m
    device, neg = q.device, torch.finfo(q.dtype).min
    k = shared_keys(q)
    buckets = lsh_buckets(k, pattern)  # (B, H, R, T)
    if Tp > T:  # padding sorts after every bucket and is never a key
        buckets = F.pad(buckets, (0, Tp - T), value=pattern.buckets)
        q, k, v = (F.pad(x, (0, 0, 0, Tp - T)) for x in (q, k, v))
    positions = torch.arange(Tp, device=device)
    order = (buckets * Tp + positions).argsort(dim=-1)  # (B, H, R, Tp): by bucket, then position

    def sort(x: Tensor) -> Tensor:  # (B, H, Tp, Dh) -> (B, H, R, n, m, Dh) in hash order
        index = order[..., None].expand(B, H, R, Tp, Dh)
        return x[:, :, None].expand(B, H, R, Tp, Dh).gather(3, index).view(B, H, R, n, m, Dh)

    # A chunk's keys: the previous chunk, its own and (not causal) the next one, so that
    # a bucket of at most m tokens, which spans at most two chunks, is seen whole.
    offsets = (-1, 0) if causal else (-1, 0, 1)
    W = len(offsets) * m

    def neighbours(x: Tensor) -> Tensor:  # (B, H, R, n, m, ...) -> (B, H, R, n, W, ...)
        pad = [0, 0] * (x.dim() - 4) + [1, 1]  # one empty chunk either side of dim 3
        padded = F.pad(x, pad)
        return torch.cat([padded[:, :, :, 1 + o : 1 + o + n] for o in offsets], dim=4)

    sq, sk, sv = sort(q), sort(k), sort(v)
    sb = buckets.gather(-1, order).view(B, H, R, n, m)  # sorted buckets
    sp = order.view(B, H, R, n, m)  # sorted positions
    # Chunks beyond either end are padding: position Tp, never a key.
    kb = neighbours(sb)  # (B, H, R, n, W)
    kp = neighbours(sp - Tp) + Tp  # (B, H, R, n, W)

    scores = torch.matmul(sq, neighbours(sk).transpose(-1, -2)) * scale  # (B, H, R, n, m, W)
    keep = (sb[..., None] == kb[..., None, :]) & (kp < T)[..., None, :]
    if key_mask is not None:
        real = F.pad(key_mask.bool(), (0, Tp - T))  # (B, Tp)
        index = kp.clamp(max=Tp - 1).flatten(3)  # (chunks beyond the ends: masked above)
        real_keys = real[:, None, None, :].expand(B, H, R, Tp).gather(3, index)
        keep = keep & real_keys.view(B, H, R, n, 1, W)
    if causal:
        keep = keep & (kp[..., None, :] <= sp[..., None])
    scores = scores.masked_fill(~keep, neg)
    scores = scores + torch.where(kp[..., None, :] == sp[..., None], SELF_SCORE, 0.0).to(q.dtype)
    lse = torch.logsumexp(scores.float(), dim=-1, keepdim=True)  # (B, H, R, n, m, 1)
    probs = torch.exp(scores.float() - lse).to(q.dtype)
    if dropout and training:
        probs = F.dropout(probs, p=dropout)
    out = torch.matmul(probs, neighbours(sv))  # (B, H, R, n, m, Dh)

    undo = order.argsort(dim=-1)  # hash order -> positions
    out = out.view(B, H, R, Tp, Dh).gather(3, undo[..., None].expand(B, H, R, Tp, Dh))
    lse = lse.view(B, H, R, Tp).gather(3, undo)
    weights = torch.softmax(lse, dim=2).to(q.dtype)  # (B, H, R, Tp): each round's share
    return (out * weights[..., None]).sum(2)[:, :, :T]  # (B, H, T, Dh)
