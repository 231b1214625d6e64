"""BigBird's block-sparse and Reformer's LSH attention: each kernel equals its definition
(dense attention under the explicit mask, or LSH's bucket bias), and MultiHeadAttention
runs them on both paths."""

from __future__ import annotations

import pytest
import torch
from attention_helpers import largest_product, qkv

from torchformer.models.encoder import Encoder, preset
from torchformer.nn import AttentionPattern, MultiHeadAttention, pattern_mask, reference_attention
from torchformer.nn.block_sparse import block_layout, block_sparse_attention, block_sparse_mask
from torchformer.nn.lsh import lsh_attention, lsh_bias, lsh_buckets, shared_keys


def padding(b: int, t: int, real: int) -> torch.Tensor:
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[-1, real:] = False  # the last row is padded after `real` tokens
    return mask


# --- block_sparse ----------------------------------------------------------------------


def test_the_layout_is_window_global_and_seeded_random_blocks():
    p = AttentionPattern("block_sparse", block_size=4, window_blocks=1, random_blocks=2, seed=3)
    index, valid = block_layout(p, 10)
    assert index.shape == (10, 7)  # 3 window + 2 global + 2 random
    row = index[5][valid[5]].tolist()
    assert row[:3] == [4, 5, 6] and row[3:5] == [0, 9]  # window, then the global blocks
    assert len(set(row)) == 7 and not set(row[5:]) & {0, 4, 5, 6, 9}  # random: others
    assert torch.equal(block_layout(p, 10)[0], index)  # same seed: same blocks
    other = block_layout(
        AttentionPattern("block_sparse", block_size=4, random_blocks=2, seed=4), 10
    )
    assert not torch.equal(other[0], index)
    mask = block_sparse_mask(p, 40)[0, 0]
    assert mask[:4].all() and mask[:, 36:].all()  # a global block sees and is seen by all
    assert mask[20:24].sum(1).tolist() == [28] * 4  # 7 blocks of 4 keys


@pytest.mark.parametrize(
    ("t", "block", "window", "random", "globals_"),
    [(64, 8, 1, 2, (0, -1)), (70, 8, 1, 3, (0,)), (37, 4, 2, 1, ()), (16, 8, 1, 3, (0, -1))],
)
def test_the_block_kernel_equals_dense_attention_under_the_mask(t, block, window, random, globals_):
    p = AttentionPattern(
        "block_sparse",
        block_size=block,
        window_blocks=window,
        random_blocks=random,
        global_blocks=globals_,
    )
    q, k, v = qkv(t)
    real = t - 5
    key_mask = padding(2, t, real)
    out = block_sparse_attention(q, k, v, p, key_mask=key_mask)
    ref, _ = reference_attention(q, k, v, mask=block_sparse_mask(p, t) & key_mask[:, None, None])
    torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, :, :real], ref[1, :, :real], atol=1e-5, rtol=0)


