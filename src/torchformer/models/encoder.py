"""Encoder-only transformer: the BERT family.

Implements BERT (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional
Transformers for Language Understanding"): token + position + segment
embeddings, a stack of post-norm encoder layers with GELU feed-forward, a
tanh pooler over [CLS], and two heads — sequence classification and masked
language modelling. MiniLM (Wang et al. 2020) checkpoints such as
all-MiniLM-L6-v2 use this same architecture with fewer, narrower layers.

Shape legend: B batch, T sequence length, D d_model, H heads, F d_ff,
V vocabulary size, C number of classes, L layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchformer.models.long_document import chunks_of, pool_chunks
from torchformer.models.outputs import ModelOutput
from torchformer.nn import (
    AttentionPattern,
    EncoderLayer,
    FeedForward,
    MultiHeadAttention,
    get_activation,
    padding_mask_if_padded,
)
from torchformer.nn.linear import Linear, linear

Pooling = Literal["cls", "pooler", "mean"]


@dataclass
class EncoderConfig:
    """Size and behaviour of a BERT-family encoder (and its task heads).

    The defaults are BERT-base. ``from_hf``/``to_hf`` in
    ``torchformer.checkpoints.bert`` translate to and from ``config.json``.
    """

    vocab_size: int = 30522
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072
    max_len: int = 512
    type_vocab_size: int = 2  # 0: no segment embeddings (DistilBERT)
    dropout: float = 0.1
    attn_dropout: float = 0.1
    activation: str = "gelu"
    norm_eps: float = 1e-12
    pad_id: int = 0
    initializer_range: float = 0.02
    attn_impl: Literal["reference", "sdpa", "flex"] = "sdpa"  # flex: a pattern's block mask
    # Which keys each token sees (``nn.sparse``): "full"; "sliding_window" with a
    # one-sided window, a dilation and global positions (Longformer's [CLS] = position 0);
    # "block_sparse" (BigBird: blocks, window blocks, global blocks, seeded random
    # blocks); "lsh" (Reformer: buckets, hash rounds, chunks, shared QK). The
    # ``AttentionPattern`` fields of the same names without "attention_".
    attention: Literal["full", "sliding_window", "block_sparse", "lsh"] = "full"
    attention_window: int = 128
    attention_dilation: int = 1
    global_tokens: tuple[int, ...] = (0,)
    attention_block_size: int = 64
    attention_window_blocks: int = 1
    attention_global_blocks: tuple[int, ...] = (0, -1)
    attention_random_blocks: int = 3
    attention_random_eval: Literal["sampled", "first_block"] = "sampled"
    attention_buckets: int = 32
    attention_hash_rounds: int = 2
    attention_chunk_size: int = 64
    attention_seed: int = 0
    attention_fallback: Literal["error", "dense"] = "error"
    # Longformer: the global positions attend through their own q/k/v projections.
    global_projections: bool = False
    add_pooler: bool = True
    pooler_activation: str = "tanh"  # BigBird's classification head: its hidden_act
    # Position of the first token in the position table: 0 (BERT); RoBERTa and
    # Longformer start at pad_id + 1 (their rows 0 .. pad_id are never used for tokens).
    position_offset: int = 0
    # Which Hugging Face layout the weights are saved in (``torchformer.checkpoints``).
    flavour: Literal["bert", "roberta", "distilbert", "longformer", "big_bird"] = "bert"
    # Long documents (``models.long_document``): "truncate" reads the ids as one sequence;
    # "chunks" cuts them into overlapping [CLS] window [SEP] chunks of ``chunk_length``,
    # a window every ``chunk_stride`` tokens, and pools the chunk vectors ("mean", "max"
    # or a learned "attention" over chunks). cls_id / sep_id: the tokenizer's.
    long_document: Literal["truncate", "chunks"] = "truncate"
    chunk_length: int = 256
    chunk_stride: int = 192
    chunk_pooling: Literal["mean", "max", "attention"] = "mean"
    cls_id: int | None = None
    sep_id: int | None = None
    # Classification head.
    num_labels: int = 2
    pooling: Pooling = "cls"
    classifier_dropout: float | None = None  # None: use `dropout`
    id2label: dict[int, str] = field(default_factory=dict)


PRESETS: dict[str, EncoderConfig] = {
    "bert-base": EncoderConfig(),
    "bert-small": EncoderConfig(d_model=512, n_layers=4, n_heads=8, d_ff=2048),
    "bert-mini": EncoderConfig(d_model=256, n_layers=4, n_heads=4, d_ff=1024),
    "minilm-l6": EncoderConfig(d_model=384, n_layers=6, n_heads=12, d_ff=1536),
    "tiny": EncoderConfig(vocab_size=1000, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=128),
}


def preset(name: str, **overrides) -> EncoderConfig:
    """An ``EncoderConfig`` from a named preset, with fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown encoder preset {name!r}; expected one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


