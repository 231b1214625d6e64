"""The RNN encoder–decoder with additive attention (``models.rnn_seq2seq``): the step
function equals teacher forcing, padding changes nothing, the alignment is a distribution
over real source tokens, decoding and checkpoints work like the Transformer's."""

from __future__ import annotations

import json

import pytest
import torch

from torchformer.checkpoints import load_pretrained, save_pretrained
from torchformer.checkpoints.hf import CheckpointError
from torchformer.generate.beam import beam_search
from torchformer.generate.generation import PrefixCache, uncached_seq2seq_step
from torchformer.generate.greedy import greedy_decode
from torchformer.models.rnn_seq2seq import PRESETS, RNNSeq2Seq, rnn_preset
from torchformer.nn.additive_attention import AdditiveAttention
from torchformer.tasks.translator import generate_ids

CELLS = ["gru", "lstm"]


def tiny(cell: str = "gru", **overrides) -> RNNSeq2Seq:
    torch.manual_seed(0)
    return RNNSeq2Seq(rnn_preset("rnn-tiny", cell=cell, dropout=0.0, **overrides)).eval()


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three sources of lengths 7, 4 and 6 padded to 7 (pad id 0)."""
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, 1000, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    for row, length in ((1, 4), (2, 6)):
        mask[row, length:] = 0
        src[row, length:] = 0
    return src, mask


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [True, False])
def test_step_by_step_decoding_equals_teacher_forcing(cell: str, bidirectional: bool) -> None:
    model = tiny(cell, bidirectional=bidirectional)
    src, mask = padded_batch()
    tgt = torch.randint(3, 1000, (3, 5), generator=torch.Generator().manual_seed(2))
    full = model(src, tgt, src_mask=mask).logits  # (3, 5, V)
    step, cache = model.make_step(model.encode(src, src_mask=mask), mask), model.new_cache()
    stepped = torch.stack([step(tgt[:, t : t + 1], cache) for t in range(5)], 1)
    torch.testing.assert_close(stepped, full, rtol=0, atol=1e-5)
    assert cache.seq_len == 5
    # Two tokens at once continue the same state as one at a time.
    step2, cache2 = model.make_step(model.encode(src, src_mask=mask), mask), model.new_cache()
    step2(tgt[:, :3], cache2)
    torch.testing.assert_close(step2(tgt[:, 3:5], cache2), full[:, 4], rtol=0, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_source_padding_changes_nothing(cell: str) -> None:
    model = tiny(cell)
    src, mask = padded_batch()
    tgt = torch.randint(3, 1000, (3, 4), generator=torch.Generator().manual_seed(3))
    batched = model(src, tgt, src_mask=mask).logits
    for row in range(3):
        n = int(mask[row].sum())
        alone = model(src[row : row + 1, :n], tgt[row : row + 1]).logits
        torch.testing.assert_close(batched[row : row + 1], alone, rtol=0, atol=1e-5)


def test_alignment_is_a_distribution_over_real_source_tokens() -> None:
    model = tiny()
    src, mask = padded_batch()
    tgt = torch.randint(3, 1000, (3, 4))
    out = model(src, tgt, src_mask=mask, return_attentions=True)
    (alignment,) = out.cross_attentions  # one layer
    assert alignment.shape == (3, 1, 4, 7)  # (B, one head, T, S)
    torch.testing.assert_close(alignment.sum(-1), torch.ones(3, 1, 4))
    assert alignment[1, ..., 4:].abs().max() == 0 and alignment[2, ..., 6:].abs().max() == 0
    assert out.encoder_last_hidden_state[1, 4:].abs().max() == 0  # padded states are zero


def test_additive_attention_is_bahdanaus_formula() -> None:
    torch.manual_seed(0)
    attn = AdditiveAttention(query_dim=5, key_dim=6, attention_dim=4)
    query, values = torch.randn(2, 5), torch.randn(2, 3, 6)
    context, weights = attn(query, attn.project_keys(values), values)
    # e_j = v^T tanh(W q + b + U h_j), written out for one row and position
    W, b, U, v = (
        attn.query_proj.weight,
        attn.query_proj.bias,
        attn.key_proj.weight,
        attn.score.weight,
    )
    e = torch.stack(
        [(v @ torch.tanh(W @ query[0] + b + U @ values[0, j])).squeeze() for j in range(3)]
    )
    torch.testing.assert_close(weights[0], torch.softmax(e, 0))
    torch.testing.assert_close(context[0], torch.softmax(e, 0) @ values[0])


@pytest.mark.parametrize("cell", CELLS)
def test_greedy_beam_and_uncached_decoding_agree(cell: str) -> None:
    model = tiny(cell)
    sources = [[5, 9, 14, 2], [7, 8, 2], [11, 12, 13, 15, 2]]
    cfg = model.config
    greedy = generate_ids(model, sources, beam_size=1, max_new_tokens=8)
    uncached = generate_ids(model, sources, beam_size=1, max_new_tokens=8, use_cache=False)
    assert greedy == uncached
    # Beam search with one beam is greedy search (the beam's rows reorder the RNN state).
    assert generate_ids(model, sources, beam_size=1, max_new_tokens=8) == greedy
    beams = generate_ids(model, sources, beam_size=4, max_new_tokens=8)
    assert len(beams) == 3 and all(cfg.eos_id not in row for row in beams)
    # The uncached step re-runs the whole prefix through decode() each step.
    src = torch.tensor([sources[0]])
    step = uncached_seq2seq_step(model, model.encode(src).last_hidden_state, None)
    start = torch.tensor([[cfg.decoder_start_id]])
    out = greedy_decode(step, start, max_new_tokens=8, eos_id=cfg.eos_id, pad_id=cfg.pad_id,
                        cache=PrefixCache())  # fmt: skip
    ids = out[0, 1:].tolist()
    assert (ids[: ids.index(cfg.eos_id)] if cfg.eos_id in ids else ids) == greedy[0]


@pytest.mark.parametrize("cell", CELLS)
def test_beam_search_reorders_the_recurrent_state(cell: str) -> None:
    """Every hypothesis' beam score equals its log-probability under teacher forcing: were
    the state not reordered with the beams, later steps would continue another prefix."""
    model = tiny(cell)
    src = torch.tensor([[5, 9, 14, 17, 2], [6, 7, 2, 0, 0]])
    mask = (src != 0).long()
    cfg = model.config
    step = model.make_step(model.encode(src, src_mask=mask), mask)
    start = torch.full((2, 1), cfg.decoder_start_id)
    pools = beam_search(step, start, cache=model.new_cache(), beam_size=4, max_new_tokens=6,
                        eos_id=cfg.eos_id, pad_id=cfg.pad_id, length_penalty=0.0, n_best=4)  # fmt: skip
    checked = 0
    for row, pool in enumerate(pools):
        for hyp in pool:
            tgt_in = torch.tensor([[cfg.decoder_start_id, *hyp.ids[:-1]]])
            logp = torch.log_softmax(
                model(src[row : row + 1, : int(mask[row].sum())], tgt_in).logits, -1
            )
            forced = sum(logp[0, t, tok] for t, tok in enumerate(hyp.ids)).item()
            assert forced == pytest.approx(hyp.score, abs=1e-4)
            checked += 1
    assert checked == 8


@pytest.mark.parametrize("cell", CELLS)
def test_checkpoint_round_trip(tmp_path, cell: str) -> None:
    model = tiny(cell)
    save_pretrained(model, tmp_path / "m")
    config = json.loads((tmp_path / "m/config.json").read_text())
    assert config["model_type"] == "torchformer-rnn" and config["cell"] == cell
    loaded, _ = load_pretrained(tmp_path / "m", task="seq2seq_lm")
    assert isinstance(loaded, RNNSeq2Seq) and loaded.config == model.config
    src, mask = padded_batch()
    tgt = torch.randint(3, 1000, (3, 4))
    torch.testing.assert_close(
        loaded(src, tgt, src_mask=mask).logits, model(src, tgt, src_mask=mask).logits,
        rtol=0, atol=0,
    )  # fmt: skip


def test_bad_checkpoint_config_names_the_file_and_field(tmp_path) -> None:
    save_pretrained(tiny(), tmp_path / "m")
    path = tmp_path / "m/config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "hidden_units": 5}))
    with pytest.raises(CheckpointError, match=r"config\.json.*hidden_units"):
        load_pretrained(tmp_path / "m", task="seq2seq_lm")
    path.write_text(json.dumps({**config, "cell": "rnn"}))
    with pytest.raises(CheckpointError, match=r"config\.json.*cell"):
        load_pretrained(tmp_path / "m", task="seq2seq_lm")
    path.write_text(json.dumps({**config, "encoder_hidden": 10**7}))
    with pytest.raises(CheckpointError, match="parameters"):  # refused before building
        load_pretrained(tmp_path / "m", task="seq2seq_lm")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_parameter_estimate_counts_every_weight_matrix(name: str) -> None:
    config = rnn_preset(name)
    model = RNNSeq2Seq(config)
    assert config.estimate_parameters() == sum(p.numel() for p in model.parameters() if p.dim() > 1)


def test_sizes_match_the_transformer_it_is_compared_with() -> None:
    from torchformer.models.seq2seq import Seq2Seq, preset

    rnn = sum(p.numel() for p in RNNSeq2Seq(rnn_preset("rnn-small-cpu")).parameters())
    transformer = sum(p.numel() for p in Seq2Seq(preset("transformer-small-cpu")).parameters())
    assert abs(rnn - transformer) / transformer < 0.05  # "at a similar parameter count"


def test_lengths_over_max_len_are_refused() -> None:
    model = tiny(max_len=6)
    with pytest.raises(ValueError, match="source length 7 exceeds the model's max_len 6"):
        model.encode(torch.ones(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="target length 7"):
        model(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="cell must be"):
        rnn_preset("rnn-tiny", cell="rnn")
