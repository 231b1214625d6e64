"""ONNX export of a text classifier, checked against PyTorch over a grid of shapes.

An export is only as good as its worst input shape: graphs that were traced at
one batch size or length and silently break at another are the classic ONNX
failure. So every export here runs the exported graph under onnxruntime over a
grid — batch sizes {1, 3, 8} × lengths {1, 7, 64, the run's max_length, the
model's max_len}, rows of different lengths (padding exercised) — and compares
the logits with the PyTorch model's. Beyond the tolerance (default 1e-4,
absolute, on logits) the export fails, naming the worst cell.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` + onnxscript)
with dynamic batch and sequence axes, opset 23 by default. At opset 23 the
model's SDPA attention becomes one ONNX ``Attention`` node per layer (QK^T,
mask, softmax and PV in one onnxruntime kernel). Against the readable
``reference`` path, whose masked_fill alone (a ``Where`` over (B, H, T, S))
took 15% of the int8 model's time, it measured 13% faster in int8 and 7% in
fp32 (MiniLM, batches of 32 × 128/256 tokens, 2 threads). Below opset 23 SDPA
is decomposed into a longer graph with NaN guards, so ``auto`` exports the
reference path there. Either way the parity grid is the judge.

Shapes: B batch, T sequence length, C number of classes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from torchformer.api import EnsembleClassifier, TextClassifier
from torchformer.models.long_document import max_input_length

logger = logging.getLogger(__name__)

ONNX_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
METADATA_NAME = "export.json"
LABELS_NAME = "labels.json"
TOKENIZER_NAME = "tokenizer.json"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"
# Opset 23 (onnxruntime >= 1.23): the first with an ``Attention`` operator.
DEFAULT_OPSET = 23
ATTENTION_OPSET = 23
DEFAULT_TOLERANCE = 1e-4
GRID_BATCHES = (1, 3, 8)
GRID_BASE_LENGTHS = (1, 7, 64)


class ParityError(RuntimeError):
    """The exported graph does not reproduce the PyTorch logits within tolerance."""

    def __init__(self, report: ParityReport, onnx_path: Path | str) -> None:
        self.report = report
        super().__init__(f"{onnx_path}: ONNX parity check FAILED: {report.summary()}")


@dataclass
class ParityCell:
    """One grid cell: the largest absolute logit difference at (batch, length)."""

    batch: int
    length: int
    max_abs_diff: float  # NaN when the cell could not be compared (see ``error``)
    error: str | None = None


@dataclass
class ParityReport:
    """Parity of an ONNX graph against PyTorch over a grid of shapes."""

    tolerance: float
    cells: list[ParityCell] = field(default_factory=list)

    @property
    def worst(self) -> ParityCell:
        # NaN counts as worst of all: a NaN logit is never within tolerance.
        return max(self.cells, key=lambda c: np.inf if np.isnan(c.max_abs_diff) else c.max_abs_diff)

    @property
    def passed(self) -> bool:
        return all(c.max_abs_diff <= self.tolerance for c in self.cells)  # NaN fails too

    def summary(self) -> str:
        w = self.worst
        verdict = "passed" if self.passed else "exceeds"
        what = f"error: {w.error}" if w.error else f"max |logit diff| {w.max_abs_diff:.3g}"
        return (
            f"worst cell batch={w.batch} length={w.length}: {what} "
            f"{verdict} tolerance {self.tolerance:g} ({len(self.cells)} cells)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "tolerance": self.tolerance,
            "worst": _cell_dict(self.worst),
            "cells": [_cell_dict(c) for c in self.cells],
        }


def _cell_dict(cell: ParityCell) -> dict[str, Any]:
    """A JSON-safe cell: NaN (not comparable) becomes null."""
    out = asdict(cell)
    if np.isnan(cell.max_abs_diff):
        out["max_abs_diff"] = None
    return out


@dataclass
class ExportResult:
    """What ``export_classifier`` wrote."""

    out_dir: Path
    onnx_path: Path
    parity: ParityReport
    metadata: dict[str, Any]


class _LogitsOnly(nn.Module):
    """The graph to export: (input_ids, attention_mask) -> logits, nothing else."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids, attention_mask=attention_mask).logits  # (B, C)


