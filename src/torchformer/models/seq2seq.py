"""Encoder–decoder transformers: the original Transformer, T5 and BART.

Implements three members of one family, chosen by ``Seq2SeqConfig.flavour``:

- ``"transformer"``: Vaswani et al. 2017, "Attention Is All You Need". Token
  embeddings scaled by sqrt(D) plus fixed sinusoidal positions, post-norm
  LayerNorm layers (``norm_first=True`` gives the common pre-norm variant, with
  a final LayerNorm on each stack), ReLU feed-forward with biases, dropout 0.1,
  optionally one embedding table shared by source and target (a joint
  vocabulary) and an output projection tied to the target embeddings.
- ``"t5"``: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with
  a Unified Text-to-Text Transformer". Pre-norm RMSNorm layers without biases,
  unscaled attention scores (scale 1.0; the scale is folded into the
  initialisation), a learned relative position bias computed once per stack
  and added in every layer (bidirectional in the encoder, causal in the
  decoder), ReLU (v1.0) or gated-GELU (v1.1 / Flan) feed-forward, a final
  RMSNorm on each stack, one shared embedding table, and an LM head that, when
  tied to the embeddings, sees the decoder output rescaled by D^-0.5.
- ``"bart"``: Lewis et al. 2020, "BART: Denoising Sequence-to-Sequence Pre-training".
  Post-norm LayerNorm layers with biases and GELU, learned position tables for each
  stack (offset by 2, as fairseq's), a LayerNorm on each stack's embeddings, one
  shared token table, and a tied LM head plus a fixed per-token bias
  (``final_logits_bias``).

Why one file and a ``flavour`` field rather than two model classes: both are
the same encoder–decoder (``nn.EncoderLayer``/``nn.DecoderLayer`` stacks,
cross-attention, teacher forcing, incremental decoding); they differ only in
which norm, positions, biases and scales are plugged in, all decided once in
the builders below. The hot path has no flavour branches beyond "is there a
position table / a relative bias / a final norm".

The configuration and the named sizes (``Seq2SeqConfig``, ``PRESETS``) live in
``models.seq2seq_config`` and are re-exported here.

Shape legend: B batch, S source length, T target (query) length, D d_model,
H heads, Dh head dim, F d_ff, V vocabulary size, L layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchformer.models.outputs import ModelOutput
from torchformer.models.seq2seq_config import PRESETS, Flavour, Seq2SeqConfig, preset
from torchformer.nn.linear import Linear, linear

__all__ = [
    "PRESETS",
    "Flavour",
    "Seq2Seq",
    "Seq2SeqConfig",
    "preset",
    "sequence_loss",
    "shift_right",
]
from torchformer.nn import (
    DecoderLayer,
    EncoderLayer,
    FeedForward,
    GatedFeedForward,
    KVCache,
    MultiHeadAttention,
    RelativePositionBias,
    SinusoidalPositionalEncoding,
    build_norm,
    padding_mask,
)

StepFn = Callable[[Tensor, KVCache], Tensor]


def shift_right(labels: Tensor, *, start_id: int, pad_id: int) -> Tensor:
    """Teacher-forcing decoder inputs from labels (B, T): start token, then labels[:, :-1].

    Label -100 (ignored positions) becomes ``pad_id``, as in Hugging Face's T5.
    """
    shifted = labels.new_full(labels.shape, start_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_id)  # (B, T)


# --- blocks -----------------------------------------------------------------------------


def _attention(config: Seq2SeqConfig) -> MultiHeadAttention:
    t5 = config.flavour == "t5"
    return MultiHeadAttention(
        config.d_model,
        config.n_heads,
        head_dim=config.head_dim,
        bias=not t5,
        dropout=config.dropout,
        scale=1.0 if t5 else None,  # T5 folds 1/sqrt(Dh) into the initialisation of q
        attn_impl=config.attn_impl,
    )


def _ffn(config: Seq2SeqConfig) -> nn.Module:
    kind = GatedFeedForward if config.gated_ffn else FeedForward
    bias = config.flavour != "t5"
    return kind(
        config.d_model, config.d_ff, activation=config.activation, dropout=config.dropout, bias=bias
    )


def _norm(config: Seq2SeqConfig) -> nn.Module:
    return build_norm(
        "rmsnorm" if config.flavour == "t5" else "layernorm", config.d_model, eps=config.norm_eps
    )


def decoder_self_mask(t: int, s: int, tgt_mask: Tensor | None, device: torch.device) -> Tensor:
    """Keep-mask (B or 1, 1, T, S) for decoder self-attention: causal, padded keys hidden.

    The T queries sit at slots S-T..S-1 (earlier slots are cached). Each query
    keeps its own slot even when it is padding, so no row is fully masked
    (SDPA would return NaN there, and NaN spreads through later layers).
    """
    q_pos = torch.arange(s - t, s, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(s, device=device)[None, :]  # (1, S)
    causal = (k_pos <= q_pos)[None, None]  # (1, 1, T, S)
    if tgt_mask is None:
        return causal
    keep = tgt_mask.bool()[:, None, None, :] | (k_pos == q_pos)[None, None]  # (B, 1, T, S)
    return causal & keep


def _relative_bias(config: Seq2SeqConfig, *, bidirectional: bool) -> RelativePositionBias | None:
    """T5's per-stack relative position bias (None for the Transformer)."""
    if config.flavour != "t5":
        return None
    return RelativePositionBias(
        config.n_heads,
        num_buckets=config.relative_attention_num_buckets,
        max_distance=config.relative_attention_max_distance,
        bidirectional=bidirectional,
    )


