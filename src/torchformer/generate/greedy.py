"""Greedy and sampled decoding over a step function, and ``generate`` for decoder-only models.

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

from collections.abc import Callable

import torch
from torch import Tensor

from torchformer.generate.sampling import sample_next
from torchformer.models.decoder import DecoderForCausalLM, make_step
from torchformer.nn.cache import KVCache

StepFn = Callable[[Tensor, KVCache], Tensor]


def decode_loop(
    step: StepFn,
    first_ids: Tensor,
    *,
    max_new_tokens: int,
    choose: Callable[[Tensor], Tensor],
    cache: KVCache,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> Tensor:
    """Extend ``first_ids`` (B, T0) one token at a time; ``choose`` maps logits (B, V) to ids (B,).

    Returns:
        (B, T0 + N) ids: the prompt followed by N <= max_new_tokens new tokens.
    """
    B = first_ids.size(0)
    finished = torch.zeros(B, dtype=torch.bool, device=first_ids.device)
    new_tokens: list[Tensor] = []
    if max_new_tokens > 0:
        logits = step(first_ids, cache)  # (B, V)
    for i in range(max_new_tokens):
        next_ids = choose(logits)  # (B,)
        if eos_id is not None:
            next_ids = next_ids.masked_fill(finished, pad_id)
            finished = finished | (next_ids == eos_id)
        new_tokens.append(next_ids)
        if i == max_new_tokens - 1 or (eos_id is not None and bool(finished.all())):
            break
        logits = step(next_ids[:, None], cache)  # (B, V)
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


@torch.no_grad()
def generate(
    model: DecoderForCausalLM,
    input_ids: Tensor,
    *,
    max_new_tokens: int,
    attention_mask: Tensor | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    seed: int | None = None,
) -> Tensor:
    """Continue prompts with a decoder-only language model, using the KV cache.

    Args:
        model: the language model; switch it to eval mode first (dropout stays
            as the caller set it).
        input_ids: (B, T0) prompts; batch prompts of different lengths with
            left padding and ``attention_mask``.
        max_new_tokens: most tokens to add.
        attention_mask: (B, T0) 1 for prompt tokens, 0 for (left) padding.
        do_sample: sample (with temperature/top_k/top_p) instead of greedy.
        eos_id: stop id (default: the model's ``eos_id``).
        pad_id: fill after EOS (default: the model's ``pad_id``, else ``eos_id``, else 0).
        seed: seeds the sampling ``torch.Generator`` (reproducible draws).

    Returns:
        (B, T0 + N) ids: the prompts followed by the new tokens.
    """
    eos_id = model.config.eos_id if eos_id is None else eos_id
    if pad_id is None:
        pad_id = next((i for i in (model.config.pad_id, eos_id) if i is not None), 0)
    step = make_step(model, attention_mask)
    cache = KVCache(model.config.n_layers)
    if not do_sample:
        return greedy_decode(
            step,
            input_ids,
            max_new_tokens=max_new_tokens,
            eos_id=eos_id,
            pad_id=pad_id,
            cache=cache,
        )
    generator = None
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    return sample_decode(
        step,
        input_ids,
        max_new_tokens=max_new_tokens,
        cache=cache,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_id=eos_id,
        pad_id=pad_id,
        generator=generator,
    )
