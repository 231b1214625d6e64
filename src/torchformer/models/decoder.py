"""Decoder-only transformers: the GPT-2 family and the Llama family.

Implements GPT-2 (Radford et al. 2019, "Language Models are Unsupervised
Multitask Learners"): token + learned position embeddings, a stack of
pre-norm layers of causal self-attention and a GELU feed-forward network, a
final LayerNorm, and a language-modelling head tied to the token embeddings.
The model predicts token t+1 from tokens 0..t; with a ``KVCache`` it decodes
one token at a time without recomputing the past.

``flavour="llama"`` builds the modern decoder of Llama (Touvron et al. 2023) from the
same blocks — also Mistral's and Qwen2's: no position table but rotary positions in
every attention layer (RoPE, Su et al. 2021), RMSNorm instead of LayerNorm (Zhang &
Sennrich 2019), a SwiGLU feed-forward network (Shazeer 2020), grouped-query attention
(``n_kv_heads`` < ``n_heads``, Ainslie et al. 2023), no biases (Qwen2: on q/k/v only),
and an optionally untied output head.

A GPT-2 block is self-attention + FFN, exactly the wiring of
``nn.EncoderLayer`` with ``norm_first=True``; what makes it a decoder is the
causal mask passed to it (``nn.DecoderLayer`` adds cross-attention and does
not fit).

Left padding (batched generation of prompts of different lengths) follows
Hugging Face: with an ``attention_mask`` the position of a token is the number
of real tokens before it, so a left-padded prompt gets the same positions, and
the same logits, as the unpadded one.

Shape legend: B batch, T new (query) length, S key length (cached + new),
D d_model, H heads, F d_ff, V vocabulary size, L layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchformer.models.outputs import ModelOutput
from torchformer.nn import (
    AttentionPattern,
    EncoderLayer,
    FeedForward,
    GatedFeedForward,
    KVCache,
    MultiHeadAttention,
    RMSNorm,
)
from torchformer.nn.linear import Linear, linear
from torchformer.nn.positional import RotaryEmbedding


@dataclass
class DecoderConfig:
    """Size and behaviour of a GPT-2-family decoder.

    The defaults are GPT-2 small (124M). ``config_from_hf``/``config_to_hf``
    in ``torchformer.checkpoints.gpt2`` translate to and from ``config.json``.
    """

    vocab_size: int = 50257
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072  # GPT-2: 4 * d_model
    max_len: int = 1024
    dropout: float = 0.1  # residual dropout (HF resid_pdrop)
    attn_dropout: float = 0.1  # on the attention probabilities (HF attn_pdrop)
    embd_dropout: float = 0.1  # on the summed embeddings (HF embd_pdrop)
    activation: str = "gelu_new"
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    attn_impl: Literal["reference", "sdpa"] = "sdpa"
    bos_id: int | None = 50256
    eos_id: int | list[int] | None = 50256  # several: generation stops at any of them
    pad_id: int | None = None  # GPT-2 has none; generation then pads with eos_id
    tie_embeddings: bool = True
    flavour: Literal["gpt2", "llama"] = "gpt2"
    n_kv_heads: int | None = None  # llama: key/value heads (grouped-query); None: n_heads
    head_dim: int | None = None  # llama: per-head width; None: d_model // n_heads
    rope_theta: float = 10000.0  # llama: base of the rotary frequencies
    attn_bias: bool | None = None  # None: the flavour's (gpt2 biased, llama not)
    qkv_bias: bool | None = None  # None: attn_bias (Qwen2: q/k/v biased, output not)
    mlp_bias: bool | None = None  # None: the flavour's
    # Mistral's sliding window: a token attends to itself and the sliding_window − 1 slots
    # before it (None: to every earlier one). Applied as part of the causal mask, in
    # training and in cached generation alike.
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        if self.flavour not in ("gpt2", "llama"):
            raise ValueError(f"flavour must be 'gpt2' or 'llama', got {self.flavour!r}")
        gpt2 = self.flavour == "gpt2"
        if gpt2 and (self.n_kv_heads not in (None, self.n_heads) or self.head_dim is not None):
            raise ValueError("n_kv_heads and head_dim are llama options (GPT-2 has neither)")
        if gpt2 and False in (self.attn_bias, self.qkv_bias, self.mlp_bias):
            raise ValueError(
                "GPT-2 has biases everywhere; attn/qkv/mlp_bias=False is a llama option"
            )
        if self.attn_bias is None:
            self.attn_bias = gpt2
        if self.qkv_bias is None:
            self.qkv_bias = self.attn_bias
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {self.sliding_window}")
        if self.mlp_bias is None:
            self.mlp_bias = gpt2


PRESETS: dict[str, DecoderConfig] = {
    "gpt2": DecoderConfig(),
    "gpt2-medium": DecoderConfig(d_model=1024, n_layers=24, n_heads=16, d_ff=4096),
    "tiny": DecoderConfig(
        vocab_size=1000,
        d_model=32,
        n_layers=2,
        n_heads=4,
        d_ff=128,
        max_len=128,
        bos_id=999,
        eos_id=999,
    ),
    # A Llama-style decoder small enough to pre-train on 2 CPU cores in minutes.
    "llama-tiny": DecoderConfig(
        flavour="llama",
        vocab_size=1000,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=172,
        max_len=256,
        dropout=0.0,
        attn_dropout=0.0,
        embd_dropout=0.0,
        activation="silu",
        norm_eps=1e-6,
        bos_id=None,
        eos_id=None,
    ),
}


def preset(name: str, **overrides) -> DecoderConfig:
    """A ``DecoderConfig`` from a named preset, with fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown decoder preset {name!r}; expected one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def decoder_positions(
    t: int, past: int, attention_mask: Tensor | None, device: torch.device
) -> Tensor:
    """Absolute positions of the T new tokens: (1, T) without a mask, (B, T) with one.

    Without a mask, positions continue from the ``past`` cached tokens. With a
    mask (B, past + T), a token's position is the count of real tokens before
    it, so left padding does not shift positions; padded slots get position 0
    (as Hugging Face's generation does).
    """
    if attention_mask is None:
        return torch.arange(past, past + t, device=device)[None]  # (1, T)
    positions = attention_mask.long().cumsum(-1) - 1  # (B, S)
    positions = positions.masked_fill(attention_mask == 0, 0)
    return positions[:, -t:]  # (B, T)


