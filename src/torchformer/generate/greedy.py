"""Greedy and sampled decoding over a step function (``generate.generation`` drives them).

The loop knows nothing about the model. It calls a *step function*
``step(ids (B, T), cache) -> logits (B, V)``: the first call feeds the whole
prompt ``first_ids`` (B, T0), later calls the newest token (B, 1); the step
updates the KV cache in place. Seq2seq models supply a step that closes over
the encoder output; decoder-only models get one from
``torchformer.models.decoder.make_step``.

A row that emits ``eos_id`` is finished: its later tokens are ``pad_id``.
Decoding stops after ``max_new_tokens`` or as soon as every row has finished,
so the result may be shorter than T0 + max_new_tokens.

Shapes: B batch, T0 prompt length, N new tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from torchformer.generate.processors import Processor
from torchformer.generate.sampling import sample_next
from torchformer.nn.cache import KVCache

StepFn = Callable[[Tensor, KVCache], Tensor]


def _stop_ids(eos_id: int | Sequence[int] | None, device: torch.device) -> Tensor | None:
    if eos_id is None:
        return None
    ids = [eos_id] if isinstance(eos_id, int) else list(eos_id)
    return torch.tensor(ids, dtype=torch.long, device=device) if ids else None


def iter_decode(
    step: StepFn,
    first_ids: Tensor,
    *,
    max_new_tokens: int,
    choose: Callable[[Tensor], Tensor],
    cache: KVCache,
    eos_id: int | Sequence[int] | None = None,
    pad_id: int = 0,
    process: Processor | None = None,
    stop: Callable[[Tensor], Tensor] | None = None,
) -> Iterator[Tensor]:
    """Yield the (B,) ids chosen at each step, as soon as they are chosen (streaming).

    Args:
        step: ``step(ids, cache) -> logits (B, V)`` (see the module docstring).
        first_ids: (B, T0) prompt (decoder-only) or start tokens (seq2seq).
        max_new_tokens: most tokens to add.
        choose: logits (B, V) -> ids (B,).
        cache: an empty KV cache for the step to fill.
        eos_id: end-of-sequence id, or several; a row stops after emitting one.
        pad_id: id emitted by a row after it stopped.
        process: ``process(seqs (B, t), logits (B, V)) -> logits`` applied before
            ``choose`` (repetition penalty, n-gram bans; ``generate.processors``).
        stop: ``stop(seqs (B, t)) -> (B,) bool``: rows to stop after this token
            (stop strings, checked on the text by the caller).
    """
    B = first_ids.size(0)
    finished = torch.zeros(B, dtype=torch.bool, device=first_ids.device)
    stop_ids = _stop_ids(eos_id, first_ids.device)
    seqs = first_ids  # (B, t): what the processors and ``stop`` see
    if max_new_tokens > 0:
        logits = step(first_ids, cache)  # (B, V)
    for i in range(max_new_tokens):
        if process is not None:
            logits = process(seqs, logits)
            # A row whose every token is banned (e.g. no-repeat n-grams exhausted) ends here.
            dead = ~torch.isfinite(logits).any(dim=-1)  # (B,)
            if dead.any():
                logits = logits.masked_fill(dead[:, None], 0.0)
                finished = finished | dead
        next_ids = choose(logits).masked_fill(finished, pad_id)  # (B,)
        seqs = torch.cat([seqs, next_ids[:, None]], dim=1)  # (B, t + 1)
        if stop_ids is not None:
            finished = finished | torch.isin(next_ids, stop_ids)
        if stop is not None:
            finished = finished | stop(seqs)
        yield next_ids
        if i == max_new_tokens - 1 or bool(finished.all()):
            return
        logits = step(next_ids[:, None], cache)  # (B, V)


def decode_loop(
    step: StepFn,
    first_ids: Tensor,
    *,
    max_new_tokens: int,
    choose: Callable[[Tensor], Tensor],
    cache: KVCache,
    eos_id: int | Sequence[int] | None = None,
    pad_id: int = 0,
    process: Processor | None = None,
    stop: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Extend ``first_ids`` (B, T0) one token at a time (``iter_decode``'s arguments).

    Returns:
        (B, T0 + N) ids: the prompt followed by N <= max_new_tokens new tokens.
    """
    new_tokens = list(
        iter_decode(
            step,
            first_ids,
            max_new_tokens=max_new_tokens,
            choose=choose,
            cache=cache,
            eos_id=eos_id,
            pad_id=pad_id,
            process=process,
            stop=stop,
        )
    )
    if not new_tokens:
        return first_ids
    return torch.cat([first_ids, torch.stack(new_tokens, dim=1)], dim=1)  # (B, T0 + N)


def greedy_decode(
    step: StepFn,
    first_ids: Tensor,
    *,
    max_new_tokens: int,
    eos_id: int | None = None,
    pad_id: int = 0,
    cache: KVCache,
) -> Tensor:
    """Pick the most likely token at every step.

    Args:
        step: ``step(ids, cache) -> logits (B, V)`` (see the module docstring).
        first_ids: (B, T0) prompt (decoder-only) or start tokens (seq2seq).
        max_new_tokens: most tokens to add.
        eos_id: end-of-sequence id; a row stops after emitting it.
        pad_id: id written after a row's EOS.
        cache: an empty KV cache for the step to fill.

    Returns:
        (B, T0 + N) ids, N <= max_new_tokens.
    """
    return decode_loop(
        step,
        first_ids,
        max_new_tokens=max_new_tokens,
        choose=lambda logits: logits.argmax(dim=-1),
        cache=cache,
        eos_id=eos_id,
        pad_id=pad_id,
    )


def sample_decode(
    step: StepFn,
    first_ids: Tensor,
    *,
    max_new_tokens: int,
    cache: KVCache,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Like ``greedy_decode`` but draws each token (temperature, top-k, top-p; see ``sampling``)."""
    return decode_loop(
        step,
        first_ids,
        max_new_tokens=max_new_tokens,
        choose=lambda logits: sample_next(
            logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
        ),
        cache=cache,
        eos_id=eos_id,
        pad_id=pad_id,
    )
