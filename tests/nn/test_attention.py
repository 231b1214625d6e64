"""Attention: the reference equation vs PyTorch's SDPA kernels, probabilities, masks, MHA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from torchformer.nn import (
    KVCache,
    MultiHeadAttention,
    RelativePositionBias,
    causal_mask,
    causal_padding_mask,
    fast_attention,
    padding_mask,
    reference_attention,
)
from torchformer.nn import attention as attention_module
from torchformer.nn.attention import FUSED_QKV_MIN_ROWS

B, H, DH = 3, 4, 8
ATOL = 1e-5


def _qkv(t: int, s: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, t, DH, generator=g)  # (B, H, T, Dh)
    k = torch.randn(B, H, s, DH, generator=g)  # (B, H, S, Dh)
    v = torch.randn(B, H, s, DH, generator=g)  # (B, H, S, Dh)
    return q, k, v


def _key_padding(s: int) -> torch.Tensor:
    """(B, S) attention mask: row b has S - 2b real tokens then padding."""
    lengths = torch.tensor([s - 2 * b for b in range(B)])
    return (torch.arange(s)[None, :] < lengths[:, None]).long()  # (B, S)


def _t5_bias(t: int, s: int, *, offset: int = 0, bidirectional: bool = True) -> torch.Tensor:
    torch.manual_seed(1)
    rpb = RelativePositionBias(H, num_buckets=8, max_distance=16, bidirectional=bidirectional)
    nn_init = torch.randn_like(rpb.embedding.weight) * 2.0  # large enough to matter
    with torch.no_grad():
        rpb.embedding.weight.copy_(nn_init)
    return rpb(t, s, offset=offset)  # (1, H, T, S)


def _cases() -> dict[str, tuple[int, int, torch.Tensor | None, torch.Tensor | None]]:
    """name -> (T, S, mask, bias)."""
    return {
        "no_mask": (7, 7, None, None),
        "padding": (7, 7, padding_mask(_key_padding(7)), None),
        "causal": (7, 7, causal_mask(7), None),
        "causal_cached_offset": (3, 9, causal_mask(3, 9), None),
        "causal_and_padding": (7, 7, causal_padding_mask(_key_padding(7), 7), None),
        "cross_attention_padding": (5, 11, padding_mask(_key_padding(11)), None),
        "t5_bias": (6, 6, None, _t5_bias(6, 6)),
        "t5_bias_and_padding": (6, 6, padding_mask(_key_padding(6)), _t5_bias(6, 6)),
        "t5_causal_bias_and_causal_mask": (
            6,
            6,
            causal_mask(6),
            _t5_bias(6, 6, bidirectional=False),
        ),
        "t5_bias_cross_lengths": (4, 9, padding_mask(_key_padding(9)), _t5_bias(4, 9)),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_reference_and_sdpa_agree(name):
    t, s, mask, bias = _cases()[name]
    q, k, v = _qkv(t, s)
    ref, probs = reference_attention(q, k, v, mask=mask, bias=bias)
    fast = fast_attention(q, k, v, mask=mask, bias=bias)
    assert ref.shape == fast.shape == (B, H, t, DH)
    assert probs.shape == (B, H, t, s)
    assert (ref - fast).abs().max().item() <= ATOL


@pytest.mark.parametrize("name", list(_cases()))
def test_reference_probabilities_sum_to_one_and_are_zero_on_masked_keys(name):
    t, s, mask, bias = _cases()[name]
    q, k, v = _qkv(t, s)
    _, probs = reference_attention(q, k, v, mask=mask, bias=bias)  # (B, H, T, S)
    torch.testing.assert_close(probs.sum(-1), torch.ones(B, H, t), atol=1e-6, rtol=0)
    assert (probs >= 0).all()
    if mask is not None:
        hidden = ~mask.expand(B, H, t, s)
        assert hidden.any()
        assert probs[hidden].abs().max().item() == 0.0


def test_reference_matches_the_written_out_equation():
    q, k, v = _qkv(5, 6)
    mask = padding_mask(_key_padding(6))
    scores = q @ k.transpose(-2, -1) / math.sqrt(DH)  # (B, H, T, S)
    scores = scores.masked_fill(~mask, float("-inf"))
    expected = torch.softmax(scores, dim=-1) @ v
    out, _ = reference_attention(q, k, v, mask=mask)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    # A custom scale (T5 uses 1.0) is honoured by both paths.
    out1, _ = reference_attention(q, k, v, mask=mask, scale=1.0)
    expected1 = torch.softmax((q @ k.transpose(-2, -1)).masked_fill(~mask, float("-inf")), -1) @ v
    torch.testing.assert_close(out1, expected1, atol=1e-5, rtol=0)
    assert (fast_attention(q, k, v, mask=mask, scale=1.0) - out1).abs().max() <= ATOL


def test_fully_masked_rows_are_finite_and_agree():
    q, k, v = _qkv(4, 6)
    mask = torch.ones(B, 1, 1, 6, dtype=torch.bool)
    mask[1] = False  # every key of batch row 1 hidden
    # Left padding + causal: query 0 of row 2 can only see key 0, which is padding.
    left_pad = torch.ones(B, 6, dtype=torch.long)
    left_pad[2, :3] = 0
    for m in (mask, causal_padding_mask(left_pad, 4, 6)):
        ref, probs = reference_attention(q, k, v, mask=m)
        fast = fast_attention(q, k, v, mask=m)
        assert torch.isfinite(ref).all() and torch.isfinite(probs).all()
        assert torch.isfinite(fast).all()
        assert (ref - fast).abs().max().item() <= ATOL
    # And the backward pass through a fully masked row stays finite too.
    q.requires_grad_(True)
    fast_attention(q, k, v, mask=mask).sum().backward()
    assert torch.isfinite(q.grad).all()


def _mha(impl: str = "sdpa", **kw) -> MultiHeadAttention:
    torch.manual_seed(0)
    return MultiHeadAttention(32, H, attn_impl=impl, **kw).eval()


def _manual_mha(mha: MultiHeadAttention, x, context=None, mask=None) -> torch.Tensor:
    """Multi-head attention written from the paper with einsum, from the module's weights."""
    context = x if context is None else context
    q = F.linear(x, mha.q_proj.weight, mha.q_proj.bias).unflatten(-1, (H, -1))  # (B, T, H, Dh)
    k = F.linear(context, mha.k_proj.weight, mha.k_proj.bias).unflatten(
        -1, (H, -1)
    )  # (B, S, H, Dh)
    v = F.linear(context, mha.v_proj.weight, mha.v_proj.bias).unflatten(
        -1, (H, -1)
    )  # (B, S, H, Dh)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    heads = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v).flatten(2)  # (B, T, H*Dh)
    return F.linear(heads, mha.out_proj.weight, mha.out_proj.bias)


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
def test_multi_head_attention_matches_hand_written_formula(impl):
    mha = _mha(impl)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, 7, 32, generator=g)
    ctx = torch.randn(B, 10, 32, generator=g)
    self_mask = padding_mask(_key_padding(7))
    cross_mask = padding_mask(_key_padding(10))
    out, probs = mha(x, mask=self_mask)
    assert probs is None  # not asked for
    torch.testing.assert_close(out, _manual_mha(mha, x, mask=self_mask), atol=1e-5, rtol=0)
    out, _ = mha(x, context=ctx, mask=cross_mask)
    assert out.shape == (B, 7, 32)
    torch.testing.assert_close(out, _manual_mha(mha, x, ctx, cross_mask), atol=1e-5, rtol=0)


