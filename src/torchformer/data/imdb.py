"""The Large Movie Review Dataset (IMDB; Maas et al., ACL 2011).

Layout: ``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt`` (25,000 + 25,000 reviews,
balanced; ratings 1-4 negative, 7-10 positive) and ``aclImdb/train/unsup/<id>_0.txt``
(50,000 unlabeled reviews). The reader accepts any of:

- the official archive ``aclImdb_v1.tar.gz`` (or a directory holding it);
- a directory holding ``aclImdb_labeled.tar.gz`` and/or ``aclImdb_unsup.tar.gz`` (the
  same layout split in two archives);
- an extracted ``aclImdb/`` folder, or its parent.

Archives are streamed (``tarfile`` streaming mode) and never unpacked to disk. Records
come back sorted by label then numeric id, whatever the source, so every source gives
the same order; ``iter_imdb`` streams them in storage order instead.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import random
import re
import tarfile
import urllib.error
import urllib.request
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torchformer.data.paths import data_dir as default_data_dir
from torchformer.data.records import DataError, TextRecord

__all__ = [
    "IMDB_SHA256",
    "IMDB_SIZE",
    "IMDB_URL",
    "balanced_sample",
    "download_imdb",
    "find_imdb",
    "iter_imdb",
    "read_imdb",
    "read_imdb_splits",
]

logger = logging.getLogger(__name__)

Split = Literal["train", "test", "unsup"]
SPLITS: tuple[str, ...] = ("train", "test", "unsup")

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_ARCHIVE = "aclImdb_v1.tar.gz"
# Published size and checksum of the official archive (also used by TFDS and HF datasets).
IMDB_SIZE = 84_125_825
IMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
LABELED_ARCHIVE = "aclImdb_labeled.tar.gz"
UNSUP_ARCHIVE = "aclImdb_unsup.tar.gz"

# Which folders of aclImdb/ hold each split, and the ratings each label allows.
_SPLIT_FOLDERS = {"train": ("neg", "pos"), "test": ("neg", "pos"), "unsup": ("unsup",)}
_RATINGS = {"neg": range(1, 5), "pos": range(7, 11), "unsup": range(0, 1)}
_MEMBER_RE = re.compile(r"(?:^|/)(train|test)/(neg|pos|unsup)/([^/]+)$")
_FILE_NAME_RE = re.compile(r"(\d+)_(\d+)\.txt")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class _Source:
    """One place to read from: a tar archive or an ``aclImdb`` folder."""

    kind: Literal["tar", "folder"]
    path: Path


def _split_of(folder_split: str, label: str) -> str:
    return "unsup" if label == "unsup" else folder_split


def _make_record(location: str, split: str, label: str, name: str, data: bytes) -> TextRecord:
    """Validate one review file and build its record."""
    match = _FILE_NAME_RE.fullmatch(name)
    if match is None:
        raise DataError(
            f"file name {name!r} does not match <id>_<rating>.txt", file=location, field="name"
        )
    number, rating = match.group(1), int(match.group(2))
    if rating not in _RATINGS[label]:
        allowed = _RATINGS[label]
        raise DataError(
            f"rating {rating} does not match label {label!r} "
            f"(expected {allowed.start}-{allowed.stop - 1})",
            file=location,
            field="rating",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"undecodable bytes at byte offset {error.start} (expected UTF-8)",
            file=location,
            field="text",
        ) from error
    if not text.strip():
        raise DataError("empty review; expected non-empty text", file=location, field="text")
    return TextRecord(
        text=text,
        label=None if label == "unsup" else label,
        id=f"{split}/{label}/{number}",
        rating=rating,
    )


def _iter_tar(path: Path, splits: set[str]) -> Iterator[tuple[str, TextRecord]]:
    """Stream (split, record) pairs of the wanted splits from a tar archive."""
    try:
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                match = _MEMBER_RE.search(member.name)
                if match is None or not member.isfile():
                    continue
                folder_split, label, name = match.groups()
                split = _split_of(folder_split, label)
                if split not in splits or name.startswith("."):
                    continue
                handle = archive.extractfile(member)
                data = handle.read() if handle is not None else b""
                yield split, _make_record(f"{path}:{member.name}", split, label, name, data)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(f"corrupt or truncated archive: {error}", file=path) from error


def _iter_folder(root: Path, splits: set[str]) -> Iterator[tuple[str, TextRecord]]:
    """Yield (split, record) pairs from an extracted ``aclImdb`` folder."""
    for split in sorted(splits):
        folder_split = "train" if split == "unsup" else split
        for label in _SPLIT_FOLDERS[split]:
            folder = root / folder_split / label
            if not folder.is_dir():
                raise FileNotFoundError(f"IMDB folder {folder} is missing (needed for {split!r})")
            for file in sorted(folder.iterdir()):
                if file.is_file() and not file.name.startswith("."):
                    record = _make_record(str(file), split, label, file.name, file.read_bytes())
                    yield split, record


def _is_acl_root(folder: Path) -> bool:
    return (folder / "train").is_dir() or (folder / "test").is_dir()


def _resolve_sources(source: Path, splits: set[str]) -> list[_Source]:
    """Where to read ``splits`` from, given a user-supplied path."""
    if source.is_file():
        return [_Source("tar", source)]
    if not source.is_dir():
        raise FileNotFoundError(f"IMDB source {source} does not exist")
    if (source / IMDB_ARCHIVE).is_file():
        return [_Source("tar", source / IMDB_ARCHIVE)]
    labeled, unsup = source / LABELED_ARCHIVE, source / UNSUP_ARCHIVE
    if labeled.is_file() or unsup.is_file():
        needed = []
        if splits & {"train", "test"}:
            needed.append(labeled)
        if "unsup" in splits:
            needed.append(unsup)
        missing = [path.name for path in needed if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{source}: splits {sorted(splits)} need {missing}, which is missing"
            )
        return [_Source("tar", path) for path in needed]
    for root in (source, source / "aclImdb"):
        if _is_acl_root(root):
            return [_Source("folder", root)]
    raise FileNotFoundError(
        f"{source}: no IMDB data found; expected {IMDB_ARCHIVE}, {LABELED_ARCHIVE} / "
        f"{UNSUP_ARCHIVE}, or an extracted aclImdb/ folder"
    )


def _check_splits(splits: Iterable[str]) -> set[str]:
    splits = set(splits)
    unknown = splits - set(SPLITS)
    if unknown or not splits:
        raise ValueError(f"IMDB splits must be among {SPLITS}, got {sorted(splits)}")
    return splits


def _source_path(source: str | Path | None) -> Path:
    return find_imdb() if source is None else Path(source).expanduser()


def _iter_pairs(path: Path, splits: set[str]) -> Iterator[tuple[str, TextRecord]]:
    for place in _resolve_sources(path, splits):
        logger.info("reading IMDB %s from %s", sorted(splits), place.path)
        reader = _iter_tar if place.kind == "tar" else _iter_folder
        yield from reader(place.path, splits)


def iter_imdb(source: str | Path | None = None, split: Split = "train") -> Iterator[TextRecord]:
    """Stream the reviews of one split in storage order (see ``read_imdb``)."""
    splits = _check_splits([split])
    for _, record in _iter_pairs(_source_path(source), splits):
        yield record


def _sort_key(record: TextRecord) -> tuple[str, int]:
    _, label, number = record.id.split("/")  # type: ignore[union-attr]
    return label, int(number)


def read_imdb_splits(
    source: str | Path | None = None, splits: Sequence[Split] = ("train", "test")
) -> dict[str, list[TextRecord]]:
    """Read several splits in one pass over each archive.

    Args:
        source: an archive, a directory (see the module docstring), or None to use
            ``find_imdb()``.
        splits: among ``"train"``, ``"test"``, ``"unsup"``.

    Returns:
        split -> records sorted by label (``neg`` < ``pos``) then numeric id. Record ids
        are ``"<split>/<label>/<id>"`` (unique); ``rating`` is kept.

    Raises:
        FileNotFoundError: no IMDB data at ``source`` (or in the data directory).
        DataError: a corrupt archive or a bad review file (named).
    """
    wanted = _check_splits(splits)
    path = _source_path(source)
    result: dict[str, list[TextRecord]] = {split: [] for split in splits}
    for split, record in _iter_pairs(path, wanted):
        result[split].append(record)
    for split, records in result.items():
        if not records:
            raise DataError(f"no reviews found for split {split!r}", file=path)
        records.sort(key=_sort_key)
    return result


def read_imdb(source: str | Path | None = None, split: Split = "train") -> list[TextRecord]:
    """Read one IMDB split, sorted by label then numeric id (see ``read_imdb_splits``)."""
    return read_imdb_splits(source, [split])[split]


def find_imdb(data_dir: str | Path | None = None) -> Path:
    """Locate IMDB in ``data_dir/imdb/`` or ``data_dir/`` (default: ``paths.data_dir()``).

    Returns:
        The official archive, the directory holding the two split archives, or the
        extracted ``aclImdb`` folder, ready for ``read_imdb``.

    Raises:
        FileNotFoundError: nothing found; the message says what to download and where.
    """
    base = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    for folder in (base / "imdb", base):
        if (folder / IMDB_ARCHIVE).is_file():
            return folder / IMDB_ARCHIVE
        if (folder / LABELED_ARCHIVE).is_file() or (folder / UNSUP_ARCHIVE).is_file():
            return folder
        for root in (folder / "aclImdb", folder):
            if root.is_dir() and _is_acl_root(root):
                return root
    raise FileNotFoundError(
        f"IMDB not found in {base / 'imdb'} or {base}. Download the official archive "
        f"{IMDB_URL} (84 MB) and put it, unextracted, at {base / 'imdb' / IMDB_ARCHIVE} "
        f"(or call torchformer.data.imdb.download_imdb()). To use another data "
        f"directory, set TORCHFORMER_DATA."
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, part: Path, timeout: float) -> None:
    """Append the rest of ``url`` to ``part``, restarting when Range is not honoured."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        status = getattr(response, "status", None) or response.getcode()
        mode = "ab" if offset and status == 206 else "wb"
        if mode == "wb" and offset:
            logger.info("server ignored the Range request; restarting the download")
        with part.open(mode) as handle:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                handle.write(chunk)


