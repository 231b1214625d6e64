"""RoBERTa and DistilBERT checkpoints: tiny random transformers models load into our
encoder, give transformers' outputs (≤ 1e-5) and save back in a layout transformers reads
as the same model; fine-tuning and predict() take them as they take BERT."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
import transformers

from torchformer.checkpoints import CheckpointError, load_pretrained, save_pretrained
from torchformer.models.encoder import (
    Encoder,
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
)

V = 100
TASKS = {
    "Model": ("base", Encoder),
    "ForSequenceClassification": ("classification", EncoderForSequenceClassification),
    "ForMaskedLM": ("masked_lm", EncoderForMaskedLM),
}
PAD = {"Roberta": 1, "DistilBert": 0}


def hf_model(tmp_path, family: str, head: str = "Model", vocab: int = V):
    torch.manual_seed(0)
    if family == "Roberta":
        config = transformers.RobertaConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=40,
            type_vocab_size=1,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    else:
        config = transformers.DistilBertConfig(
            vocab_size=vocab,
            dim=32,
            n_layers=2,
            n_heads=4,
            hidden_dim=64,
            max_position_embeddings=40,
            dropout=0.0,
            attention_dropout=0.0,
        )
    model = getattr(transformers, f"{family}{head}")(config).eval()
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


def batch(family: str, t: int = 12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (2, t), generator=g)
    mask = torch.ones_like(ids)
    mask[1, t - 4 :] = 0
    return ids.masked_fill(mask == 0, PAD[family]), mask


def compare(ref, ours, mask, head: str) -> None:
    if head == "ForSequenceClassification":
        torch.testing.assert_close(ours.logits, ref.logits, atol=1e-5, rtol=0)
        return
    real = mask[..., None].bool()
    field = "last_hidden_state" if head == "Model" else "logits"
    got = getattr(ours, field).masked_fill(~real, 0)
    torch.testing.assert_close(got, getattr(ref, field).masked_fill(~real, 0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["Roberta", "DistilBert"])
@pytest.mark.parametrize("head", list(TASKS))
@pytest.mark.parametrize("attn_impl", ["sdpa", "reference"])
def test_outputs_equal_transformers(tmp_path, family, head, attn_impl):
    ref_model, path = hf_model(tmp_path, family, head)
    task, cls = TASKS[head]
    ours, report = load_pretrained(path, task=task, attn_impl=attn_impl)
    assert type(ours) is cls and ours.training is False
    if head == "ForSequenceClassification":
        assert report.new_keys == [] and report.ignored_keys == []
    ids, mask = batch(family)
    with torch.no_grad():
        compare(ref_model(ids, attention_mask=mask), ours(ids, attention_mask=mask), mask, head)


@pytest.mark.parametrize("family", ["Roberta", "DistilBert"])
@pytest.mark.parametrize("head", list(TASKS))
def test_saved_back_is_the_same_model_for_transformers(tmp_path, family, head):
    ref_model, path = hf_model(tmp_path, family, head)
    task, _ = TASKS[head]
    ours, _ = load_pretrained(path, task=task)
    out = save_pretrained(ours, tmp_path / "ours")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == family.lower() and config["architectures"] == [f"{family}{head}"]
    hf_class = getattr(transformers, f"{family}{head}")
    back, info = hf_class.from_pretrained(out, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"]
    again, _ = load_pretrained(out, task=task)
    ids, mask = batch(family)
    with torch.no_grad():
        want = ref_model(ids, attention_mask=mask)
        compare(want, back.eval()(ids, attention_mask=mask), mask, head)
        compare(want, again(ids, attention_mask=mask), mask, head)


def test_roberta_positions_start_after_the_padding_id(tmp_path):
    """The check can fail: read from position 0 (BERT's convention) the outputs differ."""
    ref_model, path = hf_model(tmp_path, "Roberta")
    ours, _ = load_pretrained(path)
    assert ours.config.position_offset == 2
    ids = batch("Roberta")[0][:1]  # (no padding: HF numbers the positions of real tokens)
    with torch.no_grad():
        want = ref_model(ids).last_hidden_state
        torch.testing.assert_close(ours(ids).last_hidden_state, want, atol=1e-5, rtol=0)
        ours.embeddings.position_offset = 0
        assert (ours(ids).last_hidden_state - want).abs().max() > 1e-2


def test_distilbert_has_no_segments_and_refuses_sinusoidal_positions(tmp_path):
    _, path = hf_model(tmp_path, "DistilBert")
    ours, _ = load_pretrained(path)
    assert ours.embeddings.token_type_embeddings is None
    with pytest.raises(ValueError, match="no segment embeddings"):
        ours(torch.ones(1, 4, dtype=torch.long), token_type_ids=torch.zeros(1, 4, dtype=torch.long))
    config = json.loads((path / "config.json").read_text())
    config["sinusoidal_pos_embds"] = True
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: field 'sinusoidal_pos_embds'"):
        load_pretrained(path)
