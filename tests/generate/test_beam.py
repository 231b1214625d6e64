"""Beam search invariants, and a tiny Transformer that learns to reverse sequences."""

from __future__ import annotations

import itertools

import pytest
import torch

from torchformer.generate.beam import Hypothesis, beam_search
from torchformer.generate.greedy import greedy_decode
from torchformer.models.seq2seq import Seq2Seq, preset, shift_right

PAD, EOS = 0, 1  # T5 flavour; the decoder starts with PAD
VOCAB = 16


def random_model(flavour: str, *, vocab: int = VOCAB, seed: int = 1) -> Seq2Seq:
    """A random tiny model whose head is peaked enough to end hypotheses at many lengths."""
    torch.manual_seed(seed)
    name = "t5-tiny" if flavour == "t5" else "tiny"
    config = preset(
        name,
        vocab_size=vocab,
        dropout=0.0,
        tie_output=False,
        pad_id=PAD,
        decoder_start_id=PAD,
        eos_id=EOS,
    )
    model = Seq2Seq(config).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.5 if flavour == "t5" else 1.0)
        model.lm_head.weight[EOS] *= 2.0
    return model


def padded_source(n: int = 4, length: int = 8, *, vocab: int = VOCAB, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(2, vocab, (n, length), generator=g)
    lengths = torch.tensor([length, length - 3, 2, length - 1][:n])
    src_mask = (torch.arange(length)[None] < lengths[:, None]).long()
    return src.masked_fill(src_mask == 0, PAD), src_mask


def run_beam(model, src, src_mask, **kwargs) -> list[list[Hypothesis]]:
    with torch.no_grad():
        enc = model.encode(src, src_mask=src_mask)
    start = torch.full((src.size(0), 1), model.config.decoder_start_id)
    kwargs = {"beam_size": 4, "max_new_tokens": 10, "eos_id": EOS, "pad_id": PAD, **kwargs}
    return beam_search(model.make_step(enc, src_mask), start, cache=model.new_cache(), **kwargs)


@torch.no_grad()
def reference_greedy(model, src, src_mask, max_new_tokens: int) -> list[list[int]]:
    """Argmax decoding that recomputes the whole prefix every step (no cache)."""
    enc = model.encode(src, src_mask=src_mask).last_hidden_state
    ids = torch.full((src.size(0), 1), model.config.decoder_start_id)
    for _ in range(max_new_tokens):
        next_ids = model.decode(ids, enc, src_mask=src_mask).logits[:, -1].argmax(-1)
        ids = torch.cat([ids, next_ids[:, None]], dim=1)
    eos = model.config.eos_id
    return [row[: row.index(eos) + 1] if eos in row else row for row in ids[:, 1:].tolist()]


@torch.no_grad()
def library_greedy(model, src, src_mask, max_new_tokens: int) -> list[list[int]]:
    """``generate.greedy.greedy_decode`` over the model's cached step, cut after eos."""
    enc = model.encode(src, src_mask=src_mask)
    start = torch.full((src.size(0), 1), model.config.decoder_start_id)
    ids = greedy_decode(
        model.make_step(enc, src_mask), start, max_new_tokens=max_new_tokens,
        eos_id=model.config.eos_id, pad_id=model.config.pad_id, cache=model.new_cache(),
    )  # fmt: skip
    eos = model.config.eos_id
    return [row[: row.index(eos) + 1] if eos in row else row for row in ids[:, 1:].tolist()]


@torch.no_grad()
def sequence_log_prob(model, src, src_mask, ids: list[int]) -> float:
    """Summed log-probability of generated ``ids`` given one source (1, S), by teacher forcing."""
    tgt_in = torch.tensor([[model.config.decoder_start_id, *ids[:-1]]])
    log_probs = model(src, tgt_in, src_mask=src_mask).logits.log_softmax(-1)  # (1, T, V)
    return float(log_probs[0, torch.arange(len(ids)), torch.tensor(ids)].sum())


class PrefixCache:
    """Stands in for a KV cache when the step recomputes the prefix: keeps the ids only."""

    def __init__(self) -> None:
        self.ids: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> None:
        self.ids = self.ids.index_select(0, index)


def uncached_step(model, enc: torch.Tensor, src_mask: torch.Tensor):
    B = enc.size(0)

    def step(last_ids: torch.Tensor, cache: PrefixCache) -> torch.Tensor:
        cache.ids = last_ids if cache.ids is None else torch.cat([cache.ids, last_ids], dim=1)
        k = last_ids.size(0) // B
        ctx, mask = enc.repeat_interleave(k, dim=0), src_mask.repeat_interleave(k, dim=0)
        return model.decode(cache.ids, ctx, src_mask=mask).logits[:, -1]  # (N, V)

    return step


@pytest.mark.parametrize("flavour", ["t5", "transformer"])
def test_beam_size_one_equals_greedy(flavour):
    model = random_model(flavour)
    src, src_mask = padded_source()
    greedy = reference_greedy(model, src, src_mask, max_new_tokens=10)
    assert library_greedy(model, src, src_mask, max_new_tokens=10) == greedy
    results = run_beam(model, src, src_mask, beam_size=1, length_penalty=0.0)
    assert [r[0].ids for r in results] == greedy
    assert any(ids[-1] == EOS for ids in greedy) and any(ids[-1] != EOS for ids in greedy)
    for b, r in enumerate(results):  # with length_penalty 0 the score is the plain log-probability
        expected = sequence_log_prob(model, src[b : b + 1], src_mask[b : b + 1], r[0].ids)
        assert r[0].score == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("flavour", ["t5", "transformer"])
def test_result_does_not_depend_on_the_rest_of_the_batch(flavour):
    model = random_model(flavour)
    src, src_mask = padded_source()
    batched = run_beam(model, src, src_mask, n_best=3)
    for b in range(src.size(0)):
        length = int(src_mask[b].sum())
        alone = run_beam(model, src[b : b + 1, :length], src_mask[b : b + 1, :length], n_best=3)[0]
        assert [h.ids for h in alone] == [h.ids for h in batched[b]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in batched[b]], abs=1e-5)


