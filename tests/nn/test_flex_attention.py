"""attn_impl="flex": the position patterns as FlexAttention block masks equal dense
attention under the pattern's mask (run eagerly here: compiling takes minutes on 2 cores)."""

from __future__ import annotations

import warnings

import pytest
import torch

from torchformer.nn import (
    AttentionPattern,
    MultiHeadAttention,
    flex,
    pattern_mask,
    reference_attention,
)
from torchformer.nn.flex import flex_pattern_attention


@pytest.fixture(autouse=True)
def eager(monkeypatch):
    monkeypatch.setattr(flex, "COMPILE", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile"
        yield


PATTERNS = [
    AttentionPattern("sliding_window", window=5, global_tokens=(0, 7)),
    AttentionPattern("sliding_window", window=3, dilation=2),
    AttentionPattern("block_sparse", block_size=8, random_blocks=2),
    AttentionPattern("block_sparse", block_size=16, window_blocks=2, global_blocks=(0,)),
]


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: f"{p.kind}")
def test_the_block_mask_equals_dense_attention_under_the_pattern(pattern):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 150, 16, generator=g) for _ in range(3))
    key_mask = torch.ones(2, 150, dtype=torch.bool)
    key_mask[1, 130:] = False
    out = flex_pattern_attention(q, k, v, pattern, key_mask=key_mask)
    mask = pattern_mask(pattern, 150) & key_mask[:, None, None, :]
    ref, _ = reference_attention(q, k, v, mask=mask)
    torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, :, :130], ref[1, :, :130], atol=1e-5, rtol=0)


def test_multi_head_attention_on_flex_equals_its_reference_path():
    p = AttentionPattern("sliding_window", window=4, global_tokens=(0,))
    torch.manual_seed(0)
    fast = MultiHeadAttention(32, 4, pattern=p, attn_impl="flex").eval()
    ref = MultiHeadAttention(32, 4, pattern=p, attn_impl="reference").eval()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 40, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x)[0], ref(x)[0], atol=1e-5, rtol=0)


def test_what_flex_cannot_take_is_named():
    with pytest.raises(ValueError, match="'lsh' has no FlexAttention mask"):
        MultiHeadAttention(32, 4, pattern=AttentionPattern("lsh"), attn_impl="flex")
    p = AttentionPattern("sliding_window", window=2)
    layer = MultiHeadAttention(32, 4, pattern=p, attn_impl="flex", dropout=0.1).train()
    with pytest.raises(ValueError, match="FlexAttention has none"):
        layer(torch.randn(1, 20, 32))
