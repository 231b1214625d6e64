"""Training and evaluation plots as PNG bytes (matplotlib, Agg, no pyplot state).

Each ``plot_*`` function takes plain Python data (records read from
``metrics.jsonl``, arrays from the evaluation files, attention tensors) and
returns PNG bytes, or ``None`` when there is nothing to draw. Figures are
built on ``matplotlib.figure.Figure`` directly, so nothing touches pyplot's
global state or the user's backend.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from torchformer.evaluate.classification import expected_calibration_error

try:
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from PIL import Image  # a matplotlib dependency
except ImportError as e:  # the viz extra
    raise ImportError("plots need matplotlib: pip install 'torchformer[viz]'") from e

__all__ = [
    "accuracy_by_length",
    "attention_mosaic",
    "plot_accuracy_by_length",
    "plot_alignment",
    "plot_attention_grid",
    "plot_bleu",
    "plot_calibration",
    "plot_confusion_matrix",
    "plot_deletion_curves",
    "plot_learning_curves",
    "png_data_uri",
    "reliability_bins",
]

DPI = 100
# Metrics drawn on the validation panel, when a run logs them.
VAL_METRICS = ("accuracy", "macro_f1", "f1", "precision", "recall", "bleu", "chrf", "ppl", "bpc")


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src>``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _to_png(fig: Figure, *, tight: bool = True) -> bytes:
    """Render to PNG with a 256-colour palette: plots have few colours, and the report
    inlines every image, so this keeps it about three times smaller at no visible cost."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight" if tight else None)
    buffer.seek(0)
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(
            256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
    out = io.BytesIO()
    palette.save(out, format="png", optimize=True)
    return out.getvalue()


def _series(records: Sequence[dict], split: str, key: str, x: str = "step") -> tuple[list, list]:
    points = [
        (r[x], r[key])
        for r in records
        if r.get("split") == split
        and isinstance(r.get(key), (int, float))
        and r.get(x) is not None
        and math.isfinite(r[key])
    ]
    return [p[0] for p in points], [p[1] for p in points]


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average, bias-corrected (as TensorBoard's smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def plot_learning_curves(records: Sequence[dict]) -> bytes | None:
    """Train/validation loss, validation metrics and learning rate against the step."""
    train_x, train_loss = _series(records, "train", "loss")
    val_x, val_loss = _series(records, "val", "loss")
    lr_x, lr = _series(records, "train", "lr")
    metrics = {k: _series(records, "val", k) for k in VAL_METRICS}
    metrics = {k: v for k, v in metrics.items() if v[0]}
    panels = [
        p for p, has in (("loss", train_x or val_x), ("metric", metrics), ("lr", lr_x)) if has
    ]
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 3.2))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        if panel == "loss":
            if train_x:
                ax.plot(train_x, train_loss, color="#9bb7e0", lw=0.8, label="train")
                if len(train_x) > 5:
                    ax.plot(
                        train_x,
                        _smooth(train_loss),
                        color="#1f5fbf",
                        lw=1.5,
                        label="train (smoothed)",
                    )
            if val_x:
                ax.plot(val_x, val_loss, "o-", color="#d9480f", lw=1.5, ms=4, label="validation")
            ax.set_title("loss")
        elif panel == "metric":
            for name, (x, y) in metrics.items():
                ax.plot(x, y, "o-", ms=4, label=name)
            ax.set_title("validation metrics")
        else:
            ax.plot(lr_x, lr, color="#2b8a3e")
            ax.set_title("learning rate")
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if panel != "lr":
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _to_png(fig)


def plot_bleu(records: Sequence[dict]) -> bytes | None:
    """BLEU (and chrF when logged) on the validation set, per epoch."""
    series = {k: _series(records, "val", k, x="epoch") for k in ("bleu", "chrf")}
    series = {k: v for k, v in series.items() if v[0]}
    if "bleu" not in series:
        return None
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    for name, (x, y) in series.items():
        ax.plot(x, y, "o-", ms=4, label=name)
    ax.set(xlabel="epoch", ylabel="score", title="validation BLEU per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _to_png(fig)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> bytes:
    """Counts in each cell; colour is the row-normalised rate (recall per true class)."""
    counts = np.asarray(matrix, dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    size = min(2.5 + 0.6 * n, 12)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(n), labels, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), labels)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(
                    j, i, f"{int(counts[i, j])}", ha="center", va="center", color=color, fontsize=9
                )
    fig.tight_layout()
    return _to_png(fig)