def default_grid_lengths(clf: TextClassifier) -> tuple[int, ...]:
    """{1, 7, 64, settings.max_length, model max_len}, none above what the model takes (its
    max_len; a chunk-and-pool model takes documents of any length)."""
    max_len = clf.model.config.max_len
    wanted = {*GRID_BASE_LENGTHS, clf.settings.max_length, max_len}
    return tuple(sorted(n for n in wanted if 1 <= n <= max_input_length(clf.model.config)))


def with_attention(model: nn.Module, attn_impl: str) -> nn.Module:
    """A copy of ``model`` (same weights, eval mode) whose attention runs through ``attn_impl``."""
    if model.config.attn_impl == attn_impl:
        return model.eval()
    twin = type(model)(replace(model.config, attn_impl=attn_impl))
    twin.load_state_dict(model.state_dict())
    return twin.eval()


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """Raise some loggers to ERROR for the duration (the exporter logs every pass at INFO)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def resolve_attn_impl(attn_impl: str, opset: int) -> str:
    """ "auto": SDPA as an ONNX ``Attention`` node from opset 23, the reference path below it."""
    if attn_impl == "auto":
        return "sdpa" if opset >= ATTENTION_OPSET else "reference"
    if attn_impl not in ("sdpa", "reference"):
        raise ValueError(f"attn_impl must be 'auto', 'sdpa' or 'reference', got {attn_impl!r}")
    return attn_impl


def _sdpa_as_attention(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    """aten SDPA -> one ONNX ``Attention`` (opset 23) node.

    Same as the exporter's own translation except for the mask: ours is a
    (B, 1, 1, S) padding mask, and onnxruntime's CPU kernel wants the query
    axis spelled out, so it is expanded to (B, 1, T, S) first.
    """
    from onnxscript import opset23 as op

    if dropout_p != 0.0 or enable_gqa:
        raise ValueError("export needs eval-mode attention without dropout or grouped queries")
    if attn_mask is not None:
        target = op.Concat(
            op.Shape(attn_mask, start=0, end=2),  # (B, 1)
            op.Shape(query, start=2, end=3),  # (T,)
            op.Shape(key, start=2, end=3),  # (S,)
            axis=0,
        )
        attn_mask = op.Expand(attn_mask, target)  # (B, 1, T, S)
    out, _, _, _ = op.Attention(query, key, value, attn_mask, scale=scale, is_causal=is_causal)
    return out  # (B, H, T, Dh)


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    attn_impl: str = "auto",
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write ``model`` (an ``EncoderForSequenceClassification``) as one ONNX file.

    Inputs ``input_ids`` and ``attention_mask`` (int64, (B, T)), output ``logits``
    (float32, (B, C)); B and T are dynamic (1 <= T <= the model's max_len).

    Args:
        attn_impl: "auto" (see ``resolve_attn_impl``), "sdpa" or "reference".
        opset: ONNX opset; SDPA maps to the ``Attention`` operator from 23 on.
    """
    attn_impl = resolve_attn_impl(attn_impl, opset)
    graph = _LogitsOnly(with_attention(model, attn_impl))
    return export_graph(
        graph, path, attn_impl=attn_impl, opset=opset, max_length=max_input_length(model.config)
    )