class EncoderEmbeddings(nn.Module):
    """Sum of token, learned position and segment embeddings, then LayerNorm and dropout."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.token_embeddings = nn.Embedding(
            config.vocab_size, config.d_model, padding_idx=config.pad_id
        )
        self.position_embeddings = nn.Embedding(config.max_len, config.d_model)
        # DistilBERT has no segments: type_vocab_size 0, no table
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.d_model)
            if config.type_vocab_size > 0
            else None
        )
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.position_offset = config.position_offset

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        T = input_ids.size(1)
        rows = self.position_embeddings.num_embeddings - self.position_offset
        if T > rows:
            raise ValueError(f"sequence length {T} exceeds the model's {rows} positions (max_len)")
        positions = torch.arange(T, device=input_ids.device) + self.position_offset  # (T,)
        x = self.token_embeddings(input_ids) + self.position_embeddings(positions)  # (B, T, D)
        if self.token_type_embeddings is None:
            if token_type_ids is not None:
                raise ValueError("this encoder has no segment embeddings (type_vocab_size=0)")
        elif token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]  # segment 0 everywhere
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.norm(x))  # (B, T, D)


def attention_pattern(config: EncoderConfig) -> AttentionPattern | None:
    """The self-attention pattern the config asks for (None: full attention)."""
    if config.attention == "full":
        return None
    settings = {name: getattr(config, f"attention_{name}") for name in PATTERN_SETTINGS}
    return AttentionPattern(config.attention, global_tokens=tuple(config.global_tokens), **settings)


# AttentionPattern fields set by the EncoderConfig field "attention_<name>".
PATTERN_SETTINGS = (
    "window",
    "dilation",
    "block_size",
    "window_blocks",
    "global_blocks",
    "random_blocks",
    "random_eval",
    "buckets",
    "hash_rounds",
    "chunk_size",
    "seed",
    "fallback",
)


def _encoder_layer(config: EncoderConfig) -> EncoderLayer:
    """One BERT layer: post-norm, biases everywhere, GELU FFN."""
    return EncoderLayer(
        MultiHeadAttention(
            config.d_model,
            config.n_heads,
            dropout=config.attn_dropout,
            attn_impl=config.attn_impl,
            pattern=attention_pattern(config),
            global_projections=config.global_projections,
        ),
        FeedForward(config.d_model, config.d_ff, activation=config.activation),
        nn.LayerNorm(config.d_model, eps=config.norm_eps),
        nn.LayerNorm(config.d_model, eps=config.norm_eps),
        dropout=config.dropout,
        norm_first=False,
    )


class Encoder(nn.Module):
    """The BERT encoder: embeddings, L post-norm layers, optional [CLS] pooler."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = EncoderEmbeddings(config)
        self.layers = nn.ModuleList(_encoder_layer(config) for _ in range(config.n_layers))
        self.pooler = Linear(config.d_model, config.d_model) if config.add_pooler else None
        self.pooler_act = get_activation(config.pooler_activation)
        self.apply(lambda m: init_weights(m, config.initializer_range))

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        return_attentions: bool = False,
        return_hidden_states: bool = False,
    ) -> ModelOutput:
        """Encode token ids (B, T); ``attention_mask`` (B, T) is 1 for tokens, 0 for padding."""
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, D)
        # No mask at all when nothing is padded: SDPA then takes its fastest kernel.
        mask = padding_mask_if_padded(attention_mask)  # (B, 1, 1, T) or None
        hidden, attentions = [x], []
        for layer in self.layers:
            x, probs = layer(x, mask=mask, return_attentions=return_attentions)
            hidden.append(x)
            attentions.append(probs)
        pooled = (
            self.pooler_act(self.pooler(x[:, 0])) if self.pooler is not None else None
        )  # (B, D)
        return ModelOutput(
            last_hidden_state=x,
            pooled=pooled,
            hidden_states=tuple(hidden) if return_hidden_states else None,
            attentions=tuple(attentions) if return_attentions else None,
        )


