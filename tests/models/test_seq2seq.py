"""Unit tests of the encoder–decoder family (original Transformer and T5 flavours)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchformer.checkpoints import load_pretrained, save_pretrained
from torchformer.checkpoints.hf import read_config
from torchformer.models.seq2seq import (
    PRESETS,
    Seq2Seq,
    Seq2SeqConfig,
    preset,
    sequence_loss,
    shift_right,
)

VARIANTS = {
    "transformer": dict(name="tiny"),
    "transformer-prenorm": dict(name="tiny", norm_first=True),
    "transformer-separate-vocab": dict(
        name="tiny", share_embeddings=False, src_vocab_size=50, tie_output=False
    ),
    "t5": dict(name="t5-tiny"),
    "t5-gated-untied": dict(
        name="t5-tiny", gated_ffn=True, activation="gelu_new", tie_output=False
    ),
}


def build(variant: str, **overrides) -> Seq2Seq:
    spec = dict(VARIANTS[variant])
    name = spec.pop("name")
    torch.manual_seed(0)
    config = preset(name, vocab_size=60, dropout=0.0, **{**spec, **overrides})
    return Seq2Seq(config).eval()


def padded_batch(vocab: int = 50):
    """Source (3, 7) with two padded rows, target (3, 5) starting with the decoder start token."""
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, vocab, (3, 7), generator=g)
    src_mask = torch.ones_like(src)
    src_mask[1, 5:] = 0
    src_mask[2, 2:] = 0
    src = src.masked_fill(src_mask == 0, 0)
    tgt = torch.randint(3, vocab, (3, 5), generator=g)
    return src, src_mask, tgt


@pytest.fixture(params=sorted(VARIANTS))
def model(request) -> Seq2Seq:
    return build(request.param)


def test_shapes_and_attention_rows(model):
    src, src_mask, tgt = padded_batch()
    out = model(src, tgt, src_mask=src_mask, labels=tgt, return_attentions=True)
    c = model.config
    assert out.logits.shape == (3, 5, c.vocab_size)
    assert out.last_hidden_state.shape == (3, 5, c.d_model)
    assert out.encoder_last_hidden_state.shape == (3, 7, c.d_model)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert len(out.encoder_attentions) == c.n_encoder_layers
    assert len(out.attentions) == len(out.cross_attentions) == c.n_decoder_layers
    assert out.encoder_attentions[0].shape == (3, c.n_heads, 7, 7)
    assert out.attentions[0].shape == (3, c.n_heads, 5, 5)
    for cross in out.cross_attentions:
        assert cross.shape == (3, c.n_heads, 5, 7)  # (B, H, T, S)
        torch.testing.assert_close(cross.sum(-1), torch.ones(3, c.n_heads, 5))
        assert cross[2, :, :, 2:].abs().max() == 0  # padded source positions get no weight
    causal = out.attentions[0]
    assert causal.triu(diagonal=1).abs().max() == 0  # no weight on future target positions


def test_padded_source_positions_do_not_matter(model):
    src, src_mask, tgt = padded_batch()
    noisy = src.clone()
    noisy[src_mask == 0] = torch.randint(3, 50, (int((src_mask == 0).sum()),))
    with torch.no_grad():
        a = model(src, tgt, src_mask=src_mask)
        b = model(noisy, tgt, src_mask=src_mask)
    keep = src_mask.bool()
    torch.testing.assert_close(a.encoder_last_hidden_state[keep], b.encoder_last_hidden_state[keep])
    torch.testing.assert_close(a.logits, b.logits)
    # ...whereas without the mask they do (so the check above is not vacuous).
    with torch.no_grad():
        c = model(noisy, tgt)
    assert (c.logits - a.logits).abs().max() > 1e-3


def test_future_target_tokens_do_not_change_earlier_logits(model):
    src, src_mask, tgt = padded_batch()
    changed = tgt.clone()
    changed[:, 3:] = (changed[:, 3:] + 7) % 50 + 3
    with torch.no_grad():
        a = model(src, tgt, src_mask=src_mask).logits
        b = model(src, changed, src_mask=src_mask).logits
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert (a[:, 3:] - b[:, 3:]).abs().max() > 1e-3


def test_kv_cache_equals_recomputation(model):
    src, src_mask, tgt = padded_batch()
    with torch.no_grad():
        enc = model.encode(src, src_mask=src_mask)
        full = model.decode(tgt, enc, src_mask=src_mask).logits
        cache = model.new_cache()
        first = model.decode(
            tgt[:, :2], enc, src_mask=src_mask, cache=cache
        ).logits  # a 2-token chunk
        steps = [
            model.decode(tgt[:, t : t + 1], enc, src_mask=src_mask, cache=cache).logits
            for t in range(2, 5)
        ]
    assert cache.seq_len == 5
    torch.testing.assert_close(torch.cat([first, *steps], dim=1), full, atol=1e-5, rtol=1e-5)


def test_reference_attention_equals_sdpa():
    for variant in ("transformer", "t5"):
        fast = build(variant)
        reference = build(variant, attn_impl="reference")
        reference.load_state_dict(fast.state_dict())
        src, src_mask, tgt = padded_batch()
        tgt_mask = torch.ones_like(tgt)
        tgt_mask[0, 4:] = 0
        with torch.no_grad():
            a = fast(src, tgt, src_mask=src_mask, tgt_mask=tgt_mask)
            b = reference(src, tgt, src_mask=src_mask, tgt_mask=tgt_mask)
        torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
        assert torch.isfinite(a.logits).all()


def test_left_padded_target_keeps_rows_finite():
    """A fully padded query row would be NaN under SDPA; the mask keeps its own slot."""
    model = build("transformer")
    src, src_mask, tgt = padded_batch()
    tgt_mask = torch.ones_like(tgt)
    tgt_mask[1, :2] = 0  # left padding
    with torch.no_grad():
        logits = model(src, tgt, src_mask=src_mask, tgt_mask=tgt_mask).logits
    assert torch.isfinite(logits).all()


def test_loss_ignores_padding_and_minus_100_and_smooths():
    model = build("transformer")
    src, src_mask, tgt = padded_batch()
    labels = tgt.clone()
    labels[0, 3:] = model.config.pad_id
    labels[1, 4] = -100
    tgt_in = shift_right(labels, start_id=model.config.decoder_start_id, pad_id=model.config.pad_id)
    assert tgt_in[:, 0].eq(model.config.decoder_start_id).all() and (tgt_in[1] >= 0).all()
    with torch.no_grad():
        out = model(src, tgt_in, src_mask=src_mask, labels=labels)
        smoothed = model(src, tgt_in, src_mask=src_mask, labels=labels, label_smoothing=0.1).loss
    keep = (labels != model.config.pad_id) & (labels != -100)
    expected = F.cross_entropy(out.logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, expected)
    log_p = out.logits[keep].log_softmax(-1)
    nll = -log_p.gather(1, labels[keep][:, None]).mean()
    torch.testing.assert_close(smoothed, 0.9 * nll + 0.1 * -log_p.mean())  # eps spread over all V
    torch.testing.assert_close(sequence_loss(out.logits, labels, pad_id=0), expected)


def test_loss_decreases_with_a_few_steps():
    model = build("t5").train()
    src, src_mask, tgt = padded_batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tgt_in = shift_right(tgt, start_id=0, pad_id=0)
    losses = []
    for _ in range(5):
        loss = model(src, tgt_in, src_mask=src_mask, labels=tgt).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8


def test_embedding_sharing_and_tying():
    shared = build("transformer")
    assert shared.tgt_embed is None and shared.lm_head is None
    assert shared.target_embeddings is shared.src_embed
    separate = build("transformer-separate-vocab")
    assert separate.src_embed.num_embeddings == 50 and separate.tgt_embed.num_embeddings == 60
    assert separate.lm_head is not None
    src, src_mask, tgt = padded_batch(vocab=50)
    assert separate(src, tgt, src_mask=src_mask).logits.shape == (3, 5, 60)
    # T5 rescales the decoder output only in front of a tied head.
    assert build("t5").output_scale == pytest.approx(32**-0.5)
    assert build("t5-gated-untied").output_scale == 1.0
    assert build("transformer").output_scale == 1.0


def test_transformer_scales_embeddings_and_adds_positions():
    model = build("transformer")
    ids = torch.tensor([[5, 5, 5]])
    x = model._embed(ids, model.src_embed, source=True)
    # Same token at three positions: the sinusoidal positions make the rows differ.
    assert (x[0, 0] - x[0, 1]).abs().max() > 0.1
    expected = model.src_embed.weight[5] * 32**0.5 + model.positions.table[2]
    torch.testing.assert_close(x[0, 2], expected)
    with pytest.raises(ValueError, match="max_len"):
        model.encode(torch.zeros(1, 129, dtype=torch.long))


def test_make_step_expands_the_source_for_k_rows_per_input():
    model = build("t5")
    src, src_mask, _ = padded_batch()
    with torch.no_grad():
        enc = model.encode(src, src_mask=src_mask)
        step = model.make_step(enc, src_mask)
        start = torch.zeros(3, 1, dtype=torch.long)
        one = step(start, model.new_cache())  # (3, V)
        two = step(start.repeat_interleave(2, dim=0), model.new_cache())  # (6, V)
    assert one.shape == (3, 60)
    torch.testing.assert_close(two, one.repeat_interleave(2, dim=0))
    with pytest.raises(ValueError, match="multiple"):
        step(torch.zeros(4, 1, dtype=torch.long), model.new_cache())


def test_config_validation_and_presets():
    assert Seq2SeqConfig().norm_first is False
    assert Seq2SeqConfig(flavour="t5").norm_first is True
    with pytest.raises(ValueError, match="pre-norm"):
        Seq2SeqConfig(flavour="t5", norm_first=False)
    with pytest.raises(ValueError, match="joint vocabulary"):
        Seq2SeqConfig(share_embeddings=True, src_vocab_size=10, vocab_size=20)
    with pytest.raises(ValueError, match="flavour"):
        Seq2SeqConfig(flavour="marian")
    with pytest.raises(ValueError, match="unknown seq2seq preset"):
        preset("transformer-huge")
    base = PRESETS["transformer-base"]
    assert (
        base.d_model,
        base.n_encoder_layers,
        base.n_decoder_layers,
        base.n_heads,
        base.d_ff,
    ) == (512, 6, 6, 8, 2048)
    assert (base.dropout, base.max_len, base.norm_first) == (0.1, 100, False)
    small = PRESETS["transformer-small-cpu"]
    assert (small.d_model, small.n_encoder_layers, small.n_heads, small.d_ff) == (256, 3, 4, 1024)


def test_transformer_flavour_saves_and_loads_in_our_own_layout(tmp_path):
    model = build("transformer-separate-vocab", norm_first=True)
    save_pretrained(model, tmp_path)
    config = read_config(tmp_path)
    assert config["model_type"] == "torchformer-transformer" and config["src_vocab_size"] == 50
    loaded, report = load_pretrained(tmp_path, task="seq2seq_lm")
    assert str(report) == "all weights loaded"
    assert loaded.config == model.config
    src, src_mask, tgt = padded_batch(vocab=50)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(src, tgt, src_mask=src_mask).logits, model(src, tgt, src_mask=src_mask).logits
        )