def reliability_bins(
    confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 15
) -> list[dict]:
    """Equal-width confidence bins: ``{"low", "high", "count", "confidence", "accuracy"}`` each.

    A confidence c falls in bin ``min(floor(c · n_bins), n_bins - 1)``, the convention of
    ``torchformer.evaluate.classification.expected_calibration_error``, so the diagram
    and the ECE in ``metrics.json`` describe the same bins.
    """
    conf = np.asarray(confidence, dtype=float)
    ok = np.asarray(correct, dtype=float)
    index = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    bins = []
    for i in range(n_bins):
        members = index == i
        count = int(members.sum())
        bins.append(
            {
                "low": i / n_bins,
                "high": (i + 1) / n_bins,
                "count": count,
                "confidence": float(conf[members].mean()) if count else None,
                "accuracy": float(ok[members].mean()) if count else None,
            }
        )
    return bins


def plot_calibration(
    confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 15
) -> bytes | None:
    """Confidence histogram (correct vs wrong) and reliability diagram, ECE in the title."""
    if len(confidence) == 0:
        return None
    conf = np.asarray(confidence, dtype=float)
    ok = np.asarray(correct, dtype=bool)
    bins = reliability_bins(conf, ok, n_bins)
    fig = Figure(figsize=(9, 3.4))
    hist, rel = fig.subplots(1, 2)
    edges = np.linspace(0, 1, n_bins + 1)
    hist.hist(
        [conf[ok], conf[~ok]],
        bins=edges,
        stacked=True,
        color=["#2b8a3e", "#c92a2a"],
        label=["correct", "wrong"],
    )
    hist.set(xlabel="confidence (max probability)", ylabel="examples", title="confidence histogram")
    hist.legend(fontsize=8)
    centers = [(b["low"] + b["high"]) / 2 for b in bins]
    accs = [b["accuracy"] if b["count"] else 0.0 for b in bins]
    rel.bar(centers, accs, width=1 / n_bins, edgecolor="#1f5fbf", color="#9bb7e0", label="accuracy")
    rel.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    rel.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence",
        ylabel="accuracy",
        title=f"reliability diagram (ECE {expected_calibration_error(conf, ok, num_bins=n_bins):.3f})",
    )
    rel.legend(fontsize=8, loc="upper left")
    for ax in (hist, rel):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _to_png(fig)


def accuracy_by_length(
    lengths: Sequence[int], correct: Sequence[bool], n_buckets: int = 6
) -> list[dict]:
    """Accuracy per input-length bucket (quantile edges): ``{"low", "high", "count", "accuracy"}``."""
    length = np.asarray(lengths, dtype=float)
    ok = np.asarray(correct, dtype=float)
    if length.size == 0:
        return []
    edges = np.unique(np.quantile(length, np.linspace(0, 1, n_buckets + 1)).round())
    if edges.size == 1:
        edges = np.array([edges[0], edges[0]])
    index = np.clip(np.searchsorted(edges, length, side="right") - 1, 0, edges.size - 2)
    buckets = []
    for i in range(edges.size - 1):
        members = index == i
        if members.any():
            buckets.append(
                {
                    "low": int(length[members].min()),
                    "high": int(length[members].max()),
                    "count": int(members.sum()),
                    "accuracy": float(ok[members].mean()),
                }
            )
    return buckets


def plot_accuracy_by_length(
    lengths: Sequence[int], correct: Sequence[bool], n_buckets: int = 6
) -> bytes | None:
    """Bars of accuracy per length bucket, with the bucket sizes written on them."""
    buckets = accuracy_by_length(lengths, correct, n_buckets)
    if not buckets:
        return None
    fig = Figure(figsize=(5.5, 3.4))
    ax = fig.subplots()
    names = [f"{b['low']}–{b['high']}" for b in buckets]
    bars = ax.bar(names, [b["accuracy"] for b in buckets], color="#9bb7e0", edgecolor="#1f5fbf")
    for bar, b in zip(bars, buckets):
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height() + 0.01,
            f"n={b['count']}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set(
        ylim=(0, 1.1),
        xlabel="input length (tokens)",
        ylabel="accuracy",
        title="accuracy by input length",
    )
    ax.tick_params(axis="x", labelsize=8, rotation=20)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _to_png(fig)


