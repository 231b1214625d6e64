"""read_table: formats, validation errors located by file/line/field, skipping bad rows."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from torchformer.data.records import DataError, TextRecord
from torchformer.data.tabular import read_lines, read_table


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def test_csv_with_quoted_commas_and_multiline_fields(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", 'text,label\n"good, really",pos\n"two\nlines",neg\nok,pos\n')
    table = read_table(path)
    assert [r.text for r in table.records] == ["good, really", "two\nlines", "ok"]
    assert [r.label for r in table.records] == ["pos", "neg", "pos"]
    assert table.line_numbers == [2, 3, 5]


def test_tsv_treats_quotes_as_text(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.tsv", 'sentence\ty\n"Quoted" start\t1\nplain\t0\n')
    table = read_table(path, text_column="sentence", label_column="y")
    assert [(r.text, r.label) for r in table.records] == [('"Quoted" start', 1), ("plain", 0)]


def test_jsonl_keeps_integer_and_string_labels(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", '{"text": "a", "label": 2}\n\n{"text": "b", "label": 0}\n')
    assert [r.label for r in read_table(path).records] == [2, 0]
    path = _write(tmp_path / "s.jsonl", '{"text": "a", "label": "x"}\n')
    assert read_table(path).records == [TextRecord("a", "x")]


def test_json_array_uses_record_numbers(tmp_path: Path) -> None:
    rows = [{"text": "a", "label": "p"}, {"text": "", "label": "n"}]
    path = _write(tmp_path / "d.json", json.dumps(rows, indent=1))
    with pytest.raises(DataError) as info:
        read_table(path)
    assert (info.value.record, info.value.field) == (2, "text")
    assert str(info.value) == f"{path}: record 2: field 'text': empty text; expected non-empty text"


def test_csv_integer_labels_become_ints_only_when_all_are(tmp_path: Path) -> None:
    ints = _write(tmp_path / "i.csv", "text,label\na,1\nb,0\n")
    assert [r.label for r in read_table(ints).records] == [1, 0]
    mixed = _write(tmp_path / "m.csv", "text,label\na,1\nb,pos\n")
    assert [r.label for r in read_table(mixed).records] == ["1", "pos"]


def test_gzip_bom_and_id_column(tmp_path: Path) -> None:
    path = tmp_path / "d.csv.gz"
    path.write_bytes(gzip.compress(b"\xef\xbb\xbfid,text,label\nr1,hello,pos\n"))
    assert read_table(path, id_column="id").records == [TextRecord("hello", "pos", id="r1")]


def test_unlabeled_data(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "text\nhello\n")
    assert read_table(path, label_column=None).records == [TextRecord("hello", None)]


def test_missing_column_lists_the_columns_present(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "review,sentiment\nnice,pos\n")
    with pytest.raises(DataError) as info:
        read_table(path, label_column="sentiment")
    assert (
        str(info.value)
        == f"{path}:1: field 'text': missing column; columns present: review, sentiment"
    )


@pytest.mark.parametrize(
    ("content", "line", "field", "message"),
    [
        ("text,label\nok,pos\n   ,neg\n", 3, "text", "empty text"),
        ("text,label\nok,pos\nfine,\n", 3, "label", "missing label"),
        ("text,label\nok,pos\nfine\n", 3, "label", "missing label"),
        ("text,label\nok,pos\na,b,c\n", 3, None, r"expected 2 fields \(text, label\), found 3"),
    ],
)
def test_csv_row_errors_name_file_line_and_field(
    tmp_path: Path, content: str, line: int, field: str | None, message: str
) -> None:
    path = _write(tmp_path / "d.csv", content)
    with pytest.raises(DataError, match=message) as info:
        read_table(path)
    assert (info.value.file, info.value.line, info.value.field) == (path, line, field)


def test_undecodable_bytes_report_line_byte_offset_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", b"text,label\nok,pos\nbad \xe9 latin-1,neg\n")
    with pytest.raises(DataError) as info:
        read_table(path)
    error = info.value
    assert (error.line, error.field) == (3, "text")
    assert "byte offset 22 of the file (column 5 of the line), expected UTF-8" in str(error)


def test_malformed_json_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", label: 2}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: malformed JSON: .* at column 15"):
        read_table(path)


def test_json_labels_must_be_strings_or_integers_of_one_type(tmp_path: Path) -> None:
    path = _write(tmp_path / "f.jsonl", '{"text": "a", "label": 1.5}\n')
    with pytest.raises(DataError, match="expected a string or integer label, got float"):
        read_table(path)
    path = _write(tmp_path / "m.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n')
    with pytest.raises(DataError, match="'x' is a str but the first label") as info:
        read_table(path)
    assert info.value.line == 2


def test_skip_bad_rows_returns_and_logs_a_summary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    content = b"text,label\nok,pos\n,neg\nbad \xff,neg\nfine,\nalso ok,neg\n"
    path = _write(tmp_path / "d.csv", content)
    with caplog.at_level(logging.WARNING, logger="torchformer.data.tabular"):
        table = read_table(path, skip_bad_rows=True)
    assert [r.text for r in table.records] == ["ok", "also ok"]
    assert table.line_numbers == [2, 6]
    assert [line for line, _ in table.skipped] == [3, 4, 5]
    assert "field 'label': missing label" in table.skipped[2][1]
    assert table.skip_counts() == {
        "field 'text': empty text": 1,
        "field 'text': undecodable bytes": 1,
        "field 'label': missing": 1,
    }
    assert "skipped 3 of 5 rows (field 'text': empty text: 1, " in caplog.text
    assert caplog.text.count("skipped 3 of 5 rows") == 1


def test_skipped_rows_are_counted_by_the_kind_the_reader_gave_them(tmp_path: Path) -> None:
    # The header names a "missing_note" column: the kind comes from the reader, not from
    # words that happen to be in the message.
    content = b"text,label,missing_note\na,pos,x\nb,neg,y,extra\n,neg,z\n"
    table = read_table(_write(tmp_path / "d.csv", content), skip_bad_rows=True)
    assert table.skip_counts() == {"too many fields": 1, "field 'text': empty text": 1}


def test_read_lines_names_the_line_of_undecodable_bytes(tmp_path: Path) -> None:
    path = _write(tmp_path / "texts.txt", b"first\r\nsecond\ncaf\xe9\n")
    with pytest.raises(DataError, match="expected UTF-8") as info:
        read_lines(path)
    assert info.value.file == path and info.value.line == 3
    assert read_lines(_write(tmp_path / "ok.txt", b"first\r\nsecond\n")) == ["first", "second"]


def test_format_detection_errors(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.txt", "text,label\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        read_table(path)
    assert len(read_table(_write(tmp_path / "x.txt", "text,label\na,b\n"), format="csv")) == 1
    with pytest.raises(FileNotFoundError, match="data file not found"):
        read_table(tmp_path / "missing.csv")


def test_a_file_without_valid_rows_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "text,label\n,pos\n")
    with pytest.raises(DataError, match="no valid records"):
        read_table(path, skip_bad_rows=True)


def test_long_csv_fields_are_accepted(tmp_path: Path) -> None:
    long_text = "word " * 60_000  # 300 kB, over csv's default 128 KiB field limit
    path = _write(tmp_path / "d.csv", f'text,label\n"{long_text}",pos\n')
    assert read_table(path).records[0].text == long_text


@pytest.fixture
def default_csv_field_limit():
    """csv's field limit as a fresh process has it (an earlier read may have raised it)."""
    import csv

    previous = csv.field_size_limit(131_072)
    yield
    csv.field_size_limit(previous)


