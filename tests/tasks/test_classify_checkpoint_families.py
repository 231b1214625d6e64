"""Fine-tuning and predict() take a RoBERTa, DistilBERT, Longformer or BigBird checkpoint
as they take BERT/MiniLM: a tiny random transformers model with its tokenizer is
``model.base``; the run learns the toy task, and its ``best/`` is the same family."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import torchformer  # noqa: E402
from torchformer.config import load_config  # noqa: E402
from torchformer.tasks.classify import ClassifyConfig, train  # noqa: E402
from torchformer.text.tokenizer import Tokenizer  # noqa: E402

POS = ["great", "wonderful", "superb", "moving", "brilliant", "funny", "loved", "beautiful"]
NEG = ["awful", "boring", "dull", "terrible", "worst", "bad", "hated", "tedious"]
FILLER = ["the", "film", "movie", "plot", "actors", "was", "really", "and", "story", "a", "this"]
SIZES = dict(num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, hidden_size=32)


def rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = rng.choices(FILLER, k=rng.randint(3, 12)) + rng.choices(
            POS if label == "pos" else NEG, k=2
        )
        rng.shuffle(words)
        out.append({"text": " ".join(words), "label": label})
    return out


def write_csv(path: Path, records: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(records)
    return path


def hf_config(family: str, vocab: int, pad: int):
    if family == "distilbert":
        return transformers.DistilBertConfig(
            vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=64, pad_token_id=pad
        )
    common = dict(vocab_size=vocab, pad_token_id=pad, **SIZES)
    if family == "roberta":
        return transformers.RobertaConfig(max_position_embeddings=66, type_vocab_size=1, **common)
    if family == "longformer":
        return transformers.LongformerConfig(
            max_position_embeddings=66, attention_window=8, **common
        )
    return transformers.BigBirdConfig(
        max_position_embeddings=64, block_size=4, num_random_blocks=1, **common
    )


CLASSES = {
    "roberta": "RobertaModel",
    "distilbert": "DistilBertModel",
    "longformer": "LongformerModel",
    "big_bird": "BigBirdModel",
}


@pytest.mark.parametrize("family", list(CLASSES))
def test_a_checkpoint_family_fine_tunes_and_predicts_like_bert(tmp_path, family):
    train_rows, test_rows = rows(96, 0), rows(32, 1)
    tokenizer = Tokenizer.train_wordpiece(
        [r["text"] for r in train_rows], vocab_size=200, min_frequency=1, lowercase=True
    )
    torch.manual_seed(0)
    base = tmp_path / "base"
    hf = getattr(transformers, CLASSES[family])(
        hf_config(family, tokenizer.vocab_size, tokenizer.pad_id)
    )
    hf.save_pretrained(base)
    tokenizer.save(base / "tokenizer.json")
    config = load_config(
        ClassifyConfig,
        None,
        {
            "run_dir": str(tmp_path / "run"),
            "report": False,
            "data.source": str(write_csv(tmp_path / "train.csv", train_rows)),
            "data.test_file": str(write_csv(tmp_path / "test.csv", test_rows)),
            "data.val_fraction": 0.25,
            "data.max_length": 32,
            "model.base": str(base),
            "model.pooling": "mean",
            "train.epochs": 8,
            "train.batch_size": 8,
            "train.lr": 3e-3,
            "train.warmup_ratio": 0.1,
            "train.progress": False,
            "train.patience": 10,
        },
    )
    run = train(config)
    test_metrics = json.loads((run / "eval/test/metrics.json").read_text())
    assert test_metrics["accuracy"] >= 0.85
    saved = json.loads((run / "best/config.json").read_text())
    assert saved["model_type"] == family
    clf = torchformer.load(run)
    assert clf.model.config.flavour == family
    if family == "longformer":  # the checkpoint's own attention kind is kept
        assert clf.model.config.attention == "sliding_window"
    if family == "big_bird":
        assert clf.model.config.attention == "block_sparse"
    preds = clf.predict(["a wonderful superb film", "an awful boring movie"])
    assert [p["label"] for p in preds] == ["pos", "neg"]
