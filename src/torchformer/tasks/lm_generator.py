"""A trained language model ready for use: ``torchformer.load(run).generate(prompt)``.

Loads ``best/`` of a language-model run (a Hugging Face GPT-2 directory, its
``tokenizer.json`` and ``language_model.json``) and continues prompts with the KV-cached
decoding of ``generate/`` (greedy, or sampled with temperature / top-k / top-p and a
seed), or scores texts (perplexity).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import ClassVar

import torch

from torchformer.checkpoints import load_pretrained
from torchformer.checkpoints.hf import resolve_model_dir
from torchformer.generate.greedy import generate
from torchformer.io import JsonSettings
from torchformer.models.decoder import DecoderForCausalLM
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
    def from_dir(cls, path: str | os.PathLike) -> LanguageModel:
        model_dir = resolve_model_dir(path)
        model, _ = load_pretrained(model_dir, task="causal_lm")
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

    @torch.inference_mode()
    def generate(
        self,
        prompt: str | None = None,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        greedy: bool = False,
        seed: int | None = None,
    ) -> str:
        """The prompt and its continuation as text (defaults from ``language_model.json``).

        Generation stops at end-of-text, after ``max_new_tokens``, or when the context
        would exceed the model's ``max_len`` (its trained block size).
        """
        s = self.settings
        prompt = s.prompt if prompt is None else prompt
        ids = self._prompt_ids(prompt)
        room = self.model.config.max_len - ids.size(1)
        n = min(s.max_new_tokens if max_new_tokens is None else max_new_tokens, room)
        device = next(self.model.parameters()).device
        out = generate(
            self.model,
            ids.to(device),
            max_new_tokens=n,
            do_sample=not greedy,
            temperature=s.temperature if temperature is None else temperature,
            top_k=s.top_k if top_k is None else top_k,
            seed=s.seed if seed is None else seed,
        )
        return prompt + self.tokenizer.decode(out[0, ids.size(1) :].tolist())

    @torch.inference_mode()
    def perplexity(self, text: str) -> float:
        """exp(mean next-token loss) of ``text`` in windows of the context length."""
        ids = self._ids(text)
        if len(ids) < 2:
            raise ValueError("perplexity needs a text of at least two tokens")
        device = next(self.model.parameters()).device
        total, count, window = 0.0, 0, self.model.config.max_len
        for start in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[start : start + window + 1]], device=device)  # (1, T+1)
            logits = self.model(chunk[:, :-1]).logits[0].float()  # (T, V)
            loss = torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum")
            total, count = total + float(loss), count + chunk.size(1) - 1
        return math.exp(total / count)