def test_a_first_line_longer_than_the_csv_field_limit_is_a_located_error(
    tmp_path: Path, default_csv_field_limit: None
) -> None:
    long_text = "word " * 30_000  # 150 kB: a file without a header, a review on line 1
    path = _write(tmp_path / "d.csv", f'"{long_text}",pos\n"short",neg\n')
    with pytest.raises(DataError) as info:
        read_table(path)
    error = info.value
    assert (error.file, error.line, error.field) == (path, 1, "text")
    assert "missing column" in str(error) and len(str(error)) < 500  # the column name cut short
    header = f"text,{'x' * 150_000}\n"  # a long column name: read, and the file is fine
    path = _write(tmp_path / "h.csv", header + "ok,1\n")
    assert read_table(path, label_column=None).records == [TextRecord("ok", None)]


def test_a_lone_surrogate_in_json_is_a_located_error(tmp_path: Path) -> None:
    # "\ud800" escaped in the JSON text: valid JSON, but half a UTF-16 pair, not a character.
    path = _write(
        tmp_path / "d.jsonl", '{"text": "ok", "label": 1}\n{"text": "a \\ud800 b", "label": 0}\n'
    )
    with pytest.raises(DataError) as info:
        read_table(path)
    error = info.value
    assert (error.file, error.line, error.field) == (path, 2, "text")
    assert "\\ud800" in str(error)
    str(error).encode("utf-8")  # the message itself prints
    path = _write(tmp_path / "l.json", '[{"text": "ok", "label": "a\\udfff"}]')
    with pytest.raises(DataError) as info:
        read_table(path)
    assert (info.value.record, info.value.field) == (1, "label")
    table = read_table(tmp_path / "d.jsonl", skip_bad_rows=True)
    assert [r.text for r in table.records] == ["ok"] and table.skipped[0][0] == 2


def test_a_duplicated_column_is_a_located_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "text,label,label\nok,pos,neg\n")
    with pytest.raises(DataError) as info:
        read_table(path)
    error = info.value
    assert (error.file, error.line, error.field) == (path, 1, "label")
    assert "duplicated column" in str(error)
    path = _write(tmp_path / "d.tsv", "text\tnote\tnote\tlabel\nok\ta\tb\tpos\n")  # unused: fine
    assert read_table(path).records == [TextRecord("ok", "pos")]


def test_a_duplicated_json_key_is_a_located_error(tmp_path):
    # json.loads keeps the last of two equal keys without a word; the reader names it.
    jsonl = tmp_path / "dup.jsonl"
    jsonl.write_text('{"text": "fine", "label": 1}\n{"text": "a", "label": 0, "label": 1}\n')
    with pytest.raises(DataError) as info:
        read_table(jsonl)
    assert str(info.value).startswith(f"{jsonl}:2: field 'label': the key appears more than once")
    array = tmp_path / "dup.json"
    array.write_text('[{"text": "a", "text": "b", "label": 1}]')
    with pytest.raises(DataError, match="record 1: field 'text'"):
        read_table(array)
    nested = tmp_path / "nested.jsonl"  # only the record's own keys matter
    nested.write_text('{"text": "a", "label": 1, "meta": {"x": 1, "x": 2}}\n')
    assert [r.text for r in read_table(nested).records] == ["a"]
    table = read_table(jsonl, skip_bad_rows=True)
    assert table.skip_counts() == {"field 'label': duplicate key": 1}