def export_graph(
    graph: nn.Module, path: str | os.PathLike, *, attn_impl: str, opset: int, max_length: int
) -> Path:
    """Write ``graph`` ((input_ids, attention_mask) (B, T) int64 -> logits (B, C)) as one
    ONNX file with dynamic batch and sequence axes (1 <= T <= ``max_length``).

    Args:
        attn_impl: the attention path the graph's models already run ("sdpa" maps SDPA
            to one ONNX ``Attention`` node from opset 23 on, "reference").
        opset: ONNX opset.
    """
    translations = {}
    if attn_impl == "sdpa" and opset >= ATTENTION_OPSET:
        translations[torch.ops.aten.scaled_dot_product_attention.default] = _sdpa_as_attention
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = graph.eval()
    example = (torch.full((2, 16), 5, dtype=torch.long), torch.ones(2, 16, dtype=torch.long))
    example[1][1, 10:] = 0  # one padded row, as in real batches
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("sequence", min=1, max=max_length)
    axes = {0: batch, 1: seq}
    with (
        warnings.catch_warnings(),
        _quiet_loggers("torch.onnx", "onnxscript", "onnx_ir"),
        torch.no_grad(),
    ):
        warnings.simplefilter("ignore")  # the exporter's deprecation/registration chatter
        program = torch.onnx.export(
            graph,
            example,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes={"input_ids": axes, "attention_mask": axes},
            custom_translation_table=translations or None,
            verbose=False,
        )
    program.save(str(path), external_data=False)
    return path


