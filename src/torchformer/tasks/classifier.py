"""A loaded text classifier: model + tokenizer + the run's preprocessing, and ``predict()``.

This is the public inference object of the classification task. It reads a
model directory in Hugging Face layout (``config.json``, ``model.safetensors``,
``tokenizer.json``) plus our sidecar ``torchformer.json`` (truncation strategy,
max length, cleaning steps) when present — a run's ``best/`` directory, or any
BERT-family directory from the Hub.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from torchformer.checkpoints import load_pretrained, save_pretrained
from torchformer.checkpoints.hf import resolve_model_dir
from torchformer.data.batching import pad_batch
from torchformer.data.records import DataError
from torchformer.evaluate.classification import StreamingClassificationMetrics
from torchformer.io import JsonSettings
from torchformer.models.encoder import EncoderForSequenceClassification
from torchformer.text.preprocessor import TextPreprocessor
from torchformer.text.tokenizer import Tokenizer

SIDECAR_NAME = "torchformer.json"


@dataclass
class InferenceSettings(JsonSettings):
    """How raw text becomes model input; saved next to the weights as ``torchformer.json``."""

    FILE_NAME: ClassVar[str] = SIDECAR_NAME
    task: str = "classification"
    max_length: int = 256
    truncation: str = "head+tail"
    head_tokens: int | None = None
    cleaning: list[str] = field(default_factory=lambda: ["strip_html", "normalize_whitespace"])

    def preprocessor(self, tokenizer: Tokenizer) -> TextPreprocessor:
        """The text preprocessor these settings describe, around ``tokenizer``."""
        return TextPreprocessor(
            tokenizer,
            cleaning=self.cleaning,
            max_length=self.max_length,
            truncation=self.truncation,
            head_tokens=self.head_tokens,
        )


def validate_texts(texts: object) -> list[str]:
    """A list of non-empty strings, or a clear error naming the offending index."""
    if isinstance(texts, str):
        return [texts] if texts.strip() else validate_texts([texts])
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
        if not t.strip():
            raise ValueError(f"texts[{i}] is empty or whitespace only")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:  # found here, the index is the caller's
            raise ValueError(
                f"texts[{i}] is not valid Unicode: a lone surrogate at character {e.start}"
            ) from None
    return list(texts)


class TextClassifier:
    """Fine-tuned (or loaded) classifier ready for ``predict()``.

    Args:
        model: an ``EncoderForSequenceClassification``.
        tokenizer: its tokenizer.
        settings: truncation/cleaning used in training.
    """

    def __init__(
        self,
        model: EncoderForSequenceClassification | None,
        tokenizer: Tokenizer,
        settings: InferenceSettings | None = None,
        *,
        labels: list[str] | None = None,
    ) -> None:
        """``model`` may be None for a subclass that overrides ``_logits`` (e.g. ONNX);
        ``labels`` then names the classes (default: the model's id2label)."""
        self.model = model.eval() if model is not None else None
        self.tokenizer = tokenizer
        self.settings = settings or InferenceSettings()
        self.preprocessor = self.settings.preprocessor(tokenizer)  # the one training used
        self.cleaner = self.preprocessor.cleaner
        if labels is None:
            cfg = model.config
            labels = [cfg.id2label.get(i, str(i)) for i in range(cfg.num_labels)]
        self.labels = list(labels)

    @classmethod
    def from_dir(cls, path: str | os.PathLike, **overrides) -> TextClassifier:
        """Load a run's ``best/`` directory or any BERT-family HF directory."""
        model_dir = resolve_model_dir(path)
        model, _ = load_pretrained(model_dir, task="classification", **overrides)
        tokenizer = Tokenizer.from_pretrained_dir(model_dir)
        return cls(model, tokenizer, InferenceSettings.read(model_dir))

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write model, tokenizer and settings in HF layout (+ ``torchformer.json``)."""
        out = save_pretrained(self.model, out_dir, tokenizer=self.tokenizer)
        self.settings.write(out)
        return out

    def clean(self, texts: list[str]) -> list[str]:
        """The run's cleaning steps applied to each text; a text that cleans to nothing
        (e.g. only HTML) raises ``ValueError`` naming its index in ``texts``."""
        cleaned, empty = self.preprocessor.clean(texts)
        if empty:
            i = empty[0]
            raise ValueError(
                f"texts[{i}] is empty after the cleaning steps {list(self.cleaner.steps)}: "
                f"{texts[i][:80]!r}"
            )
        return cleaned

    def encode(self, texts: list[str], *, cleaned: bool = False) -> tuple[Tensor, Tensor]:
        """Clean (unless ``cleaned``), tokenize with the run's truncation, pad:
        (input_ids, attention_mask), each (B, T)."""
        cleaned_texts = texts if cleaned else self.clean(texts)
        return pad_batch(self.preprocessor.encode(cleaned_texts), self.tokenizer.pad_id)

    def _logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits (B, C) for one padded batch; the one step a backend replaces."""
        device = next(self.model.parameters()).device
        return self.model(input_ids.to(device), attention_mask=attention_mask.to(device)).logits

    @torch.inference_mode()
    def predict_proba(
        self, texts: list[str] | str, *, batch_size: int = 32, cleaned: bool = False
    ) -> Tensor:
        """Class probabilities (N, C), batched, in input order (``cleaned``: the texts
        have been through ``clean()`` already)."""
        texts = validate_texts(texts)
        if not cleaned:
            texts = self.clean(texts)  # errors name the caller's index
        # Sort by length so each batch pads little; restore the order at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        probs = torch.empty(len(texts), len(self.labels))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            input_ids, attention_mask = self.encode([texts[i] for i in idx], cleaned=True)  # (B, T)
            probs[idx] = self._logits(input_ids, attention_mask).float().softmax(-1).cpu()
        return probs

    def predict(self, texts: list[str] | str, *, batch_size: int = 32) -> list[dict]:
        """For each text: ``{"label", "confidence", "probabilities": {label: p}}``.

        Raises:
            TypeError / ValueError: a non-string text, or one that is empty (or empty
                after the run's cleaning) or not valid Unicode, naming its index.
        """
        return predictions_of(self.predict_proba(texts, batch_size=batch_size), self.labels)


def predictions_of(probs: Tensor, labels: list[str]) -> list[dict]:
    """``predict()``'s answer for class probabilities ``probs`` (N, C) over ``labels``:
    for each row ``{"label", "confidence", "probabilities": {label: p}}``."""
    out = []
    for row in probs.tolist():
        best = max(range(len(row)), key=row.__getitem__)
        out.append(
            {
                "label": labels[best],
                "confidence": row[best],
                "probabilities": dict(zip(labels, row)),
            }
        )
    return out


def evaluate_records(
    clf,
    records: Sequence,
    *,
    batch_size: int = 64,
    source: str | os.PathLike | None = None,
    text_field: str | None = "text",
    label_field: str | None = "label",
) -> dict:
    """Classification metrics of ``clf`` (a ``TextClassifier`` or an ensemble) over
    labelled records (``.text``, ``.label``, ``.id``): what ``torchformer evaluate``
    writes. Texts are cleaned once with the model's own steps, sorted by length over
    the whole data (each batch pads little), then predicted in batches of ``batch_size``; the loss is the mean negative log-probability of the
    true label (for an ensemble: of its averaged probabilities).

    Raises:
        DataError: a label the model does not know, or a text its cleaning empties,
            naming ``source``, the record and the field.
    """
    unknown = sorted({str(r.label) for r in records} - set(clf.labels))
    if unknown:
        raise DataError(
            f"labels {unknown} are not among the model's labels {clf.labels}",
            file=source,
            field=label_field,
        )
    cleaned, empty = clf.cleaner.clean_and_find_empty(r.text for r in records)  # once
    if empty:
        raise DataError(
            f"the text of record {records[empty[0]].id!r} is empty after the model's "
            f"cleaning steps {list(clf.cleaner.steps)} ({len(empty)} such record(s))",
            file=source,
            field=text_field,
        )
    metrics = StreamingClassificationMetrics(clf.labels)
    names = getattr(clf, "names", None) if hasattr(clf, "members") else None  # an ensemble
    member_counts = [_MemberScore(len(clf.labels)) for _ in names or []]
    # The whole file sorted by length, so each batch pads little (not only within a batch).
    order = sorted(range(len(records)), key=lambda i: len(cleaned[i]))
    for start in range(0, len(order), batch_size):
        chunk = [records[i] for i in order[start : start + batch_size]]
        texts = [cleaned[i] for i in order[start : start + batch_size]]
        labels = torch.tensor([clf.labels.index(str(r.label)) for r in chunk])  # (B,)
        if names is None:
            probs = clf.predict_proba(texts, batch_size=batch_size, cleaned=True)  # (B, C)
        else:
            probs, members = clf.predict_proba(
                texts, batch_size=batch_size, cleaned=True, return_members=True
            )
            for score, member_probs in zip(member_counts, members):
                score.update(member_probs, labels)
        log_probs = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()  # (B, C)
        metrics.update(
            log_probs,
            labels,
            texts=[r.text for r in chunk],
            ids=[r.id for r in chunk],
            loss=torch.nn.functional.nll_loss(log_probs, labels, reduction="none"),  # (B,)
        )
    result = metrics.compute()
    if names is not None:  # each member on the same texts, from the same forward passes
        result["members"] = [
            {"member": name, "weight": weight, **score.compute()}
            for name, weight, score in zip(names, clf.weights, member_counts)
        ]
    return result


class _MemberScore:
    """Accuracy, macro F1 and mean NLL of one ensemble member, accumulated over batches."""

    def __init__(self, num_classes: int) -> None:
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.nll, self.count = 0.0, 0

    def update(self, probs: Tensor, labels: Tensor) -> None:
        """``probs`` (B, C), ``labels`` (B,)."""
        predicted = probs.argmax(-1)
        n = self.confusion.shape[0]
        self.confusion += torch.bincount(labels * n + predicted, minlength=n * n).view(n, n)
        picked = probs.gather(1, labels[:, None]).squeeze(1)  # (B,)
        self.nll -= picked.clamp_min(torch.finfo(probs.dtype).tiny).log().sum().item()
        self.count += len(labels)

    def compute(self) -> dict[str, float]:
        tp = self.confusion.diag().double()
        f1 = 2 * tp / (self.confusion.sum(0) + self.confusion.sum(1)).double().clamp_min(1)
        return {
            "accuracy": (tp.sum() / max(self.count, 1)).item(),
            "macro_f1": f1.mean().item(),
            "loss": self.nll / max(self.count, 1),
        }
