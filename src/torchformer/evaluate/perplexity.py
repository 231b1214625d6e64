"""Streaming mean negative log-likelihood and perplexity over tokens."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["StreamingPerplexity"]


class StreamingPerplexity:
    """Token-weighted mean NLL (nats) and perplexity, accumulated batch by batch.

    Sums are kept in float64 on the host, so the result does not depend on how the
    data was batched. Feed either summed NLLs (:meth:`update`) or logits
    (:meth:`update_from_logits`).
    """

    def __init__(self) -> None:
        self.nll_sum = 0.0
        self.num_tokens = 0

    def update(self, nll_sum: Tensor | float, num_tokens: int | Tensor) -> None:
        """Add ``nll_sum`` nats over ``num_tokens`` tokens (a *sum*, not a mean)."""
        count = int(num_tokens)
        if count < 0:
            raise ValueError(f"num_tokens must be >= 0, got {count}")
        self.nll_sum += float(torch.as_tensor(nll_sum, dtype=torch.float64))
        self.num_tokens += count

    def update_from_logits(
        self, logits: Tensor, targets: Tensor, *, ignore_index: int = -100
    ) -> None:
        """Add a batch from ``logits (B, T, V)`` and ``targets (B, T)``.

        Targets equal to ``ignore_index`` (padding) are left out. Targets must already
        be aligned with the logits (shifted by one for a causal language model).
        """
        vocab_size = logits.size(-1)
        flat_logits = logits.reshape(-1, vocab_size).float()  # (B*T, V)
        flat_targets = targets.reshape(-1)  # (B*T,)
        nll = F.cross_entropy(flat_logits, flat_targets, ignore_index=ignore_index, reduction="sum")
        self.update(nll.double(), (flat_targets != ignore_index).sum())

    def compute(self) -> dict[str, Any]:
        """``{"nll", "perplexity", "bits_per_token", "num_tokens"}``; NaN before any token."""
        if self.num_tokens == 0:
            return {
                "nll": math.nan,
                "perplexity": math.nan,
                "bits_per_token": math.nan,
                "num_tokens": 0,
            }
        nll = self.nll_sum / self.num_tokens
        try:
            perplexity = math.exp(nll)
        except OverflowError:
            perplexity = math.inf
        return {
            "nll": nll,
            "perplexity": perplexity,
            "bits_per_token": nll / math.log(2),
            "num_tokens": self.num_tokens,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"nll_sum": self.nll_sum, "num_tokens": self.num_tokens}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nll_sum = float(state["nll_sum"])
        self.num_tokens = int(state["num_tokens"])
