"""Rules that reshape next-token scores before a token is chosen.

Each rule takes the sequences so far ``seqs`` (N, t) — the prompt and the tokens
generated for a decoder-only model, the start token and the generated tokens for an
encoder–decoder one — and the scores (N, V) of the next token, and returns new
scores. They follow Hugging Face's ``LogitsProcessor`` semantics so that outputs
can be compared token for token with ``transformers`` ``generate()``:

- repetition penalty (Keskar et al. 2019, CTRL): every token already in the
  sequence has its score divided by ``penalty`` when positive and multiplied by
  it when negative, so > 1 discourages repeats whatever the sign;
- no-repeat n-gram (Paulus et al. 2017): a token that would complete an n-gram
  already present in the sequence is banned;
- banned ids: tokens that must never be produced;
- minimum length: the end ids are banned until ``min_new_tokens`` tokens were generated.

Greedy decoding and sampling apply the rules to the raw logits, beam search to
the log-probabilities (as ``transformers`` does). Shapes: N rows, t tokens so
far, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Processor = Callable[[Tensor, Tensor], Tensor]


def repetition_penalty(
    seqs: Tensor, scores: Tensor, penalty: float, padding: Tensor | None = None
) -> Tensor:
    """Scores (N, V) with every token of ``seqs`` (N, t) penalised by ``penalty``.

    ``padding`` (B,) counts each input's left-padding positions, which are not
    tokens of the text and are skipped (rows: k hypotheses per input, in order).
    """
    if padding is not None:
        padding = padding.repeat_interleave(seqs.size(0) // padding.size(0))  # (N,)
        positions = torch.arange(seqs.size(1), device=seqs.device)
        # Padded positions point at a spare column past the vocabulary, dropped after.
        seqs = seqs.masked_fill(positions[None] < padding[:, None], scores.size(1))
        scores = torch.nn.functional.pad(scores, (0, 1))
    seen = scores.gather(1, seqs)  # (N, t)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    out = scores.scatter(1, seqs, seen)
    return out if padding is None else out[:, :-1]


def repeated_ngram_bans(seqs: Tensor, n: int) -> list[set[int]]:
    """For each row of ``seqs`` (N, t), the tokens that would repeat one of its n-grams.

    The last n - 1 tokens of a row are its current prefix; every earlier n-gram
    starting with that prefix bans its final token.
    """
    t = seqs.size(1)
    if t + 1 < n:
        return [set() for _ in range(seqs.size(0))]
    bans = []
    for row in seqs.tolist():
        prefix = tuple(row[t - n + 1 :])
        bans.append(
            {row[i + n - 1] for i in range(t - n + 1) if tuple(row[i : i + n - 1]) == prefix}
        )
    return bans


def ban_repeated_ngrams(seqs: Tensor, scores: Tensor, n: int) -> Tensor:
    """Scores (N, V) with the tokens that would repeat an n-gram of the row set to -inf."""
    scores = scores.clone()
    for row, banned in enumerate(repeated_ngram_bans(seqs, n)):
        if banned:
            scores[row, list(banned)] = float("-inf")
    return scores


def build_processor(
    *,
    repetition_penalty_value: float = 1.0,
    no_repeat_ngram_size: int = 0,
    banned_ids: Sequence[int] = (),
    padding: Tensor | None = None,
    min_new_tokens: int = 0,
    end_ids: Sequence[int] = (),
    start_len: int = 0,
) -> Processor | None:
    """One function applying the configured rules in Hugging Face's order, or None.

    Args:
        repetition_penalty_value: > 0; 1.0 is off.
        no_repeat_ngram_size: n > 0 bans repeating any n-gram; 0 is off.
        banned_ids: ids never to emit.
        padding: (B,) left-padding length of each prompt, left out of the
            repetition penalty (as ``transformers`` does; n-gram bans see it).
        min_new_tokens: ban ``end_ids`` while fewer tokens than this follow the
            ``start_len`` tokens the decoding started from.
    """
    if repetition_penalty_value <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty_value}")
    if no_repeat_ngram_size < 0:
        raise ValueError(f"no_repeat_ngram_size must be >= 0, got {no_repeat_ngram_size}")
    rules: list[Processor] = []
    if repetition_penalty_value != 1.0:
        rules.append(lambda s, x: repetition_penalty(s, x, repetition_penalty_value, padding))
    if no_repeat_ngram_size:
        rules.append(lambda s, x: ban_repeated_ngrams(s, x, no_repeat_ngram_size))
    if banned_ids:
        banned = sorted(set(banned_ids))

        def ban(seqs: Tensor, scores: Tensor) -> Tensor:
            scores = scores.clone()
            scores[:, banned] = float("-inf")
            return scores

        rules.append(ban)
    if min_new_tokens > 0 and end_ids:
        ends = sorted(set(end_ids))

        def too_short(seqs: Tensor, scores: Tensor) -> Tensor:
            if seqs.size(1) - start_len >= min_new_tokens:
                return scores
            scores = scores.clone()
            scores[:, ends] = float("-inf")
            return scores

        rules.append(too_short)
    if not rules:
        return None

    def process(seqs: Tensor, scores: Tensor) -> Tensor:
        for rule in rules:
            scores = rule(seqs, scores)
        return scores

    return process
