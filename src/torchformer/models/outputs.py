"""The one output type every torchformer model returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from torchformer.nn.cache import KVCache


@dataclass
class ModelOutput:
    """What a forward pass produced; fields a model does not compute stay None.

    Attributes:
        last_hidden_state: (B, T, D) final hidden states (decoder side for seq2seq).
        logits: (B, C) for classification, (B, T, V) for language modelling.
        loss: scalar training loss when labels were given.
        pooled: (B, D) sequence representation used by a classification head.
        hidden_states: L + 1 tensors (B, T, D): embeddings output, then each layer.
        attentions: L tensors (B, H, T, S) (self-attention), when asked for.
        cross_attentions: L tensors (B, H, T, S_src) (encoder–decoder), when asked for.
        encoder_last_hidden_state: (B, S, D) encoder output of a seq2seq model.
        encoder_attentions: L tensors (B, H, S, S) of a seq2seq encoder.
        cache: the KV cache after this step, for incremental decoding.
    """

    last_hidden_state: Tensor | None = None
    logits: Tensor | None = None
    loss: Tensor | None = None
    pooled: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    cross_attentions: tuple[Tensor, ...] | None = None
    encoder_last_hidden_state: Tensor | None = None
    encoder_attentions: tuple[Tensor, ...] | None = None
    cache: KVCache | None = None
