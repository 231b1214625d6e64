"""Residual wiring (pre-norm vs post-norm), feed-forward formulas, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchformer.nn import (
    DecoderLayer,
    EncoderLayer,
    FeedForward,
    GatedFeedForward,
    MultiHeadAttention,
    RMSNorm,
    causal_mask,
    get_activation,
    padding_mask,
)

D, H, FF = 32, 4, 64


def _randomise_norm(norm: nn.Module) -> nn.Module:
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        if getattr(norm, "bias", None) is not None:
            norm.bias.uniform_(-0.5, 0.5)
    return norm


def _encoder_layer(norm_first: bool, dropout: float = 0.0) -> EncoderLayer:
    torch.manual_seed(0)
    return EncoderLayer(
        MultiHeadAttention(D, H),
        FeedForward(D, FF, activation="gelu"),
        _randomise_norm(nn.LayerNorm(D)),
        _randomise_norm(nn.LayerNorm(D)),
        dropout=dropout,
        norm_first=norm_first,
    )


def _attn(layer_attn, x, mask=None, context=None):
    return layer_attn(x, context=context, mask=mask)[0]


def test_post_norm_encoder_layer_formula():
    layer = _encoder_layer(norm_first=False).eval()
    x = torch.randn(2, 5, D)
    mask = padding_mask(torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]))
    # Vaswani et al.: x = norm(x + sublayer(x)).
    h = layer.attn_norm(x + _attn(layer.self_attn, x, mask))
    expected = layer.ffn_norm(h + layer.ffn(h))
    out, probs = layer(x, mask=mask)
    assert probs is None
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_pre_norm_encoder_layer_formula():
    layer = _encoder_layer(norm_first=True).eval()
    x = torch.randn(2, 5, D)
    mask = padding_mask(torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]))
    # Pre-norm: x = x + sublayer(norm(x)).
    h = x + _attn(layer.self_attn, layer.attn_norm(x), mask)
    expected = h + layer.ffn(layer.ffn_norm(h))
    out, _ = layer(x, mask=mask)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    # The two wirings really differ (the flag is not ignored).
    post = _encoder_layer(norm_first=False).eval()
    assert not torch.allclose(post(x, mask=mask)[0], out, atol=1e-3)


def test_encoder_layer_returns_attentions_when_asked():
    layer = _encoder_layer(norm_first=False).eval()
    out, probs = layer(torch.randn(2, 5, D), return_attentions=True)
    assert out.shape == (2, 5, D) and probs.shape == (2, H, 5, 5)


@pytest.mark.parametrize("norm_first", [True, False])
def test_decoder_layer_formula(norm_first):
    torch.manual_seed(0)
    layer = DecoderLayer(
        MultiHeadAttention(D, H),
        MultiHeadAttention(D, H),
        FeedForward(D, FF),
        _randomise_norm(RMSNorm(D)),
        _randomise_norm(RMSNorm(D)),
        _randomise_norm(RMSNorm(D)),
        norm_first=norm_first,
    ).eval()
    x, ctx = torch.randn(2, 4, D), torch.randn(2, 6, D)
    mask, ctx_mask = causal_mask(4), padding_mask(torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]]))
    blocks = [
        (layer.attn_norm, lambda h: _attn(layer.self_attn, h, mask)),
        (layer.cross_attn_norm, lambda h: _attn(layer.cross_attn, h, ctx_mask, ctx)),
        (layer.ffn_norm, layer.ffn),
    ]
    expected = x
    for norm, sublayer in blocks:
        expected = (
            expected + sublayer(norm(expected))
            if norm_first
            else norm(expected + sublayer(expected))
        )
    out, self_probs, cross_probs = layer(
        x, ctx, mask=mask, context_mask=ctx_mask, return_attentions=True
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert self_probs.shape == (2, H, 4, 4) and cross_probs.shape == (2, H, 4, 6)
    assert cross_probs[1, :, :, 4:].abs().max() == 0.0


def test_feed_forward_formulas():
    torch.manual_seed(0)
    x = torch.randn(2, 3, D)
    ffn = FeedForward(D, FF, activation="relu")
    expected = ffn.down_proj(F.relu(ffn.up_proj(x)))
    torch.testing.assert_close(ffn(x), expected)
    gated = GatedFeedForward(D, FF, activation="gelu_new")
    assert gated.up_proj.bias is None  # T5 v1.1: no biases by default
    expected = gated.down_proj(F.gelu(gated.gate_proj(x), approximate="tanh") * gated.up_proj(x))
    torch.testing.assert_close(gated(x), expected)
    with pytest.raises(ValueError, match="unknown activation"):
        get_activation("sigmoidal")


def test_training_is_deterministic_under_a_seed():
    layer = _encoder_layer(norm_first=False, dropout=0.3).train()
    x = torch.randn(2, 5, D)

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(seed)
        out, _ = layer(x)
        layer.zero_grad()
        out.square().mean().backward()
        return out.detach(), layer.self_attn.q_proj.weight.grad.clone()

    out_a, grad_a = run(7)
    out_b, grad_b = run(7)
    out_c, _ = run(8)
    assert torch.equal(out_a, out_b) and torch.equal(grad_a, grad_b)
    assert not torch.allclose(out_a, out_c)  # dropout is really active in training
    # Same seed, same initialisation.
    assert all(
        torch.equal(p, q)
        for p, q in zip(_encoder_layer(True).parameters(), _encoder_layer(True).parameters())
    )
