"""bf16 weights for a PyTorch classifier, behind the same accuracy gate as int8.

On CPUs with bf16 dot products (AVX512-BF16, AMX, Arm BF16) a classifier whose every
tensor is bf16 (``model.to(torch.bfloat16)``: no per-call weight casts, which autocast
makes) was the fastest path of the deployment bench on an Intel Xeon with AMX (3.06×
``transformers``' fp32 throughput at −0.10 points, docs/results.md, issue 17). bf16 keeps
8 bits of mantissa, so like int8 it can lose accuracy quietly; ``gate_bf16`` evaluates
the fp32 and the bf16 model on one labelled slice and writes the verdict next to the
weights (``bf16_gate.json``, with the weights' sha256), and ``serve --precision auto``
serves bf16 only where that verdict passed for these very weights on a CPU with bf16
dot products (``bf16_choice``).
"""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchformer.data.records import Label
from torchformer.export import quantize
from torchformer.export.onnx import METADATA_NAME, ONNX_NAME, sha256_of
from torchformer.export.quantize import DEFAULT_THRESHOLD, GateResult, accuracy_gate
from torchformer.io import atomic_write_text, recover_dir

logger = logging.getLogger(__name__)

BF16_GATE_NAME = "bf16_gate.json"
WEIGHTS_NAME = "model.safetensors"


def classifier_dir(path: str | os.PathLike) -> Path:
    """The model directory ``torchformer.load`` reads for ``path``: a run's ``best/``
    (after finishing an interrupted replacement of it, as ``load`` does), or ``path``
    itself (a model directory)."""
    path = Path(path)
    best = path / "best"
    if path.is_dir():
        recover_dir(best)
    return best if (best / "config.json").is_file() else path


def to_bf16(classifier: Any) -> Any:
    """Every tensor of ``classifier.model`` in bf16, in place; returns the classifier.

    Raises:
        ValueError: an object without a PyTorch ``model`` (an ONNX or ensemble classifier).
    """
    import torch

    from torchformer.api import TextClassifier

    model = getattr(classifier, "model", None)
    if not isinstance(classifier, TextClassifier) or not isinstance(model, torch.nn.Module):
        raise ValueError(
            f"bf16 weights are for PyTorch text classifiers; got {type(classifier).__name__}"
        )
    model.to(torch.bfloat16)
    return classifier


def gate_bf16(
    model_dir: str | os.PathLike,
    texts: Sequence[str],
    gold: Sequence[Label],
    *,
    source: str,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 32,
) -> GateResult:
    """fp32 vs bf16 weights of the classifier in ``model_dir`` on ``texts``; writes the
    verdict to ``<model dir>/bf16_gate.json`` (atomically) and returns it.

    Raises:
        ValueError: the directory holds no single PyTorch text classifier.
        FileNotFoundError: no ``model.safetensors`` to tie the verdict to.
    """
    from torchformer.api import load

    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"{model_dir}: not a local run or model directory")
    directory = classifier_dir(model_dir)
    if (directory / METADATA_NAME).is_file() or (directory / ONNX_NAME).is_file():
        raise ValueError(
            f"{directory}: an ONNX export; bf16 gates a PyTorch run or model directory "
            "(int8 is the ONNX route: `torchformer quantize` without --dtype)"
        )
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{directory}: no {WEIGHTS_NAME} to gate")
    fp32 = load(directory)
    bf16 = to_bf16(load(directory))
    gate = accuracy_gate(
        fp32, bf16, texts, gold, threshold=threshold, batch_size=batch_size, name="bf16"
    )
    record = {
        "bf16": {
            "gate": {**gate.to_dict(), "source": source},
            "weights": {"file": WEIGHTS_NAME, "sha256": sha256_of(weights)},
            "cpu": {"machine": platform.machine(), "flags": sorted(quantize.cpu_flags())},
        }
    }
    atomic_write_text(directory / BF16_GATE_NAME, json.dumps(record, indent=2) + "\n")
    return gate


@dataclass(frozen=True)
class Bf16Choice:
    """Whether to serve bf16 weights, and why (for the log)."""

    use: bool
    reason: str


def bf16_choice(model_dir: str | os.PathLike, flags: set[str] | None = None) -> Bf16Choice:
    """``serve --precision auto`` for a PyTorch classifier: bf16 when ``bf16_gate.json``
    says the gate passed for the weights now in the directory and the CPU has bf16 dot
    products; fp32 otherwise, with the reason.

    Raises:
        ValueError: a ``bf16_gate.json`` that is not the JSON this module writes (named
            with the field).
    """
    unsupported = quantize.bf16_unsupported(flags)
    if unsupported is not None:  # before reading (and hashing) anything
        return Bf16Choice(False, unsupported)
    directory = classifier_dir(model_dir)
    path = directory / BF16_GATE_NAME
    if not path.is_file():
        return Bf16Choice(
            False,
            f"no {BF16_GATE_NAME} (run `torchformer quantize {model_dir} --dtype bf16` "
            "to gate bf16 weights)",
        )
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))["bf16"]
        passed, recorded = entry["gate"]["passed"], str(entry["weights"]["sha256"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a bf16 gate record (bad or missing field: {e})") from None
    if not isinstance(passed, bool):
        raise ValueError(f"{path}: not a bf16 gate record (bf16.gate.passed is {passed!r})")
    if not passed:
        return Bf16Choice(False, f"the bf16 accuracy gate in {path} was refused")
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        return Bf16Choice(False, f"{directory}: no {WEIGHTS_NAME}, the weights the gate was for")
    if sha256_of(weights) != recorded:
        return Bf16Choice(False, f"{path} was written for other weights (sha256 differs)")
    return Bf16Choice(True, f"bf16 accuracy gate passed ({path})")
