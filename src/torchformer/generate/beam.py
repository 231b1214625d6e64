"""Batched beam search over a step function (ids only, no tokenizer).

Beam search keeps, for every input, the ``beam_size`` most probable partial
outputs ("beams") and extends each by every vocabulary token at every step
(Sutskever et al. 2014; Wu et al. 2016 for the length penalty). All beams of
all inputs are rows of one tensor (B * beam rows, beams of input b at rows
b*beam .. b*beam+beam-1); after each step the model's cache is reordered with
``cache.select(rows)`` so that every row keeps the keys/values of its own
prefix.

The step function contract (shared with ``generate.greedy``):
``step(last_ids (N, T), cache) -> logits (N, V)`` runs the model on the newest
token(s) of N rows, updates ``cache`` in place and returns the next-token
logits. Here it is first called with the B start rows ``first_ids`` (B, T0),
then with B * beam rows of one token each.

Scoring follows Hugging Face ``generate`` so that results can be checked
against it token for token:

- a hypothesis' score is its summed token log-probability divided by
  ``length ** length_penalty``, ``length`` = generated tokens including the
  final eos (not the start tokens). ``length_penalty`` > 0 favours longer
  outputs, 0 disables normalisation. GNMT's ((5 + len) / 6) ** alpha is a
  flatter curve at short lengths (the same alpha is not comparable between the
  two); we use HF's so that alpha means what it means there.
- each step looks at the 2 * beam best continuations over all beams of an
  input; those among the top ``beam`` that end in eos become finished
  hypotheses, the best ``beam`` that do not end in eos continue.
- at ``max_new_tokens`` the top ``beam`` continuations are finished as they are.
- an input is done when it has ``beam`` finished hypotheses and
  (``early_stopping=True``) at once; (``"heuristic"``) once the best live beam,
  scored as if it ended at the current length, no longer beats the worst of
  them — HF's ``early_stopping=False``, its default; or (``False``, also
  spelled ``"never"``) once no live beam could still beat the worst of them at
  any reachable length — the exact bound, HF's ``early_stopping="never"``.

  ``True`` can end an input before its best beam has finished: when the other
  beams are poor, their eos continuations fill the pool within a few steps
  (the first step's, from a single start beam, is among the top ``beam``) and
  a well-trained model's correct, longer hypothesis is never scored.
  ``"heuristic"`` keeps decoding while that beam is ahead, at little cost.

Shapes: B inputs, K beam size, N = B * K rows, V vocabulary, t generated length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Hypothesis(NamedTuple):
    """One finished output: generated ids (eos included when it ended) and its score."""

    ids: list[int]
    score: float


StepFn = Callable[[Tensor, Any], Tensor]


def check_early_stopping(value: bool | str) -> bool | str:
    """``value`` as True, ``"heuristic"`` or False (``"never"`` is False).

    Raises:
        ValueError: anything else (HF's False is ``"heuristic"`` here: say which).
    """
    if value == "never":
        return False
    if value is True or value is False or value == "heuristic":
        return value
    raise ValueError(f'early_stopping must be True, "heuristic" or False ("never"), got {value!r}')


def _collect_finished(
    pools: list[list[Hypothesis]],
    done: list[bool],
    finishing: Tensor,
    tokens: Tensor,
    cand_rows: Tensor,
    cand_tokens: Tensor,
    cand_scores: Tensor,
    *,
    t: int,
    beam_size: int,
    length_penalty: float,
) -> None:
    """Move the finishing candidates (B, K) of inputs not yet done into their pools.

    Each pool keeps its ``beam_size`` best hypotheses, best first (a stable
    sort: on equal scores the earlier hypothesis stays ahead).
    """
    rows, toks, scores = cand_rows.tolist(), cand_tokens.tolist(), cand_scores.tolist()
    for b, flags in enumerate(finishing.tolist()):
        if done[b] or not any(flags):
            continue
        new = [
            Hypothesis([*tokens[rows[b][j]].tolist(), toks[b][j]], scores[b][j] / t**length_penalty)
            for j, flag in enumerate(flags)
            if flag
        ]
        pools[b] = sorted(pools[b] + new, key=lambda h: -h.score)[:beam_size]


def _is_done(
    pool: list[Hypothesis],
    best_live: float,
    *,
    t: int,
    beam_size: int,
    max_new_tokens: int,
    length_penalty: float,
    early_stopping: bool | str,
) -> bool:
    """Whether an input's finished hypotheses are final after step t."""
    if len(pool) < beam_size:
        return False
    if early_stopping is True:
        return True
    if early_stopping == "heuristic":
        return best_live / t**length_penalty <= pool[-1].score
    # Log-probabilities are <= 0, so a live beam's sum can only fall; its best
    # normalised score is at the length (t + 1 .. max) with the largest length ** alpha.
    best_denominator = max((t + 1) ** length_penalty, max_new_tokens**length_penalty)
    return best_live / best_denominator <= pool[-1].score


@torch.no_grad()
def beam_search(
    step: StepFn,
    first_ids: Tensor,
    *,
    cache: Any,
    beam_size: int = 4,
    max_new_tokens: int = 50,
    eos_id: int | Sequence[int] | None,
    pad_id: int,
    length_penalty: float = 1.0,
    early_stopping: bool | str = "heuristic",
    n_best: int = 1,
    process: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> list[list[Hypothesis]]:
    """Beam search for a batch of inputs.

    Args:
        step: ``step(ids (N, T), cache) -> logits (N, V)`` (see the module docstring).
        first_ids: (B, T0) what the first step is fed: the decoder start token
            (B, 1) for a seq2seq model, the prompt for a decoder-only one.
        cache: the model's cache (anything with ``select(index)``), empty.
        beam_size: hypotheses kept per input (K).
        max_new_tokens: longest output, eos included.
        eos_id: the token (or tokens) that end a hypothesis; None: none does, every
            hypothesis runs to ``max_new_tokens``.
        pad_id: fed to the rows of inputs that are already done (their
            results are final; the rows only keep the batch rectangular).
        length_penalty: alpha of score / length ** alpha.
        early_stopping: stop an input as soon as it has ``beam_size`` finished
            hypotheses (True); once its best live beam, ended now, would not beat
            them (``"heuristic"``, HF's False); or only when no live beam can beat
            them at any length (False or ``"never"``; see the module docstring).
        n_best: how many hypotheses to return per input (<= beam_size).
        process: ``process(seqs (N, T0 + t), log_probs (N, V)) -> log_probs``, applied
            to each step's log-probabilities before they are added to the beam scores
            (repetition penalty, n-gram bans; ``generate.processors``), as
            ``transformers`` does; ``seqs`` is a row's ``first_ids`` and its tokens.

    Returns:
        For each input, ``n_best`` ``Hypothesis(ids, score)``, best first; ids
        exclude ``first_ids`` and end with ``eos_id`` unless cut at
        ``max_new_tokens``.
    """
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be in 1..beam_size={beam_size}, got {n_best}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    early_stopping = check_early_stopping(early_stopping)
    B, K = first_ids.size(0), beam_size
    device = first_ids.device
    ids = [] if eos_id is None else [eos_id] if isinstance(eos_id, int) else list(eos_id)
    end_ids = torch.tensor(ids, dtype=torch.long, device=device)
    # Before the first step every input has one beam (its start row) with score 0.
    live_scores = torch.zeros(B, 1, device=device)  # (B, k) summed log-probs of live beams
    tokens = first_ids.new_empty(B, 0)  # (rows, t) generated tokens of live beams
    last = first_ids
    pools: list[list[Hypothesis]] = [[] for _ in range(B)]
    done = [False] * B
    for t in range(1, max_new_tokens + 1):
        log_probs = F.log_softmax(step(last, cache).float(), dim=-1)  # (B * k, V)
        k, V = live_scores.size(1), log_probs.size(-1)
        if process is not None:
            seqs = torch.cat([first_ids.repeat_interleave(k, dim=0), tokens], dim=1)  # (B * k, t)
            log_probs = process(seqs, log_probs)
        total = (live_scores[:, :, None] + log_probs.view(B, k, V)).view(B, k * V)  # (B, k * V)
        cand_scores, cand_index = total.topk(min(2 * K, k * V), dim=1)  # (B, 2K), best first
        cand_rows = (
            cand_index // V + torch.arange(B, device=device)[:, None] * k
        )  # (B, 2K) source rows
        cand_tokens = cand_index % V  # (B, 2K)
        ends = torch.isin(cand_tokens, end_ids)  # (B, 2K)

        # Finished hypotheses: among the top K continuations, those ending in eos
        # (all of them at the last step).
        finishing = (ends[:, :K] | (t == max_new_tokens)) & cand_scores[:, :K].isfinite()  # (B, K)
        if finishing.any():
            _collect_finished(
                pools,
                done,
                finishing,
                tokens,
                cand_rows,
                cand_tokens,
                cand_scores,
                t=t,
                beam_size=K,
                length_penalty=length_penalty,
            )

        # Live beams: the best K continuations that do not end in eos (fewer while
        # k * V < K: a tiny vocabulary at the first steps).
        n_live = min(K, cand_scores.size(1))
        live_scores, pick = cand_scores.masked_fill(ends, float("-inf")).topk(
            n_live, dim=1
        )  # (B, K)
        rows = cand_rows.gather(1, pick).view(-1)  # (N,)
        next_tokens = cand_tokens.gather(1, pick)  # (B, K)
        best_live = live_scores[:, 0].tolist()
        for b in range(B):
            done[b] = done[b] or _is_done(
                pools[b],
                best_live[b],
                t=t,
                beam_size=K,
                max_new_tokens=max_new_tokens,
                length_penalty=length_penalty,
                early_stopping=early_stopping,
            )
        if all(done) or t == max_new_tokens:
            break
        tokens = torch.cat([tokens[rows], next_tokens.view(-1, 1)], dim=1)  # (N, t)
        cache.select(rows)
        # Done inputs keep their rows (the batch stays rectangular) but feed padding.
        finished_rows = torch.tensor(done, device=device).repeat_interleave(n_live)  # (N,)
        last = next_tokens.view(-1, 1).masked_fill(finished_rows[:, None], pad_id)  # (N, 1)
    return [pool[:n_best] for pool in pools]
