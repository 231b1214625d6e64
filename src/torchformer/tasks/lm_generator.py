"""A trained language model ready for use: ``torchformer.load(run).generate(prompt)``.

Loads ``best/`` of a language-model run (a Hugging Face GPT-2 directory, its
``tokenizer.json`` and ``language_model.json``) and continues prompts with the KV-cached
decoding of ``generate/`` (greedy, or sampled with temperature / top-k / top-p and a
seed), or scores texts (perplexity).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from torchformer.checkpoints import load_pretrained
from torchformer.checkpoints.hf import resolve_model_dir
from torchformer.generate import GenerationConfig, generate, stream
from torchformer.io import JsonSettings
from torchformer.models.decoder import DecoderForCausalLM
from torchformer.models.transformer_xl import TransformerXLForCausalLM, segment_losses
from torchformer.text.tokenizer import Tokenizer

SETTINGS_NAME = "language_model.json"


@dataclass
class SampleConfig:
    """How text is sampled: at each new best model and at the end of a run (``samples/``),
    and by default in ``LanguageModel.generate``."""

    prompt: str = "\n"
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 200
    seed: int = 0


@dataclass
class LMSettings(SampleConfig, JsonSettings):
    """How the model was trained, and its sampling defaults; ``language_model.json``."""

    FILE_NAME: ClassVar[str] = SETTINGS_NAME
    task: str = "language_model"
    tokenizer_kind: str = "bpe"
    block_size: int = 1024


class LanguageModel:
    """A causal language model with its tokenizer.

    Args:
        model: a ``DecoderForCausalLM`` (switched to eval mode).
        tokenizer: its tokenizer.
        settings: sampling defaults and the training context length.
    """

    def __init__(
        self, model: DecoderForCausalLM, tokenizer: Tokenizer, settings: LMSettings | None = None
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.settings = settings or LMSettings(block_size=model.config.max_len)

    @classmethod
    def from_dir(cls, path: str | os.PathLike, **overrides: Any) -> LanguageModel:
        """A model directory; ``overrides`` change fields of the model's config (e.g.
        ``attn_impl``, ``dropout``)."""
        model_dir = resolve_model_dir(path)
        model, _ = load_pretrained(model_dir, task="causal_lm", **overrides)
        tokenizer = Tokenizer.from_file(model_dir / "tokenizer.json")
        return cls(model, tokenizer, LMSettings.read(model_dir))

    def _ids(self, text: str) -> list[int]:
        # Straight through the backend: whitespace is text here ("\n" is nanoGPT's prompt).
        try:
            return self.tokenizer.backend.encode(text, add_special_tokens=False).ids
        except Exception as error:  # the Rust side raises a bare Exception (an unseen character)
            unknown = sorted({c for c in text if self.tokenizer.token_to_id(c) is None})
            detail = f" (characters not in the vocabulary: {unknown})" if unknown else ""
            raise ValueError(f"cannot tokenize {text[:40]!r}{detail}: {error}") from None

    def _prompt_ids(self, prompt: str) -> torch.Tensor:
        ids = self._ids(prompt) if prompt else []
        if not ids:  # nothing to condition on: start from end-of-text (or the first id)
            eos = self.tokenizer.eos_id
            ids = [eos if eos is not None else 0]
        return torch.tensor([ids[-self.model.config.max_len :]])  # (1, T0)

    def _options(
        self, ids: torch.Tensor, greedy: bool, options: dict[str, Any]
    ) -> tuple[torch.Tensor, GenerationConfig]:
        """The prompt ids as conditioned on, and the generation options (the call's, else
        the sidecar's sampling defaults).

        The context holds ``max_len`` tokens: a prompt too long to leave room for
        ``max_new_tokens`` keeps its last tokens (at least one), as a sliding window would.
        """
        s = self.settings
        max_len = self.model.config.max_len
        wanted = options.setdefault("max_new_tokens", s.max_new_tokens)
        if isinstance(wanted, int) and wanted > 0:
            ids = ids[:, -max(1, max_len - wanted) :]
        options["max_new_tokens"] = min(wanted, max_len - ids.size(1))
        deterministic = greedy or options.get("num_beams", 1) > 1
        options.setdefault("do_sample", not deterministic)
        if options["do_sample"]:
            options.setdefault("temperature", s.temperature)
            options.setdefault("top_k", s.top_k)
            options.setdefault("seed", s.seed)
        return ids, GenerationConfig.build(**options)

    def generate(
        self,
        prompt: str | None = None,
        *,
        greedy: bool = False,
        stop: Sequence[str] = (),
        **options: Any,
    ) -> str:
        """The prompt and its continuation as text.

        Args:
            prompt: the text to continue (default: the sidecar's ``prompt``).
            greedy: the most likely token at every step instead of sampling.
            stop: stop strings; the text ends before the first one produced.
            options: ``GenerationConfig`` fields (``max_new_tokens``, ``temperature``,
                ``top_k``, ``top_p``, ``num_beams``, ``repetition_penalty``,
                ``no_repeat_ngram_size``, ``seed``, ...); sampling defaults come
                from ``language_model.json``.

        Generation stops at end-of-text, at a stop string, after ``max_new_tokens``,
        or when the context would exceed the model's ``max_len`` (its block size).
        """
        prompt = self.settings.prompt if prompt is None else prompt
        return prompt + "".join(self.stream(prompt, greedy=greedy, stop=stop, **options))

    def stream(
        self,
        prompt: str | None = None,
        *,
        greedy: bool = False,
        stop: Sequence[str] = (),
        **options: Any,
    ) -> Iterator[str]:
        """The continuation of ``prompt`` piece by piece as it is generated.

        Arguments as ``generate``; they are checked here, before the first token
        (``ValueError``/``TypeError``). A piece is withheld while it could still be
        the start of a stop string or ends inside a multi-byte character.
        """
        prompt = self.settings.prompt if prompt is None else prompt
        ids, config = self._options(self._prompt_ids(prompt), greedy, dict(options))
        text = TextStream(self.tokenizer, stop)
        return self._pieces(ids, config, text)

    @torch.inference_mode()
    def _pieces(
        self, ids: torch.Tensor, config: GenerationConfig, text: TextStream
    ) -> Iterator[str]:
        device = next(self.model.parameters()).device
        if config.num_beams > 1:
            out = generate(self.model, ids.to(device), config=config)
            yield text.add(out[0, ids.size(1) :].tolist()) + text.flush()
            return
        start = ids.size(1)
        pieces = stream(
            self.model,
            ids.to(device),
            config=config,
            stop=lambda seqs: text.stopped_rows(seqs[:, start:]),
        )
        for step_ids in pieces:
            if piece := text.add([int(step_ids[0])]):
                yield piece
        if rest := text.flush():
            yield rest

    @torch.inference_mode()
    def perplexity(self, text: str) -> float:
        """exp(mean next-token loss) of ``text`` in windows of the context length
        (Transformer-XL: in its segments, each attending to the memory of the last)."""
        ids = self._ids(text)
        if len(ids) < 2:
            raise ValueError("perplexity needs a text of at least two tokens")
        device = next(self.model.parameters()).device
        if isinstance(self.model, TransformerXLForCausalLM):  # segments, the memory carried
            loss = segment_losses(self.model, torch.tensor([ids], device=device))
            return math.exp(float(loss[0]) / (len(ids) - 1))
        total, count, window = 0.0, 0, self.model.config.max_len
        for start in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[start : start + window + 1]], device=device)  # (1, T+1)
            logits = self.model(chunk[:, :-1]).logits[0].float()  # (T, V)
            loss = torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum")
            total, count = total + float(loss), count + chunk.size(1) - 1
        return math.exp(total / count)


class TextStream:
    """Turns generated ids into text pieces, honouring stop strings.

    The whole continuation is decoded again at every token (byte-level BPE may
    join bytes across tokens); what has not been handed out yet is the next piece.
    A trailing replacement character (an unfinished multi-byte character) and a
    tail that could still become a stop string are held back.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must not be empty")
        self.tokenizer, self.stop = tokenizer, list(stop)
        self.ids: list[int] = []
        self.sent = 0  # characters handed out
        self.done = False

    def _text(self) -> str:
        text = self.tokenizer.decode(self.ids)
        cut = min((i for s in self.stop if (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.done = True
            return text[:cut]
        return text

    def stopped_rows(self, new_ids: torch.Tensor) -> torch.Tensor:
        """(B,) whether each row's continuation (B, n) contains a stop string."""
        rows = [any(s in self.tokenizer.decode(r) for s in self.stop) for r in new_ids.tolist()]
        return torch.tensor(rows, device=new_ids.device)

    def add(self, ids: list[int]) -> str:
        """Take the newest ids; return the text now safe to hand out ("" if none)."""
        if self.done:
            return ""
        self.ids += ids
        text = self._text()
        if self.done:
            return self.flush()
        end = len(text) - (1 if text.endswith("\ufffd") else 0)
        hold = 0
        for s in self.stop:  # hold back a tail that may grow into a stop string
            hold = max([hold] + [k for k in range(1, len(s)) if text[:end].endswith(s[:k])])
        end -= hold
        piece, self.sent = text[self.sent : max(end, self.sent)], max(end, self.sent)
        return piece

    def flush(self) -> str:
        """Everything not handed out yet (the end of generation)."""
        text = self._text()
        piece, self.sent = text[self.sent :], len(text)
        return piece
