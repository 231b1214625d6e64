"""Fixtures for the viz tests: a tiny trained classifier and a run directory around it.

The run directory is written with the project's own writers (``MetricsLogger``,
``write_manifest``, ``write_evaluation``, ``TextClassifier.save``) from a real
(tiny, seconds-long) training of a 2-layer encoder on toy sentiment sentences,
so the report reads exactly the files a training run writes.
"""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import pytest
import torch

from torchformer.evaluate.classification import StreamingClassificationMetrics, write_evaluation
from torchformer.models.encoder import EncoderForSequenceClassification, preset
from torchformer.tasks.classifier import InferenceSettings, TextClassifier
from torchformer.text.tokenizer import Tokenizer
from torchformer.train.logging import MetricsLogger, write_manifest

POSITIVE = ["great", "wonderful", "loved", "brilliant", "moving", "superb", "funny", "beautiful"]
NEGATIVE = ["awful", "boring", "hated", "dull", "terrible", "weak", "messy", "poor"]
FILLER = ["the", "film", "plot", "actors", "was", "a", "story", "and", "movie", "ending", "really"]


@contextlib.contextmanager
def one_thread():
    """One intra-op thread while a session fixture trains (the root conftest's autouse
    ``one_thread`` covers tests, not session fixtures built before it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def toy_texts(n: int, seed: int, *, flip: float = 0.0) -> list[tuple[str, int]]:
    """Sentences with 1-3 sentiment words among fillers; ``flip`` of the labels are wrong."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 30))]
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label else NEGATIVE))
        if rng.random() < flip:
            label = 1 - label
        out.append((" ".join(words), label))
    return out


@pytest.fixture(scope="session")
def tiny_classifier() -> tuple[TextClassifier, list[dict]]:
    """A 2-layer, 4-head encoder trained ~2 s on toy data; also the train log records."""
    with one_thread():
        return _train_tiny_classifier()


def _train_tiny_classifier() -> tuple[TextClassifier, list[dict]]:
    torch.manual_seed(0)
    train = toy_texts(400, seed=1)
    tokenizer = Tokenizer.train_wordpiece([t for t, _ in train], vocab_size=120, min_frequency=1)
    config = preset(
        "tiny", vocab_size=tokenizer.vocab_size, num_labels=2, id2label={0: "neg", 1: "pos"}
    )
    model = EncoderForSequenceClassification(config)
    clf = TextClassifier(model, tokenizer, InferenceSettings(max_length=128))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    log = []
    for step in range(60):
        batch = train[(step * 16) % 384 : (step * 16) % 384 + 16]
        ids, mask = clf.encode([t for t, _ in batch])
        out = model(ids, attention_mask=mask, labels=torch.tensor([y for _, y in batch]))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        log.append(
            {
                "step": step + 1,
                "epoch": (step + 1) / 24,
                "loss": out.loss.item(),
                "lr": 3e-3 * (1 - step / 60),
            }
        )
    model.eval()
    return clf, log


def _evaluate(clf: TextClassifier, data: list[tuple[str, int]]) -> tuple[dict, dict]:
    metrics = StreamingClassificationMetrics(clf.labels, top_errors=20)
    texts, labels = [t for t, _ in data], torch.tensor([y for _, y in data])
    with torch.inference_mode():
        ids, mask = clf.encode(texts)
        logits = clf.model(ids, attention_mask=mask).logits
    metrics.update(
        logits,
        labels,
        texts=texts,
        lengths=mask.sum(-1),
        loss=torch.nn.functional.cross_entropy(logits, labels, reduction="none"),
    )
    probs = logits.softmax(-1)
    confidence, predicted = probs.max(-1)
    correct = [
        {
            "id": i,
            "true": clf.labels[y],
            "predicted": clf.labels[int(p)],
            "confidence": float(c),
            "text": t,
        }
        for i, ((t, y), p, c) in enumerate(zip(data, predicted, confidence))
        if int(p) == y
    ]
    correct.sort(key=lambda r: -r["confidence"])
    return metrics.compute(), {"examples": metrics.examples(), "correct": correct[:10]}


@pytest.fixture(scope="session")
def tiny_run(tiny_classifier, tmp_path_factory) -> Path:
    """A complete classification run directory for the tiny classifier."""
    clf, log = tiny_classifier
    run_dir = tmp_path_factory.mktemp("viz") / "tiny-run"
    clf.save(run_dir / "best")
    with MetricsLogger(run_dir) as logger:
        for record in log:
            logger.log(
                {"loss": record["loss"], "lr": record["lr"], "samples_per_s": 500.0},
                step=record["step"],
                epoch=record["epoch"],
            )
            if record["step"] % 20 == 0:
                logger.log({"loss": record["loss"] * 1.1, "accuracy": 0.5 + record["step"] / 200, "macro_f1": 0.45 + record["step"] / 200},
                           step=record["step"], epoch=record["epoch"], split="val")  # fmt: skip
    config = {"model": {"base": "scratch", "preset": "tiny"}, "train": {"lr": 3e-3, "seed": 0}}
    (run_dir / "config.yaml").write_text(
        "model:\n  base: scratch\n  preset: tiny\ntrain:\n  lr: 0.003\n  seed: 0\n"
    )
    write_manifest(run_dir, config=config, seed=0, data_fingerprint="f" * 64)
    result, extra = _evaluate(clf, toy_texts(120, seed=2, flip=0.15))
    eval_dir = run_dir / "eval" / "test"
    write_evaluation(eval_dir, result)
    # Per-example arrays and a few correct examples (the format the report reads).
    (eval_dir / "examples.json").write_text(
        json.dumps({k: v.tolist() for k, v in extra["examples"].items()})
    )
    (eval_dir / "correct.jsonl").write_text("".join(json.dumps(r) + "\n" for r in extra["correct"]))
    return run_dir


@pytest.fixture(scope="session")
def tiny_translator():
    """An untrained 2+2-layer encoder–decoder with a joint BPE vocabulary (its output is noise)."""
    from torchformer.models.seq2seq import Seq2Seq
    from torchformer.models.seq2seq import preset as seq2seq_preset
    from torchformer.tasks.translator import TranslationSettings, Translator

    torch.manual_seed(0)
    corpus = [
        "ein Hund läuft im Park .",
        "a dog runs in the park .",
        "zwei Männer spielen Fußball .",
        "two men play football .",
    ]
    tokenizer = Tokenizer.train_bpe(corpus * 5, vocab_size=80, min_frequency=1)
    config = seq2seq_preset(
        "tiny",
        vocab_size=tokenizer.vocab_size,
        max_len=24,
        pad_id=tokenizer.pad_id,
        decoder_start_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id,
    )
    return Translator(
        Seq2Seq(config), tokenizer, tokenizer, TranslationSettings(beam_size=1, max_len_offset=5)
    )
