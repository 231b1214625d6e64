"""``generate``/``stream``: options, the cache switch, sampling statistics, score rules."""

from __future__ import annotations

import math

import pytest
import torch

from torchformer.generate import GenerationConfig, generate, stream
from torchformer.generate.greedy import iter_decode
from torchformer.generate.processors import (
    ban_repeated_ngrams,
    repeated_ngram_bans,
    repetition_penalty,
)
from torchformer.models.decoder import DecoderConfig, DecoderForCausalLM
from torchformer.models.seq2seq import Seq2Seq, Seq2SeqConfig
from torchformer.nn import KVCache

V = 40


@pytest.fixture(scope="module")
def lm() -> DecoderForCausalLM:
    torch.manual_seed(0)
    cfg = DecoderConfig(
        vocab_size=V,
        d_model=32,
        n_layers=2,
        n_heads=4,
        d_ff=64,
        max_len=48,
        dropout=0.0,
        attn_dropout=0.0,
        embd_dropout=0.0,
        initializer_range=0.3,
        bos_id=None,
        eos_id=V - 1,
    )
    return DecoderForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def s2s() -> Seq2Seq:
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(
        vocab_size=V,
        d_model=32,
        n_heads=4,
        d_ff=64,
        n_encoder_layers=2,
        n_decoder_layers=2,
        max_len=64,
        dropout=0.0,
    )
    model = Seq2Seq(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # peakier outputs: varied continuations
    return model


def batch(rows=3, length=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V - 1, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    if rows > 1:
        mask[1, :2] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"num_beams": 3},
        {"repetition_penalty": 1.3},
        {"num_beams": 2, "no_repeat_ngram_size": 2},
    ],
)
@pytest.mark.parametrize("kind", ["lm", "s2s"])
def test_uncached_decoding_equals_cached(lm, s2s, kind, options):
    model = lm if kind == "lm" else s2s
    ids, mask = batch()
    cached = generate(model, ids, attention_mask=mask, max_new_tokens=12, **options)
    uncached = generate(
        model, ids, attention_mask=mask, max_new_tokens=12, use_cache=False, **options
    )
    assert torch.equal(cached, uncached)
    assert cached.size(1) > ids.size(1) if kind == "lm" else cached.size(1) > 1


def test_stream_yields_the_tokens_of_generate_one_step_at_a_time(lm):
    ids, mask = batch()
    whole = generate(lm, ids, attention_mask=mask, max_new_tokens=10, eos_id=[])
    steps = list(stream(lm, ids, attention_mask=mask, max_new_tokens=10, eos_id=[]))
    assert len(steps) == 10 and all(s.shape == (3,) for s in steps)
    assert torch.equal(torch.stack(steps, 1), whole[:, ids.size(1) :])


def test_seq2seq_output_starts_with_the_decoder_start(s2s):
    ids, mask = batch()
    out = generate(s2s, ids, attention_mask=mask, max_new_tokens=6)
    assert (out[:, 0] == s2s.config.decoder_start_id).all()


def test_seeded_sampling_is_reproducible_and_seeds_differ(lm):
    ids, _ = batch(rows=2)
    a = generate(lm, ids, max_new_tokens=20, do_sample=True, seed=3, eos_id=[])
    b = generate(lm, ids, max_new_tokens=20, do_sample=True, seed=3, eos_id=[])
    c = generate(lm, ids, max_new_tokens=20, do_sample=True, seed=4, eos_id=[])
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def fixed_step(logits: torch.Tensor):
    """A model whose next-token logits are always ``logits`` (V,), for any number of rows."""

    def step(ids, cache):
        return logits.expand(ids.size(0), -1).clone()

    return step


def draws(logits, n=4000, **options) -> torch.Tensor:
    choose_cfg = GenerationConfig(do_sample=True, seed=0, **options)
    from torchformer.generate.generation import _chooser

    choose = _chooser(choose_cfg, torch.device("cpu"))
    out = next(
        iter_decode(
            fixed_step(logits),
            torch.zeros(n, 1, dtype=torch.long),
            max_new_tokens=1,
            choose=choose,
            cache=KVCache(1),
        )
    )
    return out


def test_top_k_and_top_p_never_leave_their_set_and_follow_the_renormalised_distribution():
    logits = torch.linspace(2.0, -2.0, 10)  # token 0 likeliest
    top3 = draws(logits, top_k=3)
    assert set(top3.tolist()) == {0, 1, 2}
    probs = logits[:3].softmax(0)
    freq = torch.bincount(top3, minlength=10)[:3].float() / top3.numel()
    # 4,000 draws: a frequency's standard error is <= 0.008; 5 of them is far outside chance.
    assert (freq - probs).abs().max() < 0.04
    # Nucleus: the smallest top set holding 0.8 of the mass.
    p_all = logits.softmax(0)
    need = int((p_all.cumsum(0) < 0.8).sum()) + 1
    nucleus = draws(logits, top_p=0.8)
    assert set(nucleus.tolist()) == set(range(need))


