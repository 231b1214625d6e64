"""Read a user's labelled texts from CSV, TSV, JSON Lines or a JSON array.

Every problem is reported as a ``DataError`` naming the file, the line (or record, for
a JSON array), the field and what was expected: a missing column (with the columns
that are present), an empty text, a missing label, undecodable bytes (with the byte
offset), a malformed JSON line. With ``skip_bad_rows=True`` bad rows are skipped
instead, and the result says how many and why (also logged as a warning).

Formats (``format=None`` picks it from the extension; ``.gz`` is decompressed):

- ``csv`` (``.csv``): RFC 4180, first row is the header, quoted fields may span lines;
- ``tsv`` (``.tsv``): tab-separated with a header and *no* quoting (a quote is text);
- ``jsonl`` (``.jsonl``, ``.ndjson``, ``.json``): one JSON object per line;
  a ``.json`` file that starts with ``[`` is read as one JSON array of objects.

Labels may be strings or integers. In CSV/TSV every value is text, so a label column
whose values are all integer literals ("0", "1") is read as integers.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torchformer.data.records import DataError, Label, TextRecord

__all__ = ["TableData", "read_lines", "read_table"]

logger = logging.getLogger(__name__)

Format = Literal["csv", "tsv", "jsonl", "json"]
_EXTENSIONS: dict[str, Format] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
}
_INTEGER_RE = re.compile(r"[+-]?\d+")
# Undecodable bytes survive decoding as lone surrogates (errors="surrogateescape").
_SURROGATE_RE = re.compile("[\udc80-\udcff]")
# Any surrogate left in a decoded string: JSON may escape one ("\\ud800") without its pair.
_ANY_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_SHOWN_NAME_CHARS = 40  # a column name longer than this is cut short in messages
_BOM = b"\xef\xbb\xbf"


@dataclass
class TableData:
    """The records read from one file, and the rows that were skipped.

    Attributes:
        path: the file read.
        records: the valid records, in file order.
        line_numbers: for each record, its line (or its record number when
            ``unit == "record"``), to name it in later errors.
        skipped: ``(line, reason)`` of each skipped row (``skip_bad_rows=True``).
        skip_kinds: for each skipped row, its field and kind of problem
            (``"field 'text': empty text"``), by which they are counted.
        unit: ``"line"``, or ``"record"`` for a JSON array.
    """

    path: Path
    records: list[TextRecord]
    line_numbers: list[int]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    skip_kinds: list[str] = field(default_factory=list)
    unit: Literal["line", "record"] = "line"

    def __len__(self) -> int:
        return len(self.records)

    def location(self, index: int) -> dict[str, int]:
        """``{"line": n}`` or ``{"record": n}`` for record ``index``, for ``DataError``."""
        return {self.unit: self.line_numbers[index]}

    def skip_counts(self) -> dict[str, int]:
        """How many rows were skipped for each reason, e.g. ``{"field 'label': missing": 2}``."""
        return dict(Counter(self.skip_kinds).most_common())

    def skip_summary(self) -> str:
        """One line: how many rows were skipped and why (empty when none)."""
        if not self.skipped:
            return ""
        detail = ", ".join(f"{kind}: {count}" for kind, count in self.skip_counts().items())
        first_line, first_reason = self.skipped[0]
        total = len(self.skipped) + len(self.records)
        return (
            f"{self.path}: skipped {len(self.skipped)} of {total} rows ({detail}); "
            f"first at {self.unit} {first_line}: {first_reason}"
        )


@dataclass
class _Row:
    """One parsed row before validation: its fields and the lines it spans."""

    fields: Mapping[str, Any] | None
    first_line: int
    last_line: int
    error: DataError | None = None


def _detect_format(path: Path, format: str | None) -> Format:
    if format is not None:
        if format not in ("csv", "tsv", "jsonl", "json"):
            raise ValueError(f"format must be csv, tsv, jsonl or json, got {format!r}")
        return format  # type: ignore[return-value]
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] in _EXTENSIONS:
        return _EXTENSIONS[suffixes[-1]]
    raise ValueError(
        f"{path}: cannot tell the format from the extension; expected one of "
        f"{sorted(_EXTENSIONS)} (optionally .gz), or pass format="
    )


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix.lower() == ".gz":
        try:
            with gzip.open(path, "rb") as handle:
                return handle.read()
        except (OSError, EOFError) as error:
            raise DataError(f"not a valid gzip file: {error}", file=path) from error
    return path.read_bytes()


def _decode_lines(path: Path, raw: bytes) -> tuple[list[str], dict[int, str]]:
    """Split into lines (ends kept) and decode each; undecodable lines are noted.

    Returns:
        The decoded lines (bad bytes kept as surrogate escapes) and, for each line
        with undecodable bytes, a message giving the byte offset.
    """
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    lines: list[str] = []
    bad: dict[int, str] = {}
    offset = 0
    for number, line in enumerate(raw.splitlines(keepends=True), start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as error:
            bad[number] = (
                f"undecodable bytes at byte offset {offset + error.start} of the file "
                f"(column {error.start + 1} of the line), expected UTF-8"
            )
            lines.append(line.decode("utf-8", errors="surrogateescape"))
        offset += len(line)
    return lines, bad


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file (``.gz`` allowed), without line ends.

    Raises:
        FileNotFoundError: no such file.
        DataError: undecodable bytes, naming the file, the line and the byte offset.
    """
    path = Path(path)
    lines, bad = _decode_lines(path, _read_bytes(path))
    if bad:
        number, message = next(iter(bad.items()))
        raise DataError(message, file=path, line=number)
    return [line.rstrip("\r\n") for line in lines]


