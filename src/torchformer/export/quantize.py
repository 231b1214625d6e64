"""Faster graphs of an exported classifier, each behind a check: int8 and fused operators.

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

Two more graphs for the deployment benchmark:

- ``quantize_onnx_static``: static int8 (QDQ format), activation scales fixed
  beforehand from a calibration sample (which must not be the texts it is
  measured on), so no per-call min/max pass over the activations;
- ``fuse_onnx``: onnxruntime's transformer optimizer (BERT fusions: BiasGelu,
  SkipLayerNormalization, Attention where it matches), accepted only when the
  fused graph reproduces the unfused one's logits (``ParityError`` otherwise).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
# bf16 dot products (x86 AVX512-BF16 / AMX, Arm BF16): without them bf16 matmuls are emulated.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# Operators the transformer optimizer fuses into (counted before and after ``fuse_onnx``).
FUSED_OP_TYPES = (
    "Attention",
    "MultiHeadAttention",
    "EmbedLayerNormalization",
    "LayerNormalization",
    "SkipLayerNormalization",
    "Gelu",
    "BiasGelu",
    "FastGelu",
    "GemmFastGelu",
)
FUSION_TOLERANCE = 1e-4  # max |logit diff| between the fused and the unfused graph


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
            "16-bit multiply-adds, usually a small speed-up at best; weights are quantized to "
            "7 bits here (reduce_range) to avoid their saturation; measure with torchformer bench"
        )
    else:
        warning = "no AVX2 nor int8 dot-product instructions: int8 is likely slower than fp32 here"
    return CpuInt8Support(flags=present, int8_dot_product=dot, warning=warning)


def default_reduce_range(flags: set[str] | None = None) -> bool:
    """Whether to quantize weights to 7 bits on this CPU: yes on x86 with AVX2 or AVX-512
    but no int8 dot-product instructions (VNNI/AMX).

    There onnxruntime multiplies uint8 activations by int8 weights with 16-bit
    multiply-adds (``vpmaddubsw``), whose pairwise sums saturate at 32,767 when both
    factors are large; 7-bit weights keep every pair in range. This is onnxruntime's own
    advice for U8S8 on such CPUs, and Optimum's AVX2/AVX-512 quantization configurations
    set it, its VNNI one does not. Elsewhere (VNNI, AMX, Arm, unknown flags) full 8 bits.
    """
    flags = cpu_flags() if flags is None else flags
    x86_simd = "avx2" in flags or "avx512bw" in flags
    return x86_simd and not any(f in flags for f in INT8_DOT_FLAGS)


def bf16_unsupported(flags: set[str] | None = None) -> str | None:
    """Why bf16 autocast is not worth measuring on this CPU, or None when it has bf16 dot products."""
    flags = cpu_flags() if flags is None else flags
    if any(f in flags for f in BF16_FLAGS):
        return None
    if not flags:  # no /proc/cpuinfo (not Linux): ask oneDNN instead
        import torch

        if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return None
        return "could not read the CPU's flags, and oneDNN reports no bf16 support"
    return (
        "the CPU has no bf16 dot-product instructions (avx512_bf16, amx_bf16, Arm bf16): "
        "bf16 matmuls would be emulated, slower than fp32"
    )


@contextlib.contextmanager
def _errors_only() -> Iterator[None]:
    """onnxruntime's quantizer and optimizer log every skipped tensor and failed shape
    inference through the root logger (and print some): keep errors only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _load_for_quantization(path: str | os.PathLike) -> Any:
    import onnx

    model = onnx.load(str(path))
    # The dynamo exporter's value_info annotations can disagree with ONNX shape
    # inference (which the quantizer runs); they are hints only, so drop them.
    del model.graph.value_info[:]
    return model


