"""Streaming classification metrics and error analysis.

:class:`StreamingClassificationMetrics` is fed one batch of logits at a time and
never keeps them. Memory is bounded by:

- a ``(C, C)`` confusion matrix (rows: true label, columns: prediction, as in sklearn);
- a heap of the ``top_errors`` most confidently wrong examples (text cut to
  ``excerpt_chars``);
- three small per-example arrays: confidence (float32), correct (bool) and length
  (int32; characters of the text, or the lengths passed in), about 9 bytes per
  example, for calibration (ECE, reliability diagrams) and accuracy-by-length
  plots. Pass ``track_examples=False`` to drop them.

Precision, recall and F1 follow sklearn with ``zero_division=0``: a class never
predicted has precision 0, a class never present has recall 0, and both count in
the macro average.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from torchformer.io import atomic_write_text

__all__ = [
    "StreamingClassificationMetrics",
    "classification_report_text",
    "expected_calibration_error",
    "write_evaluation",
]


class StreamingClassificationMetrics:
    """Accumulates accuracy, per-class P/R/F1, a confusion matrix and the worst errors.

    Args:
        label_names: the name of each class index.
        top_errors: how many most-confidently-wrong examples to keep.
        top_correct: how many most-confidently-right examples to keep (for reports).
        excerpt_chars: texts of kept errors are cut to this many characters.
        track_examples: keep per-example (confidence, correct, length) arrays.
        ignore_index: examples with this label are skipped (padding in token tasks).
    """

    def __init__(
        self,
        label_names: Sequence[str],
        *,
        top_errors: int = 50,
        top_correct: int = 10,
        excerpt_chars: int = 300,
        track_examples: bool = True,
        ignore_index: int = -100,
    ):
        if len(label_names) < 2:
            raise ValueError(f"need at least 2 labels, got {list(label_names)}")
        self.label_names = [str(n) for n in label_names]
        self.top_errors = top_errors
        self.top_correct = top_correct
        self.excerpt_chars = excerpt_chars
        self.track_examples = track_examples
        self.ignore_index = ignore_index
        num_classes = len(self.label_names)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.loss_sum = 0.0
        self.loss_count = 0
        # min-heap on confidence: the root is the least confident kept error
        self._errors: list[tuple[float, int, dict[str, Any]]] = []
        self._correct: list[tuple[float, int, dict[str, Any]]] = []
        self._tiebreak = itertools.count()
        self._seen = 0
        self._chunks: dict[str, list[np.ndarray]] = {"confidence": [], "correct": [], "length": []}

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def update(
        self,
        logits: Tensor,
        labels: Tensor,
        texts: Sequence[str] | None = None,
        ids: Sequence[Any] | None = None,
        *,
        lengths: Sequence[int] | Tensor | None = None,
        loss: Tensor | float | None = None,
    ) -> None:
        """Add one batch.

        Args:
            logits: ``(B, C)`` scores (any device, any float dtype).
            labels: ``(B,)`` class indices; ``ignore_index`` entries are skipped.
            texts: the ``B`` input texts, kept (cut) for the worst errors and for lengths.
            ids: ``B`` identifiers (file names, row numbers) stored with the errors.
            lengths: ``B`` lengths (e.g. tokens) for the per-example arrays; default
                ``len(text)`` in characters, else 0.
            loss: per-example ``(B,)`` losses, or the batch mean as a scalar.

        Raises:
            ValueError: mismatched sizes or a label outside ``[0, C)``.
        """
        if logits.ndim != 2 or logits.size(1) != self.num_classes:
            raise ValueError(f"logits must be (B, {self.num_classes}), got {tuple(logits.shape)}")
        batch_size = logits.size(0)
        for name, seq in (("labels", labels), ("texts", texts), ("ids", ids), ("lengths", lengths)):
            if seq is not None and len(seq) != batch_size:
                raise ValueError(f"{name} has {len(seq)} entries for a batch of {batch_size}")
        probs = logits.detach().float().softmax(dim=-1).cpu()  # (B, C)
        labels = labels.detach().cpu().long()
        keep = labels != self.ignore_index
        kept = labels[keep]
        out_of_range = (kept < 0) | (kept >= self.num_classes)
        if out_of_range.any():
            bad = kept[out_of_range][:5].tolist()
            raise ValueError(f"labels {bad} are outside [0, {self.num_classes})")
        if loss is not None:
            self._add_loss(loss, int(keep.sum()))

        confidence, predicted = probs.max(dim=-1)  # (B,), (B,)
        index = torch.nonzero(keep).flatten()
        true, pred = labels[index], predicted[index]
        self.confusion += torch.bincount(
            true * self.num_classes + pred, minlength=self.num_classes**2
        ).view(self.num_classes, self.num_classes)  # (C, C)
        correct = true == pred
        if self.track_examples:
            self._chunks["confidence"].append(confidence[index].numpy().astype(np.float32))
            self._chunks["correct"].append(correct.numpy())
            self._chunks["length"].append(self._lengths(index, texts, lengths))
        batch = (probs, labels, predicted, texts, ids)
        self._keep_most_confident(self._errors, self.top_errors, index[~correct], *batch)
        self._keep_most_confident(self._correct, self.top_correct, index[correct], *batch)
        self._seen += batch_size

    def _add_loss(self, loss: Tensor | float, count: int) -> None:
        loss = torch.as_tensor(loss).detach().double().cpu()
        if loss.ndim == 0:  # a batch mean
            self.loss_sum += float(loss) * count
        else:  # per example
            self.loss_sum += float(loss.sum())
        self.loss_count += count if loss.ndim == 0 else loss.numel()

    def _lengths(self, index: Tensor, texts: Any, lengths: Any) -> np.ndarray:
        if lengths is not None:
            values = torch.as_tensor(lengths).detach().cpu()[index]  # lengths may be on the GPU
            return values.numpy().astype(np.int32)
        if texts is not None:
            return np.array([len(texts[i]) for i in index.tolist()], dtype=np.int32)
        return np.zeros(len(index), dtype=np.int32)

    def _keep_most_confident(
        self,
        heap: list,
        limit: int,
        rows: Tensor,
        probs: Tensor,
        labels: Tensor,
        predicted: Tensor,
        texts: Any,
        ids: Any,
    ) -> None:
        """Keep the ``limit`` most confident of ``rows`` seen so far in a min-heap."""
        if limit <= 0 or rows.numel() == 0:
            return
        confidence = probs.max(dim=-1).values[rows]
        # at most `limit` rows of this batch can enter the heap: look at those only
        order = confidence.argsort(descending=True)[:limit]
        for i in rows[order].tolist():
            conf = float(probs[i].max())
            if len(heap) >= limit and conf <= heap[0][0]:
                break  # sorted: nothing further in this batch beats the heap's minimum
            true, pred = int(labels[i]), int(predicted[i])
            record = {
                "id": ids[i] if ids is not None else self._seen + i,
                "true": self.label_names[true],
                "predicted": self.label_names[pred],
                "confidence": round(conf, 6),
                "true_probability": round(float(probs[i, true]), 6),
                "text": texts[i][: self.excerpt_chars] if texts is not None else None,
            }
            entry = (conf, next(self._tiebreak), record)
            if len(heap) < limit:
                heapq.heappush(heap, entry)
            else:
                heapq.heapreplace(heap, entry)

    def errors(self) -> list[dict[str, Any]]:
        """The kept errors, most confidently wrong first."""
        return [record for _, _, record in sorted(self._errors, key=lambda e: (-e[0], e[1]))]

    def correct_examples(self) -> list[dict[str, Any]]:
        """The kept correct predictions, most confident first."""
        return [record for _, _, record in sorted(self._correct, key=lambda e: (-e[0], e[1]))]

    def examples(self) -> dict[str, np.ndarray]:
        """Per-example ``confidence``, ``correct`` and ``length`` arrays (in update order)."""
        if not self.track_examples:
            raise ValueError("per-example arrays were not tracked (track_examples=False)")
        dtypes = {"confidence": np.float32, "correct": np.bool_, "length": np.int32}
        return {
            name: np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtypes[name])
            for name, chunks in self._chunks.items()
        }

    def compute(self) -> dict[str, Any]:
        """Everything accumulated so far, as JSON-serialisable builtins.

        Returns:
            ``accuracy``, ``num_examples``, ``macro_{precision,recall,f1}``,
            ``weighted_{precision,recall,f1}``, ``per_class`` (name -> precision, recall,
            f1, support), ``labels``, ``confusion_matrix`` (list of lists, rows = true),
            ``loss`` (mean, or ``None``), ``ece`` (or ``None``) and ``errors``.
        """
        cm = self.confusion.double()
        support = cm.sum(dim=1)  # (C,) true counts
        predicted = cm.sum(dim=0)  # (C,) predicted counts
        tp = cm.diagonal()
        precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
        recall = torch.where(support > 0, tp / support.clamp(min=1), 0.0)
        denom = precision + recall
        f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), 0.0)
        total = float(support.sum())
        weights = support / total if total else support

        def avg(values: Tensor, w: Tensor | None = None) -> float:
            return float((values * w).sum()) if w is not None else float(values.mean())

        ece, examples = None, None
        if self.track_examples and total:
            ex = self.examples()
            ece = expected_calibration_error(ex["confidence"], ex["correct"])
            examples = {
                "confidence": [round(float(c), 5) for c in ex["confidence"]],
                "correct": [bool(c) for c in ex["correct"]],
                "length": [int(n) for n in ex["length"]],
            }
        return {
            "accuracy": float(tp.sum() / total) if total else 0.0,
            "num_examples": int(total),
            "macro_precision": avg(precision),
            "macro_recall": avg(recall),
            "macro_f1": avg(f1),
            "weighted_precision": avg(precision, weights),
            "weighted_recall": avg(recall, weights),
            "weighted_f1": avg(f1, weights),
            "per_class": {
                name: {
                    "precision": float(precision[c]),
                    "recall": float(recall[c]),
                    "f1": float(f1[c]),
                    "support": int(support[c]),
                }
                for c, name in enumerate(self.label_names)
            },
            "labels": list(self.label_names),
            "confusion_matrix": self.confusion.tolist(),
            "loss": self.loss_sum / self.loss_count if self.loss_count else None,
            "ece": ece,
            "errors": self.errors(),
            "correct_examples": self.correct_examples(),
            "examples": examples,
        }


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, *, num_bins: int = 15
) -> float:
    """ECE (Guo et al., 2017): mean |accuracy - confidence| over equal-width confidence bins,
    weighted by the fraction of examples in each bin."""
    if len(confidence) == 0:
        return 0.0
    bins = np.minimum((confidence * num_bins).astype(np.int64), num_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        gap = abs(float(correct[in_bin].mean()) - float(confidence[in_bin].mean()))
        total += gap * in_bin.sum() / len(confidence)
    return float(total)


def classification_report_text(result: dict[str, Any], *, digits: int = 4) -> str:
    """Format :meth:`StreamingClassificationMetrics.compute` output like sklearn's
    ``classification_report`` (same columns, widths and average rows)."""
    names = result["labels"]
    width = max(len(n) for n in [*names, "weighted avg"])
    headers = ["precision", "recall", "f1-score", "support"]
    report = ("{:>{width}s} " + " {:>9}" * len(headers)).format("", *headers, width=width)
    report += "\n\n"
    row = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    for name in names:
        c = result["per_class"][name]
        report += row.format(
            name, c["precision"], c["recall"], c["f1"], c["support"], width=width, digits=digits
        )
    total = result["num_examples"]
    report += "\n"
    report += ("{:>{width}s} " + " {:>9}" * 2 + " {:>9.{digits}f} {:>9}\n").format(
        "accuracy", "", "", result["accuracy"], total, width=width, digits=digits
    )
    for label, kind in (("macro avg", "macro"), ("weighted avg", "weighted")):
        report += row.format(
            label,
            result[f"{kind}_precision"],
            result[f"{kind}_recall"],
            result[f"{kind}_f1"],
            total,
            width=width,
            digits=digits,
        )
    return report


def write_evaluation(
    out_dir: str | os.PathLike[str], result: dict[str, Any], *, prefix: str = ""
) -> dict[str, Path]:
    """Write an evaluation's files into ``out_dir`` (each atomically).

    Files (``prefix`` is prepended to each name, e.g. ``"test_"``):
    ``classification_report.txt``, ``metrics.json`` (the scalar and per-class results),
    ``confusion_matrix.json`` (``{"labels", "matrix"}``), ``errors.jsonl`` (most
    confidently wrong first), ``correct.jsonl`` (most confidently right first) and
    ``examples.json`` (per-example ``confidence``/``correct``/``length`` lists, for
    calibration and length plots) when the result has them.

    Returns:
        name -> path of each file written.
    """
    out = Path(out_dir)
    paths = {
        "report": out / f"{prefix}classification_report.txt",
        "metrics": out / f"{prefix}metrics.json",
        "confusion_matrix": out / f"{prefix}confusion_matrix.json",
        "errors": out / f"{prefix}errors.jsonl",
        "correct": out / f"{prefix}correct.jsonl",
        "examples": out / f"{prefix}examples.json",
    }
    bulky = ("errors", "correct_examples", "examples")
    metrics = {k: v for k, v in result.items() if k not in bulky}
    confusion = {"labels": result["labels"], "matrix": result["confusion_matrix"]}

    def jsonl(rows: list[dict[str, Any]]) -> str:
        # ASCII-escaped: review texts hold characters such as U+0085 that splitlines() breaks on.
        return "".join(json.dumps(e) + "\n" for e in rows)

    atomic_write_text(paths["report"], classification_report_text(result))
    atomic_write_text(paths["metrics"], json.dumps(metrics, indent=2, default=str) + "\n")
    atomic_write_text(paths["confusion_matrix"], json.dumps(confusion) + "\n")
    atomic_write_text(paths["errors"], jsonl(result.get("errors", [])))
    atomic_write_text(paths["correct"], jsonl(result.get("correct_examples", [])))
    if result.get("examples") is not None:
        atomic_write_text(paths["examples"], json.dumps(result["examples"]) + "\n")
    else:
        del paths["examples"]
    return paths