def init_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: N(0, std) for linear and embedding weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def mean_pool(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Average of the token vectors, ignoring padding: (B, T, D) -> (B, D)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class EncoderForSequenceClassification(nn.Module):
    """Encoder + dropout + linear classifier over a pooled sequence vector.

    Pooling: "cls" (the [CLS] hidden state), "pooler" (BERT's tanh pooler over
    [CLS], as HF's BertForSequenceClassification), or "mean" (masked mean of
    all tokens — what sentence-transformers such as all-MiniLM-L6-v2 were
    trained with).
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        if config.pooling == "pooler" and not config.add_pooler:
            raise ValueError("pooling='pooler' needs add_pooler=True")
        self.config = config
        self.encoder = Encoder(config)
        p = config.dropout if config.classifier_dropout is None else config.classifier_dropout
        self.dropout = nn.Dropout(p)
        self.classifier = Linear(config.d_model, config.num_labels)
        init_weights(self.classifier, config.initializer_range)
        self.chunk_scorer = None  # chunk_pooling "attention": one score per chunk vector
        if config.long_document == "chunks":
            if config.cls_id is None or config.sep_id is None:
                raise ValueError("long_document='chunks' needs the tokenizer's cls_id and sep_id")
            if not 2 < config.chunk_length <= config.max_len or config.chunk_stride < 1:
                raise ValueError(
                    f"chunk_length must be in (2, max_len={config.max_len}] and chunk_stride "
                    f">= 1, got {config.chunk_length}, {config.chunk_stride}"
                )
            if config.chunk_pooling == "attention":
                self.chunk_scorer = Linear(config.d_model, 1, bias=False)
                init_weights(self.chunk_scorer, config.initializer_range)

    def pool(self, out: ModelOutput, attention_mask: Tensor | None) -> Tensor:
        if self.config.pooling == "pooler":
            return out.pooled
        if self.config.pooling == "mean":
            return mean_pool(out.last_hidden_state, attention_mask)
        return out.last_hidden_state[:, 0]  # (B, D) the [CLS] position

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
        class_weights: Tensor | None = None,
        return_attentions: bool = False,
        return_hidden_states: bool = False,
    ) -> ModelOutput:
        exists = None
        if self.config.long_document == "chunks":  # attentions etc. are then per chunk
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            input_ids, attention_mask, exists = chunks_of(self.config, input_ids, attention_mask)
            token_type_ids = None
        out = self.encoder(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            return_attentions=return_attentions,
            return_hidden_states=return_hidden_states,
        )
        pooled = self.pool(out, attention_mask)  # (B, D); chunks: (B·C, D)
        if exists is not None:
            vectors = pooled.view(exists.size(0), exists.size(1), -1)  # (B, C, D)
            pooled = pool_chunks(vectors, exists, self.config.chunk_pooling, self.chunk_scorer)
        logits = self.classifier(self.dropout(pooled))  # (B, C)
        loss = None if labels is None else F.cross_entropy(logits, labels, weight=class_weights)
        out.logits, out.loss, out.pooled = logits, loss, pooled
        return out


class MaskedLMHead(nn.Module):
    """BERT's MLM head: dense + activation + LayerNorm, then a decoder tied to the token embeddings."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.dense = Linear(config.d_model, config.d_model)
        self.act = get_activation(config.activation)
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: Tensor, token_embeddings: Tensor) -> Tensor:
        """x (B, T, D) and the tied (V, D) token embedding matrix -> logits (B, T, V)."""
        h = self.norm(self.act(self.dense(x)))  # (B, T, D)
        return linear(h, token_embeddings, self.bias)  # (B, T, V)


class EncoderForMaskedLM(nn.Module):
    """Encoder + masked-LM head; loss over positions whose label is not -100."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.mlm_head = MaskedLMHead(config)
        init_weights(self.mlm_head.dense, config.initializer_range)

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
        only_labelled: bool = False,
        return_attentions: bool = False,
        return_hidden_states: bool = False,
    ) -> ModelOutput:
        """Logits (B, T, V); with ``labels`` (B, T, -100 = not predicted) also the loss.

        ``only_labelled``: score only the labelled positions — logits (N, V) for the N
        positions whose label is not -100 (in row-major order). Pre-training predicts
        15% of the positions, so this skips ~85% of the vocabulary projection.
        """
        out = self.encoder(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            return_attentions=return_attentions,
            return_hidden_states=return_hidden_states,
        )
        tied = self.encoder.embeddings.token_embeddings.weight  # (V, D)
        hidden = out.last_hidden_state  # (B, T, D)
        if only_labelled:
            if labels is None:
                raise ValueError("only_labelled needs labels")
            keep = labels != -100  # (B, T)
            logits = self.mlm_head(hidden[keep], tied)  # (N, V)
            out.loss = F.cross_entropy(logits, labels[keep]) if keep.any() else hidden.sum() * 0
            out.logits = logits
            return out
        logits = self.mlm_head(hidden, tied)  # (B, T, V)
        if labels is not None:
            out.loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        out.logits = logits
        return out
