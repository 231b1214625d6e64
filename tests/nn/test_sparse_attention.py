"""Sliding-window attention: the chunked O(T·w) kernel equals dense attention under the
pattern's explicit mask, and MultiHeadAttention applies a pattern on both paths."""

from __future__ import annotations

import itertools

import pytest
import torch
from attention_helpers import largest_product, qkv

from torchformer.nn import AttentionPattern, MultiHeadAttention, pattern_mask, reference_attention
from torchformer.nn.sparse import sliding_window_attention


def test_the_explicit_mask_is_the_window_the_dilation_and_the_global_positions():
    p = AttentionPattern("sliding_window", window=1, dilation=2, global_tokens=(0,))
    m = pattern_mask(p, 6)[0, 0].int()
    assert m.tolist() == [
        [1, 1, 1, 1, 1, 1],  # position 0 is global: sees everything
        [1, 1, 0, 1, 0, 0],  # |i - j| <= 2 and even: 1, 3 (and global 0)
        [1, 0, 1, 0, 1, 0],
        [1, 1, 0, 1, 0, 1],
        [1, 0, 1, 0, 1, 0],
        [1, 0, 0, 1, 0, 1],
    ]
    causal = pattern_mask(p, 6, causal=True)[0, 0]
    assert torch.equal(causal, pattern_mask(p, 6)[0, 0] & torch.ones(6, 6).tril().bool())
    assert pattern_mask(AttentionPattern(), 4) is None


CASES = list(itertools.product(
    (1, 5, 16, 37),  # T: shorter than, equal to and not a multiple of the chunk
    (1, 3, 8),  # window
    (1, 2),  # dilation
    ((), (0,), (0, 10)),  # global positions (10 is past the end for short T)
    (False, True),  # causal
))  # fmt: skip


@pytest.mark.parametrize(("t", "window", "dilation", "globals_", "causal"), CASES)
def test_the_chunked_kernel_equals_dense_attention_under_the_mask(
    t, window, dilation, globals_, causal
):
    T = t
    q, k, v = qkv(T, seed=T * 7 + window)
    key_mask = torch.ones(2, T, dtype=torch.bool)
    key_mask[1, max(1, T - 3) :] = False  # row 1 is padded
    p = AttentionPattern("sliding_window", window=window, dilation=dilation, global_tokens=globals_)
    got = sliding_window_attention(q, k, v, p, causal=causal, key_mask=key_mask)
    mask = pattern_mask(p, T, causal=causal) & key_mask[:, None, None, :]
    expected, _ = reference_attention(q, k, v, mask=mask)
    real = key_mask[:, None, :, None].expand_as(got)  # padding queries are not defined
    assert torch.allclose(got[real], expected[real], atol=1e-5)


def test_a_long_sequence_never_builds_the_dense_score_matrix(monkeypatch):
    """The kernel's largest product is a (B, H, T/c, c, c) score block, not (B, H, T, T)."""
    T, w = 2048, 16
    q, k, v = qkv(T, b=1, h=1)
    pattern = AttentionPattern("sliding_window", window=w)
    largest = largest_product(
        monkeypatch, "matmul", lambda: sliding_window_attention(q, k, v, pattern)
    )
    assert largest <= T * w * 8 < T * T  # linear in T (8 = head dim)


def test_multi_head_attention_applies_the_pattern_on_both_paths():
    p = AttentionPattern("sliding_window", window=2, global_tokens=(0,))
    torch.manual_seed(0)
    fast = MultiHeadAttention(24, 3, pattern=p).eval()
    ref = MultiHeadAttention(24, 3, pattern=p, attn_impl="reference").eval()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 11, 24)
    pad = torch.ones(2, 11, dtype=torch.bool)
    pad[1, 8:] = False
    mask = pad[:, None, None, :]
    with torch.no_grad():
        a, _ = fast(x, mask=mask)
        b, probs = ref(x, mask=mask, return_attentions=True)
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1, :8], b[1, :8], atol=1e-5)
    allowed = pattern_mask(p, 11)[0, 0]
    assert probs[0][:, ~allowed].abs().max() == 0  # nothing outside the pattern
    dense = MultiHeadAttention(24, 3).eval()
    dense.load_state_dict(fast.state_dict())
    with torch.no_grad():
        assert not torch.allclose(dense(x, mask=mask)[0][0], a[0], atol=1e-3)  # the pattern matters


