"""One ``generate()`` for decoder-only and encoder–decoder models.

    from torchformer.generate import generate
    out = generate(model, input_ids, attention_mask=mask, max_new_tokens=40, num_beams=4)

The model decides where decoding starts: a ``DecoderForCausalLM`` continues its
prompt ``input_ids`` (B, T0), left-padded with ``attention_mask`` for prompts of
different lengths; a ``Seq2Seq`` model encodes ``input_ids`` as the source and its
decoder starts from ``decoder_start_id``. The options (``GenerationConfig``) choose
the search — greedy, sampling (temperature, top-k, top-p, a seed) or beam search
(length penalty, early stopping) — and the score rules of ``generate.processors``
(repetition penalty, no-repeat n-gram, banned ids). Decoding stops at an end id
(one or several), after ``max_new_tokens``, or where ``stop`` says (stop strings,
checked on the text by the caller). The KV cache is used throughout;
``use_cache=False`` re-runs the model on the whole prefix at every step (the
baseline of the cache's speed-up).

The result has the layout of ``transformers`` ``generate()``: the decoder's input
followed by the new tokens — the prompt for a decoder-only model, the start token
for an encoder–decoder one — with ``pad_id`` after a row's end. ``stream`` yields
the tokens of greedy or sampled decoding as they are chosen.

Shapes: B batch, T0 prompt (or source) length, N new tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from torchformer.generate.beam import beam_search, check_early_stopping
from torchformer.generate.greedy import decode_loop, iter_decode
from torchformer.generate.processors import build_processor
from torchformer.generate.sampling import sample_next
from torchformer.models.decoder import DecoderForCausalLM, make_step
from torchformer.models.rnn_seq2seq import RNNSeq2Seq
from torchformer.models.seq2seq import Seq2Seq
from torchformer.models.transformer_xl import TransformerXLForCausalLM
from torchformer.nn.cache import KVCache

StopFn = Callable[[Tensor], Tensor]


@dataclass
class GenerationConfig:
    """How to generate. Defaults: greedy decoding of up to 50 tokens with the KV cache.

    Attributes:
        max_new_tokens: most tokens to add (end token included).
        min_new_tokens: the end ids cannot be generated before this many new tokens.
        do_sample: draw tokens (temperature / top_k / top_p) instead of the most likely.
        temperature: > 0; divides the logits before sampling.
        top_k: sample among the k most likely tokens only.
        top_p: sample within the smallest set of tokens holding mass p (nucleus).
        num_beams: > 1 runs beam search (deterministic; not with ``do_sample``).
        length_penalty: beam score = log-prob / length ** length_penalty.
        early_stopping: beam search stops an input at ``num_beams`` finished
            hypotheses (True); once its best live beam, ended now, would not beat them
            (``"heuristic"``, the default: HF's default, its False); or when none can
            be beaten at any length (False or ``"never"``; ``generate.beam``).
        repetition_penalty: > 1 discourages tokens already in the sequence (1: off).
        no_repeat_ngram_size: n > 0 never repeats an n-gram of the sequence.
        banned_ids: ids never generated.
        eos_id: end id(s); None: the model's. An empty list never stops early.
        pad_id: written after a row's end; None: the model's pad id, else its eos id, else 0.
        seed: seeds sampling (a seeded run is reproducible).
        use_cache: reuse keys/values of earlier positions (False: recompute, slower).
    """

    max_new_tokens: int = 50
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = "heuristic"
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    banned_ids: tuple[int, ...] = ()
    eos_id: int | list[int] | None = None
    pad_id: int | None = None
    seed: int | None = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 0, ">= 0"),
            ("min_new_tokens", self.min_new_tokens >= 0, ">= 0"),
            ("temperature", self.temperature > 0, "> 0 (use do_sample=False for greedy)"),
            ("top_k", self.top_k is None or self.top_k > 0, "> 0"),
            ("top_p", self.top_p is None or 0 < self.top_p <= 1, "in (0, 1]"),
            ("num_beams", self.num_beams >= 1, ">= 1"),
            ("repetition_penalty", self.repetition_penalty > 0, "> 0"),
            ("no_repeat_ngram_size", self.no_repeat_ngram_size >= 0, ">= 0"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(
                    f"generation option {name} must be {rule}, got {getattr(self, name)!r}"
                )
        if self.do_sample and self.num_beams > 1:
            raise ValueError("do_sample with num_beams > 1 (beam sampling) is not supported")
        self.early_stopping = check_early_stopping(self.early_stopping)

    @classmethod
    def build(cls, config: GenerationConfig | None = None, **options: Any) -> GenerationConfig:
        """``config`` (or the defaults) with ``options`` changed; unknown names are errors."""
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(options) - known):
            raise TypeError(
                f"unknown generation option(s) {unknown}; expected some of {sorted(known)}"
            )
        return replace(config or cls(), **options)


class PrefixCache:
    """Stands in for ``KVCache`` without caching: keeps the whole prefix (N, t)."""

    def __init__(self) -> None:
        self.ids: Tensor | None = None

    def extend(self, ids: Tensor) -> Tensor:
        """Append the newest ids (N, T) and return the whole prefix (N, t)."""
        self.ids = ids if self.ids is None else torch.cat([self.ids, ids], dim=1)
        return self.ids

    def select(self, index: Tensor) -> None:
        if self.ids is not None:
            self.ids = self.ids.index_select(0, index)  # (N, t)


def _rows(t: Tensor | None, rows: int) -> Tensor | None:
    """``t`` (B, ...) repeated so that it has ``rows`` = k * B rows (k hypotheses per input)."""
    if t is None or t.size(0) == rows:
        return t
    return t.repeat_interleave(rows // t.size(0), dim=0)


def uncached_decoder_step(model: DecoderForCausalLM, attention_mask: Tensor | None):
    """``make_step``'s contract without a cache: the whole prefix is re-run at every step."""

    def step(ids: Tensor, cache: PrefixCache) -> Tensor:
        prefix = cache.extend(ids)  # (N, t)
        mask = _rows(attention_mask, prefix.size(0))
        if mask is not None and mask.size(1) < prefix.size(1):
            mask = torch.cat([mask, mask.new_ones(mask.size(0), prefix.size(1) - mask.size(1))], 1)
        hidden = model.decoder(prefix, attention_mask=mask).last_hidden_state  # (N, t, D)
        return model.lm_logits(hidden[:, -1:])[:, 0]  # (N, V)

    return step


def uncached_seq2seq_step(model: Seq2Seq, context: Tensor, src_mask: Tensor | None):
    """``Seq2Seq.make_step``'s contract without a cache: the decoder re-runs the prefix."""

    def step(ids: Tensor, cache: PrefixCache) -> Tensor:
        prefix = cache.extend(ids)  # (N, t)
        ctx, mask = _rows(context, prefix.size(0)), _rows(src_mask, prefix.size(0))
        return model.decode(prefix, ctx, src_mask=mask).logits[:, -1]  # (N, V)

    return step


def _start(model: Any, input_ids: Tensor, attention_mask: Tensor | None, config: GenerationConfig):
    """(step, first ids, empty cache) for ``model``."""
    if isinstance(model, Seq2Seq | RNNSeq2Seq):
        unbounded = getattr(model.config, "flavour", None) == "t5"  # relative positions
        if not unbounded and config.max_new_tokens > model.config.max_len:
            raise ValueError(
                f"max_new_tokens={config.max_new_tokens} exceeds the model's max_len "
                f"{model.config.max_len} (its decoder has that many positions)"
            )
        context = model.encode(input_ids, src_mask=attention_mask).last_hidden_state  # (B, S, D)
        first = input_ids.new_full((input_ids.size(0), 1), model.config.decoder_start_id)  # (B, 1)
        if config.use_cache:
            return model.make_step(context, attention_mask), first, model.new_cache()
        return uncached_seq2seq_step(model, context, attention_mask), first, PrefixCache()
    if isinstance(model, DecoderForCausalLM):
        room = model.config.max_len - input_ids.size(1)
        if config.max_new_tokens > room:
            raise ValueError(
                f"max_new_tokens={config.max_new_tokens} does not fit: the prompt has "
                f"{input_ids.size(1)} tokens and the model's max_len is {model.config.max_len} "
                f"(at most {max(room, 0)} new tokens)"
            )
        if config.use_cache:
            return make_step(model, attention_mask), input_ids, KVCache(model.config.n_layers)
        return uncached_decoder_step(model, attention_mask), input_ids, PrefixCache()
    if isinstance(model, TransformerXLForCausalLM):  # the memory plays the KV cache's part
        return model.make_step(), input_ids, model.generation_memory()
    raise TypeError(
        "generate() takes a DecoderForCausalLM, a TransformerXLForCausalLM or a Seq2Seq "
        f"model, not {type(model).__name__}"
    )


def _ids(model: Any, config: GenerationConfig) -> tuple[int | list[int] | None, int]:
    """(end ids, pad id) from the config, else the model's."""
    eos = model.config.eos_id if config.eos_id is None else config.eos_id
    if config.pad_id is not None:
        return eos, config.pad_id
    first_eos = eos if isinstance(eos, int) else (eos[0] if eos else None)
    pad = next((i for i in (model.config.pad_id, first_eos) if i is not None), 0)
    return eos, pad


def _chooser(config: GenerationConfig, device: torch.device) -> Callable[[Tensor], Tensor]:
    if not config.do_sample:
        return lambda logits: logits.argmax(dim=-1)
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    return lambda logits: sample_next(
        logits,
        temperature=config.temperature,
        top_k=config.top_k,
        top_p=config.top_p,
        generator=generator,
    )


def _processor(model: Any, first: Tensor, attention_mask: Tensor | None, config: GenerationConfig):
    padding = None  # a decoder-only prompt's left padding is not text
    if attention_mask is not None and not isinstance(model, Seq2Seq):
        padding = (attention_mask != 0).int().argmax(dim=1)  # (B,) first real position
    eos, _ = _ids(model, config)
    return build_processor(
        repetition_penalty_value=config.repetition_penalty,
        no_repeat_ngram_size=config.no_repeat_ngram_size,
        banned_ids=config.banned_ids,
        padding=padding,
        min_new_tokens=config.min_new_tokens,
        end_ids=[] if eos is None else [eos] if isinstance(eos, int) else list(eos),
        start_len=first.size(1),
    )


@torch.inference_mode()
def stream(
    model: DecoderForCausalLM | Seq2Seq,
    input_ids: Tensor,
    *,
    attention_mask: Tensor | None = None,
    config: GenerationConfig | None = None,
    stop: StopFn | None = None,
    **options: Any,
) -> Iterator[Tensor]:
    """Yield each step's new ids (B,) as soon as they are chosen (greedy or sampling).

    Arguments as ``generate``; beam search cannot stream (its best output is known
    only at the end).
    """
    config = GenerationConfig.build(config, **options)
    if config.num_beams > 1:
        raise ValueError("beam search cannot stream: its best hypothesis is known only at the end")
    step, first, cache = _start(model, input_ids, attention_mask, config)
    eos, pad = _ids(model, config)
    yield from iter_decode(
        step,
        first,
        max_new_tokens=config.max_new_tokens,
        choose=_chooser(config, input_ids.device),
        cache=cache,
        eos_id=eos,
        pad_id=pad,
        process=_processor(model, first, attention_mask, config),
        stop=stop,
    )


def _pad_rows(rows: Sequence[Sequence[int]], first: Tensor, pad: int) -> Tensor:
    """``first`` (B, T0) followed by each row, right-padded with ``pad`` to the longest."""
    width = max((len(r) for r in rows), default=0)
    out = first.new_full((first.size(0), first.size(1) + width), pad)
    out[:, : first.size(1)] = first
    for b, row in enumerate(rows):
        out[b, first.size(1) : first.size(1) + len(row)] = torch.tensor(row, dtype=out.dtype)
    return out


@torch.inference_mode()
def generate(
    model: DecoderForCausalLM | Seq2Seq,
    input_ids: Tensor,
    *,
    attention_mask: Tensor | None = None,
    config: GenerationConfig | None = None,
    stop: StopFn | None = None,
    **options: Any,
) -> Tensor:
    """Generate with a decoder-only or an encoder–decoder model.

    Args:
        model: a ``DecoderForCausalLM`` or ``Seq2Seq`` (switch it to eval mode first).
        input_ids: (B, T0) prompts (decoder-only; left-padded) or sources (seq2seq).
        attention_mask: (B, T0) 1 for tokens, 0 for padding.
        config: a ``GenerationConfig``; ``options`` override its fields
            (``max_new_tokens=20, num_beams=4``, ...).
        stop: ``stop(seqs (B, t)) -> (B,) bool``, rows to end after the current token
            (greedy and sampling only).

    Returns:
        (B, T0' + N) ids: the decoder's input (prompt, or start token) then the new
        tokens, ``pad_id`` after a row's end.
    """
    config = GenerationConfig.build(config, **options)
    step, first, cache = _start(model, input_ids, attention_mask, config)
    eos, pad = _ids(model, config)
    process = _processor(model, first, attention_mask, config)
    if config.num_beams == 1:
        return decode_loop(
            step,
            first,
            max_new_tokens=config.max_new_tokens,
            choose=_chooser(config, input_ids.device),
            cache=cache,
            eos_id=eos,
            pad_id=pad,
            process=process,
            stop=stop,
        )
    if stop is not None:
        raise ValueError("stop functions work with greedy decoding and sampling, not beam search")
    if config.max_new_tokens == 0:
        return first
    hyps = beam_search(
        step,
        first,
        cache=cache,
        beam_size=config.num_beams,
        max_new_tokens=config.max_new_tokens,
        eos_id=eos,
        pad_id=pad,
        length_penalty=config.length_penalty,
        early_stopping=config.early_stopping,
        process=process,
    )
    return _pad_rows([h[0].ids for h in hyps], first, pad)