def download_imdb(
    dest_dir: str | Path | None = None,
    *,
    url: str = IMDB_URL,
    size: int = IMDB_SIZE,
    sha256: str = IMDB_SHA256,
    timeout: float = 60.0,
) -> Path:
    """Download the official IMDB archive, resumably, and verify it.

    Bytes go to ``<archive>.part`` (an interrupted download resumes from there with an
    HTTP Range request); the file is renamed only once its size and SHA-256 match.

    Args:
        dest_dir: destination folder (default ``data_dir()/imdb``), created if needed.
        url: where to download from (a mirror must serve the identical archive).
        size, sha256: the expected size in bytes and checksum.
        timeout: socket timeout in seconds.

    Returns:
        The path of the verified archive.

    Raises:
        ConnectionError: the download failed (offline, ...); names URL and destination.
        DataError: the downloaded bytes do not match the checksum (the part is deleted).
    """
    dest = Path(dest_dir).expanduser() if dest_dir is not None else default_data_dir() / "imdb"
    final = dest / IMDB_ARCHIVE
    if final.is_file() and final.stat().st_size == size and _sha256(final) == sha256:
        return final
    dest.mkdir(parents=True, exist_ok=True)
    part = dest / (IMDB_ARCHIVE + ".part")
    if part.exists() and part.stat().st_size >= size:
        part.unlink()  # complete but unverified, or oversized: start again
    if not part.exists() or part.stat().st_size < size:
        try:
            logger.info("downloading %s to %s", url, part)
            _fetch(url, part, timeout)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            raise ConnectionError(
                f"could not download IMDB from {url} to {final}: {error}. If this machine "
                f"is offline, download the file elsewhere and copy it to {final}. "
                f"Downloaded bytes are kept in {part} and resumed on the next call."
            ) from error
    got = part.stat().st_size
    if got != size:
        raise ConnectionError(
            f"download of {url} stopped at {got} of {size} bytes; call again to resume into {part}"
        )
    digest = _sha256(part)
    if digest != sha256:
        part.unlink()
        raise DataError(
            f"SHA-256 {digest} does not match the expected {sha256}; the download was "
            f"deleted, call again to retry",
            file=part,
        )
    os.replace(part, final)
    return final


def balanced_sample(records: Sequence[TextRecord], n: int, seed: int) -> list[TextRecord]:
    """A seeded sample of ``n`` records with (as near as possible) equal counts per label.

    Labels are taken in sorted order; when ``n`` is not a multiple of the number of
    labels, the first labels get one extra record. The result is shuffled.

    Raises:
        ValueError: an unlabeled record, ``n`` < 1, or a label with too few records.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    by_label: dict[str | int, list[TextRecord]] = defaultdict(list)
    for index, record in enumerate(records):
        if record.label is None:
            raise ValueError(f"records[{index}] (id {record.id!r}) has no label")
        by_label[record.label].append(record)
    labels = sorted(by_label, key=lambda label: (isinstance(label, str), label))
    share, extra = divmod(n, len(labels))
    rng = random.Random(seed)
    sample: list[TextRecord] = []
    for position, label in enumerate(labels):
        wanted = share + (1 if position < extra else 0)
        pool = by_label[label]
        if wanted > len(pool):
            raise ValueError(
                f"label {label!r} has {len(pool)} records, fewer than the {wanted} needed "
                f"for a balanced sample of {n}"
            )
        sample.extend(rng.sample(pool, wanted))
    rng.shuffle(sample)
    return sample
