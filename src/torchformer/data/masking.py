"""BERT's masked-language-model corruption (Devlin et al. 2019, section 3.1).

Of the maskable positions (not special tokens), a fraction ``probability`` (15%) is
chosen; the model must predict the original token there and nowhere else (label
-100). A chosen position is replaced by ``[MASK]`` 80% of the time, by a random
token 10% of the time, and kept 10% of the time, so that the model cannot learn
that only ``[MASK]`` positions matter.

Whole-word masking (Google's later BERT release; Cui et al. 2019): the choice is
made per word — a WordPiece token and the ``##`` continuations that follow it — so
that a word is never half masked and predicted from its own other pieces.

Shapes: B blocks, T tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class MaskingConfig:
    """How tokens are corrupted for masked-LM training (BERT's defaults)."""

    probability: float = 0.15  # chosen fraction of the maskable positions (or words)
    mask_ratio: float = 0.8  # of the chosen: replaced by [MASK]
    random_ratio: float = 0.1  # of the chosen: replaced by a random token (the rest kept)
    whole_word: bool = False  # choose whole words (a token and its "##" continuations)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.probability < 1.0:
            raise ValueError(f"masking.probability must be in (0, 1), got {self.probability}")
        if self.mask_ratio < 0 or self.random_ratio < 0 or self.mask_ratio + self.random_ratio > 1:
            raise ValueError(
                "masking.mask_ratio and masking.random_ratio must be >= 0 with a sum <= 1, got "
                f"{self.mask_ratio} and {self.random_ratio}"
            )


def continuation_table(vocab: dict[str, int], size: int) -> Tensor:
    """(V,) bool: which ids are WordPiece continuations (``##...``)."""
    table = torch.zeros(size, dtype=torch.bool)
    for token, index in vocab.items():
        if token.startswith("##") and index < size:
            table[index] = True
    return table


def mask_tokens(
    ids: Tensor,
    *,
    config: MaskingConfig,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    generator: torch.Generator,
    continuation: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Corrupt ``ids`` (B, T) for masked-LM training.

    Args:
        config: the probabilities (``MaskingConfig``).
        mask_id: the ``[MASK]`` id.
        vocab_size: random replacements are drawn from ``0 .. vocab_size - 1``.
        special_ids: never chosen ([CLS], [SEP], [PAD], ...).
        generator: the random source (seed it: a batch is then corrupted reproducibly).
        continuation: (V,) bool from ``continuation_table``; needed for whole-word masking.

    Returns:
        (inputs (B, T), labels (B, T)): the corrupted ids, and the original id at the
        chosen positions with -100 everywhere else.
    """
    maskable = ~torch.isin(ids, torch.tensor(list(special_ids), dtype=ids.dtype))  # (B, T)
    draw = torch.rand(ids.shape, generator=generator)  # (B, T)
    if config.whole_word:
        if continuation is None:
            raise ValueError("whole-word masking needs the tokenizer's continuation table")
        starts = ~continuation[ids] | ~maskable  # (B, T) a word begins here
        positions = torch.arange(ids.size(1)).expand_as(ids)
        first = torch.where(starts, positions, 0).cummax(dim=1).values  # (B, T) its word's start
        draw = draw.gather(1, first)  # every piece of a word shares the word's draw
    chosen = maskable & (draw < config.probability)  # (B, T)
    labels = ids.masked_fill(~chosen, -100)
    how = torch.rand(ids.shape, generator=generator)  # (B, T)
    to_mask = chosen & (how < config.mask_ratio)
    to_random = (
        chosen & (how >= config.mask_ratio) & (how < config.mask_ratio + config.random_ratio)
    )
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator, dtype=ids.dtype)
    inputs = ids.masked_fill(to_mask, mask_id)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels


@dataclass
class InfillingConfig:
    """BART's text infilling (Lewis et al. 2020, section 2.2): spans with Poisson(3)
    lengths cover ``ratio`` of the tokens, each span replaced by one mask token (a
    zero-length span inserts one); the model must write the original text back."""

    ratio: float = 0.3
    poisson_lambda: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"infilling.ratio must be in (0, 1), got {self.ratio}")
        if self.poisson_lambda <= 0:
            raise ValueError(f"infilling.poisson_lambda must be > 0, got {self.poisson_lambda}")


def infill_spans(
    ids: Sequence[int], *, config: InfillingConfig, mask_id: int, generator: torch.Generator
) -> list[int]:
    """``ids`` (one sequence, no special tokens) with spans replaced by ``mask_id``.

    Spans of Poisson(``poisson_lambda``) length start at uniform positions until
    ``ratio`` of the tokens are covered (the last span is cut to the budget); spans that
    touch or overlap merge into one, and each maximal masked run becomes one mask token.
    A zero-length span inserts a mask token between two kept tokens.
    """
    n = len(ids)
    budget = round(n * config.ratio)
    masked = [False] * n
    inserts: set[int] = set()
    rate = torch.tensor([config.poisson_lambda])
    count = 0
    while count < budget:
        length = int(torch.poisson(rate, generator=generator).item())
        start = int(torch.randint(n + 1, (1,), generator=generator).item())
        if length == 0:
            inserts.add(start)
            continue
        for j in range(start, min(start + length, n)):
            if not masked[j] and count < budget:
                masked[j] = True
                count += 1
    out: list[int] = []
    for i in range(n + 1):
        if i in inserts and (i == n or not masked[i]) and (i == 0 or not masked[i - 1]):
            out.append(mask_id)
        if i == n:
            break
        if not masked[i]:
            out.append(ids[i])
        elif i == 0 or not masked[i - 1]:
            out.append(mask_id)
    return out
