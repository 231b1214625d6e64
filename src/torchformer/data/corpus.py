"""Unlabeled text corpora for language-model pre-training, read as a stream of documents.

A ``Corpus`` is a re-iterable stream of ``(doc_id, text)`` pairs (a tokenizer is trained
on one pass, the token file written on another) with a cheap ``fingerprint()`` that says
when a cached token file is stale. Sources:

- ``text_corpus(path)``: a plain text file, a ``.gz`` file, a ``.tar.gz`` archive (read
  without extracting, members sorted by name) or a folder of ``.txt`` files (sorted by
  relative path). ``split`` says what a document is: the whole file (``"file"``), each
  line (``"line"``), or each blank-line-separated paragraph (``"paragraph"``).
- ``imdb_unsup_corpus()``: the 50,000 unlabeled IMDB reviews, read (and validated) by
  ``torchformer.data.imdb`` in the archive's storage order.
- ``tinyshakespeare_corpus()`` and ``shakespeare_char_corpora()``: Tiny Shakespeare as one
  document, and nanoGPT's ``shakespeare_char`` split (first 90% of the characters for
  training, last 10% for validation).

Documents with no non-whitespace character are skipped. Undecodable bytes raise
``DataError`` naming the file (and archive member), the line and the byte offset.
Text cleaning (IMDB's ``<br />``) is the caller's ``clean`` function, typically
``torchformer.text.cleaning.strip_html``: ``data`` may not import ``text`` (the two are
independent layers), so the function is passed in and its name enters the fingerprint.

The fingerprint hashes each source file's absolute path, size and modification time
(``os.stat``), not its content: it is checked at every start of a run, on every rank, and
must cost nothing next to tokenizing, whereas hashing the content means reading a corpus
that may be many gigabytes. Any rewrite of a file changes its mtime (nanosecond clock).
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import logging
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

from torchformer.data.imdb import IMDB_ARCHIVE, UNSUP_ARCHIVE, find_imdb, iter_imdb
from torchformer.data.paths import data_dir as default_data_dir
from torchformer.data.records import DataError

__all__ = [
    "SHAKESPEARE_CHAR_TRAIN_FRACTION",
    "Corpus",
    "DocumentSplit",
    "find_tinyshakespeare",
    "imdb_unsup_corpus",
    "shakespeare_char_corpora",
    "shakespeare_char_split",
    "text_corpus",
    "tinyshakespeare_corpus",
]

logger = logging.getLogger(__name__)

DocumentSplit = Literal["file", "line", "paragraph"]
_SPLITS = ("file", "line", "paragraph")
SHAKESPEARE_CHAR_TRAIN_FRACTION = 0.9  # nanoGPT data/shakespeare_char/prepare.py
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
_COPY_CHUNK = 1 << 20
Document = tuple[str, str]


class Corpus:
    """A named, re-iterable stream of ``(doc_id, text)`` documents.

    Args:
        name: a short name (used in cache file names: letters, digits, ``-_.``).
        read: returns a fresh iterator over the documents, in a fixed order.
        files: the files the documents come from (their stats make the fingerprint).
        settings: anything else that changes the documents (split, pattern, cleaning).
    """

    def __init__(
        self,
        name: str,
        read: Callable[[], Iterator[Document]],
        *,
        files: Iterable[Path],
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self._read = read
        self.files = [Path(file) for file in files]
        self.settings = dict(settings or {})

    def __iter__(self) -> Iterator[Document]:
        return self._read()

    def texts(self) -> Iterator[str]:
        """The documents' texts only (for tokenizer training)."""
        return (text for _, text in self)

    def fingerprint(self) -> str:
        """SHA-256 of the name, settings and each file's absolute path, size and mtime."""
        entries = []
        for file in self.files:
            stat = file.stat()
            entries.append([str(file.resolve()), stat.st_size, stat.st_mtime_ns])
        payload = {"name": self.name, "settings": self.settings, "files": entries}
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        return f"Corpus({self.name!r}, files={len(self.files)}, settings={self.settings})"


def _function_name(clean: Callable[[str], str] | None) -> str | None:
    if clean is None:
        return None
    return f"{getattr(clean, '__module__', '?')}.{getattr(clean, '__qualname__', repr(clean))}"


