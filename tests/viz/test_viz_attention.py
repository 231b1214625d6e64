"""Attention extraction and the JSON the pages embed: the numbers shown are the model's weights."""

from __future__ import annotations

import json
import re

import pytest
import torch
from viz_pages import embedded_json

from torchformer.viz.attention import (
    as_layer_stack,
    attention_for_text,
    cls_attention,
    cross_attention_payload,
    self_attention_payload,
)
from torchformer.viz.explain import explain_html

TEXT = "the film was great and the actors were wonderful but the ending was a bit dull"


def test_attention_for_text_returns_the_models_weights(tiny_classifier):
    clf, _ = tiny_classifier
    att = attention_for_text(clf, TEXT)
    ids, mask = clf.encode([TEXT])
    with torch.inference_mode():
        out = clf.model(ids, attention_mask=mask, return_attentions=True)
    expected = torch.stack([a[0] for a in out.attentions])  # (L, H, T, T)
    L, H, T = clf.model.config.n_layers, clf.model.config.n_heads, ids.size(1)
    assert att.attentions.shape == (L, H, T, T)
    torch.testing.assert_close(att.attentions, expected)
    torch.testing.assert_close(att.attentions.sum(-1), torch.ones(L, H, T))
    assert att.tokens == clf.tokenizer.tokens(ids[0].tolist())
    assert att.tokens[0] == "[CLS]" and att.tokens[-1] == "[SEP]"
    assert att.special[0] and att.special[-1] and not any(att.special[1:-1])
    pred = clf.predict([TEXT])[0]
    assert att.prediction["label"] == pred["label"]
    assert att.prediction["confidence"] == pytest.approx(pred["confidence"], abs=1e-6)


def test_cls_attention_reductions():
    att = torch.rand(3, 4, 5, 5).softmax(-1)  # (L, H, T, T)
    torch.testing.assert_close(cls_attention(att), att[-1, :, 0].mean(0))
    torch.testing.assert_close(cls_attention(att, layer=1, head=2), att[1, 2, 0])
    torch.testing.assert_close(
        cls_attention(att, layer="mean", head="mean"), att[:, :, 0].mean((0, 1))
    )
    assert cls_attention(att, layer=0, head=3).sum().item() == pytest.approx(1.0, abs=1e-6)


def test_self_attention_payload_pages_and_rounding():
    torch.manual_seed(0)
    L, H, T = 2, 3, 150
    att = torch.rand(L, H, T, T).softmax(-1)
    tokens = [f"t{i}" for i in range(T)]
    payload = self_attention_payload(tokens, att, window=64)
    assert [(p["start"], p["end"]) for p in payload["pages"]] == [(0, 64), (64, 128), (128, 150)]
    assert payload["layers"] == [0, 1] and payload["note"] == ""
    for page in payload["pages"]:
        s, e = page["start"], page["end"]
        shown = torch.tensor(page["attn"], dtype=torch.float64)  # (L, H, w, w)
        assert shown.shape == (L, H, e - s, e - s)
        assert (shown - att[:, :, s:e, s:e].double()).abs().max() <= 0.5e-4 + 1e-12
    cls = torch.tensor(payload["cls"], dtype=torch.float64)  # (L, H, T)
    assert (cls - att[:, :, 0, :].double()).abs().max() <= 0.5e-4 + 1e-12
    # Four decimals at most in the serialized numbers.
    text = json.dumps(payload["pages"][0]["attn"])
    assert max(len(m) for m in re.findall(r"\.(\d+)", text)) <= 4


def test_self_attention_payload_budget_drops_early_layers_then_pages():
    att = torch.rand(4, 2, 100, 100).softmax(-1)
    tokens = [str(i) for i in range(100)]
    per_layer = 2 * (64**2 + 36**2)
    payload = self_attention_payload(tokens, att, window=64, max_values=2 * per_layer)
    assert payload["layers"] == [2, 3] and "omitted" in payload["note"]
    assert len(payload["cls"]) == 4  # the token view keeps every layer
    small = self_attention_payload(tokens, att, window=64, max_values=2 * 64**2)
    assert small["layers"] == [3] and [p["start"] for p in small["pages"]] == [0]
    assert "tokens 0–63 of 100" in small["note"]


