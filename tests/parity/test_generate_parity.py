"""``torchformer.generate`` against ``transformers`` ``generate()`` (tier 2).

Tiny random GPT-2 and T5 models are saved by ``transformers`` and loaded through the
production path; greedy and beam outputs, with and without the score rules
(repetition penalty, no-repeat n-gram), left-padded batches included, must be
the same token for token.
"""

from __future__ import annotations

import pytest
import torch

from torchformer.checkpoints import load_pretrained
from torchformer.generate import generate

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.parity

V = 61
EOS = V - 1


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    torch.manual_seed(1)
    config = transformers.GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=4,
        vocab_size=V,
        n_positions=96,
        bos_token_id=EOS,
        eos_token_id=EOS,
        initializer_range=0.3,
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # a likelier end token, so that some beams and rows end early
        hf.transformer.wte.weight[EOS] *= 2.0
    path = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(path)
    ours, _ = load_pretrained(path, task="causal_lm")
    return ours.eval(), hf


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, V - 1, (4, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    mask[3, :6] = 0
    return ids.masked_fill(mask == 0, 1), mask


def hf_generate(hf, ids, mask, **options):
    out = hf.generate(
        ids, attention_mask=mask, pad_token_id=1, eos_token_id=EOS, max_new_tokens=24, **options
    )
    return out


RULES = [
    {},
    {"repetition_penalty": 1.7},
    {"no_repeat_ngram_size": 2},
    {"repetition_penalty": 0.7, "no_repeat_ngram_size": 3},
    {"min_new_tokens": 15},
]


@pytest.mark.parametrize("rules", RULES)
def test_gpt2_greedy_matches(gpt2_pair, prompts, rules):
    ours, hf = gpt2_pair
    ids, mask = prompts
    ref = hf_generate(hf, ids, mask, do_sample=False, **rules)
    out = generate(ours, ids, attention_mask=mask, max_new_tokens=24, eos_id=EOS, pad_id=1, **rules)
    assert out.tolist() == ref.tolist()


@pytest.mark.parametrize("rules", RULES)
@pytest.mark.parametrize("length_penalty", [1.0, 0.5])
def test_gpt2_beam_matches(gpt2_pair, prompts, rules, length_penalty):
    ours, hf = gpt2_pair
    ids, mask = prompts
    ref = hf_generate(
        hf,
        ids,
        mask,
        do_sample=False,
        num_beams=3,
        early_stopping=False,
        length_penalty=length_penalty,
        **rules,
    )
    out = generate(
        ours,
        ids,
        attention_mask=mask,
        max_new_tokens=24,
        num_beams=3,
        eos_id=EOS,
        pad_id=1,
        length_penalty=length_penalty,
        **rules,
    )
    assert out.shape == ref.shape
    assert out.tolist() == ref.tolist()


def test_the_rules_change_the_output(gpt2_pair, prompts):
    """The parity above is not vacuous: each rule changes what is generated."""
    ours, _ = gpt2_pair
    ids, mask = prompts
    plain = generate(ours, ids, attention_mask=mask, max_new_tokens=24, eos_id=[], pad_id=1)
    for rules in RULES[1:4]:
        ruled = generate(
            ours, ids, attention_mask=mask, max_new_tokens=24, eos_id=[], pad_id=1, **rules
        )
        assert not torch.equal(plain, ruled), rules
    beams = generate(
        ours, ids, attention_mask=mask, max_new_tokens=24, num_beams=3, eos_id=EOS, pad_id=1
    )
    greedy = generate(ours, ids, attention_mask=mask, max_new_tokens=24, eos_id=EOS, pad_id=1)
    assert beams.tolist() != greedy.tolist()
    assert (greedy[:, ids.size(1) :] == EOS).any()  # some rows end early
    longer = generate(ours, ids, attention_mask=mask, max_new_tokens=24, eos_id=EOS, pad_id=1,
                      min_new_tokens=15)  # fmt: skip
    assert not (longer[:, ids.size(1) : ids.size(1) + 15] == EOS).any()


@pytest.fixture(scope="module")
def t5_pair(tmp_path_factory):
    torch.manual_seed(2)
    config = transformers.T5Config(
        vocab_size=V,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        initializer_factor=4.0,
    )
    hf = transformers.T5ForConditionalGeneration(config).eval()
    path = tmp_path_factory.mktemp("t5")
    hf.save_pretrained(path)
    ours, _ = load_pretrained(path, task="seq2seq_lm")
    return ours.eval(), hf


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"num_beams": 3},
        {"no_repeat_ngram_size": 2},
        {"num_beams": 2, "repetition_penalty": 1.5},
    ],
)
def test_t5_generate_matches(t5_pair, options):
    ours, hf = t5_pair
    g = torch.Generator().manual_seed(3)
    src = torch.randint(2, V, (3, 8), generator=g)
    mask = torch.ones_like(src)
    mask[1, 5:] = 0
    src = src.masked_fill(mask == 0, 0)
    ref = hf.generate(
        src,
        attention_mask=mask,
        max_new_tokens=16,
        do_sample=False,
        early_stopping=False,
        **options,
    )
    out = generate(ours, src, attention_mask=mask, max_new_tokens=16, **options)
    # HF pads a finished beam hypothesis with eos when pad_token_id is 0 (falsy).
    assert out.shape == ref.shape
    for a, r in zip(out.tolist(), ref.tolist(), strict=True):
        n = a.index(1, 1) + 1 if 1 in a[1:] else len(a)
        assert a[:n] == r[:n]
        assert set(r[n:]) <= {0, 1}
