"""Unit tests of the GPT-2-family decoder (tier 1): shapes, masks, cache, attention paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchformer.models.decoder import (
    PRESETS,
    Decoder,
    DecoderConfig,
    DecoderForCausalLM,
    make_step,
    preset,
)
from torchformer.nn import KVCache

V, D, L, H = 50, 32, 2, 4


def tiny_config(**overrides) -> DecoderConfig:
    # A wide init so that logits differ clearly between tokens (the 0.02 default is nearly uniform).
    base = dict(
        vocab_size=V,
        d_model=D,
        n_layers=L,
        n_heads=H,
        d_ff=4 * D,
        max_len=64,
        dropout=0.0,
        attn_dropout=0.0,
        embd_dropout=0.0,
        initializer_range=0.2,
    )
    return DecoderConfig(**{**base, **overrides})


@pytest.fixture
def lm() -> DecoderForCausalLM:
    torch.manual_seed(0)
    return DecoderForCausalLM(tiny_config()).eval()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, V, (3, 12), generator=torch.Generator().manual_seed(1))


def test_preset_sizes_and_overrides():
    assert PRESETS["gpt2"].d_model == 768 and PRESETS["gpt2"].n_layers == 12
    assert PRESETS["gpt2"].d_ff == 4 * PRESETS["gpt2"].d_model
    cfg = preset("tiny", dropout=0.0)
    assert cfg.d_model == 32 and cfg.dropout == 0.0
    with pytest.raises(ValueError, match="unknown decoder preset"):
        preset("gpt5")


def test_gpt2_small_has_124m_parameters():
    with torch.device("meta"):
        model = DecoderForCausalLM(PRESETS["gpt2"])
    n = sum(p.numel() for p in model.parameters())
    assert 124_000_000 < n < 124_500_000  # 124,439,808 with the tied head counted once


def test_shapes_and_outputs(lm, ids):
    out = lm(ids, return_hidden_states=True)
    assert out.logits.shape == (3, 12, V)
    assert out.last_hidden_state.shape == (3, 12, D)
    assert len(out.hidden_states) == L + 1
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)  # after the final norm
    assert out.attentions is None and out.loss is None and out.cache is None
    base = Decoder(tiny_config())(ids)
    assert base.last_hidden_state.shape == (3, 12, D) and base.logits is None


def test_tied_head_is_stored_once(lm, ids):
    keys = list(lm.state_dict())
    assert not any("lm_head" in k for k in keys)
    assert sum(1 for p in lm.parameters() if p.shape == (V, D)) == 1
    torch.testing.assert_close(
        lm(ids).logits, lm.decoder(ids).last_hidden_state @ lm.decoder.token_embeddings.weight.T
    )
    untied = DecoderForCausalLM(tiny_config(tie_embeddings=False))
    assert untied.lm_head.weight.shape == (V, D)
    assert untied.lm_head.weight.data_ptr() != untied.decoder.token_embeddings.weight.data_ptr()


def test_residual_projections_use_scaled_init():
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=V, d_model=256, n_layers=8, n_heads=4, d_ff=1024, max_len=16)
    model = Decoder(cfg)
    layer = model.layers[0]
    assert abs(layer.self_attn.q_proj.weight.std().item() - 0.02) < 2e-3
    assert abs(layer.self_attn.out_proj.weight.std().item() - 0.02 / 4) < 5e-4  # 1 / sqrt(2 * 8)
    assert abs(layer.ffn.down_proj.weight.std().item() - 0.02 / 4) < 5e-4


def test_loss_is_shifted_next_token_cross_entropy(lm, ids):
    labels = ids.clone()
    labels[0, 5:] = -100
    out = lm(ids, labels=labels)
    expected = F.cross_entropy(
        out.logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, expected)
    # An unshifted loss would differ.
    unshifted = F.cross_entropy(out.logits.reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    assert not torch.allclose(out.loss, unshifted)


def test_causal_future_tokens_do_not_change_the_past(lm, ids):
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % V
    a, b = lm(ids).logits, lm(changed).logits
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-6)
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-3


def test_padded_positions_do_not_change_real_positions(lm, ids):
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding
    mask[2, :3] = 0  # left padding
    changed = ids.clone()
    changed[mask == 0] = (changed[mask == 0] + 7) % V
    a, b = lm(ids, attention_mask=mask).logits, lm(changed, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real], rtol=0, atol=1e-6)
    assert torch.isfinite(a).all()  # padded queries never see an all-masked row (no NaN)


def test_left_padding_gives_the_unpadded_logits(lm, ids):
    row = ids[0, :9]
    padded = torch.cat([torch.zeros(3, dtype=torch.long), row])[None]  # (1, 12)
    mask = torch.tensor([[0, 0, 0] + [1] * 9])
    a = lm(padded, attention_mask=mask).logits[0, 3:]
    b = lm(row[None]).logits[0]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_kv_cache_incremental_equals_full(lm, ids):
    full = lm(ids).logits  # (B, T, V)
    cache = KVCache(L)
    out = lm(ids[:, :4], cache=cache)  # a prompt, then one token at a time
    steps = [out.logits]
    assert out.cache is cache and cache.seq_len == 4
    for t in range(4, ids.size(1)):
        steps.append(lm(ids[:, t : t + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)
    assert cache.seq_len == ids.size(1)


def test_kv_cache_with_left_padding_equals_full(lm, ids):
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    full = lm(ids, attention_mask=mask).logits
    cache = KVCache(L)
    steps = [lm(ids[:, :6], attention_mask=mask[:, :6], cache=cache).logits]
    for t in range(6, ids.size(1)):
        steps.append(lm(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache).logits)
    real = mask.bool()
    torch.testing.assert_close(torch.cat(steps, dim=1)[real], full[real], rtol=0, atol=1e-5)


def test_make_step_extends_the_mask_and_returns_last_logits(lm, ids):
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[2, :2] = 0
    step = make_step(lm, mask)
    cache = KVCache(L)
    first = step(ids[:, :8], cache)
    second = step(ids[:, 8:9], cache)
    full = lm(
        ids[:, :9], attention_mask=torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
    ).logits
    torch.testing.assert_close(first, full[:, 7], rtol=0, atol=1e-5)
    torch.testing.assert_close(second, full[:, 8], rtol=0, atol=1e-5)


def test_reference_attention_matches_sdpa(lm, ids):
    ref = DecoderForCausalLM(tiny_config(attn_impl="reference")).eval()
    ref.load_state_dict(lm.state_dict())
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    mask[1, 9:] = 0
    real = mask.bool()
    torch.testing.assert_close(
        ref(ids, attention_mask=mask).logits[real],
        lm(ids, attention_mask=mask).logits[real],
        rtol=0,
        atol=1e-5,
    )
    torch.testing.assert_close(ref(ids).logits, lm(ids).logits, rtol=0, atol=1e-5)


def test_attentions_are_causal_distributions(lm, ids):
    out = lm(ids, return_attentions=True)
    assert len(out.attentions) == L
    for probs in out.attentions:
        assert probs.shape == (3, H, 12, 12)
        torch.testing.assert_close(probs.sum(-1), torch.ones(3, H, 12))
        above = torch.triu(torch.ones(12, 12, dtype=torch.bool), diagonal=1)
        assert probs[..., above].abs().max() == 0
        assert probs[..., ~above].min() > 0  # every visible key gets some weight
    # The reference path that produced the weights gives the same logits as SDPA.
    torch.testing.assert_close(out.logits, lm(ids).logits, rtol=0, atol=1e-5)


def test_attentions_hide_padding(lm, ids):
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    probs = lm(ids, attention_mask=mask, return_attentions=True).attentions[0]
    assert probs[0, :, 3:, :3].abs().max() == 0  # real queries give padded keys no weight


def test_determinism_under_seed_and_dropout_in_train_mode(ids):
    def build():
        torch.manual_seed(123)
        return DecoderForCausalLM(tiny_config(dropout=0.1, attn_dropout=0.1, embd_dropout=0.1))

    a, b = build(), build()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    a.train()
    torch.manual_seed(7)
    x = a(ids).logits
    torch.manual_seed(7)
    y = a(ids).logits
    assert torch.equal(x, y)
    assert not torch.allclose(x, a.eval()(ids).logits)  # dropout was active in train mode


def test_errors_name_the_problem(lm, ids):
    with pytest.raises(ValueError, match="max_len"):
        lm(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        lm(ids, attention_mask=torch.ones(3, 5))
    cache = KVCache(L)
    lm(ids[:, :4], cache=cache)
    with pytest.raises(ValueError, match="cached 4"):
        lm(ids[:, 4:5], attention_mask=torch.ones(3, 1), cache=cache)


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_a_sliding_window_decoder_trains_on_the_kernel_with_the_mask_s_results(
    flavour, monkeypatch
):
    from dataclasses import replace as _replace

    from torchformer.models.decoder import DecoderForCausalLM
    from torchformer.models.decoder import preset as decoder_preset

    name = "tiny" if flavour == "gpt2" else "llama-tiny"
    config = _replace(
        decoder_preset(name), sliding_window=5, dropout=0.0, attn_dropout=0.0, embd_dropout=0.0
    )
    torch.manual_seed(0)
    model = DecoderForCausalLM(config).eval()
    ids = torch.randint(3, config.vocab_size, (2, 40))
    from torchformer.nn import attention

    calls = []
    kernel_fn = attention.sliding_window_attention
    monkeypatch.setattr(
        attention,
        "sliding_window_attention",
        lambda *a, **k: calls.append(k["causal"]) or kernel_fn(*a, **k),
    )
    with torch.no_grad():
        kernel = model(ids).logits  # no padding, no cache: each layer's window pattern
        assert calls == [True] * config.n_layers  # the causal O(T·w) kernel ran
        calls.clear()
        masked = model(ids, attention_mask=torch.ones_like(ids)).logits  # the decoder's mask
        reference = DecoderForCausalLM(_replace(config, attn_impl="reference")).eval()
        reference.load_state_dict(model.state_dict())
        dense = reference(ids).logits
        full = DecoderForCausalLM(_replace(config, sliding_window=None)).eval()
        full.load_state_dict(model.state_dict())
    assert not calls  # with a mask (padding) or a cache the decoder's mask holds the window
    torch.testing.assert_close(kernel, masked, atol=1e-5, rtol=0)
    torch.testing.assert_close(kernel, dense, atol=1e-5, rtol=0)
    assert (full(ids).logits - kernel)[:, 5:].abs().max() > 1e-3  # the window matters
    torch.testing.assert_close(full(ids).logits[:, :5], kernel[:, :5], atol=1e-5, rtol=0)
