"""Dynamic int8 quantization of an exported classifier, behind an accuracy gate.

onnxruntime's dynamic quantization stores the weights of every MatMul/Gemm as
int8 (per output channel by default) and quantizes activations on the fly, so
no calibration set is needed. Two known failure modes are checked instead of
trusted:

- accuracy: int8 can lose accuracy quietly. ``accuracy_gate`` evaluates the
  fp32 and int8 graphs on the same labelled slice and refuses the int8 model
  when accuracy drops by more than a threshold (default 1.0 point);
- speed: int8 is only fast with integer dot-product instructions (x86 VNNI or
  AMX, Arm dot-product/i8mm). ``cpu_int8_support`` reads the CPU's flags and
  says when int8 is unlikely to be faster.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torchformer.data.records import Label

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 1.0  # accuracy points
# Flags worth reporting: x86 SIMD and int8 dot products, Arm dot products.
REPORTED_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
)
INT8_DOT_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni", "asimddp", "i8mm")


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``); empty when unknown."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@dataclass
class CpuInt8Support:
    """What the CPU offers for int8 inference, and whether to expect a speed-up."""

    flags: list[str]
    int8_dot_product: bool
    warning: str | None

    def summary(self) -> str:
        flags = " ".join(self.flags) or "unknown"
        return f"CPU instruction sets: {flags}" + (
            f"\nWARNING: {self.warning}" if self.warning else ""
        )


def cpu_int8_support(flags: set[str] | None = None) -> CpuInt8Support:
    """Report the relevant flags and warn when int8 is unlikely to beat fp32."""
    flags = cpu_flags() if flags is None else flags
    present = [f for f in REPORTED_FLAGS if f in flags]
    dot = any(f in flags for f in INT8_DOT_FLAGS)
    warning = None
    if not flags:
        warning = (
            "could not read the CPU's flags; int8 speed is unknown, measure it (torchformer bench)"
        )
    elif dot:
        warning = None
    elif "avx2" in flags or "avx512bw" in flags:
        warning = (
            "no int8 dot-product instructions (VNNI/AMX): int8 MatMul falls back to "
            "16-bit multiply-adds, usually a small speed-up at best; consider --reduce-range "
            "(7-bit weights avoid their saturation) and measure with torchformer bench"
        )
    else:
        warning = "no AVX2 nor int8 dot-product instructions: int8 is likely slower than fp32 here"
    return CpuInt8Support(flags=present, int8_dot_product=dot, warning=warning)


def quantize_onnx(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    *,
    per_channel: bool = True,
    reduce_range: bool = False,
) -> Path:
    """Dynamic int8 quantization of MatMul/Gemm weights (QInt8), written to ``int8_path``.

    Args:
        per_channel: one scale per output channel (more accurate, same speed).
        reduce_range: 7-bit weights, for CPUs without VNNI (avoids overflow in
            their 16-bit multiply-adds) — costs a little accuracy elsewhere.
    """
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise ImportError(
            "int8 quantization needs onnx and onnxruntime: pip install 'torchformer[export]'"
        ) from e
    model = onnx.load(str(fp32_path))
    # The dynamo exporter's value_info annotations can disagree with ONNX shape
    # inference (which the quantizer runs); they are hints only, so drop them.
    del model.graph.value_info[:]
    int8_path = Path(int8_path)
    # The quantizer logs every skipped tensor through the root logger; keep errors only.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            model,
            int8_path,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)
    return int8_path


@dataclass
class GateResult:
    """fp32 vs int8 accuracy on one labelled slice; ``passed`` when the drop is within threshold."""

    n: int
    fp32_accuracy: float  # percent
    int8_accuracy: float  # percent
    drop: float  # points, fp32 - int8
    threshold: float
    agreement: float  # percent of texts where both predict the same label
    passed: bool

    def message(self) -> str:
        verdict = "PASSED" if self.passed else "REFUSED"
        return (
            f"int8 accuracy gate {verdict}: fp32 {self.fp32_accuracy:.2f}% vs int8 "
            f"{self.int8_accuracy:.2f}% on {self.n} texts (drop {self.drop:+.2f} points, "
            f"threshold {self.threshold:g}; label agreement {self.agreement:.2f}%)"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def accuracy(predicted: Sequence[int], gold: Sequence[Label], labels: Sequence[str]) -> float:
    """Percent correct; gold labels are names (matched to ``labels``) or class indices.

    Raises:
        ValueError: a gold label name the model does not know.
    """
    known = set(labels)
    correct = 0
    for i, (p, g) in enumerate(zip(predicted, gold, strict=True)):
        if isinstance(g, str):
            if g not in known:
                raise ValueError(
                    f"gold label {g!r} (example {i}) is not one of the model's labels {list(labels)}"
                )
            correct += labels[p] == g
        else:
            correct += p == g
    return 100.0 * correct / max(len(gold), 1)


def accuracy_gate(
    fp32: Any,
    int8: Any,
    texts: Sequence[str],
    gold: Sequence[Label],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 32,
) -> GateResult:
    """Evaluate two classifiers (``predict_proba`` contract) on the same texts and compare.

    The int8 model passes when ``fp32 accuracy - int8 accuracy <= threshold`` (points).
    """
    if len(texts) != len(gold) or not texts:
        raise ValueError(
            f"need as many labels as texts (got {len(texts)} texts, {len(gold)} labels), at least one"
        )
    p32 = fp32.predict_proba(list(texts), batch_size=batch_size).argmax(-1).tolist()
    p8 = int8.predict_proba(list(texts), batch_size=batch_size).argmax(-1).tolist()
    acc32 = accuracy(p32, gold, fp32.labels)
    acc8 = accuracy(p8, gold, int8.labels)
    agreement = 100.0 * sum(a == b for a, b in zip(p32, p8)) / len(texts)
    drop = acc32 - acc8
    return GateResult(len(texts), acc32, acc8, drop, threshold, agreement, passed=drop <= threshold)


def validation_slice(
    n: int,
    *,
    file: str | os.PathLike | None = None,
    text_column: str = "text",
    label_column: str = "label",
    seed: int = 0,
) -> tuple[list[str], list[Label], str]:
    """Labelled texts for the gate: the first ``n`` of a user file, or a balanced IMDB test sample.

    Returns:
        (texts, labels, description of the source).
    """
    if file is not None:
        from torchformer.data.tabular import read_table

        records = read_table(file, text_column=text_column, label_column=label_column).records[:n]
        source = f"{file} (first {len(records)} records)"
    else:
        from torchformer.data.imdb import balanced_sample, find_imdb, read_imdb

        path = find_imdb()
        records = balanced_sample(read_imdb(path, split="test"), n, seed=seed)
        source = f"IMDB test, balanced sample of {n} (seed {seed}) from {path}"
    return [r.text for r in records], [r.label for r in records], source


def copy_export(src: Path, dst: Path) -> None:
    """Copy an export directory's files (not a previous int8 model) to ``dst``."""
    from torchformer.api import SIDECAR_NAME
    from torchformer.export.onnx import LABELS_NAME, METADATA_NAME, ONNX_NAME, TOKENIZER_NAME

    dst.mkdir(parents=True, exist_ok=True)
    for name in (ONNX_NAME, TOKENIZER_NAME, SIDECAR_NAME, LABELS_NAME, METADATA_NAME):
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