def test_temperature_sharpens_and_flattens():
    logits = torch.linspace(1.0, -1.0, 5)
    cold = (draws(logits, temperature=0.25) == 0).float().mean()
    hot = (draws(logits, temperature=4.0) == 0).float().mean()
    expected_cold = (logits / 0.25).softmax(0)[0]
    assert abs(cold - expected_cold) < 0.04
    assert hot < logits.softmax(0)[0] < cold


def test_stop_function_ends_rows_and_several_end_ids(lm):
    ids, _ = batch(rows=2)
    free = generate(lm, ids, max_new_tokens=12, eos_id=[])
    first_new = free[:, ids.size(1)].tolist()
    # Stop row 0 right after its first token: its later tokens are padding.
    stopped = generate(
        lm,
        ids,
        max_new_tokens=12,
        eos_id=[],
        pad_id=0,
        stop=lambda seqs: torch.tensor([True, False]),
    )
    assert stopped[0, ids.size(1) + 1 :].eq(0).all()
    assert torch.equal(stopped[1], free[1])
    # Either row's first token as an end id ends both rows at once.
    ended = generate(lm, ids, max_new_tokens=12, eos_id=first_new, pad_id=0)
    assert ended.size(1) == ids.size(1) + 1


def test_options_are_checked_by_name(lm):
    ids, _ = batch(rows=1)
    with pytest.raises(TypeError, match="num_beam"):
        generate(lm, ids, num_beam=2)
    for bad, name in [
        ({"temperature": 0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"num_beams": 0}, "num_beams"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ]:
        with pytest.raises(ValueError, match=name):
            generate(lm, ids, **bad)
    with pytest.raises(ValueError, match="beam sampling"):
        generate(lm, ids, do_sample=True, num_beams=2)
    with pytest.raises(ValueError, match="max_len is 48"):
        generate(lm, ids, max_new_tokens=45)
    with pytest.raises(ValueError, match="cannot stream"):
        next(stream(lm, ids, num_beams=2))
    with pytest.raises(
        TypeError, match="DecoderForCausalLM, a TransformerXLForCausalLM or a Seq2Seq"
    ):
        generate(torch.nn.Linear(2, 2), ids)


def test_repetition_penalty_divides_positive_and_multiplies_negative_scores():
    scores = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seqs = torch.tensor([[0, 1, 1]])
    out = repetition_penalty(seqs, scores, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0]]
    # Left padding (two positions) is not text: token 0 there is not penalised.
    padded = repetition_penalty(torch.tensor([[0, 0, 1]]), scores, 2.0, torch.tensor([2]))
    assert padded.tolist() == [[2.0, -4.0, 1.0, -1.0]]


def test_no_repeat_ngram_bans_the_token_completing_a_seen_ngram():
    seqs = torch.tensor([[5, 6, 7, 5, 6], [1, 2, 3, 4, 5]])
    assert repeated_ngram_bans(seqs, 3) == [{7}, set()]
    assert repeated_ngram_bans(seqs, 2) == [{7}, set()]  # after "6": "6 7" was seen
    assert repeated_ngram_bans(seqs[:, :1], 3) == [set(), set()]  # too short for any 3-gram
    out = ban_repeated_ngrams(seqs, torch.zeros(2, 10), 3)
    assert math.isinf(out[0, 7]) and out[0, 7] < 0
    assert out[1].isfinite().all() and out[0].isfinite().sum() == 9


class ByteTokenizer:
    """ids are UTF-8 bytes: a multi-byte character spans several ids."""

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_text_stream_holds_back_split_characters_and_stop_string_prefixes():
    from torchformer.tasks.lm_generator import TextStream

    data = list("café, then tea. END more".encode())
    stream_ = TextStream(ByteTokenizer(), stop=[". END"])
    pieces = [stream_.add([b]) for b in data]
    out = "".join(pieces) + stream_.flush()
    assert out == "café, then tea"
    assert "\ufffd" not in "".join(pieces)  # the 2-byte "é" came out whole
    assert stream_.done and stream_.add([65]) == ""  # nothing after the stop string
    plain = TextStream(ByteTokenizer())
    pieces = [plain.add([b]) for b in data]
    assert pieces[:5] == ["c", "a", "f", "", "é"]  # each character as soon as it is whole
    assert "".join(pieces) + plain.flush() == "café, then tea. END more"
    with pytest.raises(ValueError, match="empty"):
        TextStream(ByteTokenizer(), stop=[""])
    twice = TextStream(ByteTokenizer(), stop=["."])  # the first occurrence ends the text
    assert twice.add(list(b"one. two. three")) + twice.flush() == "one"
    # one add with a whole character and the first byte of the next: the whole one goes out
    joined = TextStream(ByteTokenizer())
    assert joined.add([ord("x"), 0xC3]) == "x" and joined.add([0xA9]) == "é"


