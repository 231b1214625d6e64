"""RMSNorm, sinusoidal and learned positions, T5 relative position buckets and bias."""

from __future__ import annotations

import math

import pytest
import torch

from torchformer.nn import (
    LearnedPositionalEmbedding,
    RelativePositionBias,
    RMSNorm,
    SinusoidalPositionalEncoding,
    build_norm,
)
from torchformer.nn.relative_position import relative_position_bucket


def test_rmsnorm_matches_formula():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
    x = torch.randn(2, 5, 16) * 3 + 1
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected, atol=1e-6, rtol=1e-6)
    # No mean subtraction (that would be LayerNorm): a constant input is not sent to zero.
    const = torch.full((1, 16), 2.0)
    torch.testing.assert_close(norm(const), torch.ones(1, 16) * norm.weight, atol=1e-5, rtol=0)
    # Half precision weights give half precision output, statistic computed in fp32.
    half = RMSNorm(16).half()
    assert half(x.half()).dtype == torch.float16


def test_build_norm():
    assert isinstance(build_norm("rmsnorm", 8, eps=1e-5), RMSNorm)
    ln = build_norm("layernorm", 8, eps=1e-5)
    assert isinstance(ln, torch.nn.LayerNorm) and ln.eps == 1e-5
    with pytest.raises(ValueError, match="unknown norm"):
        build_norm("batchnorm", 8, eps=1e-5)


def test_sinusoidal_table_matches_paper_formula():
    d_model = 16
    pe = SinusoidalPositionalEncoding(d_model, max_len=100)
    for pos in (0, 1, 7, 50, 99):
        for i in range(d_model // 2):
            angle = pos / 10000 ** (2 * i / d_model)
            assert pe.table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert pe.table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)
    positions = torch.tensor([[0, 1, 2], [5, 6, 7]])
    out = pe(positions)
    assert out.shape == (2, 3, d_model)
    torch.testing.assert_close(out[1, 0], pe.table[5])
    assert "table" not in pe.state_dict()  # fixed, not a checkpointed weight


def test_sinusoidal_table_odd_width():
    pe = SinusoidalPositionalEncoding(7, max_len=10)
    assert pe.table.shape == (10, 7)
    assert pe.table[3, 6].item() == pytest.approx(math.sin(3 / 10000 ** (6 / 7)), abs=1e-5)


def test_learned_positional_embedding():
    emb = LearnedPositionalEmbedding(12, 8)
    assert emb.weight.shape == (12, 8) and emb.weight.requires_grad
    assert emb(torch.arange(4)).shape == (4, 8)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (8, 20)])
def test_relative_position_bucket_matches_transformers(bidirectional, num_buckets, max_distance):
    modeling_t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    distances = torch.arange(-300, 301)  # key - query, both directions, past max_distance
    ours = relative_position_bucket(
        distances, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )
    theirs = modeling_t5.T5Attention._relative_position_bucket(
        distances, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )
    assert torch.equal(ours, theirs)
    assert ours.min() >= 0 and ours.max() < num_buckets
    # A 2-D grid of (query, key) positions, as the bias module builds it.
    grid = torch.arange(40)[None, :] - torch.arange(40)[:, None]
    assert torch.equal(
        relative_position_bucket(
            grid, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
        ),
        modeling_t5.T5Attention._relative_position_bucket(
            grid, bidirectional, num_buckets, max_distance
        ),
    )


def test_relative_position_bias_shape_and_cached_offset():
    torch.manual_seed(0)
    rpb = RelativePositionBias(4, num_buckets=8, max_distance=16, bidirectional=False)
    full = rpb(6, 6)  # (1, H, T, S)
    assert full.shape == (1, 4, 6, 6)
    # Decoding step 4 (offset) over 5 keys is row 4 of the full table.
    step = rpb(1, 5, offset=4)
    torch.testing.assert_close(step, full[:, :, 4:5, :5])
    # The bias is a lookup of the learned table by bucket.
    buckets = relative_position_bucket(
        torch.arange(6)[None, :] - torch.arange(6)[:, None],
        bidirectional=False,
        num_buckets=8,
        max_distance=16,
    )
    torch.testing.assert_close(full[0, 2], rpb.embedding.weight[buckets][..., 2])
