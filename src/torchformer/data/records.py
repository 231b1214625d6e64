"""The record types every reader returns, and the error every reader raises."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DataError", "Label", "TextRecord"]

Label = str | int


class DataError(ValueError):
    """Bad input data, located: the file, the line or record, the field.

    The message reads ``"<file>:<line N | record N>: field '<field>': <what is wrong>"``
    (missing parts are left out); the parts are also kept as attributes.

    Args:
        message: what is wrong and what was expected.
        file: the offending file (a path, or e.g. ``archive.tar.gz:member`` inside an
            archive).
        line: 1-based line number (text formats).
        record: 1-based record number (formats without lines, e.g. a JSON array).
        field: the column / key at fault.
        kind: a short, stable name for the kind of problem ("empty text", "missing"), by
            which skipped rows are counted.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        record: int | None = None,
        field: str | None = None,
        kind: str | None = None,
    ) -> None:
        self.reason = message
        self.kind = kind
        self.file = file
        self.line = line
        self.record = record
        self.field = field
        super().__init__(self._format())

    def _format(self) -> str:
        where = str(self.file) if self.file is not None else ""
        if self.line is not None:
            where += f":{self.line}" if where else f"line {self.line}"
        elif self.record is not None:
            where += f": record {self.record}" if where else f"record {self.record}"
        parts = [where] if where else []
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        parts.append(self.reason)
        return ": ".join(parts)


@dataclass(frozen=True, slots=True)
class TextRecord:
    """One text with its label.

    Attributes:
        text: the raw text (cleaning is a separate, explicit step).
        label: a class name or integer; None for unlabeled data (IMDB ``unsup``).
        id: the record's identifier in its source, if it has one.
        rating: IMDB's 1-10 star rating (0 for unlabeled reviews); None elsewhere.
    """

    text: str
    label: Label | None
    id: str | None = None
    rating: int | None = None
