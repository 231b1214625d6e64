"""KV cache: append, select (beam reordering), incremental decoding equals a full pass."""

from __future__ import annotations

import pytest
import torch

from torchformer.nn import KVCache, LayerCache, MultiHeadAttention, causal_mask

B, H, DH, D = 3, 4, 8, 32


def _kv(t: int, fill: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    if fill is not None:
        return torch.full((B, H, t, DH), fill), torch.full((B, H, t, DH), -fill)
    return torch.randn(B, H, t, DH), torch.randn(B, H, t, DH)


def test_layer_cache_append_concatenates_along_time():
    cache = LayerCache()
    k1, v1 = _kv(2, 1.0)
    k, v = cache.append(k1, v1)
    assert k is k1 and v is v1
    k2, v2 = _kv(1, 2.0)
    k, v = cache.append(k2, v2)
    assert k.shape == v.shape == (B, H, 3, DH)
    assert k[:, :, :2].eq(1.0).all() and k[:, :, 2].eq(2.0).all()
    assert v[:, :, 2].eq(-2.0).all()
    assert torch.equal(cache.k, k) and torch.equal(cache.v, v)


def test_kv_cache_seq_len_and_indexing():
    cache = KVCache(2)
    assert len(cache) == 2 and cache.seq_len == 0
    cache[0].append(*_kv(4))
    cache[1].append(*_kv(4))
    assert cache.seq_len == 4
    cache[0].append(*_kv(1))
    assert cache.seq_len == 5
    assert cache[1] is cache.layers[1]


def test_select_reorders_every_layer_and_the_cross_cache():
    cache = KVCache(2)
    for layer in cache.layers:
        # Row b holds the value b everywhere, so reordering is visible.
        rows = torch.arange(B, dtype=torch.float32)[:, None, None, None].expand(B, H, 2, DH)
        layer.append(rows.clone(), rows.clone() + 10)
        layer.cross_k, layer.cross_v = rows.clone() + 20, rows.clone() + 30
    index = torch.tensor([2, 2, 0])  # beam search may duplicate a row
    cache.select(index)
    for layer in cache.layers:
        assert layer.k[:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0]
        assert layer.v[:, 0, 0, 0].tolist() == [12.0, 12.0, 10.0]
        assert layer.cross_k[:, 0, 0, 0].tolist() == [22.0, 22.0, 20.0]
        assert layer.cross_v[:, 0, 0, 0].tolist() == [32.0, 32.0, 30.0]
    empty = LayerCache()
    empty.select(index)  # nothing cached yet: a no-op, not an error
    assert empty.k is None and empty.cross_k is None


@pytest.mark.parametrize("grad", [True, False])  # no grad: the fused q/k/v inference path
def test_incremental_self_attention_equals_full_causal_pass(grad):
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H).eval()
    x = torch.randn(B, 6, D)
    full, _ = mha(x, mask=causal_mask(6))
    cache = LayerCache()
    with torch.set_grad_enabled(grad):
        # A 3-token prompt, then one token at a time.
        steps = [mha(x[:, :3], mask=causal_mask(3, 3), cache=cache)[0]]
        for t in range(3, 6):
            steps.append(mha(x[:, t : t + 1], mask=causal_mask(1, t + 1), cache=cache)[0])
    assert cache.k.shape == (B, H, 6, DH)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_cross_attention_keys_values_are_computed_once():
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H).eval()
    calls = []
    mha.k_proj.register_forward_hook(lambda *args: calls.append("k"))
    mha.v_proj.register_forward_hook(lambda *args: calls.append("v"))
    context = torch.randn(B, 7, D)
    x = torch.randn(B, 4, D)
    expected, _ = mha(x, context=context)
    calls.clear()
    cache = LayerCache()
    outs = [mha(x[:, t : t + 1], context=context, cache=cache)[0] for t in range(4)]
    assert calls == ["k", "v"]  # first step only
    assert cache.cross_k.shape == (B, H, 7, DH) and cache.k is None
    torch.testing.assert_close(torch.cat(outs, dim=1), expected, atol=1e-5, rtol=0)
    # Later steps read the cache, not the context they are handed.
    again, _ = mha(x[:, :1], context=torch.zeros_like(context), cache=cache)
    torch.testing.assert_close(again, outs[0])


def test_appends_grow_the_buffer_geometrically_and_equal_concatenation():
    cache = LayerCache()
    ks, vs = [], []
    capacities = set()
    for t in [5, 1, 1, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]:
        k, v = _kv(t)
        ks.append(k)
        vs.append(v)
        out_k, out_v = cache.append(k, v)
        assert torch.equal(out_k, torch.cat(ks, dim=2)) and torch.equal(out_v, torch.cat(vs, dim=2))
        capacities.add(cache._k.size(2))
    assert cache.length == 26
    assert capacities == {5, 10, 20, 40}  # a few reallocations, not one per step
    # Reordering keeps what was written and later appends land after it.
    cache.select(torch.tensor([1, 0, 0]))
    k, v = _kv(1)
    out_k, _ = cache.append(k, v)
    assert torch.equal(out_k[:, :, :26], torch.cat(ks, dim=2)[[1, 0, 0]])
    assert torch.equal(out_k[:, :, 26:], k)
