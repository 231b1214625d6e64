"""IMDB reader: archive / split archives / folder, validation, find, download, sampling."""

from __future__ import annotations

import hashlib
import io
import itertools
import tarfile
import urllib.error
from collections import Counter
from pathlib import Path

import pytest

from torchformer.data import imdb
from torchformer.data.imdb import (
    IMDB_URL,
    balanced_sample,
    download_imdb,
    find_imdb,
    iter_imdb,
    read_imdb,
    read_imdb_splits,
)
from torchformer.data.records import DataError, TextRecord

# (split folder, label folder, file name, text)
REVIEWS = [
    ("train", "pos", "10_9.txt", "Loved it.<br /><br />Would watch again."),
    ("train", "pos", "2_7.txt", "Pretty good."),
    ("train", "neg", "0_3.txt", "Dull."),
    ("train", "neg", "11_1.txt", "Awful — truly."),
    ("test", "pos", "5_10.txt", "Masterpiece!"),
    ("test", "neg", "5_2.txt", "Nope."),
    ("train", "unsup", "7_0.txt", "Saw it yesterday."),
    ("train", "unsup", "3_0.txt", "No opinion."),
]
# Files the official archive has outside the review folders; they must be ignored.
EXTRAS = [("train", "urls_pos.txt", "http://x"), ("train", "labeledBow.feat", "0:1")]


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _members(labels: tuple[str, ...] = ("pos", "neg", "unsup")) -> list[tuple[str, bytes]]:
    members = [("aclImdb/README", b"readme")]
    members += [(f"aclImdb/{s}/{name}", text.encode()) for s, name, text in EXTRAS]
    members += [
        (f"aclImdb/{split}/{label}/{name}", text.encode())
        for split, label, name, text in REVIEWS
        if label in labels
    ]
    return members


@pytest.fixture
def official(tmp_path: Path) -> Path:
    return _tar(tmp_path / "aclImdb_v1.tar.gz", _members())


@pytest.fixture
def split_archives(tmp_path: Path) -> Path:
    folder = tmp_path / "two"
    folder.mkdir()
    _tar(folder / "aclImdb_labeled.tar.gz", _members(("pos", "neg")))
    _tar(folder / "aclImdb_unsup.tar.gz", _members(("unsup",)))
    return folder


@pytest.fixture
def extracted(tmp_path: Path) -> Path:
    for name, data in _members():
        path = tmp_path / "extracted" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return tmp_path / "extracted"


def test_archive_records_are_sorted_labelled_and_keep_rating_and_id(official: Path) -> None:
    train = read_imdb(official, "train")
    assert [r.id for r in train] == ["train/neg/0", "train/neg/11", "train/pos/2", "train/pos/10"]
    assert [r.label for r in train] == ["neg", "neg", "pos", "pos"]
    assert [r.rating for r in train] == [3, 1, 7, 9]
    assert train[3].text == "Loved it.<br /><br />Would watch again."


def test_unsup_split_has_no_labels(official: Path) -> None:
    unsup = read_imdb(official, "unsup")
    assert [(r.id, r.label, r.rating) for r in unsup] == [
        ("unsup/unsup/3", None, 0),
        ("unsup/unsup/7", None, 0),
    ]


@pytest.mark.parametrize("split", ["train", "test", "unsup"])
def test_all_sources_give_identical_records(
    official: Path, split_archives: Path, extracted: Path, split: str
) -> None:
    expected = read_imdb(official, split)
    assert read_imdb(official.parent, split) == expected  # the folder holding the archive
    assert read_imdb(split_archives, split) == expected
    assert read_imdb(extracted, split) == expected  # parent of aclImdb/
    assert read_imdb(extracted / "aclImdb", split) == expected


def test_one_pass_reads_several_splits(official: Path) -> None:
    splits = read_imdb_splits(official, ("train", "test"))
    assert {name: len(records) for name, records in splits.items()} == {"train": 4, "test": 2}


def test_streaming_variant_yields_the_same_records(split_archives: Path) -> None:
    streamed = list(iter_imdb(split_archives, "train"))
    assert sorted(streamed, key=lambda r: r.id) == sorted(
        read_imdb(split_archives, "train"), key=lambda r: r.id
    )


def test_archive_is_not_unpacked(official: Path) -> None:
    before = sorted(official.parent.rglob("*"))
    read_imdb(official, "test")
    assert sorted(official.parent.rglob("*")) == before


def test_missing_unsup_archive_is_named(split_archives: Path) -> None:
    (split_archives / "aclImdb_unsup.tar.gz").unlink()
    assert len(read_imdb(split_archives, "train")) == 4
    with pytest.raises(FileNotFoundError, match=r"aclImdb_unsup\.tar\.gz"):
        read_imdb(split_archives, "unsup")


def test_unknown_split_is_rejected(official: Path) -> None:
    with pytest.raises(ValueError, match="splits must be among"):
        read_imdb(official, "validation")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "data", "field", "message"),
    [
        ("aclImdb/train/pos/review.txt", b"ok", "name", "does not match <id>_<rating>.txt"),
        ("aclImdb/train/pos/4_2.txt", b"ok", "rating", "rating 2 does not match label 'pos'"),
        ("aclImdb/train/neg/4_2.txt", b"ok \xff", "text", "byte offset 3"),
        ("aclImdb/train/neg/4_2.txt", b"  ", "text", "empty review"),
    ],
)
def test_bad_review_files_are_located(
    tmp_path: Path, name: str, data: bytes, field: str, message: str
) -> None:
    archive = _tar(tmp_path / "aclImdb_v1.tar.gz", [*_members(), (name, data)])
    with pytest.raises(DataError, match=message) as info:
        read_imdb(archive, "train")
    assert info.value.field == field
    assert str(info.value.file) == f"{archive}:{name}"