def decoder_mask(
    t: int,
    s: int,
    attention_mask: Tensor | None,
    device: torch.device,
    window: int | None = None,
) -> Tensor | None:
    """Boolean keep-mask (B or 1, 1, T, S): causal, padded keys hidden and, with a
    ``window`` W, keys W or more slots back hidden (Mistral: q − k < W).

    None when nothing is hidden: a single new token without padding within the window.

    The T queries sit at absolute slots S-T..S-1. Every query also keeps its
    own slot: a padded query (left padding) would otherwise see no key at all,
    and a fully masked row is ill-defined (NaN in some SDPA kernels and versions, which
    later layers would spread through 0 * NaN; uniform over all keys, future
    included, in the reference path). Real queries never see a padded key, so
    their outputs are unaffected.
    """
    if attention_mask is None and t == 1 and (window is None or s <= window):
        return None  # one new token sees every cached one: nothing to hide
    q_pos = torch.arange(s - t, s, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(s, device=device)[None, :]  # (1, S)
    causal = k_pos <= q_pos
    if window is not None:
        causal = causal & (q_pos - k_pos < window)
    causal = causal[None, None]  # (1, 1, T, S)
    if attention_mask is None:
        return causal
    keep = attention_mask.bool()[:, None, None, :] | (k_pos == q_pos)[None, None]  # (B, 1, T, S)
    return causal & keep


def _decoder_layer(config: DecoderConfig) -> EncoderLayer:
    """One block: GPT-2 (LayerNorm, biases, GELU FFN) or Llama (RMSNorm, SwiGLU, GQA).

    With a ``sliding_window`` W the attention carries the causal window pattern (reach
    W − 1): training on unpadded blocks then runs the O(T·W) kernel of ``nn.sparse``;
    calls with padding or a KV cache get the window through the decoder's mask."""
    pattern = None
    if config.sliding_window is not None:
        pattern = AttentionPattern(
            "sliding_window", window=max(config.sliding_window - 1, 1), causal=True
        )
    if config.flavour == "gpt2":
        attention = MultiHeadAttention(
            config.d_model,
            config.n_heads,
            dropout=config.attn_dropout,
            attn_impl=config.attn_impl,
            pattern=pattern,
        )
        # GPT-2 has no dropout inside the FFN, only on its output (the residual dropout).
        ffn = FeedForward(config.d_model, config.d_ff, activation=config.activation, dropout=0.0)
        norms = [nn.LayerNorm(config.d_model, eps=config.norm_eps) for _ in range(2)]
    else:
        attention = MultiHeadAttention(
            config.d_model,
            config.n_heads,
            head_dim=config.head_dim,
            n_kv_heads=config.n_kv_heads,
            bias=bool(config.qkv_bias),
            out_bias=bool(config.attn_bias),
            dropout=config.attn_dropout,
            attn_impl=config.attn_impl,
            pattern=pattern,
        )
        ffn = GatedFeedForward(
            config.d_model, config.d_ff, activation=config.activation, bias=bool(config.mlp_bias)
        )
        norms = [RMSNorm(config.d_model, eps=config.norm_eps) for _ in range(2)]
    return EncoderLayer(attention, ffn, *norms, dropout=config.dropout, norm_first=True)


def init_weights(module: nn.Module, config: DecoderConfig) -> None:
    """GPT-2's initialisation: N(0, std) weights, zero biases, unit LayerNorms.

    The projections that write into the residual stream (attention out_proj,
    FFN down_proj) get std / sqrt(2 L), as the GPT-2 paper (section 2.3)
    prescribes for the accumulation over 2 L residual branches.
    """
    std = config.initializer_range
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, RMSNorm):
        nn.init.ones_(module.weight)
    elif isinstance(module, EncoderLayer):
        residual_std = std / math.sqrt(2 * config.n_layers)
        nn.init.normal_(module.self_attn.out_proj.weight, mean=0.0, std=residual_std)
        nn.init.normal_(module.ffn.down_proj.weight, mean=0.0, std=residual_std)


