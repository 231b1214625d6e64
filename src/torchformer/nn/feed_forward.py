"""Position-wise feed-forward networks (Vaswani et al. 2017, section 3.3).

FFN(x) = W2 act(W1 x + b1) + b2, applied to every position alike, and the
gated variant of Shazeer 2020 ("GLU Variants Improve Transformer") used by
T5 v1.1: FFN(x) = W_out (act(W_gate x) * (W_up x)).

Shapes: (B, T, D) -> (B, T, F) -> (B, T, D).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchformer.nn.linear import Linear, is_plain_linear, onednn_applies


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU with the tanh approximation (GPT-2's "gelu_new", T5's "gelu_new")."""
    return F.gelu(x, approximate="tanh")


def _gelu_tanh_explicit(x: Tensor) -> Tensor:  # pragma: no cover - documentation of the formula
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


def get_activation(name: str) -> Callable[[Tensor], Tensor]:
    """Activation function by its Hugging Face config name."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}"
        ) from None


# oneDNN's linear with a fused activation epilogue (the kernel torch.compile's CPU
# freezing path uses): one pass over the (B, T, F) output instead of two.
_ONEDNN_EPILOGUE = {
    "relu": ("relu", "none"),
    "gelu": ("gelu", "none"),
    "gelu_new": ("gelu", "tanh"),
    "gelu_pytorch_tanh": ("gelu", "tanh"),
}


class FeedForward(nn.Module):
    """Two linear maps with an activation between them.

    Args:
        d_model: input/output width D.
        d_ff: hidden width F.
        activation: "relu", "gelu", "gelu_new", ...
        dropout: dropout on the hidden activations (T5 and the original put it there).
        bias: whether the linear maps have biases.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.act = get_activation(activation)
        self.epilogue = _ONEDNN_EPILOGUE.get(activation)  # used when onednn_applies()
        self.up_proj = Linear(d_model, d_ff, bias=bias)
        self.down_proj = Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def _fused_up(self, x: Tensor) -> bool:
        """Inference in fp32 on the CPU, outside autograd, autocast, tracing and compilation
        (``nn.linear.onednn_applies``), on a plain linear layer, activation known to oneDNN."""
        return (
            self.epilogue is not None
            and not self.training  # dropout must run
            and is_plain_linear(self.up_proj)
            and onednn_applies(x, self.up_proj.weight)
        )

    def forward(self, x: Tensor) -> Tensor:
        if self._fused_up(x):
            op, algorithm = self.epilogue
            h = torch.ops.mkldnn._linear_pointwise(
                x, self.up_proj.weight, self.up_proj.bias, op, [], algorithm
            )
            return self.down_proj(h)  # (B, T, D); eval mode: no dropout
        return self.down_proj(self.dropout(self.act(self.up_proj(x))))  # (B, T, D)


class GatedFeedForward(nn.Module):
    """Gated FFN: down(act(gate(x)) * up(x)) (Shazeer 2020), as in T5 v1.1 / Flan-T5."""

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        *,
        activation: str = "gelu_new",
        dropout: float = 0.0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.act = get_activation(activation)
        self.gate_proj = Linear(d_model, d_ff, bias=bias)
        self.up_proj = Linear(d_model, d_ff, bias=bias)
        self.down_proj = Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.act(self.gate_proj(x)) * self.up_proj(x)  # (B, T, F)
        return self.down_proj(self.dropout(hidden))  # (B, T, D)
