"""Linear maps, with oneDNN's kernel for fp32 inference on the CPU.

``torch.nn.functional.linear`` on the CPU calls the BLAS PyTorch was built with: MKL in
the official wheels. MKL picks its fast AVX-512 code paths on Intel CPUs only; on an AMD
EPYC with AVX-512 (this project's machines), a fp32 ``F.linear`` ran at ~208 GFLOP/s
where oneDNN's own JIT-compiled kernels, which PyTorch also ships (the ones
``torch.compile``'s CPU backend calls for a frozen linear), ran 2.0–2.4× faster, from
one-token decoding (memory-bound: 17 vs 32 GB/s of weights) to 2,048-token batches
(compute-bound); the figures are in ``docs/results.md`` (issue 17).

``linear`` takes oneDNN's kernel (``torch.ops.mkldnn._linear_pointwise``, the same
operator that fuses an activation into ``FeedForward``'s first map) for fp32 on the CPU,
outside autocast (which would not see it) and outside tracing, scripting, export and
compilation (whose graphs must hold the standard ``aten.linear``). At inference it is
called directly; under autograd through a small ``autograd.Function`` whose backward
runs the two gradient products on the same kernel (a linear layer's forward and backward
took 1.9–2.1× less time than ``F.linear``'s on this machine). Both for plain tensors only:
a DTensor, a torchao quantized weight or another subclass keeps ``F.linear``, which
dispatches to its own implementation. Everything else — bf16 autocast, GPUs,
exported graphs — is ``F.linear``, unchanged. The two agree to float
rounding (a different summation order: ~1e-6 relative).

On an Intel Xeon with AMX, MKL's GEMM alone was the faster (398 vs 336 GFLOP/s), yet
the whole encoder ran 8% faster on oneDNN's kernel, so it is the default there too
(``onednn_linear_wanted``; ``TORCHFORMER_ONEDNN_LINEAR=0`` turns it off).

``Linear`` is ``nn.Linear`` with that forward; the models in ``torchformer.models``
build their projections from it. Its parameters and state-dict keys are ``nn.Linear``'s.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ON, _OFF = ("1", "true", "on", "yes"), ("0", "false", "off", "no")


def onednn_linear_wanted(setting: str | None) -> bool:
    """Whether fp32 linear layers take oneDNN's kernel rather than ``F.linear``.

    ``setting`` is ``TORCHFORMER_ONEDNN_LINEAR``: unset, "1" (or true/on/yes): yes; "0" (or
    false/off/no): no. On by default on every CPU, Intel's included: on an Intel Xeon with
    AMX, where MKL's own GEMM was the faster of the two in isolation (398 vs 336 GFLOP/s
    over the model's shapes, ``torchformer bench machine``), the whole MiniLM encoder still
    ran 8% faster on oneDNN's (1.007× vs 0.928× ``transformers``, docs/results.md, issue 17).

    Raises:
        ValueError: any other setting, naming the variable.
    """
    value = (setting or "1").strip().lower()
    if value not in (*_ON, *_OFF):
        raise ValueError(f"TORCHFORMER_ONEDNN_LINEAR={setting!r}: expected 0 or 1")
    return value in _ON


def _chosen() -> bool:
    """The module's choice at import; a bad setting warns and keeps the default (an
    exception at import would break every command, ``--help`` included)."""
    setting = os.environ.get("TORCHFORMER_ONEDNN_LINEAR")
    try:
        return onednn_linear_wanted(setting)
    except ValueError as e:
        warnings.warn(f"{e}; using 1", stacklevel=2)
        return True


# TORCHFORMER_ONEDNN_LINEAR=0 turns the oneDNN path off (F.linear everywhere), e.g. to
# compare against it or to rule it out when results differ between machines.
ONEDNN_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, "_linear_pointwise"
)  # the kernel exists in this build
_ONEDNN = ONEDNN_AVAILABLE and _chosen()  # ... and is chosen
_PLAIN_TYPES = (torch.Tensor, nn.Parameter)  # not DTensor, not other tensor subclasses


def _onednn_eligible(x: Tensor, weight: Tensor) -> bool:
    """fp32 on the CPU, outside autocast, scripting, tracing, export and compilation."""
    return not (
        not _ONEDNN
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or torch.is_autocast_enabled("cpu")
        or torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    )


def onednn_applies(x: Tensor, weight: Tensor) -> bool:
    """Whether oneDNN's forward-only kernel may run for these operands: inference (no
    autograd) in fp32 on the CPU, outside autocast and graph capture (module docstring)."""
    return not torch.is_grad_enabled() and _onednn_eligible(x, weight)


def _onednn(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinearFunction(torch.autograd.Function):
    """y = x Wᵀ + b with oneDNN's kernel for the forward product and both backward ones:
    dx = dy W (a linear map by Wᵀ) and dW = dyᵀ x (a linear map of dyᵀ by xᵀ).

    The backward products go through ``linear`` again: plain kernel calls normally, and
    differentiable ones when the backward itself is recorded (``create_graph=True``), so
    double backward works as with ``F.linear``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_2d = grad.reshape(-1, grad.size(-1))  # (N, O)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = linear(grad_2d, weight.t()).view(x.shape)  # (N, O) · (O, I)
        if ctx.needs_input_grad[1]:
            grad_w = linear(grad_2d.t(), x.reshape(-1, x.size(-1)).t())  # (O, N) · (N, I)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_2d.sum(0)  # (O,)
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias``: x (..., I), weight (O, I), bias (O,) -> (..., O)."""
    if _onednn_eligible(x, weight) and all(
        type(t) in _PLAIN_TYPES for t in (x, weight, bias) if t is not None
    ):
        if not torch.is_grad_enabled():
            return _onednn(x, weight, bias)
        return _OneDNNLinearFunction.apply(x, weight, bias)
    return F.linear(x, weight, bias)  # e.g. torchao's quantized weights, DTensor: their own op


class Linear(nn.Linear):
    """``nn.Linear`` whose forward is ``linear`` (oneDNN for fp32 on the CPU)."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


# What counts as an unwrapped linear layer where a check must tell it from an adapter,
# a quantized module or another wrapper (LoRA targets, fused q/k/v, PEFT export).
PLAIN_LINEAR = (nn.Linear, Linear)


def is_plain_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear`` and ``Linear`` themselves, not for subclasses or wrappers, and
    only while their weight and bias are plain tensors (torchao's ``quantize_``, for one,
    keeps the module and swaps the weight for a quantized tensor subclass)."""
    if type(module) not in PLAIN_LINEAR:
        return False
    return all(type(t) in _PLAIN_TYPES for t in (module.weight, module.bias) if t is not None)