def _decode(data: bytes, location: str, line: int | None, base_offset: int) -> str:
    """Strict UTF-8, or a DataError naming the byte offset (in the decompressed data of a
    ``.gz`` file or archive member)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"undecodable bytes at byte offset {base_offset + error.start} (expected UTF-8)",
            file=location,
            line=line,
            field="text",
        ) from error


def _paragraphs(handle: IO[bytes], location: str) -> Iterator[tuple[int, str]]:
    """(first line number, paragraph) pairs; blank lines (whitespace only) separate."""
    offset, lines, first = 0, [], 0
    for number, raw in enumerate(handle, start=1):
        text = _decode(raw, location, number, offset)
        offset += len(raw)
        if text.strip():
            if not lines:
                first = number
            lines.append(text)
        elif lines:
            yield first, "".join(lines).rstrip("\r\n")
            lines = []
    if lines:
        yield first, "".join(lines).rstrip("\r\n")


def _split_documents(handle: IO[bytes], location: str, split: str) -> Iterator[Document]:
    """The documents of one file's bytes, streamed line by line unless split='file'."""
    if split == "file":
        yield location, _decode(handle.read(), location, None, 0)
    elif split == "line":
        offset = 0
        for number, raw in enumerate(handle, start=1):
            yield f"{location}:{number}", _decode(raw, location, number, offset).rstrip("\r\n")
            offset += len(raw)
    else:
        for number, text in _paragraphs(handle, location):
            yield f"{location}:{number}", text


def _kept(documents: Iterator[Document], clean: Callable[[str], str] | None) -> Iterator[Document]:
    for doc_id, text in documents:
        text = clean(text) if clean is not None else text
        if text.strip():
            yield doc_id, text


def _is_tar(path: Path) -> bool:
    return path.name.endswith(_TAR_SUFFIXES)


