"""Parallel readers: aligned files, TSV, Multi30k; errors naming both files and the line."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from torchformer.data.parallel import (
    SentencePair,
    find_multi30k,
    read_multi30k,
    read_parallel,
    read_parallel_tsv,
)
from torchformer.data.paths import data_dir
from torchformer.data.records import DataError


def _pair(tmp_path: Path, src: bytes, tgt: bytes, gz: bool = False) -> tuple[Path, Path]:
    suffix = ".gz" if gz else ""
    paths = (tmp_path / f"train.de{suffix}", tmp_path / f"train.en{suffix}")
    for path, data in zip(paths, (src, tgt)):
        path.write_bytes(gzip.compress(data) if gz else data)
    return paths


@pytest.mark.parametrize("gz", [False, True])
def test_read_parallel_plain_and_gzip(tmp_path: Path, gz: bool) -> None:
    src, tgt = _pair(tmp_path, b"Ein Hund.\r\nZwei Katzen. \n", b"A dog.\nTwo cats.", gz)
    assert read_parallel(src, tgt) == [
        SentencePair("Ein Hund.", "A dog."),
        SentencePair("Zwei Katzen.", "Two cats."),
    ]


def test_different_line_counts_name_both_files(tmp_path: Path) -> None:
    src, tgt = _pair(tmp_path, b"a\nb\nc\n", b"x\ny\n")
    with pytest.raises(DataError) as info:
        read_parallel(src, tgt)
    message = str(info.value)
    assert f"{src} has 3 lines but {tgt} has 2" in message
    assert info.value.line == 3


def test_empty_line_names_both_files_and_the_line(tmp_path: Path) -> None:
    src, tgt = _pair(tmp_path, b"a\nb\nc\n", b"x\n  \nz\n")
    with pytest.raises(DataError) as info:
        read_parallel(src, tgt)
    assert (info.value.file, info.value.line) == (tgt, 2)
    assert f"its pair in {src} line 2 is 'b'" in str(info.value)


def test_undecodable_bytes_name_both_files_line_and_offset(tmp_path: Path) -> None:
    src, tgt = _pair(tmp_path, b"gut\nsch\xf6n\n", b"good\nnice\n")
    with pytest.raises(DataError) as info:
        read_parallel(src, tgt)
    assert (info.value.file, info.value.line) == (src, 2)
    assert "byte offset 7" in str(info.value) and str(tgt) in str(info.value)


def test_read_parallel_tsv_by_name_and_index(tmp_path: Path) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_text("id\tde\ten\n1\tHallo\tHello\n2\tDanke\tThanks\n")
    expected = [SentencePair("Hallo", "Hello"), SentencePair("Danke", "Thanks")]
    assert read_parallel_tsv(path, "de", "en") == expected
    headerless = tmp_path / "pairs2.tsv"
    headerless.write_text("Hallo\tHello\nDanke\tThanks\n")
    assert read_parallel_tsv(headerless, 0, 1) == expected


def test_read_parallel_tsv_errors(tmp_path: Path) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_text("de\ten\nHallo\tHello\nDanke\n\t\n")
    with pytest.raises(DataError, match="columns present: de, en") as info:
        read_parallel_tsv(path, "de", "fr")
    assert info.value.field == "fr"
    with pytest.raises(DataError, match="the line has 1 tab-separated fields") as info:
        read_parallel_tsv(path, "de", "en")
    assert (info.value.line, info.value.field) == (3, "en")


def test_multi30k_missing_says_what_to_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"github\.com/multi30k/dataset"):
        find_multi30k(tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        read_multi30k(tmp_path, split="dev")  # type: ignore[arg-type]


def test_multi30k_from_a_folder(tmp_path: Path) -> None:
    (tmp_path / "multi30k").mkdir()
    _pair(tmp_path / "multi30k", b"Hallo\n", b"Hello\n", gz=True)
    assert read_multi30k(tmp_path, "train") == [SentencePair("Hallo", "Hello")]
    assert read_multi30k(tmp_path, "train", src="en", tgt="de") == [SentencePair("Hello", "Hallo")]


@pytest.mark.data
def test_real_multi30k_sizes() -> None:
    try:
        find_multi30k(data_dir())
    except FileNotFoundError as error:
        pytest.skip(f"Multi30k data absent (set TORCHFORMER_DATA): {error}")
    sizes = {s: len(read_multi30k(split=s)) for s in ("val", "test_2016_flickr")}
    assert sizes == {"val": 1014, "test_2016_flickr": 1000}
    train = read_multi30k(split="train")
    assert len(train) == 29000
    assert train[0].src.startswith("Zwei junge weiße Männer")