def grid_inputs(
    vocab_size: int, batch: int, length: int, *, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Seeded ids (B, T) and a mask whose rows have different lengths (row 0 full)."""
    g = torch.Generator().manual_seed(seed * 100_003 + batch * 1009 + length)
    input_ids = torch.randint(0, vocab_size, (batch, length), generator=g)  # (B, T)
    attention_mask = torch.ones(batch, length, dtype=torch.long)  # (B, T)
    step = max(1, length // max(batch, 1))
    for row in range(1, batch):
        attention_mask[row, max(1, length - row * step) :] = 0
    return input_ids, attention_mask


def check_parity(
    model: nn.Module,
    session_or_path: Any,
    *,
    batches: tuple[int, ...] = GRID_BATCHES,
    lengths: tuple[int, ...],
    tolerance: float = DEFAULT_TOLERANCE,
    vocab_size: int | None = None,
) -> ParityReport:
    """Compare ONNX logits with ``model``'s over batches × lengths (never raises on mismatch).

    Padded positions are part of the check only through the logits: padding is
    masked, so the logits of a row must not depend on it.

    Args:
        model: a classifier (its output's ``logits``) or a module returning logits (B, C).
        vocab_size: the ids' range (default: ``model.config.vocab_size``).
    """
    from torchformer.export.session import make_session

    session = session_or_path
    if isinstance(session_or_path, (str, os.PathLike)):
        session = make_session(session_or_path)
    report = ParityReport(tolerance=tolerance)
    model = model.eval()
    vocab_size = vocab_size or model.config.vocab_size
    for batch in batches:
        for length in lengths:
            input_ids, attention_mask = grid_inputs(vocab_size, batch, length)
            with torch.inference_mode():
                out = model(input_ids, attention_mask=attention_mask)
                expected = getattr(out, "logits", out).float().numpy()  # (B, C)
            feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
            report.cells.append(compare_cell(session, feed, expected, batch, length))
    return report


def compare_cell(
    session: Any, feed: dict[str, np.ndarray], expected: np.ndarray, batch: int, length: int
) -> ParityCell:
    """One grid cell: the session's logits on ``feed`` against ``expected``; a graph that
    cannot run the shape, or answers another shape, fails the cell (NaN + the error)."""
    try:
        got = session.run([OUTPUT_NAME], feed)[0]
    except Exception as e:
        return ParityCell(batch, length, float("nan"), error=_first_line(e))
    if got.shape != expected.shape:
        error = f"output shape {got.shape}, expected {expected.shape}"
        return ParityCell(batch, length, float("nan"), error=error)
    return ParityCell(batch, length, float(np.abs(got.astype(np.float64) - expected).max()))


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"[:300]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    from torchformer import __version__

    return {
        "torchformer": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def export_classifier(
    clf: TextClassifier,
    out_dir: str | os.PathLike,
    *,
    attn_impl: str = "auto",
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    batches: tuple[int, ...] = GRID_BATCHES,
    lengths: tuple[int, ...] | None = None,
    source: str | None = None,
) -> ExportResult:
    """Export a loaded classifier to ``out_dir`` and check it over the parity grid.

    Writes ``model.onnx``, ``tokenizer.json``, ``torchformer.json`` (max length,
    truncation, cleaning), ``labels.json`` and ``export.json`` (opset, versions,
    input/output names, the parity grid and its verdict).

    An ``EnsembleClassifier`` whose members share a tokenizer and preprocessing is
    exported as one graph (``export.ensemble_onnx``).

    Raises:
        ParityError: a grid cell exceeds ``tolerance``; the files are kept for
            inspection and ``export.json`` records ``"passed": false``, which makes
            ``OnnxClassifier.from_dir`` refuse the directory.
        ValueError: an ensemble whose members' tokenizers or preprocessing differ.
    """
    options = dict(attn_impl=attn_impl, opset=opset, tolerance=tolerance, batches=batches)
    if isinstance(clf, EnsembleClassifier):
        from torchformer.export.ensemble_onnx import export_ensemble

        return export_ensemble(clf, out_dir, **options, lengths=lengths, source=source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    attn_impl = resolve_attn_impl(attn_impl, opset)
    onnx_path = export_model(clf.model, out / ONNX_NAME, attn_impl=attn_impl, opset=opset)
    write_preprocessing(out, clf)
    lengths = lengths or default_grid_lengths(clf)
    report = check_parity(
        clf.model, onnx_path, batches=batches, lengths=lengths, tolerance=tolerance
    )
    metadata = export_metadata(
        onnx_path,
        report,
        opset=opset,
        attn_impl=attn_impl,
        labels=clf.labels,
        max_sequence_length=max_input_length(clf.model.config),
        source=source,
    )
    return finish_export(out, onnx_path, report, metadata)


def write_preprocessing(out: Path, clf: TextClassifier) -> None:
    """``tokenizer.json``, ``torchformer.json`` and ``labels.json``: what turns text into
    the graph's inputs and its outputs into labels."""
    clf.tokenizer.save(out / TOKENIZER_NAME)
    clf.settings.write(out)
    (out / LABELS_NAME).write_text(json.dumps(clf.labels, indent=2) + "\n", encoding="utf-8")


def export_metadata(
    onnx_path: Path,
    report: ParityReport,
    *,
    opset: int,
    attn_impl: str,
    labels: list[str],
    max_sequence_length: int,
    source: str | None,
) -> dict[str, Any]:
    """The ``export.json`` of an exported text classifier."""
    return {
        "format": "onnx",
        "opset": opset,
        "inputs": list(INPUT_NAMES),
        "output": OUTPUT_NAME,
        "dynamic_axes": {"batch": 0, "sequence": 1},
        "max_sequence_length": max_sequence_length,
        "attn_impl": attn_impl,
        "labels": labels,
        "source": source,
        "versions": _versions(),
        "files": {ONNX_NAME: {"bytes": onnx_path.stat().st_size, "sha256": sha256_of(onnx_path)}},
        "parity": report.to_dict(),
    }


def finish_export(
    out: Path, onnx_path: Path, report: ParityReport, metadata: dict[str, Any]
) -> ExportResult:
    """Write ``export.json``; raise ``ParityError`` when the grid failed (files kept)."""
    write_metadata(out, metadata)
    if not report.passed:
        raise ParityError(report, onnx_path)
    logger.debug("exported %s: parity %s", onnx_path, report.summary())
    return ExportResult(out, onnx_path, report, metadata)


def read_metadata(export_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(export_dir) / METADATA_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{export_dir} has no {METADATA_NAME}; is it a torchformer export directory?"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def write_metadata(export_dir: str | os.PathLike, metadata: dict[str, Any]) -> None:
    path = Path(export_dir) / METADATA_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
