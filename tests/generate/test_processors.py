"""build_processor's rules one by one, and GenerationConfig's checks, named field by field."""

import pytest
import torch

from torchformer.generate.generation import GenerationConfig
from torchformer.generate.processors import build_processor, repetition_penalty

SEQS = torch.tensor([[5, 1, 2], [0, 3, 3]])  # (2, 3); row 1 starts with one pad (id 0)
SCORES = torch.tensor([[1.0, -1.0, 2.0, 0.5, 4.0, 3.0], [1.0, -1.0, 2.0, 0.5, 4.0, 3.0]])


def test_no_rule_no_processor():
    assert build_processor() is None
    assert build_processor(repetition_penalty_value=1.0, min_new_tokens=3) is None  # no end ids


def test_the_repetition_penalty_skips_left_padding():
    process = build_processor(repetition_penalty_value=2.0, padding=torch.tensor([0, 1]))
    got = process(SEQS, SCORES)
    expected = repetition_penalty(SEQS, SCORES, 2.0, torch.tensor([0, 1]))
    assert torch.equal(got, expected)
    assert got[1, 0] == 1.0  # the pad position's id 0 is not a token of the text
    assert got[0, 1] == -2.0 and got[0, 2] == 1.0 and got[0, 5] == 1.5  # seen: 1, 2, 5
    assert torch.equal(got[0, [0, 3, 4]], SCORES[0, [0, 3, 4]])


def test_banned_ids_never_win_and_the_input_is_left_alone():
    before = SCORES.clone()
    got = build_processor(banned_ids=[4, 4, 2])(SEQS, SCORES)
    assert torch.equal(SCORES, before)
    assert torch.isneginf(got[:, [2, 4]]).all() and torch.equal(
        got[:, [0, 1, 3, 5]], SCORES[:, [0, 1, 3, 5]]
    )


def test_end_ids_are_banned_until_min_new_tokens_follow_the_start():
    process = build_processor(min_new_tokens=2, end_ids=[3, 3], start_len=2)
    one_new = process(SEQS, SCORES)  # 3 tokens, 2 of them the start: 1 new
    assert torch.isneginf(one_new[:, 3]).all() and torch.equal(one_new[:, :3], SCORES[:, :3])
    two_new = process(torch.cat([SEQS, SEQS[:, :1]], 1), SCORES)  # 2 new: allowed
    assert torch.equal(two_new, SCORES)


def test_repeated_ngrams_are_banned_in_order_with_the_other_rules():
    seqs = torch.tensor([[1, 2, 1]])  # the bigram (1, 2) seen: after 1, 2 is banned
    got = build_processor(no_repeat_ngram_size=2, banned_ids=[5])(seqs, SCORES[:1])
    assert torch.isneginf(got[0, [2, 5]]).all() and torch.isfinite(got[0, [0, 1, 3, 4]]).all()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"repetition_penalty_value": 0.0}, "repetition_penalty must be > 0, got 0.0"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size must be >= 0, got -1"),
    ],
)
def test_bad_rules_are_named(options, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        build_processor(**options)


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("max_new_tokens", -1, ">= 0"),
        ("min_new_tokens", -1, ">= 0"),
        ("temperature", 0.0, "> 0 (use do_sample=False for greedy)"),
        ("top_k", 0, "> 0"),
        ("top_p", 0.0, "in (0, 1]"),
        ("top_p", 1.5, "in (0, 1]"),
        ("num_beams", 0, ">= 1"),
        ("repetition_penalty", 0.0, "> 0"),
        ("no_repeat_ngram_size", -1, ">= 0"),
    ],
)
def test_generation_options_name_the_field_and_its_rule(field, value, rule):
    with pytest.raises(ValueError) as e:
        GenerationConfig(**{field: value})
    assert str(e.value) == f"generation option {field} must be {rule}, got {value!r}"


def test_edge_values_of_the_generation_options_are_accepted():
    config = GenerationConfig(max_new_tokens=0, min_new_tokens=0, top_p=1.0, top_k=1,
                              num_beams=1, no_repeat_ngram_size=0)  # fmt: skip
    assert config.top_p == 1.0 and config.max_new_tokens == 0
    with pytest.raises(
        ValueError, match=r"^do_sample with num_beams > 1 \(beam sampling\) is not supported$"
    ):
        GenerationConfig(do_sample=True, num_beams=2)