def test_return_attentions_takes_the_reference_path(monkeypatch):
    mha = _mha("sdpa")
    x = torch.randn(B, 5, 32)
    mask = padding_mask(_key_padding(5))
    expected, _ = mha(x, mask=mask)

    def no_fast(*args, **kwargs):
        raise AssertionError("fast_attention must not be used when weights are requested")

    monkeypatch.setattr(attention_module, "fast_attention", no_fast)
    out, probs = mha(x, mask=mask, return_attentions=True)
    assert probs.shape == (B, H, 5, 5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(B, H, 5))
    assert (out - expected).abs().max().item() <= ATOL
    with pytest.raises(AssertionError, match="must not be used"):
        mha(x, mask=mask)  # proves the sdpa module otherwise takes the fast path


def test_sdpa_and_reference_modules_agree_with_bias_and_dropout_off_in_eval():
    ref, fast = _mha("reference", dropout=0.5), _mha("sdpa", dropout=0.5)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(B, 6, 32)
    bias = _t5_bias(6, 6)
    mask = padding_mask(_key_padding(6))
    out_ref, probs = ref(x, mask=mask, bias=bias, return_attentions=True)
    out_fast, none = fast(x, mask=mask, bias=bias)
    assert none is None and probs.shape == (B, H, 6, 6)
    assert (out_ref - out_fast).abs().max().item() <= ATOL


def test_attention_dropout_is_active_in_training_only():
    mha = _mha("sdpa", dropout=0.5)
    x = torch.randn(B, 6, 32)
    eval_out = mha(x)[0]
    mha.train()
    torch.manual_seed(3)
    a = mha(x)[0]
    torch.manual_seed(3)
    b = mha(x)[0]
    assert not torch.allclose(a, eval_out, atol=1e-4)
    torch.testing.assert_close(a, b)  # deterministic under a seed