def test_cross_attention_payload_from_decoder_tensors():
    torch.manual_seed(0)
    B, H, T, S = 2, 4, 5, 7
    layers = tuple(torch.rand(B, H, T, S).softmax(-1) for _ in range(3))  # as decode() returns them
    src, tgt = [f"s{i}" for i in range(S)], [f"t{i}" for i in range(T)]
    payload = cross_attention_payload(layers, src, tgt)
    shown = torch.tensor(payload["pages"][0]["attn"], dtype=torch.float64)  # (L, H, T, S)
    expected = torch.stack([a[0] for a in layers]).double()  # batch row 0
    assert shown.shape == (3, H, T, S)
    assert (shown - expected).abs().max() <= 0.5e-4 + 1e-12
    with pytest.raises(ValueError, match="needs 5 target and 7 source tokens"):
        cross_attention_payload(layers, src[:-1], tgt)


def test_as_layer_stack_needs_returned_attentions():
    with pytest.raises(ValueError, match="return_attentions=True"):
        as_layer_stack((None, None))
    assert as_layer_stack(torch.rand(4, 3, 3)).shape == (1, 4, 3, 3)


def test_explain_page_shows_the_models_weights(tiny_classifier):
    """Acceptance 2: the numbers embedded in the page equal the returned tensors (4 decimals)."""
    clf, _ = tiny_classifier
    document = explain_html(clf, TEXT)
    (payload,) = embedded_json(document).values()
    ids, mask = clf.encode([TEXT])
    with torch.inference_mode():
        out = clf.model(ids, attention_mask=mask, return_attentions=True)
    weights = torch.stack([a[0] for a in out.attentions]).double()  # (L, H, T, T)
    T = weights.size(-1)
    assert payload["tokens"] == clf.tokenizer.tokens(ids[0].tolist())
    assert payload["pages"][0]["end"] == T  # short text: one page holds the whole matrix
    shown = torch.tensor(payload["pages"][0]["attn"], dtype=torch.float64)
    assert shown.shape == weights.shape
    assert (shown - weights).abs().max() <= 0.5e-4 + 1e-12
    assert (
        torch.tensor(payload["cls"], dtype=torch.float64) - weights[:, :, 0, :]
    ).abs().max() <= 0.5e-4 + 1e-12
    # Self-contained: no URL to fetch anything from.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", document)
    assert "data:image/png;base64," in document


def test_attention_for_translation_is_the_decoders_cross_attention(tiny_translator):
    from torchformer.viz.attention import attention_for_translation
    from torchformer.viz.explain import translation_explain_html

    text = "ein Hund läuft im Park ."
    att = attention_for_translation(tiny_translator, text)
    assert att.translation == tiny_translator.translate(text)
    model, tok = tiny_translator.model, tiny_translator.src_tokenizer
    source = tok.encode(text, max_length=model.config.max_len)
    output = [tok.token_to_id(t) for t in att.target_tokens]
    assert att.source_tokens == tok.tokens(source) and output[-1] == model.config.eos_id
    with torch.inference_mode():
        out = model.decode(
            torch.tensor([[model.config.decoder_start_id, *output[:-1]]]),
            model.encode(torch.tensor([source])),
            return_attentions=True,
        )
    expected = torch.stack([a[0] for a in out.cross_attentions])  # (L, H, T, S)
    assert att.cross_attentions.shape == (2, 4, len(output), len(source))
    torch.testing.assert_close(att.cross_attentions, expected)
    (payload,) = embedded_json(translation_explain_html(tiny_translator, text)).values()
    assert payload["kind"] == "cross" and payload["target_tokens"] == att.target_tokens
    shown = torch.tensor(payload["pages"][0]["attn"], dtype=torch.float64)
    assert (shown - expected.double()).abs().max() <= 0.5e-4 + 1e-12
