"""Encoder and decoder layers: residual wiring around attention and FFN.

Vaswani et al. 2017 normalise after each residual sum ("post-norm"):

    x = norm(x + dropout(sublayer(x)))

GPT-2, T5 and most modern models normalise the sublayer input ("pre-norm"),
which trains stably without warm-up tricks (Xiong et al. 2020):

    x = x + dropout(sublayer(norm(x)))

The layers take their attention, feed-forward and norm modules ready-built
(as torchtune does), so each model family decides what goes inside (biases,
RMSNorm, gated FFN) and the residual logic is written once.

Shapes: x (B, T, D); context (B, S, D); masks broadcastable to (B, H, T, S).
"""

from __future__ import annotations

from torch import Tensor, nn

from torchformer.nn.attention import MultiHeadAttention
from torchformer.nn.cache import LayerCache


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each in a residual block.

    Args:
        self_attn: the self-attention module.
        ffn: the position-wise feed-forward module.
        attn_norm: norm of the attention block.
        ffn_norm: norm of the feed-forward block.
        dropout: residual dropout.
        norm_first: pre-norm (True) or post-norm (False).
    """

    def __init__(
        self,
        self_attn: MultiHeadAttention,
        ffn: nn.Module,
        attn_norm: nn.Module,
        ffn_norm: nn.Module,
        *,
        dropout: float = 0.0,
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        self.self_attn = self_attn
        self.ffn = ffn
        self.attn_norm = attn_norm
        self.ffn_norm = ffn_norm
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        bias: Tensor | None = None,
        cache: LayerCache | None = None,
        rotary: tuple[Tensor, Tensor] | None = None,
        return_attentions: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Returns (x (B, T, D), attention probabilities (B, H, T, S) or None).

        ``rotary``: (cos, sin) of the positions, for rotary self-attention.
        """
        attend = {
            "mask": mask,
            "bias": bias,
            "cache": cache,
            "rotary": rotary,
            "return_attentions": return_attentions,
        }
        if self.norm_first:
            h, probs = self.self_attn(self.attn_norm(x), **attend)
            x = x + self.dropout(h)
            x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        else:
            h, probs = self.self_attn(x, **attend)
            x = self.attn_norm(x + self.dropout(h))
            x = self.ffn_norm(x + self.dropout(self.ffn(x)))
        return x, probs


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention to the encoder, feed-forward.

    Args:
        self_attn: causal self-attention.
        cross_attn: attention from the decoder to the encoder output.
        ffn: position-wise feed-forward.
        attn_norm, cross_attn_norm, ffn_norm: the three blocks' norms.
        dropout: residual dropout.
        norm_first: pre-norm (True) or post-norm (False).
    """

    def __init__(
        self,
        self_attn: MultiHeadAttention,
        cross_attn: MultiHeadAttention,
        ffn: nn.Module,
        attn_norm: nn.Module,
        cross_attn_norm: nn.Module,
        ffn_norm: nn.Module,
        *,
        dropout: float = 0.0,
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        self.self_attn = self_attn
        self.cross_attn = cross_attn
        self.ffn = ffn
        self.attn_norm = attn_norm
        self.cross_attn_norm = cross_attn_norm
        self.ffn_norm = ffn_norm
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def _block(self, x: Tensor, norm: nn.Module, sublayer) -> tuple[Tensor, Tensor | None]:
        if self.norm_first:
            h, probs = sublayer(norm(x))
            return x + self.dropout(h), probs
        h, probs = sublayer(x)
        return norm(x + self.dropout(h)), probs

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        *,
        mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        bias: Tensor | None = None,
        context_bias: Tensor | None = None,
        cache: LayerCache | None = None,
        return_attentions: bool = False,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Returns (x (B, T, D), self-attn probs (B, H, T, T), cross-attn probs (B, H, T, S))."""
        x, self_probs = self._block(
            x,
            self.attn_norm,
            lambda h: self.self_attn(
                h, mask=mask, bias=bias, cache=cache, return_attentions=return_attentions
            ),
        )
        x, cross_probs = self._block(
            x,
            self.cross_attn_norm,
            lambda h: self.cross_attn(
                h,
                context=context,
                mask=context_mask,
                bias=context_bias,
                cache=cache,
                return_attentions=return_attentions,
            ),
        )
        x, _ = self._block(x, self.ffn_norm, lambda h: (self.ffn(h), None))
        return x, self_probs, cross_probs
