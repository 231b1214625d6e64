"""The BERT family (models/encoder.py): shapes, padding, pooling, heads, presets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchformer.models.encoder import (
    PRESETS,
    Encoder,
    EncoderConfig,
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    mean_pool,
    preset,
)

V, B, T = 100, 3, 9
LENGTHS = [9, 6, 2]


def tiny(**overrides) -> EncoderConfig:
    return preset("tiny", vocab_size=V, max_len=32, **overrides)


def build(cls, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return cls(tiny(**overrides)).eval()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, V, (B, T), generator=g)  # (B, T), no pad id among real tokens
    attention_mask = (torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]).long()  # (B, T)
    return ids.masked_fill(attention_mask == 0, 0), attention_mask


def perturb_padding(ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    noise = torch.randint(1, V, ids.shape, generator=g)
    return torch.where(attention_mask.bool(), ids, noise)


def real(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return x[attention_mask.bool()]  # (N_real, ...)


def test_encoder_shapes():
    model = build(Encoder)
    ids, am = batch()
    out = model(ids, attention_mask=am, return_hidden_states=True)
    assert out.last_hidden_state.shape == (B, T, 32)
    assert out.pooled.shape == (B, 32)
    assert len(out.hidden_states) == 2 + 1 and all(h.shape == (B, T, 32) for h in out.hidden_states)
    assert out.hidden_states[-1] is out.last_hidden_state
    assert out.attentions is None and out.logits is None and out.loss is None
    assert build(Encoder, add_pooler=False)(ids).pooled is None
    assert build(Encoder)(ids).hidden_states is None


@pytest.mark.parametrize("pooling", ["cls", "pooler", "mean"])
def test_classifier_shapes_and_pooling(pooling):
    model = build(EncoderForSequenceClassification, num_labels=5, pooling=pooling)
    ids, am = batch()
    out = model(ids, attention_mask=am)
    assert out.logits.shape == (B, 5) and out.pooled.shape == (B, 32)
    hidden = out.last_hidden_state
    expected = {
        "cls": hidden[:, 0],
        "pooler": torch.tanh(model.encoder.pooler(hidden[:, 0])),
        "mean": torch.stack([hidden[b, :n].mean(0) for b, n in enumerate(LENGTHS)]),
    }[pooling]
    torch.testing.assert_close(out.pooled, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.logits, model.classifier(expected), atol=1e-6, rtol=0)


def test_pooler_pooling_needs_a_pooler():
    with pytest.raises(ValueError, match="add_pooler"):
        EncoderForSequenceClassification(tiny(pooling="pooler", add_pooler=False))


def test_masked_lm_shapes():
    model = build(EncoderForMaskedLM)
    ids, am = batch()
    out = model(ids, attention_mask=am)
    assert out.logits.shape == (B, T, V)
    assert out.last_hidden_state.shape == (B, T, 32)


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
def test_no_information_leaks_through_padding(impl):
    ids, am = batch()
    noisy = perturb_padding(ids, am)
    assert not torch.equal(noisy, ids)
    enc = build(Encoder, attn_impl=impl)
    a = enc(ids, attention_mask=am, return_hidden_states=True)
    b = enc(noisy, attention_mask=am, return_hidden_states=True)
    for ha, hb in zip(a.hidden_states, b.hidden_states):
        torch.testing.assert_close(real(ha, am), real(hb, am), atol=1e-6, rtol=0)
    torch.testing.assert_close(a.pooled, b.pooled, atol=1e-6, rtol=0)
    # Without the mask the perturbation does reach the real positions: the check has teeth.
    assert not torch.allclose(
        real(enc(ids).last_hidden_state, am), real(enc(noisy).last_hidden_state, am)
    )
    for pooling in ("cls", "pooler", "mean"):
        clf = build(EncoderForSequenceClassification, attn_impl=impl, pooling=pooling)
        torch.testing.assert_close(
            clf(ids, attention_mask=am).logits,
            clf(noisy, attention_mask=am).logits,
            atol=1e-6,
            rtol=0,
        )
    mlm = build(EncoderForMaskedLM, attn_impl=impl)
    torch.testing.assert_close(
        real(mlm(ids, attention_mask=am).logits, am),
        real(mlm(noisy, attention_mask=am).logits, am),
        atol=1e-5,
        rtol=0,
    )


def test_sdpa_and_reference_encoders_agree():
    ids, am = batch()
    fast = build(Encoder)
    ref = build(Encoder, attn_impl="reference")
    torch.testing.assert_close(
        real(fast(ids, attention_mask=am).last_hidden_state, am),
        real(ref(ids, attention_mask=am).last_hidden_state, am),
        atol=1e-5,
        rtol=0,
    )


def test_return_attentions_shapes_and_masking():
    model = build(EncoderForSequenceClassification)  # sdpa by default: weights still come back
    ids, am = batch()
    out = model(ids, attention_mask=am, return_attentions=True)
    assert len(out.attentions) == 2
    for probs in out.attentions:
        assert probs.shape == (B, 4, T, T)
        torch.testing.assert_close(probs.sum(-1), torch.ones(B, 4, T))
        assert probs[2, :, :, LENGTHS[2] :].abs().max() == 0.0  # padded keys get no weight
    plain = model(ids, attention_mask=am)
    torch.testing.assert_close(plain.logits, out.logits, atol=1e-5, rtol=0)


def test_token_type_ids_change_the_output():
    model = build(Encoder)
    ids, am = batch()
    segments = torch.zeros_like(ids)
    segments[:, 4:] = 1
    zero = model(ids, attention_mask=am).last_hidden_state
    torch.testing.assert_close(
        model(ids, attention_mask=am, token_type_ids=torch.zeros_like(ids)).last_hidden_state, zero
    )
    assert not torch.allclose(
        model(ids, attention_mask=am, token_type_ids=segments).last_hidden_state, zero
    )


def test_sequence_longer_than_max_len_is_an_error():
    with pytest.raises(ValueError, match="max_len"):
        build(Encoder)(torch.ones(1, 33, dtype=torch.long))


def test_classification_loss_with_class_weights():
    model = build(EncoderForSequenceClassification, num_labels=3)
    ids, am = batch()
    labels = torch.tensor([0, 2, 2])
    weights = torch.tensor([1.0, 1.0, 4.0])
    out = model(ids, attention_mask=am, labels=labels, class_weights=weights)
    nll = -F.log_softmax(out.logits, dim=-1)[torch.arange(B), labels]
    expected = (weights[labels] * nll).sum() / weights[labels].sum()
    torch.testing.assert_close(out.loss, expected)
    unweighted = model(ids, attention_mask=am, labels=labels).loss
    torch.testing.assert_close(unweighted, nll.mean())
    assert not torch.allclose(unweighted, out.loss)
    assert model(ids, attention_mask=am).loss is None


def test_masked_lm_head_is_tied_to_the_token_embeddings():
    model = build(EncoderForMaskedLM)
    embedding = model.encoder.embeddings.token_embeddings.weight
    vocab_matrices = [name for name, p in model.named_parameters() if p.shape == (V, 32)]
    assert vocab_matrices == ["encoder.embeddings.token_embeddings.weight"]  # one tensor
    ids, am = batch()
    out = model(ids, attention_mask=am)
    h = model.mlm_head.norm(F.gelu(model.mlm_head.dense(out.last_hidden_state)))
    torch.testing.assert_close(out.logits, h @ embedding.T + model.mlm_head.bias, atol=1e-5, rtol=0)
    # Gradient from the head reaches the shared matrix even for tokens not in the input.
    absent = sorted(set(range(V)) - set(ids.flatten().tolist()))[0]
    model.train()
    model(ids, attention_mask=am).logits[..., absent].sum().backward()
    assert embedding.grad[absent].abs().sum() > 0


def test_masked_lm_loss_ignores_minus_100():
    model = build(EncoderForMaskedLM)
    ids, am = batch()
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 1] = 7, 42
    out = model(ids, attention_mask=am, labels=labels)
    logp = F.log_softmax(out.logits, dim=-1)
    expected = -(logp[0, 3, 7] + logp[1, 1, 42]) / 2
    torch.testing.assert_close(out.loss, expected)


def test_mean_pool_ignores_padding():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(mean_pool(hidden, mask), torch.tensor([[1.0, 2.0], [6.0, 7.0]]))
    torch.testing.assert_close(mean_pool(hidden, None), hidden.mean(1))


def test_presets():
    assert set(PRESETS) >= {"bert-base", "bert-small", "bert-mini", "minilm-l6", "tiny"}
    for name, config in PRESETS.items():
        assert config.d_model % config.n_heads == 0, name
    base = preset("bert-base")
    assert (base.d_model, base.n_layers, base.n_heads, base.d_ff, base.vocab_size) == (
        768,
        12,
        12,
        3072,
        30522,
    )
    mini = preset("minilm-l6")
    assert (mini.d_model, mini.n_layers, mini.n_heads, mini.d_ff) == (384, 6, 12, 1536)
    custom = preset("tiny", num_labels=7, pooling="mean")
    assert custom.num_labels == 7 and custom.pooling == "mean" and custom.d_model == 32
    assert PRESETS["tiny"].num_labels == 2  # overrides do not mutate the preset
    with pytest.raises(ValueError, match="unknown encoder preset"):
        preset("bert-huge")
    model = Encoder(preset("tiny"))
    assert len(model.layers) == 2 and model.embeddings.token_embeddings.num_embeddings == 1000


def test_initialisation_follows_bert():
    model = build(Encoder)
    emb = model.embeddings.token_embeddings.weight
    assert emb[0].abs().sum() == 0  # padding row zeroed
    assert 0.015 < emb[1:].std().item() < 0.025  # N(0, 0.02)
    assert model.layers[0].self_attn.q_proj.bias.abs().sum() == 0
    assert torch.equal(model.layers[0].attn_norm.weight, torch.ones(32))


def test_an_unpadded_batch_runs_attention_without_a_mask_but_a_graph_keeps_it(monkeypatch):
    """Nothing padded: SDPA gets no mask (its fastest kernel), with the same outputs. A
    traced or exported graph keeps the mask, so it still hides the padding of later inputs."""
    import torchformer.nn.attention as attention

    model = build(Encoder, attn_impl="sdpa")
    ids, attention_mask = batch()
    full = torch.ones_like(attention_mask)
    seen = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(*args, attn_mask=None, **kwargs):
        seen.append(attn_mask)
        return real_sdpa(*args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        unmasked = model(ids, attention_mask=full).last_hidden_state
        assert seen and all(m is None for m in seen)
        seen.clear()
        padded = model(ids, attention_mask=attention_mask).last_hidden_state
        assert seen and all(m is not None for m in seen)
        assert torch.allclose(unmasked, model(ids).last_hidden_state, atol=1e-6)
    monkeypatch.undo()

    class Hidden(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, ids, mask):
            return self.inner(ids, attention_mask=mask).last_hidden_state

    # Exported with an unpadded example, run on the padded batch: padding still hidden.
    exported = torch.export.export(Hidden(model), (ids, full)).module()
    with torch.no_grad():
        out = exported(ids, attention_mask)
    assert torch.allclose(real(out, attention_mask), real(padded, attention_mask), atol=1e-5)
    traced = torch.jit.trace(Hidden(model), (ids, full), check_trace=False)
    with torch.no_grad():
        out = traced(ids, attention_mask)
    assert torch.allclose(real(out, attention_mask), real(padded, attention_mask), atol=1e-5)