class Seq2SeqEncoder(nn.Module):
    """The encoder stack over embedded source tokens: L self-attention + FFN layers."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(
                _attention(config),
                _ffn(config),
                _norm(config),
                _norm(config),
                dropout=config.dropout,
                norm_first=config.norm_first,
            )
            for _ in range(config.n_encoder_layers)
        )
        self.relative_bias = _relative_bias(config, bidirectional=True)
        # Pre-norm stacks leave the residual stream unnormalised: one norm at the end.
        self.final_norm = _norm(config) if config.norm_first else None
        # T5 also drops out after the final norm.
        self.dropout = nn.Dropout(config.dropout if config.flavour == "t5" else 0.0)

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, return_attentions: bool = False
    ) -> tuple[Tensor, list[Tensor | None]]:
        """x (B, S, D), mask (B, 1, 1, S) -> (x (B, S, D), L probs (B, H, S, S) or None)."""
        S = x.size(1)
        # T5: the bias is computed once and shared by every layer (HF keeps it in layer 0).
        bias = None if self.relative_bias is None else self.relative_bias(S, S)  # (1, H, S, S)
        attentions = []
        for layer in self.layers:
            x, probs = layer(x, mask=mask, bias=bias, return_attentions=return_attentions)
            attentions.append(probs)
        if self.final_norm is not None:
            x = self.dropout(self.final_norm(x))
        return x, attentions


class Seq2SeqDecoder(nn.Module):
    """The decoder stack: L causal self-attention + cross-attention + FFN layers."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(
                _attention(config),
                _attention(config),
                _ffn(config),
                _norm(config),
                _norm(config),
                _norm(config),
                dropout=config.dropout,
                norm_first=config.norm_first,
            )
            for _ in range(config.n_decoder_layers)
        )
        self.relative_bias = _relative_bias(config, bidirectional=False)
        self.final_norm = _norm(config) if config.norm_first else None
        self.dropout = nn.Dropout(config.dropout if config.flavour == "t5" else 0.0)

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        *,
        mask: Tensor,
        context_mask: Tensor | None = None,
        cache: KVCache | None = None,
        return_attentions: bool = False,
    ) -> tuple[Tensor, list[Tensor | None], list[Tensor | None]]:
        """x (B, T, D) new target positions, context (B, S, D) encoder output.

        Returns (x (B, T, D), L self-attention probs, L cross-attention probs (B, H, T, S)).
        """
        T = x.size(1)
        past = 0 if cache is None else cache.seq_len
        # T5's causal bias: the T queries sit at positions past..past+T-1 of past+T keys.
        bias = None if self.relative_bias is None else self.relative_bias(T, past + T, offset=past)
        self_attns, cross_attns = [], []
        for i, layer in enumerate(self.layers):
            x, self_probs, cross_probs = layer(
                x,
                context,
                mask=mask,
                context_mask=context_mask,
                bias=bias,
                cache=None if cache is None else cache[i],
                return_attentions=return_attentions,
            )
            self_attns.append(self_probs)
            cross_attns.append(cross_probs)
        if self.final_norm is not None:
            x = self.dropout(self.final_norm(x))
        return x, self_attns, cross_attns


