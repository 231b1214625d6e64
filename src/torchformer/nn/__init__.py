"""Transformer building blocks: attention, masks, feed-forward, norms, positions, KV cache
(and the additive attention of the RNN encoder–decoder the Transformer replaced).

``nn/`` imports torch only; every model in ``torchformer.models`` is built from these.
"""

from torchformer.nn.additive_attention import AdditiveAttention
from torchformer.nn.attention import MultiHeadAttention, fast_attention, reference_attention
from torchformer.nn.cache import KVCache, LayerCache
from torchformer.nn.feed_forward import FeedForward, GatedFeedForward, get_activation
from torchformer.nn.layers import DecoderLayer, EncoderLayer
from torchformer.nn.masks import (
    causal_mask,
    causal_padding_mask,
    combine_masks,
    padding_mask,
    padding_mask_if_padded,
)
from torchformer.nn.norms import LayerNorm, RMSNorm, build_norm
from torchformer.nn.positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from torchformer.nn.relative_position import RelativePositionBias
from torchformer.nn.sparse import AttentionPattern, pattern_mask, sliding_window_attention

__all__ = [
    "AdditiveAttention",
    "AttentionPattern",
    "DecoderLayer",
    "EncoderLayer",
    "FeedForward",
    "GatedFeedForward",
    "KVCache",
    "LayerCache",
    "LayerNorm",
    "LearnedPositionalEmbedding",
    "MultiHeadAttention",
    "RMSNorm",
    "RelativePositionBias",
    "SinusoidalPositionalEncoding",
    "build_norm",
    "causal_mask",
    "causal_padding_mask",
    "combine_masks",
    "fast_attention",
    "get_activation",
    "padding_mask",
    "padding_mask_if_padded",
    "pattern_mask",
    "reference_attention",
    "sliding_window_attention",
]