def test_global_projections_give_the_global_rows_their_own_attention():
    """Longformer: a global position's row is softmax(q_g k_gᵀ) v_g over every real key;
    the other rows are the pattern's, through the usual projections. Both paths agree,
    the probabilities show it, and only a sliding window takes global projections."""
    p = AttentionPattern("sliding_window", window=2, global_tokens=(0, 6))
    torch.manual_seed(0)
    fast = MultiHeadAttention(24, 3, pattern=p, global_projections=True).eval()
    ref = MultiHeadAttention(24, 3, pattern=p, global_projections=True, attn_impl="reference")
    ref.load_state_dict(fast.state_dict())
    plain = MultiHeadAttention(24, 3, pattern=p).eval()
    plain.load_state_dict(fast.state_dict(), strict=False)
    x = torch.randn(2, 13, 24)
    pad = torch.ones(2, 13, dtype=torch.bool)
    pad[1, 10:] = False
    mask = pad[:, None, None, :]
    with torch.no_grad():
        a, _ = fast(x, mask=mask)
        b, probs = ref.eval()(x, mask=mask, return_attentions=True)
        c, _ = plain(x, mask=mask)
        q = fast.q_global(x[:, [0, 6]]).view(2, 2, 3, 8).transpose(1, 2)
        k = fast.k_global(x).view(2, 13, 3, 8).transpose(1, 2)
        v = fast.v_global(x).view(2, 13, 3, 8).transpose(1, 2)
        want, want_probs = reference_attention(q, k, v, mask=mask)
        want = fast.out_proj(want.transpose(1, 2).reshape(2, 2, 24))
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(a[1, :10], b[1, :10], atol=1e-5, rtol=0)
    torch.testing.assert_close(a[:, [0, 6]], want, atol=1e-5, rtol=0)
    torch.testing.assert_close(probs[:, :, [0, 6]], want_probs, atol=1e-6, rtol=0)
    others = [i for i in range(13) if i not in (0, 6)]
    torch.testing.assert_close(a[0, others], c[0, others], atol=1e-5, rtol=0)
    assert not torch.allclose(a[:, 0], c[:, 0], atol=1e-3)
    with pytest.raises(ValueError, match="global_projections need a sliding_window"):
        MultiHeadAttention(24, 3, global_projections=True)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="attention kind"):
        AttentionPattern("reformer")
    with pytest.raises(ValueError, match="buckets=7"):
        AttentionPattern("lsh", buckets=7)
    with pytest.raises(ValueError, match="block_size=0"):
        AttentionPattern("block_sparse", block_size=0)
    with pytest.raises(ValueError, match="window"):
        AttentionPattern("sliding_window", window=0)
    with pytest.raises(ValueError, match="global_tokens"):
        AttentionPattern("sliding_window", global_tokens=(-1,))


def test_training_with_dropout_stays_on_the_chunked_kernel_and_a_cache_is_refused(monkeypatch):
    from torchformer.nn import attention as attention_module
    from torchformer.nn.cache import LayerCache

    calls = []
    kernel = attention_module.sliding_window_attention

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(attention_module, "sliding_window_attention", spy)
    p = AttentionPattern("sliding_window", window=2)
    layer = MultiHeadAttention(24, 3, pattern=p, dropout=0.5).train()
    torch.manual_seed(0)
    out, _ = layer(torch.randn(2, 12, 24))
    out.sum().backward()  # gradients flow through the kernel
    assert len(calls) == 1 and calls[0]["training"] and calls[0]["dropout"] == 0.5
    assert layer.q_proj.weight.grad is not None
    with pytest.raises(ValueError, match="KV cache is not supported"):
        layer.eval()(torch.randn(1, 12, 24), cache=LayerCache())