# --- model ------------------------------------------------------------------------------


class Seq2Seq(nn.Module):
    """Encoder–decoder with a language-modelling head over the target vocabulary.

    ``encode`` runs the source once; ``decode`` runs target tokens against an
    encoder output (all of them for teacher forcing, or only the new ones with
    a ``KVCache``); ``forward`` does both and the loss. ``make_step`` adapts
    ``decode`` to the step-function interface of ``torchformer.generate``.

    Masks are (B, L) tensors with 1 for real tokens and 0 for padding, as
    Hugging Face's ``attention_mask``; None means nothing is padded.
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = config
        t5 = config.flavour == "t5"
        self.src_embed = nn.Embedding(config.src_vocab_size or config.vocab_size, config.d_model)
        self.tgt_embed = (
            None if config.share_embeddings else nn.Embedding(config.vocab_size, config.d_model)
        )
        bart = config.flavour == "bart"
        # A fixed table (a buffer, not a parameter); T5 uses relative biases instead,
        # BART a learned table per stack (rows 0-1 unused: fairseq's offset of 2).
        self.positions = (
            None if t5 or bart else SinusoidalPositionalEncoding(config.d_model, config.max_len)
        )
        self.src_positions = self.tgt_positions = None
        self.src_embed_norm = self.tgt_embed_norm = None
        if bart:
            self.src_positions = nn.Embedding(config.max_len + 2, config.d_model)
            self.tgt_positions = nn.Embedding(config.max_len + 2, config.d_model)
            self.src_embed_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
            self.tgt_embed_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
            self.register_buffer("final_logits_bias", torch.zeros(1, config.vocab_size))
        # Vaswani et al. 3.4: embeddings are multiplied by sqrt(D) (initialised ~ D^-0.5).
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.embed_dropout = nn.Dropout(config.dropout)
        self.encoder = Seq2SeqEncoder(config)
        self.decoder = Seq2SeqDecoder(config)
        self.lm_head = (
            None if config.tie_output else Linear(config.d_model, config.vocab_size, bias=False)
        )
        # T5 rescales the decoder output by D^-0.5 before a *tied* head (embeddings ~ N(0, 1)).
        self.output_scale = config.d_model**-0.5 if t5 and config.tie_output else 1.0
        init_weights(self, config)

    @property
    def target_embeddings(self) -> nn.Embedding:
        """The target token table (the source one when ``share_embeddings``)."""
        return self.src_embed if self.tgt_embed is None else self.tgt_embed

    def new_cache(self) -> KVCache:
        """An empty KV cache for the decoder stack."""
        return KVCache(self.config.n_decoder_layers)

    def _embed(self, ids: Tensor, table: nn.Embedding, offset: int = 0, *, source: bool) -> Tensor:
        """Token ids (B, L) at positions offset.. -> (B, L, D) inputs of the source/target stack."""
        x = table(ids) * self.embed_scale  # (B, L, D)
        learned = self.src_positions if source else self.tgt_positions
        if self.positions is not None or learned is not None:
            end = offset + ids.size(1)
            if end > self.config.max_len:
                raise ValueError(
                    f"sequence length {end} exceeds the model's max_len {self.config.max_len}"
                )
            positions = torch.arange(offset, end, device=ids.device)  # (L,)
            if learned is not None:
                x = x + learned(positions + 2)  # (B, L, D)
            else:
                x = x + self.positions(positions)  # (B, L, D)
        norm = self.src_embed_norm if source else self.tgt_embed_norm
        if norm is not None:
            x = norm(x)
        return self.embed_dropout(x)

    def lm_logits(self, hidden: Tensor) -> Tensor:
        """Decoder states (B, T, D) -> logits (B, T, V)."""
        hidden = hidden * self.output_scale
        if self.lm_head is None:
            logits = linear(hidden, self.target_embeddings.weight)  # (B, T, V)
        else:
            logits = self.lm_head(hidden)  # (B, T, V)
        if self.config.flavour == "bart":
            logits = logits + self.final_logits_bias
        return logits

    def encode(
        self, src_ids: Tensor, *, src_mask: Tensor | None = None, return_attentions: bool = False
    ) -> ModelOutput:
        """Encode source ids (B, S).

        Returns:
            ModelOutput with last_hidden_state (B, S, D) and, when asked, L
            attentions (B, H, S, S).
        """
        x = self._embed(src_ids, self.src_embed, source=True)  # (B, S, D)
        mask = None if src_mask is None else padding_mask(src_mask)  # (B, 1, 1, S)
        x, attentions = self.encoder(x, mask=mask, return_attentions=return_attentions)
        return ModelOutput(
            last_hidden_state=x, attentions=tuple(attentions) if return_attentions else None
        )

    def decode(
        self,
        tgt_ids: Tensor,
        encoder_out: Tensor | ModelOutput,
        *,
        src_mask: Tensor | None = None,
        tgt_mask: Tensor | None = None,
        cache: KVCache | None = None,
        return_attentions: bool = False,
    ) -> ModelOutput:
        """Run target ids (B, T) against the encoder output (B, S, D).

        Args:
            tgt_ids: (B, T) decoder inputs; with a cache, only the tokens not yet cached.
            encoder_out: ``encode``'s output or its last_hidden_state.
            src_mask: (B, S) source padding mask.
            tgt_mask: (B, cache.seq_len + T) target padding mask (None: no padding).
            cache: KV cache, updated in place; positions continue after its contents.
            return_attentions: also return L self-attentions (B, H, T, T + past) and
                L cross-attentions (B, H, T, S) (reference attention path).

        Returns:
            ModelOutput with logits (B, T, V), last_hidden_state (B, T, D), cache.
        """
        context = _context(encoder_out)  # (B, S, D)
        B, T = tgt_ids.shape
        past = 0 if cache is None else cache.seq_len
        if tgt_mask is not None and tgt_mask.shape != (B, past + T):
            raise ValueError(
                f"tgt_mask has shape {tuple(tgt_mask.shape)}; expected {(B, past + T)} "
                f"(cached {past} + new {T} tokens)"
            )
        x = self._embed(tgt_ids, self.target_embeddings, offset=past, source=False)  # (B, T, D)
        mask = decoder_self_mask(T, past + T, tgt_mask, tgt_ids.device)  # (B or 1, 1, T, S_tgt)
        context_mask = None if src_mask is None else padding_mask(src_mask)  # (B, 1, 1, S)
        x, self_attns, cross_attns = self.decoder(
            x,
            context,
            mask=mask,
            context_mask=context_mask,
            cache=cache,
            return_attentions=return_attentions,
        )
        return ModelOutput(
            last_hidden_state=x,
            logits=self.lm_logits(x),
            attentions=tuple(self_attns) if return_attentions else None,
            cross_attentions=tuple(cross_attns) if return_attentions else None,
            cache=cache,
        )

    def forward(
        self,
        src_ids: Tensor,
        tgt_in_ids: Tensor,
        *,
        src_mask: Tensor | None = None,
        tgt_mask: Tensor | None = None,
        labels: Tensor | None = None,
        label_smoothing: float = 0.0,
        return_attentions: bool = False,
    ) -> ModelOutput:
        """Teacher forcing: logits (B, T, V) for every target position at once.

        ``tgt_in_ids`` are the decoder inputs (start token + target[:-1], see
        ``shift_right``); ``labels`` (B, T) the tokens to predict. Labels equal to
        ``pad_id`` or -100 are ignored by the (optionally label-smoothed) loss.
        """
        enc = self.encode(src_ids, src_mask=src_mask, return_attentions=return_attentions)
        out = self.decode(
            tgt_in_ids,
            enc.last_hidden_state,
            src_mask=src_mask,
            tgt_mask=tgt_mask,
            return_attentions=return_attentions,
        )
        out.encoder_last_hidden_state = enc.last_hidden_state
        out.encoder_attentions = enc.attentions
        if labels is not None:
            out.loss = sequence_loss(
                out.logits, labels, pad_id=self.config.pad_id, label_smoothing=label_smoothing
            )
        return out

    def make_step(
        self, encoder_out: Tensor | ModelOutput, src_mask: Tensor | None = None
    ) -> StepFn:
        """A generation step ``step(last_ids (N, 1), cache) -> logits (N, V)`` over this source.

        The step closes over the encoder output (B, S, D) and its mask (B, S).
        It may be fed N = k * B rows with rows k*b .. k*b+k-1 decoding source b
        (beam search: the hypotheses of each source kept together, reordered
        only among themselves); the source side is then repeated k times, as
        Hugging Face's generate does. Cross-attention keys/values are computed
        at the first step and live in the cache, so ``cache.select`` moves them
        with the hypotheses.
        """
        context = _context(encoder_out)  # (B, S, D)
        B = context.size(0)
        expanded: dict[int, tuple[Tensor, Tensor | None]] = {B: (context, src_mask)}

        def step(last_ids: Tensor, cache: KVCache) -> Tensor:
            rows = last_ids.size(0)
            if rows not in expanded:
                if rows % B:
                    raise ValueError(
                        f"step got {rows} rows; expected a multiple of the {B} sources"
                    )
                k = rows // B
                mask = (
                    None if src_mask is None else src_mask.repeat_interleave(k, dim=0)
                )  # (B * k, S)
                expanded[rows] = (context.repeat_interleave(k, dim=0), mask)  # (B * k, S, D)
            ctx, mask = expanded[rows]
            return self.decode(last_ids, ctx, src_mask=mask, cache=cache).logits[:, -1]  # (N, V)

        return step


def _context(encoder_out: Tensor | ModelOutput) -> Tensor:
    """The encoder states (B, S, D) from ``encode``'s output or the tensor itself."""
    return encoder_out.last_hidden_state if isinstance(encoder_out, ModelOutput) else encoder_out


