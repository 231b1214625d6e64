"""Longformer and BigBird checkpoints: tiny random transformers models load into our
encoder with the matching attention kind, give transformers' outputs (≤ 1e-5, global
positions included) and save back in a layout transformers reads as the same model."""

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
SIZES = dict(
    vocab_size=V,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
TASKS = {
    "Model": ("base", Encoder),
    "ForSequenceClassification": ("classification", EncoderForSequenceClassification),
    "ForMaskedLM": ("masked_lm", EncoderForMaskedLM),
}


def longformer(tmp_path, head: str = "Model", window: int = 8):
    """A saved tiny transformers Longformer (two-sided window 8: our window 4)."""
    torch.manual_seed(0)
    config = transformers.LongformerConfig(
        **SIZES, attention_window=window, max_position_embeddings=130
    )
    model = getattr(transformers, f"Longformer{head}")(config).eval()
    with torch.no_grad():  # global projections far from the local ones (a random init's
        for name, p in model.named_parameters():  # are all alike: near-uniform attention)
            if "_global.weight" in name:
                p.normal_(0.0, 0.5)
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


def big_bird(tmp_path, head: str = "Model", random_blocks: int = 1):
    torch.manual_seed(0)
    config = transformers.BigBirdConfig(
        **SIZES, block_size=4, num_random_blocks=random_blocks, max_position_embeddings=128
    )
    model = getattr(transformers, f"BigBird{head}")(config).eval()
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


def batch(t: int, pad_id: int, padded: int = 7):
    """Two sequences of t tokens, the second with ``padded`` padding positions at the end."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (2, t), generator=g)
    mask = torch.ones_like(ids)
    mask[1, t - padded :] = 0
    return ids.masked_fill(mask == 0, pad_id), mask


def compare(ref, ours, mask, head: str) -> None:
    """transformers' and our outputs agree on the real positions (≤ 1e-5)."""
    if head == "ForSequenceClassification":
        torch.testing.assert_close(ours.logits, ref.logits, atol=1e-5, rtol=0)
        return
    real = mask[..., None].bool()  # (padding positions: neither is defined to agree)
    field = "last_hidden_state" if head == "Model" else "logits"
    got = getattr(ours, field).masked_fill(~real, 0)
    want = getattr(ref, field).masked_fill(~real, 0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


# --- Longformer --------------------------------------------------------------------------
# transformers' classifier makes [CLS] global (and only it, by default)
HEAD_GLOBALS = [
    (head, globals_)
    for head in TASKS
    for globals_ in ([(0,)] if head == "ForSequenceClassification" else [(), (0,), (0, 5, 17)])
]


@pytest.mark.parametrize(("head", "global_tokens"), HEAD_GLOBALS)
@pytest.mark.parametrize("attn_impl", ["sdpa", "reference"])
@pytest.mark.parametrize("t", [40, 7])  # the chunked kernel; below 2·window: dense
def test_longformer_outputs_equal_transformers(tmp_path, head, global_tokens, attn_impl, t):
    ref_model, path = longformer(tmp_path, head)
    task, cls = TASKS[head]
    ours, report = load_pretrained(
        path, task=task, global_tokens=global_tokens, attn_impl=attn_impl
    )
    assert type(ours) is cls and report.new_keys in (
        [],
        ["encoder.pooler.weight", "encoder.pooler.bias"],
    )
    encoder = ours if isinstance(ours, Encoder) else ours.encoder
    assert encoder.config.attention == "sliding_window" and encoder.config.attention_window == 4
    ids, mask = batch(t, pad_id=1, padded=3 if t < 10 else 7)
    globals_ = torch.zeros_like(ids)
    globals_[:, [g for g in global_tokens if g < t]] = 1
    with torch.no_grad():
        ref = ref_model(ids, attention_mask=mask, global_attention_mask=globals_)
        got = ours(ids, attention_mask=mask)
    compare(ref, got, mask, head)


def test_longformer_global_projections_matter(tmp_path):
    """The check can fail: with the global projections swapped for the local ones, the
    global rows (and through them every row of the next layer) differ."""
    ref_model, path = longformer(tmp_path)
    ours, _ = load_pretrained(path, global_tokens=(0,))
    ids, mask = batch(40, pad_id=1)
    globals_ = torch.zeros_like(ids)
    globals_[:, 0] = 1
    with torch.no_grad():
        for layer in ours.layers:
            attn = layer.self_attn
            for ours_, local in (
                ("q_global", "q_proj"),
                ("k_global", "k_proj"),
                ("v_global", "v_proj"),
            ):
                getattr(attn, ours_).weight.copy_(getattr(attn, local).weight)
        ref = ref_model(ids, attention_mask=mask, global_attention_mask=globals_)
        got = ours(ids, attention_mask=mask)
    assert (ref.last_hidden_state - got.last_hidden_state)[:, 0].abs().max() > 0.1


@pytest.mark.parametrize("head", list(TASKS))
def test_longformer_saved_back_is_the_same_model_for_transformers(tmp_path, head):
    ref_model, path = longformer(tmp_path, head)
    task, _ = TASKS[head]
    ours, _ = load_pretrained(path, task=task, global_tokens=(0, 3))
    out = save_pretrained(ours, tmp_path / "ours")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "longformer" and config["attention_window"] == [8, 8]
    assert config["architectures"] == [f"Longformer{head}"]
    back = getattr(transformers, f"Longformer{head}").from_pretrained(out).eval()
    again, _ = load_pretrained(out, task=task)
    assert again.config.global_tokens == (0, 3)  # ours, kept in config.json
    ids, mask = batch(40, pad_id=1)
    globals_ = torch.zeros_like(ids)
    globals_[:, [0, 3]] = 1
    with torch.no_grad():
        want = ref_model(ids, attention_mask=mask, global_attention_mask=globals_)
        compare(want, back(ids, attention_mask=mask, global_attention_mask=globals_), mask, head)
        compare(want, again(ids, attention_mask=mask), mask, head)


def test_longformer_per_layer_windows_are_refused_by_name(tmp_path):
    _, path = longformer(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["attention_window"] = [8, 16]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: field 'attention_window'.*\[8, 16\]"):
        load_pretrained(path)


# --- BigBird -----------------------------------------------------------------------------
@pytest.mark.parametrize("head", list(TASKS))
@pytest.mark.parametrize("random_blocks", [1, 2])
@pytest.mark.parametrize("attn_impl", ["sdpa", "reference"])
def test_big_bird_outputs_equal_transformers(tmp_path, head, random_blocks, attn_impl):
    ref_model, path = big_bird(tmp_path, head, random_blocks)
    task, cls = TASKS[head]
    ours, report = load_pretrained(path, task=task, attn_impl=attn_impl)
    assert type(ours) is cls
    encoder = ours if isinstance(ours, Encoder) else ours.encoder
    assert encoder.config.attention == "block_sparse"
    assert encoder.config.attention_random_blocks == random_blocks
    if head == "ForSequenceClassification":  # its head's dense is our pooler, not bert.pooler
        assert sorted(report.ignored_keys) == [
            "<unused>bert.pooler.bias",
            "<unused>bert.pooler.weight",
        ]
    t = (5 + 2 * random_blocks) * 4 + 16  # long enough that transformers keeps the pattern
    ids, mask = batch(t, pad_id=0)
    with torch.no_grad():
        compare(ref_model(ids, attention_mask=mask), ours(ids, attention_mask=mask), mask, head)


def test_big_bird_sampled_random_blocks_are_not_transformers_eval(tmp_path):
    """transformers' eval mode sees block 0 in place of the random blocks; with our sampled
    random blocks (the paper's pattern) the outputs differ — the loader's setting matters."""
    ref_model, path = big_bird(tmp_path, random_blocks=2)
    ours, _ = load_pretrained(path, attention_random_eval="sampled")
    ids, mask = batch(64, pad_id=0)
    with torch.no_grad():
        diff = ref_model(ids, attention_mask=mask).last_hidden_state - ours(ids).last_hidden_state
    assert diff[0].abs().max() > 1e-3


@pytest.mark.parametrize("head", list(TASKS))
def test_big_bird_saved_back_is_the_same_model_for_transformers(tmp_path, head):
    ref_model, path = big_bird(tmp_path, head)
    task, _ = TASKS[head]
    ours, _ = load_pretrained(path, task=task)
    out = save_pretrained(ours, tmp_path / "ours")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "big_bird" and config["attention_type"] == "block_sparse"
    assert config["block_size"] == 4 and config["num_random_blocks"] == 1
    back = getattr(transformers, f"BigBird{head}").from_pretrained(out).eval()
    again, _ = load_pretrained(out, task=task)
    ids, mask = batch(48, pad_id=0)
    with torch.no_grad():
        want = ref_model(ids, attention_mask=mask)
        compare(want, back(ids, attention_mask=mask), mask, head)
        compare(want, again(ids, attention_mask=mask), mask, head)


def test_big_bird_original_full_loads_as_full_attention(tmp_path):
    ref_model, path = big_bird(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["attention_type"] = "original_full"
    (path / "config.json").write_text(json.dumps(config))
    ref_model.set_attention_type("original_full")
    ours, _ = load_pretrained(path)
    assert ours.config.attention == "full"
    ids, mask = batch(20, pad_id=0)
    with torch.no_grad():
        compare(ref_model(ids, attention_mask=mask), ours(ids, attention_mask=mask), mask, "Model")


@pytest.mark.parametrize(
    ("field", "value"), [("rescale_embeddings", True), ("use_bias", False), ("attention_type", "x")]
)
def test_big_bird_unsupported_settings_are_refused_by_name(tmp_path, field, value):
    _, path = big_bird(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config[field] = value
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"config.json: field '{field}'"):
        load_pretrained(path)


def test_bert_family_does_not_take_a_longformer_model(tmp_path):
    """save_pretrained picks the family by the model's flavour, not only its class."""
    _, path = longformer(tmp_path)
    ours, _ = load_pretrained(path)
    out = save_pretrained(ours, tmp_path / "ours")
    assert json.loads((out / "config.json").read_text())["model_type"] == "longformer"
