"""ONNX export of a ViT image classifier, checked against PyTorch over a grid.

The graph takes ``pixel_values`` (float32, (B, C, S, S), already normalised — the
input name and convention of Hugging Face's ONNX exports) and returns ``logits``
(B, K); the batch axis is dynamic. Decoding, resizing and normalisation stay outside
the graph, in ``OnnxImageClassifier`` (the same code ``ImageClassifier`` runs), with
the statistics saved next to the graph (``preprocessor_config.json``).

The parity grid: batch sizes {1, 3, 8} × three kinds of input (seeded noise, a constant
image, and a smooth gradient), logits compared with the PyTorch model's; beyond the
tolerance the export fails naming the worst cell, and ``export.json`` records it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from torchformer.api import ImageClassifier, ImageSettings
from torchformer.export.onnx import (
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    GRID_BATCHES,
    LABELS_NAME,
    ONNX_NAME,
    ExportResult,
    ParityError,
    ParityReport,
    _quiet_loggers,
    _versions,
    compare_cell,
    sha256_of,
    with_attention,
    write_metadata,
)

__all__ = ["PIXEL_INPUT", "check_image_parity", "export_image_classifier", "grid_pixels"]

PIXEL_INPUT = "pixel_values"
GRID_KINDS = ("noise", "constant", "gradient")


class _PixelsToLogits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.model(pixel_values).logits  # (B, K)


def export_image_model(
    model: nn.Module, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET
) -> Path:
    """Write a ``ViTForImageClassification`` as ONNX: pixel_values (B, C, S, S) -> logits."""
    cfg = model.config
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = _PixelsToLogits(with_attention(model, "reference")).eval()
    example = (torch.randn(2, cfg.num_channels, cfg.image_size, cfg.image_size),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with (
        warnings.catch_warnings(),
        _quiet_loggers("torch.onnx", "onnxscript", "onnx_ir"),
        torch.no_grad(),
    ):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            example,
            input_names=[PIXEL_INPUT],
            output_names=["logits"],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes={"pixel_values": {0: batch}},
            verbose=False,
        )
    program.save(str(path), external_data=False)
    return path


def grid_pixels(kind: str, batch: int, channels: int, size: int, *, seed: int = 0) -> Tensor:
    """Normalised-scale inputs (B, C, S, S) of one grid kind, seeded."""
    g = torch.Generator().manual_seed(seed * 7919 + batch * 31 + GRID_KINDS.index(kind))
    if kind == "noise":
        return torch.randn(batch, channels, size, size, generator=g)
    if kind == "constant":
        level = torch.rand(batch, channels, 1, 1, generator=g) * 4 - 2
        return level.expand(batch, channels, size, size).contiguous()
    ramp = torch.linspace(-2, 2, size)
    image = ramp[None, :] + ramp[:, None] * 0.5  # (S, S)
    return image.expand(batch, channels, size, size) * torch.rand(batch, 1, 1, 1, generator=g)


def check_image_parity(
    model: nn.Module,
    session: Any,
    *,
    batches: tuple[int, ...] = GRID_BATCHES,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ParityReport:
    """ONNX vs PyTorch logits over batches × input kinds (``length`` records the kind's index)."""
    cfg = model.config
    report = ParityReport(tolerance=tolerance)
    model = model.eval()
    for batch in batches:
        for k, kind in enumerate(GRID_KINDS):
            pixels = grid_pixels(kind, batch, cfg.num_channels, cfg.image_size)
            with torch.inference_mode():
                expected = model(pixels).logits.float().numpy()
            feed = {PIXEL_INPUT: pixels.numpy()}
            report.cells.append(compare_cell(session, feed, expected, batch, k))
    return report


def export_image_classifier(
    clf: ImageClassifier,
    out_dir: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    batches: tuple[int, ...] = GRID_BATCHES,
    source: str | None = None,
) -> ExportResult:
    """Export an image classifier to ``out_dir``: ``model.onnx``, ``preprocessor_config.json``,
    ``image_classification.json``, ``labels.json`` and ``export.json`` (with the parity grid).

    Raises:
        ParityError: a grid cell exceeds ``tolerance`` (the files are kept; ``export.json``
            records ``"passed": false`` and the runtime refuses the directory).
    """
    from torchformer.export.session import make_session

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = export_image_model(clf.model, out / ONNX_NAME, opset=opset)
    clf.normalization.write(out)
    ImageSettings(channels=clf.channels).write(out)
    (out / LABELS_NAME).write_text(json.dumps(clf.labels, indent=2) + "\n", encoding="utf-8")
    report = check_image_parity(
        clf.model, make_session(onnx_path), batches=batches, tolerance=tolerance
    )
    cfg = clf.model.config
    metadata = {
        "format": "onnx",
        "task": "image_classification",
        "opset": opset,
        "inputs": [PIXEL_INPUT],
        "output": "logits",
        "input_shape": ["batch", cfg.num_channels, cfg.image_size, cfg.image_size],
        "dynamic_axes": {"batch": 0},
        "grid_kinds": list(GRID_KINDS),  # a cell's "length" is the index of its kind
        "labels": clf.labels,
        "source": source,
        "versions": _versions(),
        "files": {ONNX_NAME: {"bytes": onnx_path.stat().st_size, "sha256": sha256_of(onnx_path)}},
        "parity": report.to_dict(),
    }
    write_metadata(out, metadata)
    if not report.passed:
        raise ParityError(report, onnx_path)
    return ExportResult(out, onnx_path, report, metadata)