class Decoder(nn.Module):
    """The decoder stack: embeddings, L pre-norm causal layers, final norm.

    GPT-2 adds a learned position table to the token embeddings; Llama has no
    table and rotates queries and keys inside every layer instead (``rotary``).
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embeddings: nn.Embedding | None = None
        self.rotary: RotaryEmbedding | None = None
        if config.flavour == "gpt2":
            self.position_embeddings = nn.Embedding(config.max_len, config.d_model)
            self.final_norm: nn.Module = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        else:
            head_dim = config.head_dim or config.d_model // config.n_heads
            self.rotary = RotaryEmbedding(head_dim, theta=config.rope_theta)
            self.final_norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.embd_dropout)
        self.layers = nn.ModuleList(_decoder_layer(config) for _ in range(config.n_layers))
        # apply() visits children before parents, so the layer-level rescaling comes last.
        self.apply(lambda m: init_weights(m, config))

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        cache: KVCache | None = None,
        return_attentions: bool = False,
        return_hidden_states: bool = False,
    ) -> ModelOutput:
        """Run the new tokens ``input_ids`` (B, T) through the stack.

        Args:
            input_ids: (B, T) token ids; with a cache, only the tokens not yet cached.
            attention_mask: (B, S) 1 for real tokens, 0 for padding, covering the
                cached tokens and the new ones (S = cache.seq_len + T).
            cache: KV cache, updated in place; positions continue after its contents.
            return_attentions: also return L tensors (B, H, T, S) (reference path).
            return_hidden_states: also return L + 1 tensors (B, T, D): the
                embeddings, then each layer's output; the last one is after the
                final LayerNorm (equal to ``last_hidden_state``), as in Hugging Face.

        Returns:
            ModelOutput with last_hidden_state (B, T, D) and the cache.
        """
        B, T = input_ids.shape
        past = 0 if cache is None else cache.seq_len
        S = past + T
        if self.config.max_len < S:  # S, not T: cached tokens use positions too
            raise ValueError(
                f"sequence length {S} exceeds the model's max_len {self.config.max_len}"
            )
        if attention_mask is not None and attention_mask.shape != (B, S):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected {(B, S)} "
                f"(cached {past} + new {T} tokens)"
            )
        device = input_ids.device
        positions = decoder_positions(T, past, attention_mask, device)  # (B or 1, T)
        x = self.token_embeddings(input_ids)  # (B, T, D)
        rotary = None
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(positions)
        else:  # (cos, sin) (B or 1, 1, T, Dh), shared by every layer
            rotary = self.rotary(positions, x.dtype)
        x = self.dropout(x)
        window = self.config.sliding_window
        if window is not None and window > 1 and cache is None and attention_mask is None:
            mask = None  # each layer's causal window pattern, on the chunked kernel
        else:
            mask = decoder_mask(T, S, attention_mask, device, window)
        hidden, attentions = [x], []
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else cache[i]
            x, probs = layer(
                x, mask=mask, cache=layer_cache, rotary=rotary, return_attentions=return_attentions
            )
            hidden.append(x)
            attentions.append(probs)
        x = self.final_norm(x)  # (B, T, D)
        hidden[-1] = x
        return ModelOutput(
            last_hidden_state=x,
            hidden_states=tuple(hidden) if return_hidden_states else None,
            attentions=tuple(attentions) if return_attentions else None,
            cache=cache,
        )


class DecoderForCausalLM(nn.Module):
    """Decoder + language-modelling head: logits over the next token at every position.

    The head is the transpose of the token embedding matrix (weight tying,
    Press & Wolf 2017) applied with ``F.linear``; the embedding is not
    registered a second time, so the state dict holds it once. With
    ``tie_embeddings=False`` a separate bias-free ``lm_head`` is used.
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder = Decoder(config)
        self.lm_head = None
        if not config.tie_embeddings:
            self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)
            init_weights(self.lm_head, config)

    def lm_logits(self, hidden: Tensor) -> Tensor:
        """Hidden states (B, T, D) -> next-token logits (B, T, V)."""
        if self.lm_head is None:
            return linear(hidden, self.decoder.token_embeddings.weight)  # (B, T, V)
        return self.lm_head(hidden)  # (B, T, V)

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        cache: KVCache | None = None,
        labels: Tensor | None = None,
        return_attentions: bool = False,
        return_hidden_states: bool = False,
    ) -> ModelOutput:
        """Logits (B, T, V); with ``labels`` (B, T) also the next-token loss.

        Labels are shifted inside: position t's logits are scored against
        ``labels[:, t + 1]``, so ``labels = input_ids`` trains a language model.
        Label -100 is ignored (set it on padding).
        """
        out = self.decoder(
            input_ids,
            attention_mask=attention_mask,
            cache=cache,
            return_attentions=return_attentions,
            return_hidden_states=return_hidden_states,
        )
        logits = self.lm_logits(out.last_hidden_state)  # (B, T, V)
        if labels is not None:
            shifted = logits[:, :-1].flatten(0, 1)  # (B * (T - 1), V)
            out.loss = F.cross_entropy(shifted, labels[:, 1:].flatten(), ignore_index=-100)
        out.logits = logits
        return out


