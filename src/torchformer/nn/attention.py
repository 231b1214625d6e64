"""Scaled dot-product attention and multi-head attention.

Implements Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + bias) V from
Vaswani et al. 2017, "Attention Is All You Need", section 3.2.

Two paths compute the same thing:

- ``reference_attention``: the equation written out, readable, and the only
  path that can return the attention probabilities.
- ``fast_attention``: ``torch.nn.functional.scaled_dot_product_attention``
  (fused kernels). It cannot return probabilities.

The caller chooses with ``attn_impl="reference" | "sdpa"``; asking for the
weights (``return_attentions=True``) always takes the reference path.

Shapes: B batch, H heads, T query length, S key length, Dh head dim, D d_model.
Masks are boolean "may attend" masks broadcastable to (B, H, T, S): True keeps
a position, False hides it. Additive float biases (T5's relative position bias)
are broadcastable to (B, H, T, S) too.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchformer.nn.block_sparse import block_sparse_attention, block_sparse_bias
from torchformer.nn.cache import LayerCache
from torchformer.nn.flex import flex_pattern_attention
from torchformer.nn.linear import Linear, is_plain_linear, linear
from torchformer.nn.lsh import lsh_attention, lsh_bias, shared_keys
from torchformer.nn.masks import combine_masks
from torchformer.nn.positional import apply_rotary
from torchformer.nn.sparse import (
    AttentionPattern,
    pattern_mask,
    record_fallback,
    sliding_window_attention,
)

AttnImpl = Literal["reference", "sdpa", "flex"]


def _merge_mask_and_bias(
    mask: Tensor | None, bias: Tensor | None, dtype: torch.dtype
) -> Tensor | None:
    """One additive float mask from a boolean keep-mask and a float bias.

    A boolean mask is turned into an additive one too, so that a fully masked
    row gives what ``reference_attention`` gives (a uniform average, via
    finfo.min rather than -inf) instead of SDPA's zeros for boolean masks.
    """
    if mask is None:
        return None if bias is None else bias.to(dtype)
    base = torch.zeros((), dtype=dtype, device=mask.device) if bias is None else bias.to(dtype)
    return base.masked_fill(~mask, torch.finfo(dtype).min)  # broadcast of mask and bias


def reference_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    scale: float | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> tuple[Tensor, Tensor]:
    """The attention equation, step by step.

    Args:
        q: (B, H, T, Dh) queries.
        k: (B, H, S, Dh) keys.
        v: (B, H, S, Dh) values.
        mask: boolean keep-mask broadcastable to (B, H, T, S).
        bias: additive float bias broadcastable to (B, H, T, S).
        scale: multiplier of the scores; default 1/sqrt(Dh).
        dropout: dropout probability on the attention probabilities.

    Returns:
        (output (B, H, T, Dh), probabilities (B, H, T, S)).
    """
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, H, T, S)
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    # Softmax in fp32 for stability under half precision, as most references do.
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)  # (B, H, T, S)
    dropped = F.dropout(probs, p=dropout, training=training) if dropout > 0 else probs
    return torch.matmul(dropped, v), probs  # (B, H, T, Dh)


def fast_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    scale: float | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> Tensor:
    """Same contract as ``reference_attention`` on PyTorch's fused SDPA kernels."""
    attn_mask = _merge_mask_and_bias(mask, bias, q.dtype)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout if training else 0.0, scale=scale
    )  # (B, H, T, Dh)