def test_first_block_random_eval_counts_block_zero_again_outside_training():
    """transformers' eval-mode BigBird: block 0 in place of each random block, counted
    again in the softmax — the kernel (gathered blocks) and the reference path (a log-count
    bias) agree, and equal the definition written out; in training the draw is sampled."""
    p = AttentionPattern("block_sparse", block_size=4, random_blocks=2, random_eval="first_block")
    t, b = 40, 4
    index, valid = block_layout(p, 10)
    assert index[5].tolist() == [4, 5, 6, 0, 9, 0, 0]  # window, global, then 2 × block 0
    assert index[0][valid[0]].tolist() == [0, 1, 9]  # a global row: no copies
    sampled = AttentionPattern("block_sparse", block_size=4, random_blocks=2)
    assert torch.equal(block_layout(p, 10, training=True)[0], block_layout(sampled, 10)[0])
    q, k, v = qkv(t)
    key_mask = padding(2, t, t - 6)
    out = block_sparse_attention(q, k, v, p, key_mask=key_mask)
    # the definition: block 0's keys weigh 1 + 2 = 3 times in the middle rows' softmax
    weight = torch.ones(t, t)
    weight[b : t - b, :b] = 3.0
    keep = block_sparse_mask(p, t) & key_mask[:, None, None]
    scores = (q @ k.transpose(-1, -2)) / 8**0.5 + weight.log()
    probs = scores.masked_fill(~keep, float("-inf")).softmax(-1)
    torch.testing.assert_close(out[0], (probs @ v)[0], atol=1e-5, rtol=0)
    attn = MultiHeadAttention(24, 3, pattern=p, attn_impl="reference").eval()
    fast = MultiHeadAttention(24, 3, pattern=p).eval()
    fast.load_state_dict(attn.state_dict())
    x = torch.randn(2, t, 24)
    with torch.no_grad():
        ref, fast_out = attn(x)[0], fast(x)[0]
        assert not torch.allclose(ref, attn.train()(x)[0], atol=1e-3)  # training: sampled
    torch.testing.assert_close(fast_out, ref, atol=1e-5, rtol=0)
    flex = MultiHeadAttention(24, 3, pattern=p, attn_impl="flex").eval()
    with pytest.raises(ValueError, match=r"'block_sparse'.*random_eval 'first_block'"):
        flex(x)  # a block mask cannot count a block twice


def test_the_block_kernel_never_builds_the_dense_score_matrix(monkeypatch):
    T = 2048
    q, k, v = qkv(T, b=1, h=1)
    p = AttentionPattern("block_sparse", block_size=32, random_blocks=2)
    largest = largest_product(monkeypatch, "einsum", lambda: block_sparse_attention(q, k, v, p))
    assert largest <= T * 7 * 32 < T * T / 8  # T queries × (3 + 2 + 2) blocks of 32 keys


# --- lsh -------------------------------------------------------------------------------


def bucket_sizes(q, p) -> int:
    buckets = lsh_buckets(shared_keys(q), p)  # (B, H, R, T)
    return int(torch.stack([(buckets == b).sum(-1) for b in range(p.buckets)]).max())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("t", "buckets", "rounds", "chunk"), [(70, 8, 2, 32), (50, 4, 3, 25)])
def test_lsh_equals_its_definition_when_every_bucket_fits_a_chunk(
    t, buckets, rounds, chunk, causal
):
    p = AttentionPattern("lsh", buckets=buckets, hash_rounds=rounds, chunk_size=chunk)
    q, _, v = qkv(t, seed=1)
    assert bucket_sizes(q, p) <= chunk  # the condition of equality
    real = t - 7
    key_mask = padding(2, t, real)
    out = lsh_attention(q, v, p, key_mask=key_mask, causal=causal)
    bias = lsh_bias(q, p, key_mask=key_mask, causal=causal)
    ref, _ = reference_attention(q, shared_keys(q), v, bias=bias)
    torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, :, :real], ref[1, :, :real], atol=1e-5, rtol=0)


def test_lsh_attends_only_within_shared_buckets_and_to_itself_only_when_alone():
    p = AttentionPattern("lsh", buckets=4, hash_rounds=1, chunk_size=16)
    q, _, v = qkv(16, seed=2, b=1, h=1)
    bias = lsh_bias(q, p)
    _, probs = reference_attention(q, shared_keys(q), v, bias=bias)
    buckets = lsh_buckets(shared_keys(q), p)[0, 0, 0]  # (T,)
    same = buckets[:, None] == buckets[None, :]
    assert probs[0, 0][~same].abs().max() == 0  # nothing outside the bucket
    alone = same.sum(1) == 1
    diagonal = probs[0, 0].diagonal()
    assert torch.all(diagonal[alone] == 1) and torch.all(diagonal[~alone] < 1e-6)