def test_truncated_archive_is_reported(official: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(official.read_bytes()[:300])
    with pytest.raises(DataError, match="corrupt or truncated archive") as info:
        read_imdb(truncated, "train")
    assert info.value.file == truncated


# --- finding and downloading ---------------------------------------------------------------
def test_find_imdb_looks_in_data_dir_imdb(tmp_path: Path) -> None:
    (tmp_path / "imdb").mkdir()
    archive = _tar(tmp_path / "imdb" / "aclImdb_v1.tar.gz", _members())
    assert find_imdb(tmp_path) == archive


def test_read_imdb_without_source_uses_the_data_dir(
    official: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHFORMER_DATA", str(official.parent))
    assert len(read_imdb(split="test")) == 2


def test_find_imdb_says_what_to_download_and_where(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        find_imdb(tmp_path)
    message = str(info.value)
    assert IMDB_URL in message
    assert str(tmp_path / "imdb" / "aclImdb_v1.tar.gz") in message


def test_download_offline_names_url_and_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(imdb.urllib.request, "urlopen", offline)
    with pytest.raises(ConnectionError) as info:
        download_imdb(tmp_path)
    message = str(info.value)
    assert IMDB_URL in message and str(tmp_path / "aclImdb_v1.tar.gz") in message


class _FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, status: int) -> None:
        super().__init__(data)
        self.status = status


def _fake_server(payload: bytes, honour_range: bool, seen: list[str | None]):
    def urlopen(request, timeout: float):
        header = request.get_header("Range")
        seen.append(header)
        if header and honour_range:
            start = int(header.removeprefix("bytes=").rstrip("-"))
            return _FakeResponse(payload[start:], 206)
        return _FakeResponse(payload, 200)

    return urlopen


@pytest.mark.parametrize("honour_range", [True, False])
def test_download_resumes_from_the_part_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, honour_range: bool
) -> None:
    payload = bytes(range(256)) * 40
    (tmp_path / "aclImdb_v1.tar.gz.part").write_bytes(payload[:1000])
    seen: list[str | None] = []
    monkeypatch.setattr(imdb.urllib.request, "urlopen", _fake_server(payload, honour_range, seen))
    digest = hashlib.sha256(payload).hexdigest()
    path = download_imdb(tmp_path, size=len(payload), sha256=digest)
    assert seen == ["bytes=1000-"]
    assert path == tmp_path / "aclImdb_v1.tar.gz" and path.read_bytes() == payload
    assert not (tmp_path / "aclImdb_v1.tar.gz.part").exists()
    # Already there and verified: no second request.
    assert download_imdb(tmp_path, size=len(payload), sha256=digest) == path
    assert len(seen) == 1


def test_download_with_wrong_checksum_is_rejected_and_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = b"x" * 100
    monkeypatch.setattr(imdb.urllib.request, "urlopen", _fake_server(payload, True, []))
    with pytest.raises(DataError, match="does not match the expected"):
        download_imdb(tmp_path, size=100, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


# --- balanced sample -------------------------------------------------------------------------
def _records(counts: dict[str, int]) -> list[TextRecord]:
    return [
        TextRecord(text=f"{label} {i}", label=label, id=f"{label}/{i}")
        for label, n in counts.items()
        for i in range(n)
    ]


def test_balanced_sample_is_stratified_and_seeded() -> None:
    records = _records({"pos": 90, "neg": 10})
    sample = balanced_sample(records, 10, seed=3)
    assert Counter(r.label for r in sample) == {"neg": 5, "pos": 5}
    assert sample == balanced_sample(records, 10, seed=3)
    assert sample != balanced_sample(records, 10, seed=4)
    odd = balanced_sample(records, 7, seed=0)
    assert Counter(r.label for r in odd) == {"neg": 4, "pos": 3}


def test_balanced_sample_refuses_too_few() -> None:
    with pytest.raises(ValueError, match="label 'neg' has 10 records, fewer than the 20"):
        balanced_sample(_records({"pos": 90, "neg": 10}), 40, seed=0)


# --- the real archives (tier 3) ----------------------------------------------------------------
@pytest.mark.data
def test_real_imdb_labeled_splits(imdb_labeled: dict[str, list[TextRecord]]) -> None:
    for split in ("train", "test"):
        records = imdb_labeled[split]
        assert Counter(r.label for r in records) == {"neg": 12500, "pos": 12500}
        assert len({r.id for r in records}) == 25000
        assert {r.rating for r in records if r.label == "pos"} == {7, 8, 9, 10}
        assert {r.rating for r in records if r.label == "neg"} == {1, 2, 3, 4}
    train = imdb_labeled["train"]
    assert train[0].id == "train/neg/0" and train[-1].id == "train/pos/12499"
    assert sum("<br />" in r.text for r in train) > 10000


@pytest.mark.data
def test_real_imdb_unsup_streams(imdb_labeled: dict[str, list[TextRecord]]) -> None:
    # imdb_labeled skips this test when the data is absent; the stream stops early.
    first = list(itertools.islice(iter_imdb(find_imdb(), "unsup"), 5))
    assert len(first) == 5
    assert all(r.label is None and r.rating == 0 and r.id.startswith("unsup/") for r in first)