def test_constructor_validates_arguments():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="attn_impl"):
        MultiHeadAttention(32, 4, attn_impl="flash")
    mha = MultiHeadAttention(32, 4, head_dim=16, bias=False)  # T5 style: inner width H*Dh != D
    assert mha.q_proj.weight.shape == (64, 32) and mha.q_proj.bias is None
    out, _ = mha(torch.randn(2, 3, 32))
    assert out.shape == (2, 3, 32)


# --- the fused q/k/v projection used at inference -------------------------------------------
def _outputs_without_and_with_autograd(mha, x, **kw):
    with torch.enable_grad():
        unfused = mha(x, **kw)[0].detach()
    with torch.no_grad():
        fused = mha(x, **kw)[0]
    return unfused, fused


def test_fused_qkv_at_inference_matches_separate_projections():
    mha = _mha("sdpa")
    T = FUSED_QKV_MIN_ROWS  # B * T rows: enough for the fused path
    x = torch.randn(B, T, 32)
    mask = padding_mask(_key_padding(T))
    unfused, fused = _outputs_without_and_with_autograd(mha, x, mask=mask)
    assert mha._use_fused_qkv(B * T) is False  # autograd on: separate projections
    with torch.no_grad():
        assert mha._use_fused_qkv(B * T) is True  # the fused path is the one that runs below
        assert mha._use_fused_qkv(B) is False  # token-by-token decoding: separate projections
    assert (unfused - fused).abs().max().item() <= 1e-6
    with torch.inference_mode():
        assert (mha(x, mask=mask)[0] - unfused).abs().max().item() <= 1e-6
    no_bias = MultiHeadAttention(32, H, head_dim=16, bias=False).eval()  # T5 style
    unfused, fused = _outputs_without_and_with_autograd(no_bias, x)
    assert no_bias._fused_qkv_weights()[1] is None and (unfused - fused).abs().max().item() <= 1e-6
    mha.k_proj.bias = None  # Whisper-style: no key bias; falls back to separate projections
    unfused, fused = _outputs_without_and_with_autograd(mha, x, mask=mask)
    assert (unfused - fused).abs().max().item() <= 1e-6


def test_fused_qkv_follows_weight_changes():
    mha = _mha("sdpa")
    x = torch.randn(B, FUSED_QKV_MIN_ROWS, 32)

    def check(what: str) -> None:
        unfused, fused = _outputs_without_and_with_autograd(mha, x)
        assert (unfused - fused).abs().max().item() <= 1e-5, what

    check("initial")
    torch.manual_seed(9)
    mha.load_state_dict(MultiHeadAttention(32, H).state_dict())
    check("load_state_dict")
    with torch.no_grad():
        mha.k_proj.weight.mul_(2.0)
        mha.v_proj.bias.add_(1.0)
    check("in-place edits")
    mha.q_proj.weight = torch.nn.Parameter(torch.randn(32, 32))
    check("new Parameter")
    mha.v_proj.weight.data = torch.randn(32, 32)
    check(".data assignment")
    optimizer = torch.optim.SGD(mha.parameters(), lr=0.5)
    mha(x)[0].square().sum().backward()
    optimizer.step()
    check("optimizer step")
    mha.double()
    x = x.double()
    check(".double()")


def test_module_built_under_inference_mode_still_works():
    with torch.inference_mode():
        mha = MultiHeadAttention(32, H).eval()
        x = torch.randn(B, 5, 32)
        out, _ = mha(x)
        expected = _manual_mha(mha, x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_grouped_query_attention_is_attention_with_shared_key_value_heads(impl):
    """n_kv_heads < H equals plain attention whose k/v heads are repeated per group."""
    torch.manual_seed(0)
    gqa = MultiHeadAttention(32, 4, n_kv_heads=2, bias=False, attn_impl=impl).eval()
    assert gqa.k_proj.weight.shape == (16, 32)  # 2 heads of 8
    full = MultiHeadAttention(32, 4, bias=False, attn_impl=impl).eval()
    with torch.no_grad():
        full.q_proj.weight.copy_(gqa.q_proj.weight)
        full.out_proj.weight.copy_(gqa.out_proj.weight)
        for name in ("k_proj", "v_proj"):  # head j of the group pair (2j, 2j + 1)
            w = getattr(gqa, name).weight.view(2, 8, 32).repeat_interleave(2, dim=0)
            getattr(full, name).weight.copy_(w.reshape(32, 32))
    x = torch.randn(B, 6, 32)
    mask = padding_mask(_key_padding(6))
    with torch.no_grad():
        assert torch.allclose(gqa(x, mask=mask)[0], full(x, mask=mask)[0], atol=1e-6)
    cache = KVCache(1)
    with torch.no_grad():
        gqa(x, cache=cache[0])
    assert cache[0].k.shape == (B, 2, 6, 8)  # the cache keeps the shared heads only
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        MultiHeadAttention(32, 4, n_kv_heads=3)
