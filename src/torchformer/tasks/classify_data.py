"""Data for the classification task: records in, token ids out.

Reads IMDB or the user's CSV/TSV/JSONL files, validates them (with errors
naming file, line and field), samples/splits them with a seed, cleans the text
with the explicit steps of the config and tokenizes once up front (the Rust
tokenizer does 25k reviews in seconds), so the training loop only pads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from torchformer.data.imdb import balanced_sample, find_imdb, read_imdb_splits
from torchformer.data.labels import (
    LabelVocab,
    check_labels,
    check_training_labels,
    class_weights,
    label_counts,
    stratified_split,
    warn_if_imbalanced,
)
from torchformer.data.paths import data_dir
from torchformer.data.records import DataError, TextRecord
from torchformer.data.tabular import TableData, read_table
from torchformer.text.preprocessor import TextPreprocessor
from torchformer.text.tokenizer import Truncation

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Where the labelled texts come from and how they become model input.

    Attributes:
        source: "imdb", or the path of a CSV/TSV/JSONL training file.
        imdb_dir: IMDB archive or folder (default: found under the data directory).
        val_file / test_file: optional separate files (same columns); the same names as
            translation's (``validation_file`` is still read, as an older name of
            ``val_file``).
        text_column / label_column: column names of tabular files.
        id_column: optional column of record ids, shown in ``errors.jsonl`` (None: each
            record is named by its file and line, e.g. ``"train.csv:17"``).
        skip_bad_rows: skip (and count, by reason) invalid rows and texts that are empty
            after cleaning, instead of failing.
        train_samples / val_samples / test_samples: seeded samples with the same number of
            records of each class (None: all). A balanced test sample no longer has the
            class distribution of the full test data; the imbalance warning is about the
            full training data.
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
    val_file: str | None = None
    test_file: str | None = None
    validation_file: str | None = None  # older name of val_file
    text_column: str = "text"
    label_column: str = "label"
    id_column: str | None = None
    skip_bad_rows: bool = False
    train_samples: int | None = None
    val_samples: int | None = None
    test_samples: int | None = None
    val_fraction: float = 0.1
    cleaning: list[str] = field(default_factory=lambda: ["strip_html", "normalize_whitespace"])
    force_cleaning: bool = False
    max_length: int = 256
    truncation: Truncation = "head+tail"
    head_tokens: int | None = None
    class_weights: bool = False


@dataclass
class Splits:
    """Validated train/validation/test records and the label vocabulary."""

    train: list[TextRecord]
    val: list[TextRecord]
    test: list[TextRecord]
    labels: LabelVocab
    # {split: {reason: count}} of the rows skipped with ``skip_bad_rows``.
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class EncodedSplit:
    """One split ready for batching: token ids, label indices, and the raw texts."""

    input_ids: list[list[int]]
    labels: list[int]
    texts: list[str]
    ids: list[str | None]
    # Records dropped because their text cleaned to nothing (``skip_bad_rows``).
    skipped_empty: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


def _sample(records: list[TextRecord], n: int | None, seed: int, key: str, source: object):
    if n is None or n >= len(records):
        return records
    try:
        return balanced_sample(records, n, seed)
    except ValueError as e:
        raise DataError(f"data.{key}={n}: {e}", file=source) from e


def _read_file(path: str, config: DataConfig, skipped: dict, name: str) -> TableData:
    """Read one file (``read_table`` logs what it skips); name records by file and line
    when there is no id column, so errors and ``errors.jsonl`` lead back to the row."""
    table = read_table(
        path,
        text_column=config.text_column,
        label_column=config.label_column,
        id_column=config.id_column,
        skip_bad_rows=config.skip_bad_rows,
    )
    if table.skipped:
        skipped[name] = table.skip_counts()
    if config.id_column is None:
        table.records = located_records(table)
    return table


def located_records(table: TableData) -> list[TextRecord]:
    """The table's records, each with its file and line as id (``"train.csv:17"``)."""
    sep = ":" if table.unit == "line" else ": record "
    return [
        replace(record, id=f"{table.path.name}{sep}{number}")
        for record, number in zip(table.records, table.line_numbers)
    ]


