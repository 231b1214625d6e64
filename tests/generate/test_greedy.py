"""Greedy and sampled decoding: the step-function loop, EOS handling, ``generate``, sampling filters."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from torchformer.generate import generate
from torchformer.generate.greedy import decode_loop, greedy_decode, sample_decode
from torchformer.generate.sampling import sample_next, top_k_filter, top_p_filter
from torchformer.models.decoder import DecoderConfig, DecoderForCausalLM, make_step
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
        d_ff=128,
        max_len=64,
        dropout=0.0,
        attn_dropout=0.0,
        embd_dropout=0.0,
        initializer_range=0.3,
        bos_id=None,
        eos_id=None,
    )
    return DecoderForCausalLM(cfg).eval()


def scripted_step(table: list[list[int]], calls: list[tuple[int, ...]]):
    """A step that emits table[row][n] at its n-th call and records the input shapes."""

    def step(ids, cache):
        calls.append(tuple(ids.shape))
        n = len(calls) - 1
        logits = torch.zeros(len(table), V)
        for row, tokens in enumerate(table):
            logits[row, tokens[min(n, len(tokens) - 1)]] = 1.0
        return logits

    return step


def test_greedy_decode_feeds_the_prompt_then_single_tokens():
    calls: list[tuple[int, ...]] = []
    step = scripted_step([[5, 6, 7, 8], [9, 10, 11, 12]], calls)
    prompt = torch.tensor([[1, 2, 3], [4, 4, 4]])
    out = greedy_decode(step, prompt, max_new_tokens=4, cache=KVCache(1))
    assert out.tolist() == [[1, 2, 3, 5, 6, 7, 8], [4, 4, 4, 9, 10, 11, 12]]
    assert calls == [(2, 3), (2, 1), (2, 1), (2, 1)]  # no wasted step after the last token


def test_eos_pads_finished_rows_and_stops_when_all_finished():
    calls: list[tuple[int, ...]] = []
    # Row 0 ends at its 2nd token; row 1 at its 4th; then the loop stops before max_new_tokens.
    step = scripted_step([[5, 2, 7, 7, 7, 7], [9, 10, 11, 2, 3, 3]], calls)
    out = greedy_decode(
        step, torch.tensor([[1], [1]]), max_new_tokens=6, eos_id=2, pad_id=0, cache=KVCache(1)
    )
    assert out.tolist() == [[1, 5, 2, 0, 0], [1, 9, 10, 11, 2]]
    assert len(calls) == 4


def test_zero_new_tokens_returns_the_prompt():
    prompt = torch.tensor([[3, 4]])
    calls: list[tuple[int, ...]] = []
    assert torch.equal(
        greedy_decode(scripted_step([[1]], calls), prompt, max_new_tokens=0, cache=KVCache(1)),
        prompt,
    )
    assert calls == []


@torch.no_grad()
def test_generate_with_cache_equals_recomputing_everything(lm):
    prompt = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(1))
    out = generate(lm, prompt, max_new_tokens=12)
    ids = prompt
    for _ in range(12):  # no cache: the whole sequence every step
        next_ids = lm(ids).logits[:, -1].argmax(-1)
        ids = torch.cat([ids, next_ids[:, None]], dim=1)
    assert torch.equal(out, ids)
    assert len(set(out[0, 5:].tolist())) > 2  # a non-trivial continuation


@torch.no_grad()
def test_left_padded_batch_equals_each_prompt_alone(lm):
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, V, (n,), generator=g) for n in (6, 3, 1)]
    width = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.full((width - len(p),), 7), p]) for p in prompts])
    mask = torch.stack(
        [torch.cat([torch.zeros(width - len(p)), torch.ones(len(p))]) for p in prompts]
    ).long()
    batched = generate(lm, ids, attention_mask=mask, max_new_tokens=10)
    for row, p in enumerate(prompts):
        alone = generate(lm, p[None], max_new_tokens=10)
        assert torch.equal(batched[row, width:], alone[0, len(p) :]), row


@torch.no_grad()
def test_generate_stops_at_the_model_eos(lm):
    prompt = torch.tensor([[1, 2, 3]])
    free = generate(lm, prompt, max_new_tokens=8)
    eos = free[0, 5].item()  # the third new token
    with_eos = DecoderForCausalLM(replace(lm.config, eos_id=eos)).eval()
    with_eos.load_state_dict(lm.state_dict())
    stopped = generate(with_eos, prompt, max_new_tokens=8)  # eos_id taken from the config
    first = (free[0, 3:] == eos).nonzero()[0].item()
    assert stopped.shape[1] == 3 + first + 1  # one row: stops right after its EOS
    assert torch.equal(stopped[0], free[0, : 3 + first + 1])


def test_make_step_expands_the_mask_for_beams(lm):
    prompt = torch.randint(0, V, (2, 4), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(prompt)
    mask[1, 0] = 0
    step = make_step(lm, mask)
    with torch.no_grad():
        logits = step(prompt.repeat_interleave(3, dim=0), KVCache(2))  # 3 beams per prompt
        ref = lm(prompt, attention_mask=mask).logits[:, -1]
    torch.testing.assert_close(logits, ref.repeat_interleave(3, dim=0), rtol=0, atol=1e-5)


# --- sampling -----------------------------------------------------------------------------


def test_top_k_filter_keeps_k_largest():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0, 2.5]])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.tolist() == [[False, True, False, False, True]]
    assert torch.isfinite(top_k_filter(logits, 50)).all()
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(logits, 0)


def test_top_p_filter_keeps_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(top_p_filter(logits, 1e-6)).sum() == 1  # the top token always stays
    shuffled = logits[:, [2, 0, 3, 1]]  # the filter works in vocabulary order, not sorted order
    assert torch.isfinite(top_p_filter(shuffled, 0.7)).tolist() == [[False, True, False, True]]
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(logits, 0.0)


def test_sample_next_follows_the_distribution_and_the_filters():
    logits = torch.tensor([[0.6, 0.3, 0.1, 1e-9]]).log().expand(20000, 4)
    g = torch.Generator().manual_seed(0)
    freq = torch.bincount(sample_next(logits, generator=g), minlength=4) / 20000
    torch.testing.assert_close(freq, torch.tensor([0.6, 0.3, 0.1, 0.0]), rtol=0, atol=0.02)
    freq_k = torch.bincount(sample_next(logits, top_k=2, generator=g), minlength=4) / 20000
    torch.testing.assert_close(freq_k, torch.tensor([2 / 3, 1 / 3, 0.0, 0.0]), rtol=0, atol=0.02)
    cold = sample_next(logits, temperature=0.05, generator=g)
    assert (cold == 0).float().mean() > 0.99
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, temperature=0.0)


@torch.no_grad()
def test_sampling_is_deterministic_under_a_seed(lm):
    prompt = torch.randint(0, V, (3, 4), generator=torch.Generator().manual_seed(4))
    a = generate(lm, prompt, max_new_tokens=15, do_sample=True, seed=11)
    b = generate(lm, prompt, max_new_tokens=15, do_sample=True, seed=11)
    c = generate(lm, prompt, max_new_tokens=15, do_sample=True, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    greedy = generate(lm, prompt, max_new_tokens=15)
    assert not torch.equal(a, greedy)
    assert torch.equal(
        generate(lm, prompt, max_new_tokens=15, do_sample=True, top_k=1, seed=5), greedy
    )
    assert torch.equal(
        generate(lm, prompt, max_new_tokens=15, do_sample=True, top_p=1e-6, seed=5), greedy
    )


def test_sample_decode_and_decode_loop_share_eos_handling():
    calls: list[tuple[int, ...]] = []
    step = scripted_step([[3, 2, 5], [4, 4, 2]], calls)
    # A near-one-hot distribution: sampling picks the scripted token.
    sharp = lambda ids, cache: step(ids, cache) * 100.0  # noqa: E731
    out = sample_decode(
        sharp,
        torch.tensor([[1], [1]]),
        max_new_tokens=5,
        eos_id=2,
        pad_id=9,
        cache=KVCache(1),
        generator=torch.Generator().manual_seed(0),
    )
    assert out.tolist() == [[1, 3, 2, 9], [1, 4, 4, 2]]
    out = decode_loop(
        step,
        torch.tensor([[1], [1]]),
        max_new_tokens=2,
        choose=lambda x: x.argmin(-1),
        cache=KVCache(1),
    )
    assert out[:, 1:].tolist() == [[0, 0], [0, 0]]  # the custom choice (argmin) was used


class _Scripted:
    """A step giving every row the same logits (two near-equal favourites), checking the
    cache it is handed is the one decoding was given."""

    def __init__(self, cache, logits):
        self.cache, self.logits = cache, logits

    def __call__(self, ids, cache):
        assert cache is self.cache
        return self.logits.expand(ids.size(0), -1)


def test_sample_decode_passes_each_sampling_option_through():
    from torchformer.generate.greedy import sample_decode
    from torchformer.nn import KVCache

    logits = torch.tensor([3.0, 2.9, 0.0, -1.0])
    first = torch.zeros(4, 1, dtype=torch.long)

    def run(seed=0, **options):
        cache = KVCache(1)
        gen = torch.Generator().manual_seed(seed)
        out = sample_decode(_Scripted(cache, logits), first, max_new_tokens=8, cache=cache,
                            generator=gen, **options)  # fmt: skip
        return out[:, 1:]

    free = run()
    assert set(free.flatten().tolist()) >= {0, 1}  # both favourites drawn
    for narrowing in ({"top_k": 1}, {"top_p": 0.01}, {"temperature": 1e-3}):
        assert (run(**narrowing) == 0).all(), narrowing
    torch.manual_seed(123)
    again = run()
    assert torch.equal(free, again)  # the generator, not the global seed, decides
    assert not torch.equal(free, run(seed=1))
