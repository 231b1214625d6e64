"""Tiny classifiers for the ensemble tests (tests/tasks/test_ensemble.py,
tests/export/test_ensemble_export.py): members trained briefly with different seeds,
on a shared tokenizer or each on its own.

Importable by name from any test module: tests/conftest.py puts tests/export on the path.
"""

from __future__ import annotations

from pathlib import Path

import torch
from deploy_fixtures import build_tiny_classifier, toy_records, write_jsonl

from torchformer.models.encoder import EncoderForSequenceClassification, preset
from torchformer.tasks.classifier import InferenceSettings, TextClassifier
from torchformer.text.tokenizer import Tokenizer

__all__ = [
    "member_on_own_tokenizer",
    "member_on_tokenizer",
    "save_run",
    "shared_tokenizer",
    "toy_records",
    "write_jsonl",
]

TEXTS = [
    "a great and wonderful film",
    "dull, boring <br /> and awful",
    "the plot",
    "superb cast and a lovely ending " * 6,
    "this movie is really quite poor",
]


def shared_tokenizer() -> Tokenizer:
    records = toy_records(256, seed=0)
    return Tokenizer.train_wordpiece([t for t, _ in records], vocab_size=200, min_frequency=1)


def member_on_tokenizer(
    tokenizer: Tokenizer,
    *,
    seed: int,
    steps: int = 15,
    labels: tuple[str, ...] = ("neg", "pos"),
    max_length: int = 64,
) -> TextClassifier:
    """A tiny encoder classifier on ``tokenizer``, trained ``steps`` steps from ``seed``
    (label i of ``labels`` is the i-th sentiment of ("neg", "pos", ...))."""
    torch.manual_seed(seed)
    config = preset(
        "tiny",
        vocab_size=tokenizer.vocab_size,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        pooling="mean",
        dropout=0.0,
        attn_dropout=0.0,
    )
    model = EncoderForSequenceClassification(config)
    clf = TextClassifier(model, tokenizer, InferenceSettings(max_length=max_length))
    records = toy_records(128, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = [records[(step * 16 + j) % len(records)] for j in range(16)]
        input_ids, attention_mask = clf.encode([t for t, _ in batch])
        target = torch.tensor([1 if y == "pos" else 0 for _, y in batch])
        loss = model(input_ids, attention_mask=attention_mask, labels=target).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return clf


def member_on_own_tokenizer(*, seed: int, steps: int = 15, max_length: int = 64) -> TextClassifier:
    """A tiny classifier with a WordPiece tokenizer of its own (trained on its seed's data)."""
    return build_tiny_classifier(pooling="mean", max_length=max_length, steps=steps, seed=seed)


def save_run(clf: TextClassifier, run_dir: Path) -> Path:
    """``clf`` saved as a run's ``best/``; returns the run directory."""
    clf.save(run_dir / "best")
    return run_dir
