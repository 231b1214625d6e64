"""Plots: the numbers behind them, and PNGs that decode to images of a sensible size."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from torchformer.evaluate.classification import expected_calibration_error
from torchformer.viz.plots import (
    accuracy_by_length,
    attention_mosaic,
    plot_accuracy_by_length,
    plot_alignment,
    plot_attention_grid,
    plot_bleu,
    plot_calibration,
    plot_confusion_matrix,
    plot_learning_curves,
    png_data_uri,
    reliability_bins,
)


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        return image.size


def records() -> list[dict]:
    train = [
        {"step": s, "epoch": s / 10, "split": "train", "loss": 1 / s, "lr": 1e-3 * s / 30}
        for s in range(1, 31)
    ]
    val = [
        {"step": s, "epoch": s / 10, "split": "val", "loss": 1.2 / s, "accuracy": 0.5 + s / 100}
        for s in (10, 20, 30)
    ]
    return train + val


def test_learning_curves_have_a_panel_per_kind_of_series():
    full = png_size(plot_learning_curves(records()))
    only_train = png_size(
        plot_learning_curves([r | {"lr": None} for r in records() if r["split"] == "train"])
    )
    assert full[0] > 2.5 * only_train[0] * 0.9  # three panels (loss, metrics, lr) against one
    assert plot_learning_curves([]) is None


def test_bleu_plot_only_for_translation_runs():
    assert plot_bleu(records()) is None
    bleu = [
        {"step": e * 100, "epoch": e, "split": "val", "bleu": 10.0 + e, "chrf": 30.0 + e}
        for e in range(1, 5)
    ]
    assert png_size(plot_bleu(bleu))[0] > 200


def test_reliability_bins_match_the_evaluation_ece():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 500)
    correct = rng.uniform(size=500) < confidence - 0.1  # over-confident
    bins = reliability_bins(confidence, correct, n_bins=15)
    assert sum(b["count"] for b in bins) == 500
    ece = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]) / 500
    assert ece == pytest.approx(
        expected_calibration_error(confidence, correct, num_bins=15), abs=1e-9
    )
    assert ece > 0.05
    assert png_size(plot_calibration(confidence, correct))[0] > 400
    assert plot_calibration([], []) is None


def test_accuracy_by_length_buckets():
    lengths = list(range(1, 101))
    correct = [n <= 50 for n in lengths]  # short inputs right, long ones wrong
    buckets = accuracy_by_length(lengths, correct, n_buckets=4)
    assert sum(b["count"] for b in buckets) == 100
    assert buckets[0]["accuracy"] == 1.0 and buckets[-1]["accuracy"] == 0.0
    assert buckets[0]["low"] == 1 and buckets[-1]["high"] == 100
    assert accuracy_by_length([7, 7, 7], [True, False, True])[0]["count"] == 3  # one length only
    assert png_size(plot_accuracy_by_length(lengths, correct))[0] > 300


def test_confusion_matrix_png():
    assert png_size(plot_confusion_matrix([[50, 3], [7, 40]], ["neg", "pos"]))[0] > 200
    assert (
        png_size(
            plot_confusion_matrix(np.eye(25, dtype=int).tolist(), [f"c{i}" for i in range(25)])
        )[0]
        > 500
    )


def test_attention_mosaic_pools_long_inputs():
    T = 480  # 10 tokens per thumbnail cell
    identity = torch.eye(T).expand(2, 3, T, T)  # (L, H, T, T): each token attends to itself
    image = attention_mosaic(identity, max_cells=48)
    assert image.shape == (2 * 48 + 2, 3 * 48 + 2 * 2)  # never 480×480 per head
    first = image[:48, :48]
    assert np.allclose(np.diag(first), 1.0) and first[0, 47] == 0.0  # the diagonal survives pooling
    assert np.isnan(image[48, 0]) and np.isnan(image[0, 48])  # gaps between cells
    small = attention_mosaic(torch.rand(1, 2, 5, 7).softmax(-1))
    assert small.shape == (5, 2 * 7 + 2)


def test_attention_grid_and_alignment_pngs():
    att = torch.rand(6, 12, 300, 300).softmax(-1)
    width, height = png_size(plot_attention_grid(att))
    assert width > height > 100  # 12 heads across, 6 layers down
    align = torch.rand(5, 7).softmax(-1)
    assert png_size(plot_alignment(align, list("abcdefg"), list("vwxyz")))[0] > 100
    assert png_data_uri(b"\x89PNG").startswith("data:image/png;base64,iVBORw")