def quantize_onnx(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    *,
    per_channel: bool = True,
    reduce_range: bool | None = None,
) -> Path:
    """Dynamic int8 quantization of MatMul/Gemm weights (QInt8), written to ``int8_path``.

    Args:
        per_channel: one scale per output channel (more accurate, same speed).
        reduce_range: 7-bit weights, for CPUs without VNNI (avoids saturation in
            their 16-bit multiply-adds) — costs a little accuracy elsewhere. None
            (the default): ``default_reduce_range()`` of this CPU.
    """
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise ImportError(
            "int8 quantization needs onnx and onnxruntime: pip install 'torchformer[export]'"
        ) from e
    model = _load_for_quantization(fp32_path)
    int8_path = Path(int8_path)
    if reduce_range is None:
        reduce_range = default_reduce_range()
    with _errors_only():
        quantize_dynamic(
            model,
            int8_path,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return int8_path


def quantize_onnx_static(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    calibration: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    per_channel: bool = True,
    reduce_range: bool | None = None,
) -> Path:
    """Static int8 quantization of MatMul/Gemm (QDQ format), written to ``int8_path``.

    Weights are QInt8 (per output channel by default); activations are QInt8 with
    scales fixed by a MinMax pass over ``calibration``, so nothing is measured at
    run time. The calibration batches should not be the texts the model is then
    evaluated or timed on.

    Args:
        calibration: (input_ids, attention_mask) pairs, int64 (B, T) each, tokenized
            and padded as at inference.
        reduce_range: 7-bit weights; None (the default): ``default_reduce_range()``.

    Raises:
        ValueError: no calibration batch.
    """
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError as e:
        raise ImportError(
            "int8 quantization needs onnx and onnxruntime: pip install 'torchformer[export]'"
        ) from e
    feeds = [
        {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
        for ids, mask in calibration
    ]
    if not feeds:
        raise ValueError("static int8 quantization needs at least one calibration batch")

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self.rest = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.rest, None)

        def rewind(self) -> None:
            self.rest = iter(feeds)

    int8_path = Path(int8_path)
    if reduce_range is None:
        reduce_range = default_reduce_range()
    with _errors_only():
        quantize_static(
            _load_for_quantization(fp32_path),
            int8_path,
            Feeds(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return int8_path


def op_counts(path: str | os.PathLike, op_types: Sequence[str] = FUSED_OP_TYPES) -> dict[str, int]:
    """How many nodes of each of ``op_types`` (any domain) the graph at ``path`` has (zeros left out)."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    counts = {op: sum(n.op_type == op for n in nodes) for op in op_types}
    return {op: n for op, n in counts.items() if n}


def graph_parity(
    reference: str | os.PathLike,
    candidate: str | os.PathLike,
    feeds: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    tolerance: float = FUSION_TOLERANCE,
) -> Any:
    """The ``ParityReport`` of one ONNX graph against another on the same inputs (one cell per
    (input_ids, attention_mask) pair; a feed the candidate cannot run fails its cell)."""
    from torchformer.export.onnx import INPUT_NAMES, OUTPUT_NAME, ParityReport, compare_cell
    from torchformer.export.session import make_session

    expected_session, session = make_session(reference), make_session(candidate)
    report = ParityReport(tolerance=tolerance)
    for ids, mask in feeds:
        feed = dict(zip(INPUT_NAMES, (ids.astype(np.int64), mask.astype(np.int64))))
        expected = expected_session.run([OUTPUT_NAME], feed)[0]  # (B, C)
        report.cells.append(compare_cell(session, feed, expected, *ids.shape))
    return report


@dataclass
class FusionResult:
    """A fused graph that passed its parity check, and the fused operators it holds."""

    path: Path
    parity: Any  # ParityReport against the unfused graph
    ops_before: dict[str, int]
    ops_after: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        worst = self.parity.worst
        return {
            "parity_max_abs_diff": worst.max_abs_diff,
            "parity_inputs": len(self.parity.cells),
            "tolerance": self.parity.tolerance,
            "ops_before": self.ops_before,
            "ops_after": self.ops_after,
        }


def fuse_onnx(
    fp32_path: str | os.PathLike,
    fused_path: str | os.PathLike,
    *,
    num_heads: int,
    hidden_size: int,
    feeds: Sequence[tuple[np.ndarray, np.ndarray]],
    tolerance: float = FUSION_TOLERANCE,
    opt_level: int = 2,
) -> FusionResult:
    """onnxruntime's BERT fusions applied to ``fp32_path``, accepted only when the fused
    graph reproduces the unfused logits on ``feeds`` within ``tolerance``.

    The fused graph is written to ``fused_path``; one already there is re-checked, not
    rebuilt.

    Args:
        feeds: (input_ids, attention_mask) int64 (B, T) pairs to compare on (padded rows
            included: a fusion that mishandles the mask shows there).
        opt_level: onnxruntime's offline optimisation before the Python fusions; 2 adds
            CPU-provider fusions (SkipLayerNormalization), so the graph is for CPUs.

    Raises:
        ParityError: the fused graph differs beyond ``tolerance`` or cannot run a feed;
            it is moved to ``*.rejected.onnx``, kept for inspection.
    """
    from torchformer.export.onnx import ParityError

    fused_path = Path(fused_path)
    if not fused_path.is_file():
        _optimize_bert(fp32_path, fused_path, num_heads, hidden_size, opt_level)
    report = graph_parity(fp32_path, fused_path, feeds, tolerance=tolerance)
    if not report.passed:
        rejected = fused_path.with_suffix(".rejected.onnx")
        fused_path.replace(rejected)
        raise ParityError(report, rejected)
    return FusionResult(fused_path, report, op_counts(fp32_path), op_counts(fused_path))


def _optimize_bert(
    fp32_path: str | os.PathLike, fused_path: Path, num_heads: int, hidden_size: int, level: int
) -> None:
    try:
        from onnxruntime.transformers import optimizer
    except ImportError as e:
        raise ImportError(
            "graph fusion needs onnxruntime (with its transformers tools): "
            "pip install 'torchformer[export]'"
        ) from e
    with _errors_only():
        model = optimizer.optimize_model(
            str(fp32_path),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=level,
            use_gpu=False,
        )
        model.save_model_to_file(str(fused_path))


@dataclass
class GateResult:
    """fp32 vs a cheaper model's accuracy on one labelled slice (``name``: "int8", "bf16");
    ``passed`` when the drop is within threshold. ``int8_accuracy`` is the cheaper model's,
    whatever its name (``to_dict`` calls it ``<name>_accuracy``)."""

    n: int
    fp32_accuracy: float  # percent
    int8_accuracy: float  # percent
    drop: float  # points, fp32 - int8
    threshold: float
    agreement: float  # percent of texts where both predict the same label
    passed: bool
    name: str = "int8"

    def message(self) -> str:
        verdict = "PASSED" if self.passed else "REFUSED"
        return (
            f"{self.name} accuracy gate {verdict}: fp32 {self.fp32_accuracy:.2f}% vs "
            f"{self.name} {self.int8_accuracy:.2f}% on {self.n} texts (drop {self.drop:+.2f} "
            f"points, threshold {self.threshold:g}; label agreement {self.agreement:.2f}%)"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d[f"{self.name}_accuracy"] = d.pop("int8_accuracy")
        return d


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
    name: str = "int8",
) -> GateResult:
    """Evaluate two classifiers (``predict_proba`` contract) on the same texts and compare.

    The cheaper model (``int8``; its kind is ``name``) passes when ``fp32 accuracy -
    its accuracy <= threshold`` (points).
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
    return GateResult(
        len(texts), acc32, acc8, drop, threshold, agreement, passed=drop <= threshold, name=name
    )


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