def make_step(
    model: DecoderForCausalLM, attention_mask: Tensor | None = None
) -> Callable[[Tensor, KVCache], Tensor]:
    """A generation step function ``step(ids (B, T), cache) -> logits (B, V)``.

    The first call feeds the whole prompt, later calls the newest token; the
    cache is updated in place and the logits are those of the last position.

    Args:
        model: the language model (put it in eval mode for generation).
        attention_mask: (B, T0) mask of a (left-)padded prompt. The step extends
            it with ones for every generated token. When the step is fed k times
            as many rows (beam search expanding each prompt with
            ``repeat_interleave``), the mask is expanded the same way.
    """
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # no padding: positions and masks are the plain causal ones
    state = {"mask": attention_mask}

    def step(ids: Tensor, cache: KVCache) -> Tensor:
        mask = state["mask"]
        if mask is not None:
            if mask.size(0) != ids.size(0):
                mask = mask.repeat_interleave(ids.size(0) // mask.size(0), dim=0)  # (B * k, S)
            need = cache.seq_len + ids.size(1)
            if mask.size(1) < need:
                mask = torch.cat(
                    [mask, mask.new_ones(mask.size(0), need - mask.size(1))], dim=1
                )  # (B, S)
            state["mask"] = mask
        out = model.decoder(ids, attention_mask=mask, cache=cache)
        return model.lm_logits(out.last_hidden_state[:, -1:])[:, 0]  # (B, V)

    return step
