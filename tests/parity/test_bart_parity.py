"""BART parity against Hugging Face ``transformers`` (tier 2).

A tiny random ``BartForConditionalGeneration`` saved by ``transformers`` loads
through the production path; encoder states, logits and the loss must match
within 1e-5, our saved directory must load back into ``transformers`` with the same
logits, and greedy/beam generation must produce the same tokens.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from torchformer.checkpoints import CheckpointError, load_pretrained, save_pretrained
from torchformer.generate import generate
from torchformer.models.seq2seq import Seq2Seq, preset, shift_right

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.parity

V = 71
ATOL = 1e-5


def hf_bart(**overrides):
    base = dict(
        vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, init_std=0.6,
        forced_eos_token_id=None, forced_bos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BartForConditionalGeneration(
        transformers.BartConfig(**{**base, **overrides})
    )
    with torch.no_grad():
        model.final_logits_bias.normal_(0, 0.5)  # zero in a fresh model: make it matter
    return model.eval()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    hf = hf_bart()
    path = tmp_path_factory.mktemp("bart")
    hf.save_pretrained(path)
    ours, report = load_pretrained(path, task="seq2seq_lm")
    assert not report.new_keys and not report.ignored_keys
    return ours, hf, path


def batch():
    g = torch.Generator().manual_seed(4)
    src = torch.randint(3, V, (3, 9), generator=g)
    src_mask = torch.ones_like(src)
    src_mask[1, 6:] = 0
    src = src.masked_fill(src_mask == 0, 1)
    labels = torch.randint(3, V, (3, 7), generator=g)
    return src, src_mask, labels


@pytest.mark.parametrize("scale_embedding", [False, True])
@torch.no_grad()
def test_states_logits_and_loss_match(tmp_path, scale_embedding):
    hf = hf_bart(scale_embedding=scale_embedding)
    hf.save_pretrained(tmp_path)
    ours, _ = load_pretrained(tmp_path, task="seq2seq_lm")
    assert ours.config.flavour == "bart" and ours.config.scale_embedding is scale_embedding
    src, src_mask, labels = batch()
    tgt_in = shift_right(labels, start_id=2, pad_id=1)
    r = hf(input_ids=src, attention_mask=src_mask, labels=labels)
    a = ours(src, tgt_in, src_mask=src_mask, labels=labels)
    real = src_mask.bool()
    assert (a.encoder_last_hidden_state - r.encoder_last_hidden_state)[real].abs().max() <= ATOL
    assert (a.logits - r.logits).abs().max() <= ATOL
    assert abs(a.loss.item() - r.loss.item()) <= ATOL


@torch.no_grad()
def test_ours_saved_loads_in_transformers_with_the_same_logits(pair, tmp_path):
    ours, hf, _ = pair
    save_pretrained(ours, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "bart"
    back = transformers.BartForConditionalGeneration.from_pretrained(tmp_path).eval()
    src, src_mask, labels = batch()
    a = back(input_ids=src, attention_mask=src_mask, labels=labels).logits
    r = hf(input_ids=src, attention_mask=src_mask, labels=labels).logits
    assert (a - r).abs().max() <= ATOL


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"num_beams": 3},
        {"no_repeat_ngram_size": 2},
        {"num_beams": 2, "repetition_penalty": 1.3},
    ],
)
def test_greedy_and_beam_generation_match(pair, options):
    ours, hf, _ = pair
    src, src_mask, _ = batch()
    ref = hf.generate(src, attention_mask=src_mask, max_new_tokens=15, do_sample=False,
                      early_stopping=False, **options)  # fmt: skip
    out = generate(ours, src, attention_mask=src_mask, max_new_tokens=15, **options)
    assert out.shape == ref.shape
    for a, r in zip(out.tolist(), ref.tolist(), strict=True):  # after eos: pad (1) or eos (2)
        n = a.index(2, 1) + 1 if 2 in a[1:] else len(a)
        assert a[:n] == r[:n] and set(r[n:]) <= {1, 2}
    assert len(set(out[:, 1:].flatten().tolist())) > 3


def test_a_fresh_preset_round_trips(tmp_path):
    model = Seq2Seq(preset("bart-tiny", vocab_size=V)).eval()
    save_pretrained(model, tmp_path)
    again, _ = load_pretrained(tmp_path, task="seq2seq_lm")
    src, src_mask, labels = batch()
    tgt_in = shift_right(labels, start_id=2, pad_id=1)
    with torch.no_grad():
        assert torch.equal(model(src, tgt_in, src_mask=src_mask).logits,
                           again(src, tgt_in, src_mask=src_mask).logits)  # fmt: skip


def test_unsupported_options_and_untied_copies_are_named(pair, tmp_path):
    _, hf, path = pair
    config = json.loads((path / "config.json").read_text())
    for key, value, needle in [("decoder_layers", 3, "decoder_layers"),
                               ("add_final_layer_norm", True, "add_final_layer_norm")]:  # fmt: skip
        bad = tmp_path / key
        hf.save_pretrained(bad)
        (bad / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(CheckpointError, match=needle):
            load_pretrained(bad, task="seq2seq_lm")
    bad = tmp_path / "untied"
    hf.save_pretrained(bad)
    state = load_file(bad / "model.safetensors")
    state["model.decoder.embed_tokens.weight"] = state["model.shared.weight"] + 1.0
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"differs from model\.shared\.weight"):
        load_pretrained(bad, task="seq2seq_lm")
