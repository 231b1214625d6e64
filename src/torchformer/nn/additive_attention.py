"""Additive attention (Bahdanau, Cho and Bengio 2015, "Neural Machine Translation by
Jointly Learning to Align and Translate", eq. 6 and appendix A.1.2).

The attention the Transformer replaced: a decoder state ``s`` (the query) scores every
encoder state ``h_j`` (the keys, which are also the values) with a one-hidden-layer
network instead of a dot product,

    e_j = v^T tanh(W s + U h_j)        alpha = softmax(e)        c = sum_j alpha_j h_j

``U h_j`` does not depend on the query, so it is computed once per source
(``project_keys``) and reused at every decoder step.

Shapes: N rows (sentences, or sentences x beams), S source positions, Dq query size,
Dk key size, A attention size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from torchformer.nn.linear import Linear


class AdditiveAttention(nn.Module):
    """``e_j = v^T tanh(W q + U k_j)``; returns the context ``sum_j softmax(e)_j k_j``.

    Args:
        query_dim: size of the query (the decoder state), Dq.
        key_dim: size of each key/value (the encoder state), Dk.
        attention_dim: size of the hidden layer, A.
    """

    def __init__(self, query_dim: int, key_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.query_proj = Linear(query_dim, attention_dim)  # W (with the bias of the layer)
        self.key_proj = Linear(key_dim, attention_dim, bias=False)  # U
        self.score = Linear(attention_dim, 1, bias=False)  # v

    def project_keys(self, keys: Tensor) -> Tensor:
        """``U h_j`` for every key: (N, S, Dk) -> (N, S, A); compute once per source."""
        return self.key_proj(keys)

    def forward(
        self,
        query: Tensor,
        projected_keys: Tensor,
        values: Tensor,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Attend from ``query`` (N, Dq) over ``values`` (N, S, Dk).

        Args:
            query: (N, Dq) the decoder state.
            projected_keys: (N, S, A) ``project_keys(values)``.
            values: (N, S, Dk) the encoder states.
            mask: (N, S), 1/True for real positions and 0/False for padding (None: none).

        Returns:
            (context (N, Dk), weights (N, S)); padded positions get weight 0.
        """
        hidden = torch.tanh(projected_keys + self.query_proj(query).unsqueeze(1))  # (N, S, A)
        scores = self.score(hidden).squeeze(-1)  # (N, S)
        if mask is not None:
            scores = scores.masked_fill(~mask.bool(), float("-inf"))  # (N, S)
        weights = torch.softmax(scores.float(), dim=-1).to(values.dtype)  # (N, S)
        context = torch.bmm(weights.unsqueeze(1), values).squeeze(1)  # (N, Dk)
        return context, weights