def test_a_bucket_bigger_than_the_window_loses_keys():
    # The paper's approximation: with 2 buckets over 64 tokens and chunks of 4, a query
    # sees at most 12 keys of its bucket of ~32: the kernel no longer equals the definition.
    p = AttentionPattern("lsh", buckets=2, hash_rounds=1, chunk_size=4)
    q, _, v = qkv(64, seed=3)
    assert bucket_sizes(q, p) > 12
    out = lsh_attention(q, v, p)
    ref, _ = reference_attention(q, shared_keys(q), v, bias=lsh_bias(q, p))
    assert (out - ref).abs().max() > 1e-3


def test_lsh_never_builds_the_dense_score_matrix(monkeypatch):
    T = 2048
    q, _, v = qkv(T, b=1, h=1)
    pattern = AttentionPattern("lsh", buckets=64, hash_rounds=2, chunk_size=32)
    largest = largest_product(monkeypatch, "matmul", lambda: lsh_attention(q, v, pattern))
    assert largest <= 2 * T * 3 * 32 < T * T  # rounds × T × 3 chunks


def test_the_lsh_pattern_has_no_mask_of_positions():
    with pytest.raises(ValueError, match="depends on the data"):
        pattern_mask(AttentionPattern("lsh"), 8)
    with pytest.raises(ValueError, match="no causal form"):
        pattern_mask(AttentionPattern("block_sparse"), 8, causal=True)


# --- in the attention module and the encoder --------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        AttentionPattern("block_sparse", block_size=4, random_blocks=1),
        AttentionPattern("lsh", buckets=4, hash_rounds=2, chunk_size=12),
    ],
    ids=["block_sparse", "lsh"],
)
def test_multi_head_attention_runs_each_kind_on_both_paths(pattern):
    torch.manual_seed(0)
    fast = MultiHeadAttention(24, 3, pattern=pattern).eval()
    ref = MultiHeadAttention(24, 3, pattern=pattern, attn_impl="reference").eval()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 22, 24)
    pad = padding(2, 22, 18)
    with torch.no_grad():
        a, _ = fast(x, mask=pad[:, None, None, :])
        b, probs = ref(x, mask=pad[:, None, None, :], return_attentions=True)
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(a[1, :18], b[1, :18], atol=1e-5, rtol=0)
    if pattern.kind == "block_sparse":
        assert probs[0][:, ~block_sparse_mask(pattern, 22)[0, 0]].abs().max() == 0
    dense = MultiHeadAttention(24, 3).eval()
    dense.load_state_dict(fast.state_dict())
    with torch.no_grad():
        assert not torch.allclose(dense(x)[0][0], a[0], atol=1e-3)  # the pattern matters


@pytest.mark.parametrize("kind", ["block_sparse", "lsh"])
def test_an_encoder_config_switches_the_kind_and_saves_it(kind, tmp_path):
    from torchformer.checkpoints import load_pretrained, save_pretrained

    cfg = preset(
        "tiny",
        attention=kind,
        attention_block_size=8,
        attention_random_blocks=1,
        attention_buckets=4,
        attention_chunk_size=16,
        attention_seed=5,
    )
    model = Encoder(cfg).eval()
    kinds = {layer.self_attn.pattern.kind for layer in model.layers}
    assert kinds == {kind}
    save_pretrained(model, tmp_path / "m")
    loaded, _ = load_pretrained(tmp_path / "m")
    assert loaded.layers[0].self_attn.pattern == model.layers[0].self_attn.pattern
    ids = torch.randint(5, 1000, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(ids).last_hidden_state, model(ids).last_hidden_state, atol=1e-6, rtol=0
        )


def test_block_groups_give_the_same_result(monkeypatch):
    from torchformer.nn import block_sparse

    p = AttentionPattern("block_sparse", block_size=4, random_blocks=2)
    q, k, v = qkv(45)
    key_mask = padding(2, 45, 40)
    whole = block_sparse_attention(q, k, v, p, key_mask=key_mask)
    monkeypatch.setattr(block_sparse, "GROUP_BYTES", 1)  # one query block per group
    grouped = block_sparse_attention(q, k, v, p, key_mask=key_mask)
    torch.testing.assert_close(grouped, whole, atol=1e-6, rtol=0)