# Fewer tokens than this run q, k and v as three matmuls (see ``_use_fused_qkv``).
FUSED_QKV_MIN_ROWS = 64


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017, section 3.2.2).

    Self-attention when ``context`` is None, cross-attention otherwise (queries
    from ``x``, keys and values from ``context``). With a ``LayerCache`` it
    appends the new keys/values (self-attention) or computes the context's
    keys/values once and reuses them (cross-attention), for incremental decoding.

    Grouped-query attention (Ainslie et al. 2023): with ``n_kv_heads`` < H, each
    group of H / n_kv_heads query heads shares one key/value head; the cache holds
    the n_kv_heads heads only. Rotary positions (Su et al. 2021) are applied to the
    queries and the new keys when ``forward`` gets ``rotary=(cos, sin)``
    (``nn.positional.RotaryEmbedding``), before the keys are cached.

    Args:
        d_model: model width D.
        n_heads: number of query heads H.
        head_dim: per-head width Dh (default D // H; T5 sets it separately).
        n_kv_heads: key/value heads (default H: plain multi-head attention).
        bias: whether the projections have biases (T5, Llama: no).
        out_bias: whether the output projection has one (default: ``bias``; Qwen2: no).
        dropout: dropout on the attention probabilities.
        scale: score multiplier (default 1/sqrt(Dh); T5 uses 1.0).
        attn_impl: "sdpa" (fused kernel), "reference" (readable equation) or "flex"
            (a sparse ``pattern`` on FlexAttention block masks, ``nn.flex``; without a
            pattern, or where FlexAttention cannot take the call, as "sdpa").
        pattern: which keys a query may see in self-attention (``nn.sparse``): full
            (default), a sliding window with global positions, BigBird's block-sparse
            pattern, or Reformer's LSH buckets (shared QK: the keys are the normalised
            queries; ``k_proj`` is not used). The reference path applies it as an
            explicit mask (LSH: its bias); the fast path runs the kind's kernel when the
            only other mask is key padding, else the explicit mask on SDPA.
        global_projections: Longformer's separate query/key/value projections for the
            pattern's global positions (``q_global``, ``k_global``, ``v_global``): a
            global position's row attends to every key through them; other rows use the
            usual projections, global keys included.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        head_dim: int | None = None,
        n_kv_heads: int | None = None,
        bias: bool = True,
        out_bias: bool | None = None,
        dropout: float = 0.0,
        scale: float | None = None,
        attn_impl: AttnImpl = "sdpa",
        pattern: AttentionPattern | None = None,
        global_projections: bool = False,
    ) -> None:
        super().__init__()
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
            head_dim = d_model // n_heads
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}")
        if attn_impl not in ("reference", "sdpa", "flex"):
            raise ValueError(f"attn_impl must be 'reference', 'sdpa' or 'flex', got {attn_impl!r}")
        if attn_impl == "flex" and pattern is not None and pattern.kind == "lsh":
            raise ValueError(
                "attention kind 'lsh' has no FlexAttention mask (its buckets depend on the "
                "data); use attn_impl 'sdpa' (the chunked kernel) or 'reference'"
            )
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.scale = scale
        self.attn_impl = attn_impl
        self.pattern = pattern if pattern is not None and pattern.kind != "full" else None
        inner, kv_inner = n_heads * head_dim, n_kv_heads * head_dim
        self.q_proj = Linear(d_model, inner, bias=bias)
        self.k_proj = Linear(d_model, kv_inner, bias=bias)
        self.v_proj = Linear(d_model, kv_inner, bias=bias)
        self.out_proj = Linear(inner, d_model, bias=bias if out_bias is None else out_bias)
        self.q_global = self.k_global = self.v_global = None
        if global_projections:
            if self.pattern is None or self.pattern.kind != "sliding_window":
                raise ValueError("global_projections need a sliding_window pattern")
            if n_kv_heads != n_heads:
                raise ValueError("global_projections need n_kv_heads == n_heads")
            self.q_global = Linear(d_model, inner, bias=bias)
            self.k_global = Linear(d_model, inner, bias=bias)
            self.v_global = Linear(d_model, inner, bias=bias)

    def _split_heads(self, x: Tensor, heads: int | None = None) -> Tensor:
        B, L, _ = x.shape
        heads = self.n_heads if heads is None else heads
        return x.view(B, L, heads, self.head_dim).transpose(1, 2)  # (B, heads, L, Dh)

    def _cross_keys_values(
        self, context: Tensor, cache: LayerCache | None
    ) -> tuple[Tensor, Tensor]:
        """The context's keys/values: computed once, then kept in the cache while decoding."""
        if cache is not None and cache.cross_k is not None:
            return cache.cross_k, cache.cross_v
        k = self._split_heads(self.k_proj(context), self.n_kv_heads)  # (B, Hkv, S, Dh)
        v = self._split_heads(self.v_proj(context), self.n_kv_heads)  # (B, Hkv, S, Dh)
        if cache is not None:
            cache.cross_k, cache.cross_v = k, v
        return k, v

    def _fused_qkv_weights(self) -> tuple[Tensor, Tensor | None]:
        """The q/k/v weights concatenated, ((H + 2 Hkv)·Dh, D) and ((H + 2 Hkv)·Dh,).

        Built on every call: the copy is tiny next to the matmul it feeds, and
        nothing cached can go stale when the weights change.
        """
        q, k, v = self.q_proj, self.k_proj, self.v_proj
        weight = torch.cat([q.weight, k.weight, v.weight])  # ((H + 2 Hkv)·Dh, D)
        bias = None if q.bias is None else torch.cat([q.bias, k.bias, v.bias])
        return weight, bias

    def _use_fused_qkv(self, rows: int) -> bool:
        """Inference on plain linear projections, outside autograd and tracing,
        for at least ``FUSED_QKV_MIN_ROWS`` tokens: below that (token-by-token decoding)
        copying the weights together costs more than the one bigger matmul saves."""
        if (
            torch.is_grad_enabled()
            or torch.compiler.is_compiling()
            or torch.compiler.is_exporting()
            or torch.jit.is_tracing()
        ):
            return False  # checked first: under export, ``rows`` is symbolic
        if rows < FUSED_QKV_MIN_ROWS:
            return False
        projections = (self.q_proj, self.k_proj, self.v_proj)
        if not all(is_plain_linear(m) for m in projections):
            return False  # e.g. quantized or adapter-wrapped projections
        return len({m.bias is None for m in projections}) == 1  # else nothing to concatenate

    def forward(
        self,
        x: Tensor,
        *,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        bias: Tensor | None = None,
        cache: LayerCache | None = None,
        rotary: tuple[Tensor, Tensor] | None = None,
        return_attentions: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``x`` (B, T, D) to itself or to ``context`` (B, S, D).

        ``rotary``: (cos, sin) of the T new positions, broadcastable to (B, 1, T, Dh)
        (self-attention only).

        Returns:
            (output (B, T, D), probabilities (B, H, T, S) or None).
        """
        B, T, _ = x.shape
        kv_heads = self.n_kv_heads
        if context is not None:
            q = self._split_heads(self.q_proj(x))  # (B, H, T, Dh)
            k, v = self._cross_keys_values(context, cache)  # (B, Hkv, S, Dh)
        else:
            if self._use_fused_qkv(B * T):
                # Inference: q, k, v from one matmul instead of three; one bigger GEMM
                # and one bias pass are faster (bench/encoder_speed.py).
                qkv = linear(x, *self._fused_qkv_weights())  # (B, T, (H + 2 Hkv)·Dh)
                sizes = [self.n_heads * self.head_dim] + [kv_heads * self.head_dim] * 2
                q, k, v = qkv.split(sizes, dim=-1)
            else:
                q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
            q = self._split_heads(q)  # (B, H, T, Dh)
            k, v = self._split_heads(k, kv_heads), self._split_heads(v, kv_heads)  # (B, Hkv, T, Dh)
            if rotary is not None:
                q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
            if cache is not None:
                k, v = cache.append(k, v)  # (B, Hkv, S_past + T, Dh)
        if kv_heads != self.n_heads:  # each key/value head serves a group of query heads
            k = k.repeat_interleave(self.n_heads // kv_heads, dim=1)  # (B, H, S, Dh)
            v = v.repeat_interleave(self.n_heads // kv_heads, dim=1)  # (B, H, S, Dh)
        p = self.dropout if self.training else 0.0
        probs = None
        # A causal (decoder) pattern is this module's to apply only to a call with neither
        # a mask nor a cache; otherwise the decoder's own mask already holds it.
        own_pattern = self.pattern is not None and context is None
        if own_pattern and self.pattern.causal and (mask is not None or cache is not None):
            own_pattern = False
        key_padding = mask  # (B, 1, 1, S) before the pattern joins it, or None
        if own_pattern:
            if cache is not None:
                raise ValueError(
                    f"attention kind {self.pattern.kind!r} is for self-attention over a whole "
                    "sequence; incremental decoding with a KV cache is not supported"
                )
            if self.pattern.kind == "lsh":
                k = shared_keys(q)  # Reformer's shared QK
            sparse = self._sparse(q, k, v, mask, bias, p, return_attentions)
            if sparse is not None:
                if self.q_global is not None:
                    sparse, _ = self._global_rows(x, sparse, None, mask, p)
                out = sparse.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
                return self.out_proj(out), None
            if self.pattern.kind == "lsh":  # the definition: a data-dependent bias
                hashed = lsh_bias(q, self.pattern, causal=self.pattern.causal)
                bias = hashed if bias is None else bias + hashed
            else:
                keep = pattern_mask(self.pattern, T, device=x.device, training=self.training)
                mask = combine_masks(mask, keep)
                if self.pattern.kind == "block_sparse":  # a repeated block counts again
                    repeats = block_sparse_bias(
                        self.pattern, T, device=x.device, training=self.training
                    )
                    if repeats is not None:
                        repeats = repeats.to(q.dtype)
                        bias = repeats if bias is None else bias + repeats
        if return_attentions or self.attn_impl == "reference":
            out, probs = reference_attention(
                q, k, v, mask=mask, bias=bias, scale=self.scale, dropout=p, training=self.training
            )
        else:
            out = fast_attention(
                q, k, v, mask=mask, bias=bias, scale=self.scale, dropout=p, training=self.training
            )
        if own_pattern and self.q_global is not None:
            out, probs = self._global_rows(x, out, probs, key_padding, p)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H*Dh)
        return self.out_proj(out), (probs if return_attentions else None)

    def _global_rows(
        self, x: Tensor, out: Tensor, probs: Tensor | None, mask: Tensor | None, dropout: float
    ) -> tuple[Tensor, Tensor | None]:
        """Longformer's global rows: the global positions attend to every key through their
        own projections (q_global, k_global, v_global); their rows of ``out`` (B, H, T, Dh)
        (and of ``probs``) are replaced. ``mask``: key padding (B, 1, 1, S) or None."""
        T = x.size(1)
        rows = [g for g in self.pattern.global_tokens if g < T]
        if not rows:
            return out, probs
        if mask is not None and mask.size(-2) != 1:
            raise ValueError(
                f"global_projections take a key-padding mask (B, 1, 1, S), got {tuple(mask.shape)}"
            )
        index = torch.tensor(rows, device=x.device)
        q = self._split_heads(self.q_global(x.index_select(1, index)))  # (B, H, G, Dh)
        k = self._split_heads(self.k_global(x))  # (B, H, T, Dh)
        v = self._split_heads(self.v_global(x))
        g_out, g_probs = reference_attention(
            q, k, v, mask=mask, scale=self.scale, dropout=dropout, training=self.training
        )  # (B, H, G, Dh), (B, H, G, T)
        out = out.index_copy(2, index, g_out.to(out.dtype))
        if probs is not None:
            probs = probs.index_copy(2, index, g_probs.to(probs.dtype))
        return out, probs

    def _sparse(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        bias: Tensor | None,
        dropout: float,
        return_attentions: bool,
    ) -> Tensor | None:
        """The pattern kernel's output, or None when this call takes the explicit-mask
        path: the reference path or attention weights (asked for), a sliding window over
        a short sequence (T ≤ 2·reach: the dense mask is then no bigger than the band), or
        — only with ``fallback: dense``, recorded — a bias or a mask other than key
        padding."""
        if self.attn_impl == "reference" or return_attentions:
            return None
        T, kind = q.size(2), self.pattern.kind
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            # An exported graph (ONNX) computes the pattern as an explicit mask on dense
            # attention: torch.export cannot solve the chunk arithmetic (T padded to a
            # multiple of the chunk) for a dynamic length. Same result, O(T²) memory.
            return None
        if kind == "sliding_window" and T <= 2 * self.pattern.reach:
            return None
        key_mask = None
        if mask is not None and (mask.dim() != 4 or mask.size(1) != 1 or mask.size(2) != 1):
            return self._cannot(f"a mask of shape {tuple(mask.shape)} (only key padding)", q)
        if bias is not None:
            return self._cannot("an additive attention bias", q)
        if mask is not None:
            key_mask = mask[:, 0, 0, :].expand(q.size(0), -1)  # (B, S)
        if self.attn_impl == "flex":
            repeats = self.pattern.random_eval == "first_block" and self.pattern.random_blocks
            if kind == "block_sparse" and repeats and not self.training:
                return self._cannot("random_eval 'first_block' (a block seen twice)", q)
            if dropout:
                return self._cannot("attention dropout (FlexAttention has none)", q)
            return flex_pattern_attention(
                q, k, v, self.pattern, key_mask=key_mask, scale=self.scale
            )
        options = {
            "causal": self.pattern.causal,
            "key_mask": key_mask,
            "scale": self.scale,
            "dropout": dropout,
            "training": self.training,
        }
        if kind == "block_sparse":  # (bidirectional only: a causal one is refused)
            options.pop("causal")
            return block_sparse_attention(q, k, v, self.pattern, **options)
        if kind == "lsh":
            return lsh_attention(q, v, self.pattern, **options)
        return sliding_window_attention(q, k, v, self.pattern, **options)

    def _cannot(self, what: str, q: Tensor) -> None:
        """The kernel cannot take this call: raise, or (``fallback: dense``) record it and
        return None, so that the caller runs dense attention under the pattern's mask."""
        if self.pattern.fallback == "dense":
            record_fallback(self.pattern, what)
            return None
        raise ValueError(
            f"attention kind {self.pattern.kind!r} cannot run on queries of shape "
            f"{tuple(q.shape)} with {what}; set the pattern's fallback to 'dense' to compute "
            "it as dense masked attention (O(T²)) instead"
        )