def _read_file(path: Path, split: str) -> Iterator[Document]:
    """A plain or gzip-compressed text file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            yield from _split_documents(handle, str(path), split)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DataError(f"corrupt or truncated gzip file: {error}", file=path) from error


def _wanted_members(archive: tarfile.TarFile, pattern: str) -> list[tarfile.TarInfo]:
    return [
        member
        for member in archive.getmembers()
        if member.isfile()
        and not Path(member.name).name.startswith(".")
        and fnmatch.fnmatch(Path(member.name).name, pattern)
    ]


def _read_members(
    archive: tarfile.TarFile, path: Path, split: str, pattern: str
) -> Iterator[Document]:
    for member in sorted(_wanted_members(archive, pattern), key=lambda member: member.name):
        handle = archive.extractfile(member)
        if handle is not None:
            yield from _split_documents(handle, f"{path}:{member.name}", split)


def _read_tar(path: Path, split: str, pattern: str) -> Iterator[Document]:
    """Members matching ``pattern``, sorted by name, read from the archive in place.

    Random-access mode: one pass lists the members, then each is read at its offset. In
    an archive stored in name order every seek goes forward (one more pass). A compressed
    archive stored in another order (IMDB's is) would be re-decompressed from the start
    on every backward seek, so it is first decompressed once into an anonymous temporary
    ``.tar`` (no member is unpacked to a file), where seeks are free.
    """
    try:
        with tarfile.open(path, mode="r:*") as archive:
            members = _wanted_members(archive, pattern)
            in_order = [m.name for m in members] == sorted(m.name for m in members)
            if in_order or path.name.endswith(".tar"):
                yield from _read_members(archive, path, split, pattern)
                return
            logger.info("%s is not stored in name order: decompressing it to a temp file", path)
            with tempfile.TemporaryFile() as raw:
                assert archive.fileobj is not None
                archive.fileobj.seek(0)
                shutil.copyfileobj(archive.fileobj, raw, _COPY_CHUNK)
                raw.seek(0)
                with tarfile.open(fileobj=raw, mode="r:") as plain:
                    yield from _read_members(plain, path, split, pattern)
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise DataError(f"corrupt or truncated archive: {error}", file=path) from error


def _folder_files(folder: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` under ``folder`` (recursively), sorted by relative path."""
    files = [
        file
        for file in folder.rglob(pattern)
        if file.is_file()
        and not any(part.startswith(".") for part in file.relative_to(folder).parts)
    ]
    return sorted(files, key=lambda file: file.relative_to(folder).as_posix())


def text_corpus(
    path: str | Path,
    *,
    split: DocumentSplit = "file",
    pattern: str = "*.txt",
    clean: Callable[[str], str] | None = None,
    name: str | None = None,
) -> Corpus:
    """A corpus from a text file, a ``.gz`` file, a ``.tar.gz``/``.tar`` archive or a folder.

    Args:
        path: the file, archive or folder.
        split: one document per file (``"file"``), per line (``"line"``, line ending
            removed) or per blank-line-separated paragraph (``"paragraph"``).
        pattern: which files of a folder, or members of an archive, to read (matched
            against the base name; folders are searched recursively).
        clean: applied to each document before the empty check (e.g. ``strip_html``).
        name: the corpus name (default: the file or folder name without suffixes).

    Document ids are ``<file>`` (split="file") or ``<file>:<line>`` (first line of the
    document); inside an archive ``<file>`` is ``<archive>:<member>``.

    Raises:
        FileNotFoundError: ``path`` does not exist, or a folder holds no matching file.
        ValueError: an unknown ``split``.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    source = Path(path).expanduser()
    if source.is_dir():
        files = _folder_files(source, pattern)
        if not files:
            raise FileNotFoundError(f"{source}: no files matching {pattern!r}")

        def read() -> Iterator[Document]:
            for file in files:
                yield from _read_file(file, split)
    elif source.is_file():
        files = [source]
        if _is_tar(source):

            def read() -> Iterator[Document]:
                return _read_tar(source, split, pattern)
        else:

            def read() -> Iterator[Document]:
                return _read_file(source, split)
    else:
        raise FileNotFoundError(f"corpus source {source} does not exist")
    settings = {"split": split, "pattern": pattern, "clean": _function_name(clean)}
    default_name = source.name.split(".")[0] or "corpus"
    return Corpus(
        name or default_name, lambda: _kept(read(), clean), files=files, settings=settings
    )


def _imdb_unsup_files(source: Path) -> list[Path]:
    """The files the unlabeled reviews are read from (for the fingerprint)."""
    if source.is_file():
        return [source]
    for candidate in (source / UNSUP_ARCHIVE, source / IMDB_ARCHIVE):
        if candidate.is_file():
            return [candidate]
    for root in (source, source / "aclImdb"):
        if (root / "train" / "unsup").is_dir():
            return _folder_files(root / "train" / "unsup", "*.txt")
    raise FileNotFoundError(f"{source}: no unlabeled IMDB reviews (train/unsup) found")


def imdb_unsup_corpus(
    source: str | Path | None = None, *, clean: Callable[[str], str] | None = None
) -> Corpus:
    """The 50,000 unlabeled IMDB reviews (``aclImdb/train/unsup``), one document each.

    Read by ``torchformer.data.imdb.iter_imdb`` (so validated the same way: file names,
    UTF-8, empty reviews), in storage order: the archive's order, or sorted file names
    for an extracted folder. Document ids are ``unsup/unsup/<id>``.

    Args:
        source: an IMDB archive or folder (see ``torchformer.data.imdb``), or None to
            look in the data directory (``find_imdb()``).
        clean: applied to each review, e.g. ``torchformer.text.cleaning.strip_html`` to
            turn the ``<br />`` line breaks into spaces.

    Raises:
        FileNotFoundError: no IMDB data (the message says what to download and where).
    """
    path = find_imdb() if source is None else Path(source).expanduser()
    files = _imdb_unsup_files(path)

    def read() -> Iterator[Document]:
        records = iter_imdb(path, "unsup")
        return _kept(((str(record.id), record.text) for record in records), clean)

    settings = {"clean": _function_name(clean)}
    return Corpus("imdb-unsup", read, files=files, settings=settings)


def find_tinyshakespeare(data_dir: str | Path | None = None) -> Path:
    """``data_dir/tinyshakespeare/input.txt`` (default: ``paths.data_dir()``).

    Raises:
        FileNotFoundError: absent; the message says where to put it.
    """
    base = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    path = base / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"Tiny Shakespeare not found at {path}. Put karpathy/char-rnn's "
            f"data/tinyshakespeare/input.txt there, or set TORCHFORMER_DATA."
        )
    return path


def tinyshakespeare_corpus(data_dir: str | Path | None = None) -> Corpus:
    """Tiny Shakespeare as one document (1,115,394 characters)."""
    path = find_tinyshakespeare(data_dir)
    return text_corpus(path, split="file", name="tinyshakespeare")


def shakespeare_char_split(text: str) -> tuple[str, str]:
    """nanoGPT's ``shakespeare_char`` split: the first 90% of the characters, the rest.

    ``n = int(len(text) * 0.9)`` as in nanoGPT's ``prepare.py``: 1,003,854 / 111,540
    characters on Tiny Shakespeare.
    """
    n = int(len(text) * SHAKESPEARE_CHAR_TRAIN_FRACTION)
    return text[:n], text[n:]


def shakespeare_char_corpora(data_dir: str | Path | None = None) -> dict[str, Corpus]:
    """``{"train": ..., "val": ...}``: one-document corpora of ``shakespeare_char_split``."""
    path = find_tinyshakespeare(data_dir)

    def part(index: int, split_name: str) -> Corpus:
        def read() -> Iterator[Document]:
            (_, text), *_ = _read_file(path, "file")
            yield f"{path}:{split_name}", shakespeare_char_split(text)[index]

        settings = {"split": split_name, "fraction": SHAKESPEARE_CHAR_TRAIN_FRACTION}
        return Corpus(f"shakespeare_char-{split_name}", read, files=[path], settings=settings)

    return {"train": part(0, "train"), "val": part(1, "val")}