def test_cached_decoding_equals_uncached():
    model = random_model("t5")
    src, src_mask = padded_source()
    cached = run_beam(model, src, src_mask, beam_size=3, n_best=3)
    with torch.no_grad():
        enc = model.encode(src, src_mask=src_mask).last_hidden_state
    start = torch.full((src.size(0), 1), PAD)
    uncached = beam_search(
        uncached_step(model, enc, src_mask), start, cache=PrefixCache(),
        beam_size=3, max_new_tokens=10, eos_id=EOS, pad_id=PAD, n_best=3,
    )  # fmt: skip
    for a, b in zip(cached, uncached, strict=True):
        assert [h.ids for h in a] == [h.ids for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_wide_enough_beam_is_exhaustive_search(length_penalty):
    """With beam >= V^L every sequence is kept: the ranking equals brute force."""
    vocab, max_new = 5, 3
    model = random_model("t5", vocab=vocab, seed=3)
    src, src_mask = padded_source(n=2, vocab=vocab)
    results = run_beam(
        model, src, src_mask, beam_size=vocab**max_new, max_new_tokens=max_new,
        length_penalty=length_penalty, early_stopping=False, n_best=vocab**max_new,
    )  # fmt: skip
    non_eos = [t for t in range(vocab) if t != EOS]
    for b in range(src.size(0)):
        # Every output beam search can produce: ended by eos before the limit, or cut at it.
        candidates = [
            [*p, EOS] for n in range(max_new - 1) for p in itertools.product(non_eos, repeat=n)
        ]
        candidates += [
            [*p, t] for p in itertools.product(non_eos, repeat=max_new - 1) for t in range(vocab)
        ]
        scored = sorted(
            (
                sequence_log_prob(model, src[b : b + 1], src_mask[b : b + 1], c)
                / len(c) ** length_penalty,
                c,
            )
            for c in candidates
        )[::-1]
        assert len(results[b]) == len(candidates)
        assert results[b][0].ids == scored[0][1]
        assert [h.score for h in results[b]] == pytest.approx([s for s, _ in scored], abs=1e-4)


def test_n_best_is_sorted_and_scores_are_length_normalised_log_probs():
    model = random_model("transformer")
    src, src_mask = padded_source()
    results = run_beam(model, src, src_mask, beam_size=4, n_best=4, length_penalty=0.7)
    for b, hyps in enumerate(results):
        assert len(hyps) == 4
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        assert len({tuple(h.ids) for h in hyps}) == 4
        for h in hyps:
            log_prob = sequence_log_prob(model, src[b : b + 1], src_mask[b : b + 1], h.ids)
            assert h.score == pytest.approx(log_prob / len(h.ids) ** 0.7, abs=1e-4)
            assert len(h.ids) <= 10 and (h.ids[-1] == EOS or len(h.ids) == 10)
            assert EOS not in h.ids[:-1]


class ScriptedModel:
    """A confident model of one input: after the prefix ``answer[:t]`` it gives ``answer[t]``
    probability ~0.99; off that path every token, eos included, is equally likely. It is
    its own cache: ``select`` reorders the rows' prefixes, the step appends the fed token."""

    def __init__(self, answer: list[int], vocab: int = 8):
        self.answer, self.vocab, self.prefixes = answer, vocab, None

    def select(self, rows):
        self.prefixes = [list(self.prefixes[r]) for r in rows.tolist()]

    def step(self, last_ids, cache):
        if self.prefixes is None:  # the first call is fed the start token
            self.prefixes = [[] for _ in range(last_ids.size(0))]
        else:
            self.prefixes = [[*p, tok] for p, tok in zip(self.prefixes, last_ids[:, -1].tolist())]
        logits = torch.zeros(len(self.prefixes), self.vocab)
        for row, prefix in enumerate(self.prefixes):
            t = len(prefix)
            if t < len(self.answer) and prefix == self.answer[:t]:
                logits[row, self.answer[t]] = 7.0
        return logits


def scripted_beam(answer, **kwargs):
    model = ScriptedModel(answer)
    return beam_search(model.step, torch.full((1, 1), PAD), cache=model, beam_size=3,
                       max_new_tokens=12, eos_id=EOS, pad_id=PAD, n_best=3, **kwargs)[0]  # fmt: skip


def test_heuristic_stopping_keeps_decoding_while_the_best_beam_is_ahead():
    # The first step's eos (one start beam: it is among the top 3) and the poor beams'
    # eos continuations fill the pool of 3 by step 4; the confident answer ends at step 6.
    answer = [5, 6, 7, 4, 3, EOS]
    early = scripted_beam(answer, early_stopping=True)
    assert early[0].ids != answer and early[0].score < -1.0  # stopped before it finished
    for mode in ("heuristic", False, "never"):
        best = scripted_beam(answer, early_stopping=mode)[0]
        assert best.ids == answer and best.score > -0.01, mode


def test_exact_stopping_is_never_worse_than_early_stopping():
    model = random_model("t5", seed=5)
    src, src_mask = padded_source()
    early = run_beam(model, src, src_mask, beam_size=2, length_penalty=1.5, early_stopping=True)
    heuristic = run_beam(model, src, src_mask, beam_size=2, length_penalty=1.5)
    exact = run_beam(model, src, src_mask, beam_size=2, length_penalty=1.5, early_stopping=False)
    for a, h, b in zip(early, heuristic, exact, strict=True):
        assert b[0].score >= h[0].score - 1e-6 and h[0].score >= a[0].score - 1e-6


def test_bad_arguments_are_errors():
    model = random_model("t5")
    src, src_mask = padded_source()
    with pytest.raises(ValueError, match="n_best"):
        run_beam(model, src, src_mask, beam_size=2, n_best=3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        run_beam(model, src, src_mask, max_new_tokens=0)
    with pytest.raises(ValueError, match='early_stopping must be True, "heuristic"'):
        run_beam(model, src, src_mask, early_stopping="sometimes")


# --- end to end -------------------------------------------------------------------------

BOS, END = 1, 2  # the reversal task's own specials: pad 0, bos 1, eos 2, symbols 3..10


def reversal_batch(n: int, g: torch.Generator):
    """Random sequences of 2..5 symbols (source) and their reversal + eos (target), padded."""
    lengths = torch.randint(2, 6, (n,), generator=g)
    symbols = torch.randint(3, 11, (n, 5), generator=g)
    positions = torch.arange(5)[None]
    src_mask = (positions < lengths[:, None]).long()
    src = symbols.masked_fill(src_mask == 0, 0)
    reversed_index = (lengths[:, None] - 1 - positions).clamp(min=0)
    tgt = torch.zeros(n, 6, dtype=torch.long)
    tgt[:, :5] = symbols.gather(1, reversed_index).masked_fill(src_mask == 0, 0)
    tgt.scatter_(1, lengths[:, None], END)
    return src, src_mask, tgt


def test_tiny_transformer_learns_to_reverse_and_decodes_exactly():
    torch.manual_seed(0)
    config = preset(
        "tiny", vocab_size=11, dropout=0.0, pad_id=0, decoder_start_id=BOS, eos_id=END, max_len=16
    )
    model = Seq2Seq(config)  # the paper's post-norm flavour
    steps = 300
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    # Short warm-up, then linear decay to 0: the last steps settle the model.
    warmup_then_decay = lambda s: min(1.0, (s + 1) / 30) * (1 - s / steps)  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, warmup_then_decay)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        src, src_mask, tgt = reversal_batch(64, g)
        tgt_in = shift_right(tgt, start_id=BOS, pad_id=0)
        loss = model(src, tgt_in, src_mask=src_mask, labels=tgt).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    assert loss.item() < 0.02
    model.eval()
    src, src_mask, tgt = reversal_batch(32, torch.Generator().manual_seed(99))  # unseen
    expected = [row[: row.index(END) + 1] for row in tgt.tolist()]
    with torch.no_grad():
        enc = model.encode(src, src_mask=src_mask)
    for beam_size in (1, 3):
        results = beam_search(
            model.make_step(enc, src_mask), torch.full((32, 1), BOS), cache=model.new_cache(),
            beam_size=beam_size, max_new_tokens=8, eos_id=END, pad_id=0,
        )  # fmt: skip
        assert [r[0].ids for r in results] == expected
    assert reference_greedy(model, src, src_mask, max_new_tokens=8) == expected
    assert library_greedy(model, src, src_mask, max_new_tokens=8) == expected


def _pool(*scores):
    from torchformer.generate.beam import Hypothesis

    fields = Hypothesis._fields
    return [Hypothesis(**{f: (s if f == "score" else None) for f in fields}) for s in scores]


def test_when_an_inputs_finished_hypotheses_are_final():
    """transformers' rules, worked by hand: a pool of 2 whose worst normalised score is -1.0."""
    from torchformer.generate.beam import _is_done

    pool = _pool(-0.5, -1.0)
    rules = {"t": 4, "beam_size": 2, "max_new_tokens": 10, "length_penalty": 1.0}
    assert not _is_done(pool[:1], -100.0, **rules, early_stopping=True)  # pool not full
    assert _is_done(pool, 0.0, **rules, early_stopping=True)
    # heuristic: the best live sum normalised by the current length t: -4/4 = -1.0 <= -1.0
    assert _is_done(pool, -4.0, **rules, early_stopping="heuristic")
    assert not _is_done(pool, -3.9, **rules, early_stopping="heuristic")  # -0.975 > -1.0
    squared = {**rules, "length_penalty": 2.0}  # -16 / 4**2 = -1.0
    assert _is_done(pool, -16.0, **squared, early_stopping="heuristic")
    assert not _is_done(pool, -15.9, **squared, early_stopping="heuristic")
    # exact (False): the best it could still reach is over the longest length, 10 ** alpha
    assert _is_done(pool, -10.0, **rules, early_stopping=False)
    assert not _is_done(pool, -9.9, **rules, early_stopping=False)
    assert _is_done(pool, -100.0, **squared, early_stopping=False)  # -100 / 10**2 = -1.0
    assert not _is_done(pool, -99.0, **squared, early_stopping=False)
    # a negative alpha favours short outputs: the best denominator is the next length, (t+1)**alpha
    short = {**rules, "length_penalty": -1.0}  # max(5**-1, 10**-1) = 0.2: -0.2 / 0.2 = -1.0
    assert _is_done(pool, -0.2, **short, early_stopping=False)
    assert not _is_done(pool, -0.19, **short, early_stopping=False)
