"""Transformer-XL: the memory is the definition's (Dai et al. 2019), read back and saved."""

from __future__ import annotations

import pytest
import torch

from torchformer.checkpoints import load_pretrained, save_pretrained
from torchformer.generate.generation import generate
from torchformer.models.transformer_xl import (
    TransformerXLConfig,
    TransformerXLForCausalLM,
    segment_losses,
)
from torchformer.nn.cache import SegmentMemory
from torchformer.nn.relative_position import RelativeMultiHeadAttention


def tiny(**overrides) -> TransformerXLForCausalLM:
    torch.manual_seed(0)
    values = dict(vocab_size=40, d_model=32, n_layers=2, n_heads=4, d_ff=64, segment_len=8)
    model = TransformerXLForCausalLM(TransformerXLConfig(**{**values, **overrides})).eval()
    with torch.no_grad():  # u, v start at zero: give every term something to do
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("attn_impl", ["reference", "sdpa"])
def test_segments_with_a_long_enough_memory_equal_one_pass_over_the_whole_text(attn_impl):
    # Every layer's memory holds the previous segment's inputs at their true distance,
    # so reading 3 segments in turn with M >= 16 equals one causal pass over all 24 tokens.
    model = tiny(mem_len=16, attn_impl=attn_impl)
    ids = torch.randint(0, 40, (3, 24))
    with torch.no_grad():
        whole = model(ids).logits
        memory = model.new_memory()
        parts = [model(ids[:, s : s + 8], memory=memory).logits for s in (0, 8, 16)]
    torch.testing.assert_close(torch.cat(parts, 1), whole, atol=1e-5, rtol=0)
    assert memory.seq_len == 16


@pytest.mark.parametrize("n_layers", [1, 2])
def test_the_context_reaches_one_memory_further_per_layer(n_layers):
    # M = T = 8: segment 3's queries see segment 2's layer inputs; segment 2's inputs to
    # layer 2 were computed seeing segment 1. So segment 1 reaches segment 3 with two
    # layers and not with one (Dai et al.: the dependency length grows as L·M).
    model = tiny(mem_len=8, n_layers=n_layers)
    ids = torch.randint(0, 40, (2, 24))
    changed = ids.clone()
    changed[:, :8] = (changed[:, :8] + 1) % 40  # another first segment

    def third_segment(tokens):
        memory = model.new_memory()
        with torch.no_grad():
            return [model(tokens[:, s : s + 8], memory=memory).logits for s in (0, 8, 16)][2]

    difference = (third_segment(ids) - third_segment(changed)).abs().max()
    assert (difference > 1e-3) == (n_layers == 2)


def test_no_gradient_flows_into_the_previous_segment():
    model = tiny(mem_len=8).train()
    memory = model.new_memory()
    ids = torch.randint(0, 40, (2, 16))
    model(ids[:, :8], memory=memory)
    assert all(not m.requires_grad for m in memory.layers)
    loss = model(ids[:, 8:], memory=memory, labels=ids[:, 8:]).loss
    loss.backward()  # a graph through the first segment would need retain_graph twice
    assert model.token_embeddings.weight.grad is not None


def test_without_memory_every_segment_is_read_on_its_own():
    model = tiny(mem_len=0)
    ids = torch.randint(0, 40, (2, 16))
    with torch.no_grad():
        memory = model.new_memory()
        model(ids[:, :8], memory=memory)
        second = model(ids[:, 8:], memory=memory).logits
        alone = model(ids[:, 8:]).logits
    assert memory.seq_len == 0
    torch.testing.assert_close(second, alone)


def test_the_position_term_is_the_relative_sinusoid_of_the_distance():
    # Written out for one head: A_ij = (q_i + u)·k_j + (q_i + v)·W_R R(i - j), scaled.
    torch.manual_seed(1)
    attn = RelativeMultiHeadAttention(8, 1, attn_impl="reference").eval()
    with torch.no_grad():
        attn.content_bias.normal_()
        attn.position_bias.normal_()
    x, mem = torch.randn(1, 3, 8), torch.randn(1, 2, 8)
    _, probs = attn(x, memory=mem, return_attentions=True)
    ctx = torch.cat([mem, x], 1)[0]
    q, k = attn.q_proj(x[0]), attn.k_proj(ctx)
    from torchformer.nn.positional import sinusoidal_table

    table = sinusoidal_table(5, 8)
    scores = torch.full((3, 5), float("-inf"))
    for i in range(3):
        for j in range(5):
            d = 2 + i - j
            if d >= 0:
                r = attn.pos_proj(table[d])
                scores[i, j] = ((q[i] + attn.content_bias[0]) @ k[j] + (q[i] + attn.position_bias[0]) @ r) / 8**0.5  # fmt: skip
    torch.testing.assert_close(probs[0, 0], scores.softmax(-1), atol=1e-6, rtol=0)


def test_segment_losses_read_every_token_once_with_the_memory():
    model = tiny(mem_len=16)
    ids = torch.randint(0, 40, (2, 25))
    losses = segment_losses(model, ids)  # 24 predictions per row, 3 segments
    with torch.no_grad():
        logits = model(ids[:, :-1]).logits
    expected = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), ids[:, 1:], reduction="none"
    ).sum(-1)
    torch.testing.assert_close(losses, expected, atol=1e-4, rtol=0)


def test_generation_with_the_memory_equals_rerunning_the_whole_prefix():
    model = tiny(mem_len=32, segment_len=8)
    prompt = torch.randint(0, 40, (2, 5))
    out = generate(model, prompt, max_new_tokens=10)  # greedy, one token at a time
    ids = prompt
    for _ in range(10):  # the definition: argmax of a full causal pass over the prefix
        with torch.no_grad():
            nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    assert torch.equal(out, ids)
    beams = generate(model, prompt, max_new_tokens=6, num_beams=3)  # memory.select
    assert beams.shape == (2, 11)


def test_save_and_load_give_equal_logits(tmp_path):
    model = tiny(mem_len=8, eval_mem_len=24)
    save_pretrained(model, tmp_path / "m")
    loaded, report = load_pretrained(tmp_path / "m", task="causal_lm")
    assert isinstance(loaded, TransformerXLForCausalLM) and not report.new_keys
    assert loaded.config == model.config
    ids = torch.randint(0, 40, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_memory_state_round_trips_and_rows_must_match():
    model = tiny(mem_len=8)
    memory = model.new_memory()
    with torch.no_grad():
        model(torch.randint(0, 40, (2, 8)), memory=memory)
    copy = SegmentMemory(2, 8)
    copy.load_state_dict(memory.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(copy.layers, memory.layers))
    with pytest.raises(ValueError, match="memory holds 2 rows, the segment 3"):
        model(torch.randint(0, 40, (3, 8)), memory=memory)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="mem_len"):
        TransformerXLConfig(mem_len=-1)
    with pytest.raises(ValueError, match="divisible"):
        TransformerXLConfig(d_model=30, n_heads=4)
