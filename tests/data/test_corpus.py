"""Text corpora for LM pre-training: files, folders, .gz, .tar.gz, IMDB unsup, Shakespeare."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from torchformer.data.corpus import (
    find_tinyshakespeare,
    imdb_unsup_corpus,
    shakespeare_char_corpora,
    shakespeare_char_split,
    text_corpus,
    tinyshakespeare_corpus,
)
from torchformer.data.paths import data_dir
from torchformer.data.records import DataError
from torchformer.text.cleaning import strip_html

TEXT = "First line\nsecond line\n\n  \nThird, after blanks\r\nfourth\n\n\nlast\n"


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w:gz") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


# --- splits of one file ------------------------------------------------------------------
def test_file_split_is_one_document_holding_the_whole_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.txt", TEXT)
    assert list(text_corpus(path)) == [(str(path), TEXT)]


def test_line_split_drops_line_endings_and_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.txt", TEXT)
    docs = list(text_corpus(path, split="line"))
    assert docs == [
        (f"{path}:1", "First line"),
        (f"{path}:2", "second line"),
        (f"{path}:5", "Third, after blanks"),
        (f"{path}:6", "fourth"),
        (f"{path}:9", "last"),
    ]


def test_paragraph_split_on_blank_and_whitespace_lines(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.txt", TEXT)
    docs = list(text_corpus(path, split="paragraph"))
    assert docs == [
        (f"{path}:1", "First line\nsecond line"),
        (f"{path}:5", "Third, after blanks\r\nfourth"),
        (f"{path}:9", "last"),
    ]


def test_unknown_split_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        text_corpus(_write(tmp_path / "a.txt", TEXT), split="sentence")  # type: ignore[arg-type]


def test_missing_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        text_corpus(tmp_path / "nope.txt")


def test_empty_documents_are_skipped_and_clean_is_applied_first(tmp_path: Path) -> None:
    _write(tmp_path / "d" / "a.txt", "<br />")
    _write(tmp_path / "d" / "b.txt", "  \n")
    _write(tmp_path / "d" / "c.txt", "Good.<br /><br />Really.")
    docs = list(text_corpus(tmp_path / "d", clean=strip_html))
    assert [text for _, text in docs] == ["Good.  Really."]


# --- folders, .gz, archives -------------------------------------------------------------
def test_folder_reads_matching_files_recursively_in_sorted_order(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    for name in ("b.txt", "a.txt", "sub/c.txt", "a10.txt", ".hidden.txt", "notes.md"):
        _write(folder / name, f"text of {name}")
    _write(folder / ".git" / "x.txt", "hidden folder")
    corpus = text_corpus(folder)
    names = [Path(doc_id).relative_to(folder).as_posix() for doc_id, _ in corpus]
    assert names == ["a.txt", "a10.txt", "b.txt", "sub/c.txt"]
    assert corpus.name == "corpus"
    assert list(corpus) == list(corpus)  # re-iterable: a fresh pass each time
    assert list(corpus.texts()) == [f"text of {name}" for name in names]


def test_folder_without_matching_files_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "d" / "x.md", "x")
    with pytest.raises(FileNotFoundError, match=r"no files matching '\*\.txt'"):
        text_corpus(tmp_path / "d")


def test_gz_file_is_decompressed(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.txt.gz", gzip.compress(TEXT.encode()))
    assert [text for _, text in text_corpus(path, split="line")][:2] == [
        "First line",
        "second line",
    ]
    assert list(text_corpus(path)) == [(str(path), TEXT)]


MEMBERS = [
    ("docs/b.txt", b"bee"),
    ("docs/a.txt", b"ay"),
    ("docs/sub/0.txt", b"zero"),
    ("docs/readme.md", b"skip me"),
    ("docs/._a.txt", b"mac junk"),
]


@pytest.mark.parametrize("mode, suffix", [("w:gz", ".tar.gz"), ("w", ".tar")])
def test_archive_members_are_read_sorted_by_name_whatever_the_storage_order(
    tmp_path: Path, mode: str, suffix: str
) -> None:
    unsorted = _tar(tmp_path / f"u{suffix}", MEMBERS, mode)
    stored_sorted = _tar(tmp_path / f"s{suffix}", sorted(MEMBERS), mode)
    for path in (unsorted, stored_sorted):
        docs = list(text_corpus(path))
        assert docs == [
            (f"{path}:docs/a.txt", "ay"),
            (f"{path}:docs/b.txt", "bee"),
            (f"{path}:docs/sub/0.txt", "zero"),
        ]


def test_archive_members_split_into_lines(tmp_path: Path) -> None:
    path = _tar(tmp_path / "a.tar.gz", [("x.txt", b"one\ntwo\n")])
    assert list(text_corpus(path, split="line")) == [
        (f"{path}:x.txt:1", "one"),
        (f"{path}:x.txt:2", "two"),
    ]


def test_corrupt_archive_is_a_data_error(tmp_path: Path) -> None:
    good = _tar(tmp_path / "good.tar.gz", MEMBERS).read_bytes()
    bad = _write(tmp_path / "bad.tar.gz", good[: len(good) // 2])
    with pytest.raises(DataError, match=r"bad\.tar\.gz: corrupt or truncated archive"):
        list(text_corpus(bad))


# --- undecodable bytes --------------------------------------------------------------------
def test_undecodable_bytes_name_file_and_byte_offset(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.txt", b"caf\xc3\xa9\nok\nbad \xff here\n")
    with pytest.raises(DataError, match=r"byte offset 13 ") as error:
        list(text_corpus(path))
    assert error.value.file == str(path)
    with pytest.raises(DataError, match=r"a\.txt:3: .*byte offset 13 ") as error:
        list(text_corpus(path, split="line"))
    assert error.value.line == 3
    with pytest.raises(DataError, match=r"byte offset 13 "):
        list(text_corpus(path, split="paragraph"))


def test_undecodable_bytes_in_an_archive_name_the_member(tmp_path: Path) -> None:
    path = _tar(tmp_path / "a.tar.gz", [("ok.txt", b"fine"), ("m/bad.txt", b"xy\xfe")])
    with pytest.raises(DataError, match=r"a\.tar\.gz:m/bad\.txt.*byte offset 2 "):
        list(text_corpus(path))


def test_undecodable_bytes_in_gz_give_the_decompressed_offset(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.txt.gz", gzip.compress(b"abc\n\x80"))
    with pytest.raises(DataError, match=r"a\.txt\.gz:2: .*byte offset 4 "):
        list(text_corpus(path, split="line"))


# --- fingerprint ---------------------------------------------------------------------------
def test_fingerprint_follows_files_and_settings(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.txt", TEXT)
    first = text_corpus(path).fingerprint()
    assert text_corpus(path).fingerprint() == first  # stable
    assert text_corpus(path, split="line").fingerprint() != first
    assert text_corpus(path, clean=strip_html).fingerprint() != first
    assert text_corpus(path, name="other").fingerprint() != first
    stat = path.stat()
    _write(path, TEXT.upper())  # same size, new content: the mtime moves
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert text_corpus(path).fingerprint() != first
    _write(path, TEXT + "more")  # size changes
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime
    assert text_corpus(path).fingerprint() != first


# --- IMDB unlabeled ------------------------------------------------------------------------
def test_imdb_unsup_reads_reviews_through_the_imdb_reader(tmp_path: Path) -> None:
    members = [
        ("aclImdb/train/unsup/7_0.txt", b"Saw it.<br /><br />Fine."),
        ("aclImdb/train/unsup/3_0.txt", b"No opinion."),
    ]
    _tar(tmp_path / "imdb" / "aclImdb_unsup.tar.gz", members)
    corpus = imdb_unsup_corpus(tmp_path / "imdb", clean=strip_html)
    assert list(corpus) == [("unsup/unsup/7", "Saw it.  Fine."), ("unsup/unsup/3", "No opinion.")]
    assert corpus.files == [tmp_path / "imdb" / "aclImdb_unsup.tar.gz"]
    raw = imdb_unsup_corpus(tmp_path / "imdb")
    assert next(iter(raw))[1] == "Saw it.<br /><br />Fine."
    assert raw.fingerprint() != corpus.fingerprint()  # the cleaning is part of it


def test_imdb_unsup_from_an_extracted_folder_in_data_dir(tmp_path: Path, monkeypatch) -> None:
    _write(tmp_path / "imdb" / "aclImdb" / "train" / "unsup" / "5_0.txt", "Five.")
    _write(tmp_path / "imdb" / "aclImdb" / "train" / "unsup" / "12_0.txt", "Twelve.")
    monkeypatch.setenv("TORCHFORMER_DATA", str(tmp_path))
    corpus = imdb_unsup_corpus()
    assert [text for _, text in corpus] == ["Twelve.", "Five."]  # sorted file names
    assert len(corpus.files) == 2


def test_imdb_unsup_rejects_a_bad_review_file(tmp_path: Path) -> None:
    _tar(tmp_path / "aclImdb_unsup.tar.gz", [("aclImdb/train/unsup/1_0.txt", b"\xff")])
    with pytest.raises(DataError, match=r"1_0\.txt.*byte offset 0"):
        list(imdb_unsup_corpus(tmp_path / "aclImdb_unsup.tar.gz"))


# --- Tiny Shakespeare --------------------------------------------------------------------
def test_shakespeare_char_split_is_nanogpts_90_10() -> None:
    text = "".join(chr(65 + i % 26) for i in range(1001))
    train, val = shakespeare_char_split(text)
    assert (len(train), len(val)) == (900, 101)  # int(1001 * 0.9) = 900
    assert train + val == text
    assert shakespeare_char_split("abcdefghijk") == ("abcdefghi", "jk")  # int(9.9) = 9


def test_tinyshakespeare_corpora_from_a_data_dir(tmp_path: Path) -> None:
    text = "ROMEO:\nBut soft!\n\n" * 10
    path = _write(tmp_path / "tinyshakespeare" / "input.txt", text)
    assert find_tinyshakespeare(tmp_path) == path
    assert list(tinyshakespeare_corpus(tmp_path)) == [(str(path), text)]
    parts = shakespeare_char_corpora(tmp_path)
    (_, train), (_, val) = next(iter(parts["train"])), next(iter(parts["val"]))
    assert (train, val) == shakespeare_char_split(text)
    assert parts["train"].fingerprint() != parts["val"].fingerprint()


def test_missing_tinyshakespeare_says_where_it_belongs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tinyshakespeare/input\.txt.*TORCHFORMER_DATA"):
        find_tinyshakespeare(tmp_path)


# --- the real files (tier 3) ---------------------------------------------------------------
def _real(path: str) -> Path:
    full = data_dir() / path
    if not full.exists():
        pytest.skip(f"{full} absent: set TORCHFORMER_DATA to the shared data folder")
    return full


@pytest.mark.data
def test_real_tinyshakespeare_and_shakespeare_char_split() -> None:
    _real("tinyshakespeare/input.txt")
    [(_, text)] = list(tinyshakespeare_corpus())
    assert len(text) == 1_115_394
    assert text.startswith("First Citizen:\nBefore we proceed any further")
    train, val = shakespeare_char_split(text)
    assert (len(train), len(val)) == (1_003_854, 111_540)
    parts = shakespeare_char_corpora()
    assert [len(t) for _, t in parts["train"]] == [1_003_854]
    assert [len(t) for _, t in parts["val"]] == [111_540]


@pytest.mark.data
def test_real_imdb_unsup_archive_has_50000_reviews() -> None:
    archive = _real("imdb/aclImdb_unsup.tar.gz")
    docs = list(imdb_unsup_corpus(clean=strip_html))
    assert len(docs) == 50_000
    assert len({doc_id for doc_id, _ in docs}) == 50_000
    assert not any("<br" in text for _, text in docs)
    # The generic archive reader sees the same reviews, in member-name order.
    generic = list(text_corpus(archive))
    assert len(generic) == 50_000
    names = [doc_id.split(":")[-1] for doc_id, _ in generic]
    assert names == sorted(names) and names[0] == "aclImdb/train/unsup/0_0.txt"
