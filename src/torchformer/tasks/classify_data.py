"""Data for the classification task: records in, token ids out.

Reads IMDB or the user's CSV/TSV/JSONL files, validates them (with errors
naming file, line and field), samples/splits them with a seed, cleans the text
with the explicit steps of the config and tokenizes once up front (the Rust
tokenizer does 25k reviews in seconds), so the training loop only pads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from torchformer.data.imdb import balanced_sample, find_imdb, read_imdb_splits
from torchformer.data.labels import (
    LabelVocab,
    check_labels,
    class_weights,
    label_counts,
    stratified_split,
    warn_if_imbalanced,
)
from torchformer.data.paths import data_dir
from torchformer.data.records import DataError, TextRecord
from torchformer.data.tabular import TableData, read_table
from torchformer.text.cleaning import TextCleaner
from torchformer.text.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Where the labelled texts come from and how they become model input.

    Attributes:
        source: "imdb", or the path of a CSV/TSV/JSONL training file.
        imdb_dir: IMDB archive or folder (default: found under the data directory).
        validation_file / test_file: optional separate files (same columns).
        text_column / label_column: column names of tabular files.
        skip_bad_rows: skip (and count) invalid rows instead of failing.
        train_samples / val_samples / test_samples: balanced seeded samples (None: all).
        val_fraction: stratified share of training data held out when no validation file.
        cleaning: explicit cleaning steps (see ``torchformer.text.cleaning``).
        force_cleaning: allow lowercase/punctuation removal before a pretrained tokenizer.
        max_length: tokens per text, special tokens included.
        truncation: "head", "tail" or "head+tail" (Sun et al. 2019).
        head_tokens: leading tokens kept by "head+tail" (None: a quarter of the budget).
        class_weights: weight the loss by inverse class frequency.
    """

    source: str = "imdb"
    imdb_dir: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    skip_bad_rows: bool = False
    train_samples: int | None = None
    val_samples: int | None = None
    test_samples: int | None = None
    val_fraction: float = 0.1
    cleaning: list[str] = field(default_factory=lambda: ["strip_html", "normalize_whitespace"])
    force_cleaning: bool = False
    max_length: int = 256
    truncation: str = "head+tail"
    head_tokens: int | None = None
    class_weights: bool = False


@dataclass
class Splits:
    """Validated train/validation/test records and the label vocabulary."""

    train: list[TextRecord]
    val: list[TextRecord]
    test: list[TextRecord]
    labels: LabelVocab
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class EncodedSplit:
    """One split ready for batching: token ids, label indices, and the raw texts."""

    input_ids: list[list[int]]
    labels: list[int]
    texts: list[str]
    ids: list[str | None]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


def _sample(records: list[TextRecord], n: int | None, seed: int) -> list[TextRecord]:
    return records if n is None or n >= len(records) else balanced_sample(records, n, seed)


def _read_file(path: str, config: DataConfig, skipped: dict[str, int], name: str) -> TableData:
    table = read_table(
        path,
        text_column=config.text_column,
        label_column=config.label_column,
        skip_bad_rows=config.skip_bad_rows,
    )
    if table.skipped:
        skipped[name] = len(table.skipped)
        logger.warning("%s", table.skip_summary())
    return table


def load_splits(config: DataConfig, *, seed: int) -> Splits:
    """Read, validate, split and sample the data described by ``config``.

    Without a validation file, a stratified ``val_fraction`` of the *whole*
    training data is held out first; the train/val/test samples are drawn after,
    so they never overlap.

    Raises:
        DataError: a bad file/record (named), unseen labels in validation/test,
            or a single class in training.
        FileNotFoundError: IMDB requested but not found (the message says what to download).
    """
    skipped: dict[str, int] = {}
    train_table = val_table = test_table = None
    if config.source == "imdb":
        source = Path(config.imdb_dir) if config.imdb_dir else find_imdb(data_dir())
        imdb = read_imdb_splits(source, ("train", "test"))
        train, val, test = imdb["train"], [], imdb["test"]
    else:
        train_table = _read_file(config.source, config, skipped, "train")
        val_table = (
            _read_file(config.validation_file, config, skipped, "val")
            if config.validation_file
            else None
        )
        test_table = (
            _read_file(config.test_file, config, skipped, "test") if config.test_file else None
        )
        train = train_table.records
        val = val_table.records if val_table else []
        test = test_table.records if test_table else []
    # check_labels also refuses training data with a single class.
    for other, table, name in (
        (val, val_table, "validation data"),
        (test, test_table, "test data"),
    ):
        if other:
            check_labels(train_table or train, table or other, name)
    if not val:
        train, val = stratified_split(train, config.val_fraction, seed)
    train = _sample(train, config.train_samples, seed)
    val = _sample(val, config.val_samples, seed + 1)
    test = _sample(test, config.test_samples, seed + 2)
    counts = label_counts(train)
    warn_if_imbalanced(counts)
    return Splits(
        train=train, val=val, test=test, labels=LabelVocab.from_labels(counts), skipped=skipped
    )


def loss_class_weights(splits: Splits) -> list[float]:
    """Inverse-frequency weights in label-index order."""
    weights = class_weights(label_counts(splits.train))
    return [weights[label] for label in splits.labels.to_list()]


def encode_split(
    records: list[TextRecord],
    tokenizer: Tokenizer,
    cleaner: TextCleaner,
    labels: LabelVocab,
    config: DataConfig,
) -> EncodedSplit:
    """Clean and tokenize every record once; records whose text cleans to nothing are errors."""
    texts = [cleaner(r.text) for r in records]
    for i, text in enumerate(texts):
        if not text.strip():
            raise DataError(
                f"text is empty after cleaning (record id {records[i].id!r})",
                record=i,
                field="text",
            )
    input_ids = tokenizer.encode_batch(
        texts,
        max_length=config.max_length,
        truncation=config.truncation,
        head_tokens=config.head_tokens,
    )
    return EncodedSplit(
        input_ids=input_ids,
        labels=[labels.encode(r.label) for r in records],
        texts=[r.text for r in records],
        ids=[r.id for r in records],
    )