def _allow_long_fields() -> None:
    """The default 128 KiB field limit rejects long documents; texts are bounded by memory."""
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))


def _csv_rows(path: Path, lines: list[str], delimiter: str) -> Iterator[_Row]:
    """Parse CSV/TSV lines into rows keyed by the header."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    _allow_long_fields()
    reader = csv.reader(iter(lines), delimiter=delimiter, quoting=quoting, strict=True)
    previous = 0
    header: list[str] | None = None
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:  # unbalanced quotes etc.: no safe way to resynchronise
            line = reader.line_num
            raise DataError(f"CSV syntax error: {error}", file=path, line=line) from error
        first, previous = previous + 1, reader.line_num
        if not row or row == [""]:
            continue  # a blank line
        if header is None:
            header = [name.strip() for name in row]
            continue
        if len(row) > len(header):
            error = DataError(
                f"expected {len(header)} fields ({', '.join(header)}), found {len(row)}; "
                "quote fields that contain the delimiter",
                file=path,
                line=first,
                kind="too many fields",
            )
            yield _Row(None, first, previous, error)
            continue
        yield _Row(dict(zip(header, row)), first, previous)


def _header_of(path: Path, lines: list[str], delimiter: str) -> list[str]:
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    _allow_long_fields()
    reader = csv.reader(iter(lines), delimiter=delimiter, quoting=quoting)
    try:
        for row in reader:
            if row and row != [""]:
                return [name.strip() for name in row]
    except csv.Error as error:
        raise DataError(f"CSV syntax error: {error}", file=path, line=reader.line_num) from error
    raise DataError("empty file; expected a header row", file=path, line=1)


def _shown(name: str) -> str:
    """A column name for a message: a long one (a text read as the header) cut short."""
    if len(name) <= _SHOWN_NAME_CHARS:
        return name
    return f"{name[:_SHOWN_NAME_CHARS]}... ({len(name)} characters)"


def _json_problem(error: ValueError | RecursionError) -> str:
    """What ``json.loads`` refused: a syntax error, or a limit of Python's ``json``."""
    if isinstance(error, json.JSONDecodeError):
        return f"malformed JSON: {error.msg} at column {error.colno}"
    if isinstance(error, RecursionError):
        return "malformed JSON: nested too deeply"
    return f"malformed JSON: {error}"  # an integer of more than 4300 digits


class _JSONObject(dict):
    """A JSON object that remembers the keys it held more than once (``json.loads`` keeps
    the last value silently)."""

    duplicates: tuple[str, ...] = ()


