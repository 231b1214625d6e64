"""Linear maps, with oneDNN's kernel for fp32 inference on the CPU.

``torch.nn.functional.linear`` on the CPU calls the BLAS PyTorch was built with: MKL in
the official wheels. MKL picks its fast AVX-512 code paths on Intel CPUs only; on an AMD
EPYC with AVX-512 (this project's machines), a fp32 ``F.linear`` ran at ~208 GFLOP/s
where oneDNN's own JIT-compiled kernels, which PyTorch also ships (the ones
``torch.compile``'s CPU backend calls for a frozen linear), ran 2.0–2.4× faster, from
one-token decoding (memory-bound: 17 vs 32 GB/s of weights) to 2,048-token batches
(compute-bound); the figures are in ``docs/results.md`` (issue 17).

``linear`` takes oneDNN's kernel (``torch.ops.mkldnn._linear_pointwise``, the same
operator that fuses an activation into ``FeedForward``'s first map) when nothing needs
the other one: fp32 on the CPU, no autograd (it has no backward), no autocast (which
would not see it), and no tracing, scripting, export or compilation (whose graphs must
hold the standard ``aten.linear``). Otherwise it is ``F.linear``: training, bf16,
GPUs and exported graphs are unchanged. The two agree to float rounding (a different
summation order: ~1e-6 relative).

``Linear`` is ``nn.Linear`` with that forward; the models in ``torchformer.models``
build their projections from it. Its parameters and state-dict keys are ``nn.Linear``'s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_applies(x: Tensor, weight: Tensor) -> bool:
    """Whether ``linear`` may use oneDNN's kernel for these operands (module docstring)."""
    return not (
        not _ONEDNN
        or torch.is_grad_enabled()
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or torch.is_autocast_enabled("cpu")
        or torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias``: x (..., I), weight (O, I), bias (O,) -> (..., O)."""
    if onednn_applies(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` whose forward is ``linear`` (oneDNN for fp32 inference on the CPU)."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


# What counts as an unwrapped linear layer where a check must tell it from an adapter,
# a quantized module or another wrapper (LoRA targets, fused q/k/v, PEFT export).
PLAIN_LINEAR = (nn.Linear, Linear)


def is_plain_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear`` and ``Linear`` themselves, not for subclasses or wrappers."""
    return type(module) in PLAIN_LINEAR
