"""Tiny parallel data for the translation task tests: a word-reversal task and its config."""

from __future__ import annotations

import random
from pathlib import Path

from torchformer.config import load_config
from torchformer.tasks.translate import TranslateConfig

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def reversal_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    """n sentences of 2-5 distinct number words and their word-reversed translations."""
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        words = rng.sample(WORDS, k=rng.randint(2, 5))
        src.append(" ".join(words))
        tgt.append(" ".join(reversed(words)))
    return src, tgt


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_split(folder: Path, split: str, src: list[str], tgt: list[str]) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        f"data.{split}_src": str(write_lines(folder / f"{split}.src", src)),
        f"data.{split}_tgt": str(write_lines(folder / f"{split}.tgt", tgt)),
    }


def tiny_config(
    folder: Path, *, n_train: int = 64, n_val: int = 64, **overrides
) -> TranslateConfig:
    """A tiny pre-norm Transformer on the reversal task; validation = the training pairs
    unless n_val differs (memorisation is what the end-to-end test checks)."""
    src, tgt = reversal_pairs(n_train, 0)
    val_src, val_tgt = (src, tgt) if n_val == n_train else reversal_pairs(n_val, 1)
    values = {
        "run_dir": str(folder / "run"),
        "data.source": "files",
        **write_split(folder, "train", src, tgt),
        **write_split(folder, "val", val_src, val_tgt),
        "data.max_length": 16,
        "tokenizer.vocab_size": 60,
        "tokenizer.min_frequency": 1,
        "model.preset": "tiny",
        "model.dropout": 0.0,
        "model.norm_first": True,
        "train.epochs": 10000,
        "train.max_tokens": 200,
        "train.schedule": "inverse_sqrt",
        "train.lr": 1e-2,
        "train.warmup_steps": 30,
        "train.label_smoothing": 0.0,
        "train.progress": False,
        "eval.beam_size": 3,
        "eval.batch_size": 64,
    }
    values.update(overrides)
    return load_config(TranslateConfig, None, values)