def _json_object(pairs: list[tuple[str, Any]]) -> _JSONObject:
    obj = _JSONObject(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        obj.duplicates = tuple(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
    return obj


def _duplicate_key_error(value: Any, path: Path, **where: int) -> DataError | None:
    if isinstance(value, _JSONObject) and value.duplicates:
        key = value.duplicates[0]
        return DataError(
            "the key appears more than once in this object; keep one",
            file=path,
            field=key,
            kind="duplicate key",
            **where,
        )
    return None


def _jsonl_rows(path: Path, lines: list[str]) -> Iterator[_Row]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line, object_pairs_hook=_json_object)
        except (ValueError, RecursionError) as error:
            message = _json_problem(error)
            error = DataError(message, file=path, line=number, kind="malformed JSON")
            yield _Row(None, number, number, error)
            continue
        if not isinstance(value, dict):
            message = f"expected a JSON object, got {type(value).__name__}"
            error = DataError(message, file=path, line=number, kind="not a JSON object")
            yield _Row(None, number, number, error)
            continue
        yield _Row(value, number, number, _duplicate_key_error(value, path, line=number))


def _json_array_rows(path: Path, text: str) -> Iterator[_Row]:
    try:
        values = json.loads(text, object_pairs_hook=_json_object)
    except (ValueError, RecursionError) as error:
        line = getattr(error, "lineno", None)
        raise DataError(_json_problem(error), file=path, line=line) from None
    if not isinstance(values, list):
        raise DataError(f"expected a JSON array of objects, got {type(values).__name__}", file=path)
    for number, value in enumerate(values, start=1):
        if not isinstance(value, dict):
            error = DataError(
                f"expected a JSON object, got {type(value).__name__}",
                file=path,
                record=number,
                kind="not a JSON object",
            )
            yield _Row(None, number, number, error)
        else:
            yield _Row(value, number, number, _duplicate_key_error(value, path, record=number))


def _validate(
    row: _Row,
    path: Path,
    unit: str,
    columns: tuple[str, str | None, str | None],
) -> TextRecord:
    """Build a record from one row, or raise the DataError that locates its problem."""
    text_column, label_column, id_column = columns
    where = {"file": path, unit: row.first_line}
    fields = row.fields or {}
    present = ", ".join(map(str, fields))
    text = fields.get(text_column)
    if text is None:
        raise DataError(f"missing (row has: {present})", field=text_column, kind="missing", **where)
    if not isinstance(text, str):
        raise DataError(
            f"expected a string, got {type(text).__name__}",
            field=text_column,
            kind="not a string",
            **where,
        )
    if not text.strip():
        raise DataError(
            "empty text; expected non-empty text", field=text_column, kind="empty text", **where
        )
    label: Label | None = None
    if label_column is not None:
        label = fields.get(label_column)
        if label is None or label == "":
            raise DataError(
                f"missing label (row has: {present})", field=label_column, kind="missing", **where
            )
        if isinstance(label, bool) or not isinstance(label, str | int):
            raise DataError(
                f"expected a string or integer label, got {type(label).__name__} {label!r}",
                field=label_column,
                kind="not a string or integer",
                **where,
            )
    record_id = fields.get(id_column) if id_column is not None else None
    for column, value in ((text_column, text), (label_column, label), (id_column, record_id)):
        if isinstance(value, str) and (match := _ANY_SURROGATE_RE.search(value)):
            raise DataError(
                f"lone surrogate {match.group()!r} at character {match.start() + 1} (half of a "
                "UTF-16 pair, e.g. an escaped \\ud800 without its partner); expected valid "
                "Unicode text",
                field=column,
                kind="lone surrogate",
                **where,
            )
    return TextRecord(text=text, label=label, id=None if record_id is None else str(record_id))


def _integer_labels(records: list[TextRecord]) -> list[TextRecord]:
    """CSV labels are text; read them as integers when every one is an integer literal."""
    labels = [record.label for record in records]
    if not labels or not all(isinstance(x, str) and _INTEGER_RE.fullmatch(x) for x in labels):
        return records
    try:
        return [
            TextRecord(text=r.text, label=int(r.label), id=r.id, rating=r.rating)  # type: ignore[arg-type]
            for r in records
        ]
    except ValueError:  # a literal too long for int() (over 4300 digits): labels stay text
        return records


def _check_columns(path: Path, header: Sequence[str], wanted: Sequence[str | None]) -> None:
    """Each wanted column is in the header exactly once (a duplicate would silently win)."""
    for column in wanted:
        if column is not None and column not in header:
            raise DataError(
                f"missing column; columns present: {', '.join(map(_shown, header))}",
                file=path,
                line=1,
                field=column,
            )
        if column is not None and header.count(column) > 1:
            raise DataError(
                f"duplicated column: {header.count(column)} columns are named {column!r} "
                f"(columns present: {', '.join(map(_shown, header))}); rename all but one",
                file=path,
                line=1,
                field=column,
            )


def read_table(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str | None = "label",
    id_column: str | None = None,
    format: Format | None = None,
    skip_bad_rows: bool = False,
) -> TableData:
    """Read labelled texts from a CSV, TSV, JSON Lines or JSON file.

    Args:
        path: the file (``.gz`` allowed).
        text_column: the column / key holding the text.
        label_column: the column / key holding the label; None for unlabeled data.
        id_column: an optional column / key holding a record id.
        format: ``"csv"``, ``"tsv"``, ``"jsonl"`` or ``"json"``; None: from the extension.
        skip_bad_rows: skip invalid rows (reported in ``TableData.skipped`` and logged)
            instead of raising on the first one.

    Returns:
        A ``TableData`` with the records, their line numbers and the skipped rows.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataError: a missing column (always fatal), a malformed file, or (unless
            ``skip_bad_rows``) the first invalid row.
    """
    path = Path(path)
    kind = _detect_format(path, format)
    lines, bad_lines = _decode_lines(path, _read_bytes(path))
    unit: Literal["line", "record"] = "line"
    if kind in ("csv", "tsv"):
        delimiter = "," if kind == "csv" else "\t"
        _check_columns(
            path, _header_of(path, lines, delimiter), [text_column, label_column, id_column]
        )
        rows = _csv_rows(path, lines, delimiter)
    elif kind == "json" and "".join(lines).lstrip().startswith("["):
        if bad_lines:
            line, message = next(iter(bad_lines.items()))
            raise DataError(message, file=path, line=line)
        unit = "record"
        rows = _json_array_rows(path, "".join(lines))
    else:
        rows = _jsonl_rows(path, lines)

    records: list[TextRecord] = []
    numbers: list[int] = []
    skipped: list[tuple[int, str]] = []
    skip_kinds: list[str] = []
    columns = (text_column, label_column, id_column)
    for row in rows:
        try:
            _raise_if_undecodable(row, path, bad_lines)
            if row.error is not None:
                raise row.error
            record = _validate(row, path, unit, columns)
        except DataError as error:
            if not skip_bad_rows:
                raise
            prefix = f"field {error.field!r}: " if error.field else ""
            skipped.append((row.first_line, prefix + error.reason))
            skip_kinds.append(prefix + (error.kind or error.reason))
            continue
        records.append(record)
        numbers.append(row.first_line)
    records = _check_label_types(path, unit, _integer_labels(records), numbers, label_column)
    table = TableData(path, records, numbers, skipped, skip_kinds, unit)
    if skipped:
        logger.warning(table.skip_summary())
    if not records:
        raise DataError("no valid records; expected at least one", file=path)
    return table


def _raise_if_undecodable(row: _Row, path: Path, bad_lines: Mapping[int, str]) -> None:
    """Raise for a row spanning a line with undecodable bytes, naming the field."""
    bad = [n for n in range(row.first_line, row.last_line + 1) if n in bad_lines]
    if not bad:
        return
    fields = row.fields or {}
    column = next(
        (str(k) for k, v in fields.items() if isinstance(v, str) and _SURROGATE_RE.search(v)),
        None,
    )
    raise DataError(
        bad_lines[bad[0]], file=path, line=bad[0], field=column, kind="undecodable bytes"
    )


def _check_label_types(
    path: Path,
    unit: str,
    records: list[TextRecord],
    numbers: list[int],
    label_column: str | None,
) -> list[TextRecord]:
    """All labels of a file must share one type (string or integer)."""
    if not records or label_column is None:
        return records
    first_type = type(records[0].label)
    for record, number in zip(records, numbers):
        if type(record.label) is not first_type:
            raise DataError(
                f"label {record.label!r} is a {type(record.label).__name__} but the first "
                f"label ({records[0].label!r}) is a {first_type.__name__}; use one type",
                file=path,
                field=label_column,
                **{unit: number},
            )
    return records