def test_a_call_the_kernel_cannot_take_raises_or_with_a_fallback_is_logged_and_counted(caplog):
    from torchformer.nn.masks import causal_mask
    from torchformer.nn.sparse import fallbacks

    fallbacks(reset=True)
    x = torch.randn(2, 12, 24)
    strict = MultiHeadAttention(24, 3, pattern=AttentionPattern("sliding_window", window=2)).eval()
    with pytest.raises(ValueError, match=r"'sliding_window' cannot run on queries of shape \(2, 3, 12, 8\) "
                                         r"with a mask of shape \(1, 1, 12, 12\)"):  # fmt: skip
        strict(x, mask=causal_mask(12))
    p = AttentionPattern("sliding_window", window=2, fallback="dense")
    lenient = MultiHeadAttention(24, 3, pattern=p).eval()
    lenient.load_state_dict(strict.state_dict())
    reference = MultiHeadAttention(24, 3, pattern=p, attn_impl="reference").eval()
    reference.load_state_dict(strict.state_dict())
    with caplog.at_level("WARNING", logger="torchformer.nn.sparse"), torch.no_grad():
        a, _ = lenient(x, mask=causal_mask(12))
        lenient(x, mask=causal_mask(12))
        b, _ = reference(x, mask=causal_mask(12))
    assert torch.allclose(a, b, atol=1e-5)  # the same result, computed densely
    assert fallbacks(reset=True) == {
        "sliding_window: a mask of shape (1, 1, 12, 12) (only key padding)": 2
    }
    assert sum("fallback: dense" in r.getMessage() for r in caplog.records) == 1  # logged once
    assert fallbacks() == {}


def test_the_training_loop_writes_the_fallbacks_into_the_run(tmp_path):
    import json
    from types import SimpleNamespace

    from torchformer.nn.sparse import record_fallback
    from torchformer.train.logging import MetricsLogger
    from torchformer.train.loop import _log_attention_fallbacks

    log = MetricsLogger(tmp_path)
    run = SimpleNamespace(log=log, state=SimpleNamespace(step=7, epoch=1))
    record_fallback(
        AttentionPattern("sliding_window", fallback="dense"), "an additive attention bias"
    )
    _log_attention_fallbacks(run)
    _log_attention_fallbacks(run)  # nothing new: nothing written
    log.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{**rows[0], "split": "attention", "step": 7,
                     "attention_fallbacks": {"sliding_window: an additive attention bias": 1}}]  # fmt: skip


@pytest.mark.parametrize("causal", [False, True])
def test_chunks_computed_in_groups_give_the_same_result(monkeypatch, causal):
    """The kernel walks the chunks in cache-sized groups; one chunk per group must give
    what one group of all chunks gives (and dense attention under the mask)."""
    from torchformer.nn import sparse

    p = AttentionPattern("sliding_window", window=4, dilation=2, global_tokens=(0, 13))
    q, k, v = qkv(61)
    key_mask = torch.ones(2, 61, dtype=torch.bool)
    key_mask[1, 50:] = False
    whole = sliding_window_attention(q, k, v, p, causal=causal, key_mask=key_mask)
    monkeypatch.setattr(sparse, "GROUP_BYTES", 1)  # one chunk per group
    grouped = sliding_window_attention(q, k, v, p, causal=causal, key_mask=key_mask)
    torch.testing.assert_close(grouped, whole, atol=1e-6, rtol=0)
    mask = pattern_mask(p, 61, causal=causal) & key_mask[:, None, None, :]
    ref, _ = reference_attention(q, k, v, mask=mask)
    torch.testing.assert_close(grouped[0], ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(grouped[1, :, :50], ref[1, :, :50], atol=1e-5, rtol=0)