def test_a_row_with_every_token_banned_ends_instead_of_failing(lm):
    ids, _ = batch(rows=2)
    # Tokens may not repeat at all: after the 40-token vocabulary minus the prompt, nothing is left.
    for sampling in (False, True):
        out = generate(lm, ids, max_new_tokens=40, no_repeat_ngram_size=1, eos_id=[], pad_id=0,
                       do_sample=sampling, seed=0)  # fmt: skip
        for row in out[:, ids.size(1) :].tolist():
            produced = [t for t in row if t != 0]
            assert len(produced) == len(set(produced))  # never repeated
            assert row[-1] == 0  # the row ended (padding) once every token was used up


def test_seq2seq_max_new_tokens_beyond_the_position_table_is_named(s2s):
    ids, mask = batch()
    with pytest.raises(ValueError, match="max_new_tokens=65 exceeds the model's max_len 64"):
        generate(s2s, ids, attention_mask=mask, max_new_tokens=65)


def test_the_cache_works_under_autograd(lm):
    """A cached forward that is differentiated (the buffers are not written in place)."""
    cache = KVCache(lm.config.n_layers)
    ids = torch.randint(0, V, (2, 6))
    lm.decoder(ids[:, :4], cache=cache)
    for t in (4, 5):
        out = lm.decoder(ids[:, t : t + 1], cache=cache)
    out.last_hidden_state.sum().backward()
    assert lm.decoder.token_embeddings.weight.grad is not None
    lm.zero_grad()


def _new(out, prompt_len):
    return out[:, prompt_len:].tolist()


def test_banned_ids_never_appear(lm):
    ids, _ = batch(rows=2)
    free = generate(lm, ids, max_new_tokens=12, eos_id=[])
    often = max(range(V), key=lambda t: sum(row.count(t) for row in _new(free, ids.size(1))))
    banned = generate(lm, ids, max_new_tokens=12, eos_id=[], banned_ids=[often])
    assert all(often not in row for row in _new(banned, ids.size(1)))


def test_min_new_tokens_holds_back_the_end_token(lm):
    ids, _ = batch(rows=1)
    first = generate(lm, ids, max_new_tokens=1, eos_id=[])[0, -1].item()  # greedy's next token
    ended = generate(lm, ids, max_new_tokens=6, eos_id=first, pad_id=0)
    assert _new(ended, ids.size(1))[0][0] == first  # it ends at once without the rule
    held = generate(lm, ids, max_new_tokens=6, eos_id=first, pad_id=0, min_new_tokens=3)
    assert first not in _new(held, ids.size(1))[0][:3]


def test_a_left_padded_prompt_generates_as_it_would_alone(lm):
    """The repetition penalty skips the padding (as transformers does): row 1's two pads."""
    ids, mask = batch(rows=3)
    options = {"max_new_tokens": 8, "eos_id": [], "repetition_penalty": 3.0}
    alone = generate(lm, ids[1:2, 2:], **options)
    # Pad with the token it chooses first: penalised as if seen, it would not be chosen.
    ids[1, :2] = _new(alone, 5)[0][0]
    together = generate(lm, ids, attention_mask=mask, **options)
    assert _new(together, ids.size(1))[1] == _new(alone, 5)[0]


def test_a_padded_source_translates_as_it_would_alone(s2s):
    """The source mask reaches the encoder: a right-padded source (absolute positions, so
    padding goes at the end) gives the translation of the source alone."""
    ids, _ = batch(rows=2)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    together = generate(s2s, ids, attention_mask=mask, max_new_tokens=6, eos_id=[])
    alone = generate(s2s, ids[1:2, :-2], max_new_tokens=6, eos_id=[])
    assert together[1].tolist() == alone[0].tolist()


def test_max_new_tokens_may_fill_the_position_table_exactly(lm, s2s):
    ids, _ = batch(rows=1)
    room = lm.config.max_len - ids.size(1)
    assert generate(lm, ids, max_new_tokens=room, eos_id=[]).size(1) == lm.config.max_len
    with pytest.raises(ValueError, match=rf"at most {room} new tokens"):
        generate(lm, ids, max_new_tokens=room + 1)
    out = generate(s2s, ids, max_new_tokens=s2s.config.max_len, eos_id=[])
    assert out.size(1) == s2s.config.max_len + 1  # the decoder start and max_len new tokens


def test_top_p_accepts_one_and_refuses_what_lies_outside():
    from torchformer.generate.sampling import top_k_filter, top_p_filter

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert torch.equal(top_p_filter(logits, 1.0), logits)  # all the mass: nothing dropped
    for bad in (0.0, 1.5, 2.0):
        with pytest.raises(ValueError, match=rf"^top_p must be in \(0, 1\], got {bad}$"):
            top_p_filter(logits, bad)
    assert torch.isneginf(top_k_filter(logits, 2)[0, 2:]).all()
    assert torch.equal(top_k_filter(logits, 10), logits)  # k beyond the vocabulary: all kept
