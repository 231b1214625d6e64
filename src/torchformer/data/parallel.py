"""Parallel text (translation pairs): two line-aligned files, a TSV, or Multi30k.

Line-aligned files go wrong in ways that silently ruin a translation model: one file a
line longer than the other shifts every pair after it, an empty line pairs a sentence
with nothing. The readers check this and name both files and the line.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torchformer.data.paths import data_dir as default_data_dir
from torchformer.data.records import DataError
from torchformer.data.tabular import read_table

__all__ = [
    "SentencePair",
    "find_multi30k",
    "read_multi30k",
    "read_parallel",
    "read_parallel_table",
    "read_parallel_tsv",
]

MULTI30K_URL = "https://github.com/multi30k/dataset/tree/master/data/task1/raw"
MULTI30K_SPLITS = ("train", "val", "test_2016_flickr")
MULTI30K_LANGUAGES = ("de", "en", "fr", "cs")


@dataclass(frozen=True, slots=True)
class SentencePair:
    """A source sentence and its translation."""

    src: str
    tgt: str


def _read_lines(path: Path, partner: Path | None = None) -> list[str]:
    """Decode a plain or ``.gz`` text file into lines (without line ends).

    Raises:
        DataError: undecodable bytes (line and byte offset), naming ``partner`` too.
    """
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as error:
        raise DataError(f"not a valid gzip file: {error}", file=path) from error
    raw_lines = raw.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()  # the final newline ends the last line; it does not start one
    lines = []
    offset = 0
    for number, raw_line in enumerate(raw_lines, start=1):
        try:
            lines.append(raw_line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as error:
            pair = f" (aligned with {partner})" if partner is not None else ""
            raise DataError(
                f"undecodable bytes at byte offset {offset + error.start} of the "
                f"{'decompressed ' if path.suffix == '.gz' else ''}file{pair}; expected UTF-8",
                file=path,
                line=number,
            ) from error
        offset += len(raw_line) + 1
    return lines


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> list[SentencePair]:
    """Read two line-aligned files (plain or ``.gz``, UTF-8): line i of each is a pair.

    Surrounding whitespace is stripped from each sentence.

    Raises:
        DataError: different line counts, an empty line on either side, undecodable
            bytes; the message names both files and the line.
    """
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    src_lines = _read_lines(src_path, partner=tgt_path)
    tgt_lines = _read_lines(tgt_path, partner=src_path)
    if len(src_lines) != len(tgt_lines):
        raise DataError(
            f"{src_path} has {len(src_lines)} lines but {tgt_path} has {len(tgt_lines)}; "
            "parallel files must be line-aligned",
            file=src_path,
            line=min(len(src_lines), len(tgt_lines)) + 1,
        )
    pairs = []
    for number, (src, tgt) in enumerate(zip(src_lines, tgt_lines), start=1):
        src, tgt = src.strip(), tgt.strip()
        if not src or not tgt:
            empty, other, text = (src_path, tgt_path, tgt) if not src else (tgt_path, src_path, src)
            raise DataError(
                f"empty line; its pair in {other} line {number} is {text!r}. Expected a "
                "sentence on both sides (remove the pair from both files)",
                file=empty,
                line=number,
            )
        pairs.append(SentencePair(src, tgt))
    return pairs


def read_parallel_tsv(
    path: str | Path, src_column: str | int, tgt_column: str | int
) -> list[SentencePair]:
    """Read pairs from a tab-separated file (plain or ``.gz``).

    Args:
        path: the file.
        src_column, tgt_column: column names (the first line is a header) or 0-based
            column indices (no header line).

    Raises:
        DataError: a missing column (lists those present), a line with too few fields,
            an empty sentence, undecodable bytes; naming the line and the column.
    """
    path = Path(path)
    lines = _read_lines(path)
    by_name = isinstance(src_column, str) or isinstance(tgt_column, str)
    first_line = 1
    if by_name:
        if not (isinstance(src_column, str) and isinstance(tgt_column, str)):
            raise TypeError("give both columns as names or both as indices")
        if not lines:
            raise DataError("empty file; expected a header line", file=path, line=1)
        header = [name.strip() for name in lines[0].split("\t")]
        for column in (src_column, tgt_column):
            if column not in header:
                raise DataError(
                    f"missing column; columns present: {', '.join(header)}",
                    file=path,
                    line=1,
                    field=column,
                )
        indices = (header.index(src_column), header.index(tgt_column))
        names = (src_column, tgt_column)
        lines, first_line = lines[1:], 2
    else:
        indices = (int(src_column), int(tgt_column))
        names = (f"column {indices[0]}", f"column {indices[1]}")
    pairs = []
    for number, line in enumerate(lines, start=first_line):
        if not line.strip():
            continue
        fields = line.split("\t")
        sentences = []
        for index, name in zip(indices, names):
            if index >= len(fields):
                raise DataError(
                    f"missing: the line has {len(fields)} tab-separated fields",
                    file=path,
                    line=number,
                    field=name,
                )
            if not fields[index].strip():
                raise DataError("empty sentence", file=path, line=number, field=name)
            sentences.append(fields[index].strip())
        pairs.append(SentencePair(*sentences))
    return pairs


def read_parallel_table(
    path: str | Path,
    src_column: str = "src",
    tgt_column: str = "tgt",
    *,
    format: Literal["csv", "tsv", "jsonl", "json"] | None = None,
) -> list[SentencePair]:
    """Read (source, target) pairs from a CSV, JSON Lines or JSON-array file (``.gz`` allowed),
    the way ``data.tabular.read_table`` reads labelled texts: CSV with a header row and
    quoted fields that may span lines, one JSON object per line, or one array of objects.

    Surrounding whitespace is stripped from each text.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataError: a missing column/key (with those present), an empty or non-string text,
            a malformed line, undecodable bytes; naming the file, the line (or record) and
            the field.
    """
    sides = [
        read_table(path, text_column=column, label_column=None, format=format)
        for column in (src_column, tgt_column)
    ]
    return [
        SentencePair(src.text.strip(), tgt.text.strip())
        for src, tgt in zip(sides[0].records, sides[1].records, strict=True)
    ]


def find_multi30k(data_dir: str | Path | None = None) -> Path:
    """The Multi30k folder: ``data_dir/multi30k/`` or ``data_dir`` itself.

    Raises:
        FileNotFoundError: no ``train.de(.gz)`` found; says what to download and where.
    """
    base = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    for folder in (base / "multi30k", base):
        if any((folder / name).is_file() for name in ("train.de.gz", "train.de")):
            return folder
    raise FileNotFoundError(
        f"Multi30k not found in {base / 'multi30k'} or {base}. Download the raw task-1 "
        f"files (train/val/test_2016_flickr .de.gz and .en.gz) from {MULTI30K_URL} into "
        f"{base / 'multi30k'}, or set TORCHFORMER_DATA to the folder that holds them."
    )


def read_multi30k(
    data_dir: str | Path | None = None,
    split: Literal["train", "val", "test_2016_flickr"] = "train",
    src: str = "de",
    tgt: str = "en",
) -> list[SentencePair]:
    """Read a Multi30k task-1 split (raw, untokenized, cased) as sentence pairs.

    Args:
        data_dir: the data directory (default ``paths.data_dir()``).
        split: ``"train"`` (29,000 pairs), ``"val"`` (1,014), ``"test_2016_flickr"``
            (1,000).
        src, tgt: language codes among de, en, fr, cs.
    """
    if split not in MULTI30K_SPLITS:
        raise ValueError(f"Multi30k split must be one of {MULTI30K_SPLITS}, got {split!r}")
    for language in (src, tgt):
        if language not in MULTI30K_LANGUAGES:
            raise ValueError(f"language must be one of {MULTI30K_LANGUAGES}, got {language!r}")
    folder = find_multi30k(data_dir)
    paths = []
    for language in (src, tgt):
        candidates = [folder / f"{split}.{language}.gz", folder / f"{split}.{language}"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"{candidates[0]} not found (nor {candidates[1].name}); download it from "
                f"{MULTI30K_URL}"
            )
        paths.append(path)
    return read_parallel(paths[0], paths[1])