def _same_label_type(tables: list[TableData]) -> None:
    """CSV labels become integers per file when all are integer literals; when the files
    disagree (``1, 2, n/a`` in one, ``1, 2`` in another) all labels are read as strings."""
    types = {type(t.records[0].label) for t in tables if t.records}
    if len(types) > 1:
        for t in tables:
            t.records = [replace(r, label=str(r.label)) for r in t.records]


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
    skipped: dict[str, dict[str, int]] = {}
    train_table = val_table = test_table = None
    if config.source == "imdb":
        source = Path(config.imdb_dir) if config.imdb_dir else find_imdb(data_dir())
        imdb = read_imdb_splits(source, ("train", "test"))
        train, val, test = imdb["train"], [], imdb["test"]
        train_source = test_source = source
    else:
        train_table = _read_file(config.source, config, skipped, "train")
        val_table = (
            _read_file(config.val_file or config.validation_file, config, skipped, "val")
            if config.val_file or config.validation_file
            else None
        )
        test_table = (
            _read_file(config.test_file, config, skipped, "test") if config.test_file else None
        )
        _same_label_type([t for t in (train_table, val_table, test_table) if t is not None])
        train = train_table.records
        val = val_table.records if val_table else []
        test = test_table.records if test_table else []
        train_source, test_source = train_table.path, test_table.path if test_table else None
    check_training_labels(train_table or train, field=config.label_column)
    for other, table, name in (
        (val, val_table, "validation data"),
        (test, test_table, "test data"),
    ):
        if other:
            check_labels(train_table or train, table or other, name, field=config.label_column)
    warn_if_imbalanced(label_counts(train))  # the full data, before any balanced sample
    if not val:
        train, val = stratified_split(train, config.val_fraction, seed)
    train = _sample(train, config.train_samples, seed, "train_samples", train_source)
    val = _sample(
        val,
        config.val_samples,
        seed + 1,
        "val_samples",
        config.val_file or config.validation_file or train_source,
    )
    test = _sample(test, config.test_samples, seed + 2, "test_samples", test_source)
    return Splits(
        train=train,
        val=val,
        test=test,
        labels=LabelVocab.from_labels(label_counts(train)),
        skipped=skipped,
    )


def loss_class_weights(splits: Splits) -> list[float]:
    """Inverse-frequency weights in label-index order."""
    weights = class_weights(label_counts(splits.train))
    return [weights[label] for label in splits.labels.to_list()]


def encode_split(
    records: list[TextRecord],
    preprocessor: TextPreprocessor,
    labels: LabelVocab,
    config: DataConfig,
) -> EncodedSplit:
    """Clean and tokenize every record once, with the preprocessor the model is saved with.

    A text that cleans to nothing (e.g. only HTML) is an error naming the record and the
    cleaning steps, or with ``config.skip_bad_rows`` the record is dropped and counted.
    """
    texts, empty = preprocessor.clean(r.text for r in records)
    if empty and not config.skip_bad_rows:
        first = records[empty[0]]
        raise DataError(
            f"the text of record {first.id!r} is empty after the cleaning steps "
            f"{list(preprocessor.cleaner.steps)} ({len(empty)} such record(s); set data.skip_bad_rows "
            "to skip them)",
            field=config.text_column,
        )
    if empty:
        logger.warning(
            "skipped %d record(s) whose text is empty after cleaning, first %r",
            len(empty),
            records[empty[0]].id,
        )
        dropped = set(empty)
        keep = [i for i in range(len(records)) if i not in dropped]
        records, texts = [records[i] for i in keep], [texts[i] for i in keep]
    input_ids = preprocessor.encode(texts)
    return EncodedSplit(
        input_ids=input_ids,
        labels=[labels.encode(r.label) for r in records],
        texts=[r.text for r in records],
        ids=[r.id for r in records],
        skipped_empty=len(empty),
    )