def attention_mosaic(attentions: Tensor, *, max_cells: int = 48, gap: int = 2) -> np.ndarray:
    """Tile (L, H, T, S) attention into one (L·c + gaps, H·c + gaps) image, NaN in the gaps.

    Long inputs are aggregated: each map is average-pooled down to at most
    ``max_cells`` × ``max_cells`` (so a 512-token head becomes a 48×48 thumbnail).
    Each map is scaled by its own maximum so every head is readable.
    """
    L, H, T, S = attentions.shape
    maps = attentions.reshape(L * H, 1, T, S).float()  # (L·H, 1, T, S)
    rows, cols = min(T, max_cells), min(S, max_cells)
    maps = torch.nn.functional.adaptive_avg_pool2d(maps, (rows, cols))[:, 0]  # (L·H, rows, cols)
    maps = maps / maps.amax(dim=(1, 2), keepdim=True).clamp(min=1e-12)
    image = np.full((L * (rows + gap) - gap, H * (cols + gap) - gap), np.nan)
    for layer in range(L):
        for head in range(H):
            top, left = layer * (rows + gap), head * (cols + gap)
            image[top : top + rows, left : left + cols] = maps[layer * H + head].numpy()
    return image


def plot_attention_grid(
    attentions: Tensor, *, max_cells: int = 48, title: str | None = None
) -> bytes:
    """A layer × head grid of attention heatmaps (rows: layers, columns: heads) as one PNG.

    The axes are sized so that each mosaic pixel becomes an exact square of screen
    pixels (no resampling blur, and a small file).
    """
    L, H, T, S = attentions.shape
    image = attention_mosaic(attentions, max_cells=max_cells)
    rows, cols = min(T, max_cells), min(S, max_cells)
    # Screen pixels per mosaic pixel: thumbnails of ~50-64 px, at most ~900 px in all.
    scale = max(1, min(8, 64 // max(rows, cols), 900 // image.shape[1]))
    width, height = image.shape[1] * scale, image.shape[0] * scale
    bottom, top, right = 22, 24, 8  # margins in pixels, for the labels and the title
    left = max(32, (320 - width) // 2)  # room for the title on small grids
    fig_w, fig_h = width + left + right, height + bottom + top
    fig = Figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI)
    ax = fig.add_axes((left / fig_w, bottom / fig_h, width / fig_w, height / fig_h))
    cmap = colormaps["viridis"].with_extremes(bad="white")
    ax.imshow(
        np.ma.masked_invalid(image),
        cmap=cmap,
        vmin=0,
        vmax=1,
        interpolation="nearest",
        aspect="auto",
    )
    ax.set_xticks(
        [h * (cols + 2) + cols / 2 - 0.5 for h in range(H)], [f"h{h}" for h in range(H)], fontsize=7
    )
    ax.set_yticks(
        [i * (rows + 2) + rows / 2 - 0.5 for i in range(L)], [f"L{i}" for i in range(L)], fontsize=7
    )
    ax.tick_params(length=0, pad=2)
    for spine in ax.spines.values():
        spine.set_visible(False)
    pooled = " (pooled)" if max(T, S) > max_cells else ""
    ax.set_title(title or f"attention, layer × head, {T}×{S} tokens{pooled}", fontsize=8)
    return _to_png(fig, tight=False)


def plot_alignment(
    matrix: Tensor | np.ndarray,
    source_tokens: Sequence[str],
    target_tokens: Sequence[str],
    *,
    title: str = "",
) -> bytes:
    """Cross-attention alignment: output tokens (rows) against source tokens (columns)."""
    values = np.asarray(matrix, dtype=float)
    T, S = values.shape
    fig = Figure(figsize=(min(2 + 0.32 * S, 16), min(1.5 + 0.3 * T, 16)))
    ax = fig.subplots()
    ax.imshow(values, cmap="Blues", vmin=0, vmax=max(values.max(), 1e-12), aspect="auto")
    ax.set_xticks(range(S), list(source_tokens), rotation=90, fontsize=8)
    ax.set_yticks(range(T), list(target_tokens), fontsize=8)
    ax.set(xlabel="source", ylabel="output", title=title or "cross-attention alignment")
    fig.tight_layout()
    return _to_png(fig)


def plot_deletion_curves(
    curves: dict[str, Sequence[float]], fractions: Sequence[float], *, title: str = ""
) -> bytes:
    """Deletion curves: the predicted class's probability as each method's top tokens are
    removed (lower, sooner: the method found what the prediction depends on)."""
    fig = Figure(figsize=(5.5, 3.4))
    ax = fig.subplots()
    for method, curve in curves.items():
        style = {"linestyle": "--", "color": "grey"} if method == "random" else {"marker": "o"}
        ax.plot([100 * f for f in fractions], list(curve), label=method.replace("_", " "), **style)
    ax.set(
        xlabel="tokens removed, highest-scored first (%)",
        ylabel="probability of the prediction",
        ylim=(0, 1.02),
        title=title or "deletion curves",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _to_png(fig)
