"""GPT-2 parity against Hugging Face ``transformers`` (tier 2).

A random-initialised tiny ``GPT2LMHeadModel`` is saved with ``save_pretrained``
and loaded through the production path (``load_pretrained``, the GPT-2 key map
with the Conv1D transposes and the c_attn split); logits, hidden states,
attentions and greedy generations must match.
"""

from __future__ import annotations

import json

import pytest
import torch

from torchformer.checkpoints import CheckpointError, load_pretrained, save_pretrained
from torchformer.checkpoints.gpt2 import config_from_hf, config_to_hf, state_from_hf, state_to_hf
from torchformer.generate import generate
from torchformer.models.decoder import Decoder, DecoderForCausalLM

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.parity

V = 97
ATOL = 1e-5


def hf_config(**overrides):
    base = dict(
        n_embd=32,
        n_layer=2,
        n_head=4,
        vocab_size=V,
        n_positions=64,
        bos_token_id=V - 1,
        eos_token_id=V - 1,
        # A wider init than GPT-2's 0.02, so greedy decoding does not repeat one token.
        initializer_range=0.3,
    )
    return transformers.GPT2Config(**{**base, **overrides})


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(hf_config()).eval()
    path = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_model(hf_dir):
    return transformers.GPT2LMHeadModel.from_pretrained(hf_dir, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def ours(hf_dir):
    model, report = load_pretrained(hf_dir, task="causal_lm")
    assert not report.new_keys and not report.ignored_keys
    return model


@pytest.fixture
def padded_batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, V - 1, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding: HF's default positions (0..T-1) agree on real tokens
    mask[2, 5:] = 0
    return ids, mask


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def test_logits_hidden_states_attentions_match(ours, hf_model, padded_batch):
    ids, mask = padded_batch
    a = ours(ids, attention_mask=mask, return_hidden_states=True, return_attentions=True)
    r = hf_model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    real = mask.bool()
    assert max_diff(a.logits[real], r.logits[real]) <= ATOL
    assert len(a.hidden_states) == len(r.hidden_states) == 3
    for x, y in zip(a.hidden_states, r.hidden_states):
        assert max_diff(x[real], y[real]) <= ATOL
    for x, y in zip(a.attentions, r.attentions):  # (B, H, T, T), real query rows
        assert max_diff(x.transpose(1, 2)[real], y.transpose(1, 2)[real]) <= ATOL


@torch.no_grad()
def test_left_padded_logits_match_with_hf_generation_positions(ours, hf_model):
    ids = torch.randint(0, V - 1, (2, 9), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # what HF generate passes
    a = ours(ids, attention_mask=mask).logits
    r = hf_model(ids, attention_mask=mask, position_ids=position_ids).logits
    assert max_diff(a[mask.bool()], r[mask.bool()]) <= ATOL


@torch.no_grad()
def test_loss_matches(ours, hf_model, padded_batch):
    ids, mask = padded_batch
    labels = ids.masked_fill(mask == 0, -100)
    a = ours(ids, attention_mask=mask, labels=labels).loss
    r = hf_model(ids, attention_mask=mask, labels=labels).loss
    assert abs(a.item() - r.item()) <= ATOL


def test_greedy_generation_matches(ours, hf_model):
    ids = torch.randint(0, V - 1, (2, 6), generator=torch.Generator().manual_seed(5))
    a = generate(ours, ids, max_new_tokens=20, eos_id=-1)  # no EOS: all 20 tokens
    r = hf_model.generate(
        ids, do_sample=False, max_new_tokens=20, eos_token_id=None, pad_token_id=0
    )
    assert a.shape == (2, 26)
    assert torch.equal(a, r)
    assert len(set(a[0, 6:].tolist())) > 2  # a non-trivial continuation


def test_left_padded_greedy_generation_and_eos_match(ours, hf_model):
    ids = torch.randint(0, V - 1, (3, 7), generator=torch.Generator().manual_seed(6))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :5] = 0
    ids = ids.masked_fill(mask == 0, 0)
    # Stop on a token that row 0 emits part-way: that row is then padded, the others go on.
    eos = generate(ours, ids, attention_mask=mask, max_new_tokens=5, eos_id=-1)[0, -1].item()
    r = hf_model.generate(
        ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=20,
        eos_token_id=eos,
        pad_token_id=1,
    )
    a = generate(ours, ids, attention_mask=mask, max_new_tokens=20, eos_id=eos, pad_id=1)
    assert torch.equal(a, r)
    assert (a[0] == 1).any()


@torch.no_grad()
def test_ours_to_hf_round_trip(tmp_path, padded_batch):
    torch.manual_seed(1)
    cfg = config_from_hf(hf_config().to_dict())
    model = DecoderForCausalLM(cfg).eval()
    save_pretrained(model, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == ["GPT2LMHeadModel"] and saved["n_inner"] == 128
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids, mask = padded_batch
    real = mask.bool()
    assert (
        max_diff(
            model(ids, attention_mask=mask).logits[real], hf(ids, attention_mask=mask).logits[real]
        )
        <= ATOL
    )


@torch.no_grad()
def test_hf_to_ours_to_hf_round_trip(ours, hf_model, hf_dir, tmp_path, padded_batch):
    save_pretrained(ours, tmp_path)
    again = transformers.GPT2LMHeadModel.from_pretrained(
        tmp_path, attn_implementation="eager"
    ).eval()
    for (name, p), (name2, q) in zip(hf_model.state_dict().items(), again.state_dict().items()):
        assert name == name2 and torch.equal(p, q), name
    ids, mask = padded_batch
    assert torch.equal(
        hf_model(ids, attention_mask=mask).logits, again(ids, attention_mask=mask).logits
    )


def test_base_model_and_prefixless_checkpoints(tmp_path, hf_model, padded_batch):
    # GPT2Model (no "transformer." prefix) -> our Decoder, and an LM checkpoint -> Decoder.
    hf_model.transformer.save_pretrained(tmp_path / "base")
    base, report = load_pretrained(tmp_path / "base", task="base")
    assert isinstance(base, Decoder) and not report.ignored_keys
    ids, mask = padded_batch
    real = mask.bool()
    with torch.no_grad():
        r = hf_model.transformer(ids, attention_mask=mask).last_hidden_state
        assert max_diff(base(ids, attention_mask=mask).last_hidden_state[real], r[real]) <= ATOL
    lm, _ = load_pretrained(tmp_path / "base", task="causal_lm")  # head tied to wte: nothing new
    assert torch.equal(lm.decoder.token_embeddings.weight, hf_model.transformer.wte.weight)
    # Our base model saves as GPT2Model.
    save_pretrained(base, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["architectures"] == [
        "GPT2Model"
    ]


def test_fused_qkv_and_conv1d_layout():
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_config()).eval()
    state = dict(hf.state_dict())
    # Old checkpoints carry the mask buffers and the tied head: both accepted.
    state["transformer.h.0.attn.bias"] = torch.ones(1, 1, 64, 64)
    state["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    state["lm_head.weight"] = state["transformer.wte.weight"].clone()
    converted = state_from_hf(state, decoder_prefix="")
    c_attn = hf.transformer.h[0].attn.c_attn.weight  # Conv1D (D, 3D)
    assert torch.equal(converted["layers.0.self_attn.k_proj.weight"], c_attn[:, 32:64].T)
    assert torch.equal(
        converted["layers.0.ffn.up_proj.weight"], hf.transformer.h[0].mlp.c_fc.weight.T
    )
    assert not any("attn.bias" in k or "masked_bias" in k for k in converted)

    model = DecoderForCausalLM(config_from_hf(hf.config.to_dict()))
    from torchformer.checkpoints.gpt2 import load_into

    load_into(model, state, source="mem")
    back = state_to_hf(model)
    assert "lm_head.weight" not in back
    for key, value in hf.state_dict().items():
        if key != "lm_head.weight":
            assert torch.equal(back[key], value), key

    state["lm_head.weight"] = state["lm_head.weight"] + 1.0
    with pytest.raises(CheckpointError, match=r"lm_head\.weight differs"):
        load_into(model, state, source="mem")


def test_untied_head_round_trip(tmp_path, padded_batch):
    torch.manual_seed(2)
    hf = transformers.GPT2LMHeadModel(hf_config(tie_word_embeddings=False)).eval()
    assert not torch.equal(hf.lm_head.weight, hf.transformer.wte.weight)
    hf.save_pretrained(tmp_path / "hf")
    model, _ = load_pretrained(tmp_path / "hf", task="causal_lm")
    ids, mask = padded_batch
    real = mask.bool()
    with torch.no_grad():
        assert (
            max_diff(
                model(ids, attention_mask=mask).logits[real],
                hf(ids, attention_mask=mask).logits[real],
            )
            <= ATOL
        )
    save_pretrained(model, tmp_path / "ours")
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours")
    assert torch.equal(again.lm_head.weight, hf.lm_head.weight)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("scale_attn_by_inverse_layer_idx", True),
        ("reorder_and_upcast_attn", True),
        ("add_cross_attention", True),
        ("activation_function", "mish"),
    ],
)
def test_unsupported_options_name_the_key(key, value):
    hf = hf_config().to_dict()
    hf[key] = value
    with pytest.raises(CheckpointError, match=key):
        config_from_hf(hf, source="x/config.json")


def test_config_round_trip():
    hf = hf_config(n_inner=None, resid_pdrop=0.2, attn_pdrop=0.0, embd_pdrop=0.05).to_dict()
    cfg = config_from_hf(hf)
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff, cfg.max_len) == (32, 2, 4, 128, 64)
    assert (cfg.dropout, cfg.attn_dropout, cfg.embd_dropout) == (0.2, 0.0, 0.05)
    assert cfg.eos_id == V - 1 and cfg.pad_id is None
    assert config_from_hf(config_to_hf(cfg)) == cfg
    with pytest.raises(CheckpointError, match="model_type"):
        config_from_hf({**hf, "model_type": "bert"})
