"""T5 against Hugging Face ``transformers`` (tier 2), and the T5 checkpoint layout.

Random-initialised tiny ``T5ForConditionalGeneration`` models, converted with
the production key map through ``save_pretrained``/``load_pretrained``.
Reproduce the numbers: ``.venv/bin/pytest tests/parity/test_t5_parity.py -q -s``.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from torchformer.checkpoints import CheckpointError, load_pretrained, save_pretrained
from torchformer.generate.beam import beam_search
from torchformer.models.seq2seq import Seq2Seq, preset, shift_right

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


TOL = 1e-5
VOCAB = 100


def hf_t5(
    feed_forward_proj: str, tied: bool, *, vocab: int = VOCAB, seed: int = 0, head_std: float = 1.0
):
    """A random tiny HF T5; untied models get a head of their own (N(0, head_std))."""
    torch.manual_seed(seed)
    config = transformers.T5Config(
        vocab_size=vocab, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20,
        feed_forward_proj=feed_forward_proj, tie_word_embeddings=tied,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    model = transformers.T5ForConditionalGeneration(config).eval()
    if not tied:  # transformers 5.x builds the head tied even when asked not to
        model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab, 32) * head_std)
    return model


def padded_batch(vocab: int = VOCAB):
    g = torch.Generator().manual_seed(2)
    src = torch.randint(2, vocab, (3, 9), generator=g)
    src_mask = torch.ones_like(src)
    src_mask[1, 6:] = 0
    src_mask[2, 3:] = 0
    src = src.masked_fill(src_mask == 0, 0)
    labels = torch.randint(2, vocab, (3, 6), generator=g)
    labels[0, 4:] = -100  # padded targets, as HF expects them
    return src, src_mask, labels


def _hf_forward(hf, src, src_mask, labels):
    with torch.no_grad():
        return hf(input_ids=src, attention_mask=src_mask, labels=labels)


def _our_forward(model: Seq2Seq, src, src_mask, labels):
    tgt_in = shift_right(labels, start_id=model.config.decoder_start_id, pad_id=model.config.pad_id)
    with torch.no_grad():
        return model(src, tgt_in, src_mask=src_mask, labels=labels)


CASES = [("relu", True), ("relu", False), ("gated-gelu", True), ("gated-gelu", False)]


@pytest.mark.parity
@pytest.mark.parametrize(("proj", "tied"), CASES)
def test_hf_to_ours_teacher_forcing(tmp_path, proj, tied):
    hf = hf_t5(proj, tied)
    hf.save_pretrained(tmp_path)
    model, report = load_pretrained(tmp_path, task="seq2seq_lm")
    assert str(report) == "all weights loaded"
    assert model.config.gated_ffn == (proj == "gated-gelu") and model.config.tie_output == tied
    src, src_mask, labels = padded_batch()
    theirs = _hf_forward(hf, src, src_mask, labels)
    ours = _our_forward(model, src, src_mask, labels)
    enc_diff = (
        (ours.encoder_last_hidden_state - theirs.encoder_last_hidden_state)[src_mask.bool()]
        .abs()
        .max()
    )
    logit_diff = (ours.logits - theirs.logits).abs().max()
    print(
        f"\n{proj} tied={tied}: encoder max|diff| {enc_diff:.2e}, logits max|diff| {logit_diff:.2e}"
    )
    assert enc_diff <= TOL
    assert logit_diff <= TOL
    assert abs(float(ours.loss) - float(theirs.loss)) <= TOL  # -100 ignored by both


@pytest.mark.parity
@pytest.mark.parametrize(("proj", "tied"), CASES)
def test_ours_to_hf(tmp_path, proj, tied):
    torch.manual_seed(3)
    gated = proj == "gated-gelu"
    config = preset(
        "t5-tiny", vocab_size=VOCAB, gated_ffn=gated, activation="gelu_new" if gated else "relu",
        tie_output=tied, dropout=0.0,
    )  # fmt: skip
    model = Seq2Seq(config).eval()
    save_pretrained(model, tmp_path)
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    src, src_mask, labels = padded_batch()
    theirs = _hf_forward(hf, src, src_mask, labels)
    ours = _our_forward(model, src, src_mask, labels)
    assert (ours.logits - theirs.logits).abs().max() <= TOL
    assert hf.config.feed_forward_proj == proj


@pytest.mark.parity
@pytest.mark.parametrize(("proj", "tied"), [("relu", True), ("gated-gelu", False)])
def test_hf_to_ours_to_hf(tmp_path, proj, tied):
    hf = hf_t5(proj, tied, seed=4)
    hf.save_pretrained(tmp_path / "hf")
    model, _ = load_pretrained(tmp_path / "hf", task="seq2seq_lm")
    save_pretrained(model, tmp_path / "ours")
    again = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    theirs, back = hf.state_dict(), again.state_dict()
    for key, value in theirs.items():
        torch.testing.assert_close(back[key], value, atol=0, rtol=0, msg=key)
    src, src_mask, labels = padded_batch()
    a = _hf_forward(hf, src, src_mask, labels).logits
    b = _hf_forward(again, src, src_mask, labels).logits
    assert torch.equal(a, b)


@pytest.mark.parity
@pytest.mark.parametrize(
    ("length_penalty", "early_stopping"),
    [
        (1.0, True),
        (0.0, True),
        (2.0, True),
        (-0.5, True),
        (1.0, False),
        (1.0, "heuristic"),
        (2.0, "heuristic"),
        (-0.5, "heuristic"),
    ],
)
def test_beam_search_matches_hf_generate(tmp_path, length_penalty, early_stopping):
    """Same ids and scores as ``generate(num_beams=4)`` for all 4 returned hypotheses.

    A small vocabulary and a moderately peaked untied head (and a likelier eos)
    give outputs that mix eos-terminated and cut-off hypotheses of many lengths.
    early_stopping=False is our exact stopping bound, HF's "never"; our "heuristic" is
    HF's False.
    """
    vocab, beams, max_new = 24, 4, 12
    hf = hf_t5("relu", False, vocab=vocab, head_std=0.5)
    with torch.no_grad():
        hf.lm_head.weight[1] *= 1.5
    hf.save_pretrained(tmp_path)
    model, _ = load_pretrained(tmp_path, task="seq2seq_lm")
    g = torch.Generator().manual_seed(5)
    src = torch.randint(2, vocab, (5, 9), generator=g)
    src_mask = torch.ones_like(src)
    src_mask[1, 6:] = 0
    src_mask[2, 3:] = 0
    src = src.masked_fill(src_mask == 0, 0)
    out = hf.generate(
        input_ids=src, attention_mask=src_mask, num_beams=beams, num_return_sequences=beams,
        length_penalty=length_penalty,
        early_stopping={True: True, False: "never", "heuristic": False}[early_stopping],
        max_new_tokens=max_new, do_sample=False, output_scores=True, return_dict_in_generate=True,
    )  # fmt: skip
    with torch.no_grad():
        enc = model.encode(src, src_mask=src_mask)
    results = beam_search(
        model.make_step(enc, src_mask), torch.zeros(5, 1, dtype=torch.long), cache=model.new_cache(),
        beam_size=beams, max_new_tokens=max_new, eos_id=1, pad_id=0,
        length_penalty=length_penalty, early_stopping=early_stopping, n_best=beams,
    )  # fmt: skip
    ended = 0
    for b, hyps in enumerate(results):
        assert len(hyps) == beams
        for j, hyp in enumerate(hyps):
            theirs = out.sequences[b * beams + j].tolist()
            ours = [0, *hyp.ids]
            assert theirs[: len(ours)] == ours, (b, j)
            # HF fills the tail of shorter hypotheses with eos (pad_token_id 0 is falsy there).
            assert set(theirs[len(ours) :]) <= {0, 1}
            assert hyp.score == pytest.approx(float(out.sequences_scores[b * beams + j]), abs=1e-5)
            ended += hyp.ids[-1] == 1
    assert 0 < ended < 5 * beams  # both eos-terminated and cut-off hypotheses were compared


# --- checkpoint layout details (no transformers model needed beyond the fixture) ---------


def _save_hf(tmp_path, proj="relu", tied=True):
    hf_t5(proj, tied).save_pretrained(tmp_path)
    return load_file(tmp_path / "model.safetensors"), json.loads(
        (tmp_path / "config.json").read_text()
    )


def _rewrite(tmp_path, state, config):
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(config))


def test_legacy_duplicate_keys_are_dropped(tmp_path):
    state, config = _save_hf(tmp_path)
    state["encoder.embed_tokens.weight"] = state["shared.weight"].clone()
    state["decoder.embed_tokens.weight"] = state["shared.weight"].clone()
    state["lm_head.weight"] = state["shared.weight"].clone()  # a tied head stored anyway
    state["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = torch.zeros(
        8, 4
    )
    _rewrite(tmp_path, state, config)
    model, report = load_pretrained(tmp_path, task="seq2seq_lm")
    assert str(report) == "all weights loaded"
    assert torch.equal(model.src_embed.weight, state["shared.weight"])


def test_unknown_and_missing_keys_are_named(tmp_path):
    state, config = _save_hf(tmp_path)
    state["encoder.block.0.layer.9.Mystery.weight"] = torch.zeros(2)
    _rewrite(tmp_path, state, config)
    with pytest.raises(CheckpointError, match=r"Mystery"):
        load_pretrained(tmp_path, task="seq2seq_lm")
    del state["encoder.block.0.layer.9.Mystery.weight"]
    del state["decoder.final_layer_norm.weight"]
    _rewrite(tmp_path, state, config)
    with pytest.raises(CheckpointError, match=r"decoder\.final_norm\.weight"):
        load_pretrained(tmp_path, task="seq2seq_lm")


def test_tied_config_with_a_different_head_is_an_error(tmp_path):
    state, config = _save_hf(tmp_path)
    state["lm_head.weight"] = torch.randn_like(state["shared.weight"])
    config.pop("scale_decoder_outputs", None)
    config["tie_word_embeddings"] = True
    _rewrite(tmp_path, state, config)
    with pytest.raises(CheckpointError, match=r"lm_head\.weight differs"):
        load_pretrained(tmp_path, task="seq2seq_lm")


def test_untied_config_without_a_head_copies_shared(tmp_path):
    """transformers 5.x saves an "untied" T5 with its head tied, i.e. without lm_head.weight."""
    state, config = _save_hf(tmp_path, tied=False)
    state.pop("lm_head.weight", None)
    config["tie_word_embeddings"], config["scale_decoder_outputs"] = True, False
    _rewrite(tmp_path, state, config)
    model, _ = load_pretrained(tmp_path, task="seq2seq_lm")
    assert not model.config.tie_output
    assert torch.equal(model.lm_head.weight, state["shared.weight"])


def test_bad_feed_forward_proj_and_task_are_errors(tmp_path):
    state, config = _save_hf(tmp_path)
    config["feed_forward_proj"] = "fancy-gelu"
    _rewrite(tmp_path, state, config)
    with pytest.raises(CheckpointError, match="feed_forward_proj"):
        load_pretrained(tmp_path, task="seq2seq_lm")
    with pytest.raises(CheckpointError, match="seq2seq_lm"):
        load_pretrained(tmp_path, task="classification")