def sequence_loss(
    logits: Tensor, labels: Tensor, *, pad_id: int, label_smoothing: float = 0.0
) -> Tensor:
    """Mean token cross-entropy of logits (B, T, V) against labels (B, T), padding ignored.

    Labels equal to ``pad_id`` or -100 do not count. With ``label_smoothing`` eps
    the target is (1 - eps) on the label and eps / V on every class (Szegedy et
    al. 2016; the Transformer paper uses eps = 0.1).
    """
    targets = labels.masked_fill(labels == pad_id, -100)  # (B, T)
    return F.cross_entropy(
        logits.flatten(0, 1).float(),
        targets.flatten(),
        ignore_index=-100,
        label_smoothing=label_smoothing,
    )


# --- initialisation ---------------------------------------------------------------------


def init_weights(model: Seq2Seq, config: Seq2SeqConfig) -> None:
    """Each flavour's own initialisation (training from scratch depends on it).

    Transformer: Xavier-uniform matrices and zero biases (the annotated
    Transformer), embeddings N(0, D^-0.5) so that after the sqrt(D) scaling they
    are N(0, 1) (fairseq). T5 (Mesh TensorFlow, as HF's T5): N(0, 1) embeddings,
    q ~ N(0, (D Dh)^-0.5) — the 1/sqrt(Dh) of the unscaled attention folded in —
    k, v and FFN inputs ~ N(0, D^-0.5), outputs ~ N(0, fan_in^-0.5). BART: N(0, 0.02).
    """
    D = config.d_model
    embeddings = [m for m in (model.src_embed, model.tgt_embed) if m is not None]
    if config.flavour == "bart":  # fairseq / HF BART: N(0, 0.02), zero biases
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        return
    if config.flavour == "transformer":
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for emb in embeddings:
            nn.init.normal_(emb.weight, std=D**-0.5)
        return
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            inner = module.n_heads * module.head_dim
            nn.init.normal_(module.q_proj.weight, std=(D * module.head_dim) ** -0.5)
            nn.init.normal_(module.k_proj.weight, std=D**-0.5)
            nn.init.normal_(module.v_proj.weight, std=D**-0.5)
            nn.init.normal_(module.out_proj.weight, std=inner**-0.5)
        elif isinstance(module, FeedForward | GatedFeedForward):
            for proj in (module.up_proj, getattr(module, "gate_proj", None)):
                if proj is not None:
                    nn.init.normal_(proj.weight, std=D**-0.5)
            nn.init.normal_(module.down_proj.weight, std=config.d_ff**-0.5)
        elif isinstance(module, RelativePositionBias):
            nn.init.normal_(module.embedding.weight, std=D**-0.5)
    for emb in embeddings:
        nn.init.normal_(emb.weight, std=1.0)
    if model.lm_head is not None:
        nn.init.normal_(model.lm_head.weight, std=1.0)
