"""Property tests of everything that reads a user's text (issue 18): the table readers, text
cleaning, the tokenizer and ``predict()``.

Any input — arbitrary Unicode (lone surrogates included), empty, large (bounded) or binary —
gives a result with the documented properties or a named error: a ``DataError`` naming the
file for the readers, a ``ValueError``/``TypeError`` naming ``texts[i]`` (the bad text's own
index) elsewhere. Any other exception, or an error naming the wrong text, fails the test.
"""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata

import pytest
from fuzzing import FUZZ
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from torchformer.data.records import DataError
from torchformer.data.tabular import read_table
from torchformer.text import cleaning
from torchformer.text.cleaning import CLEANING_STEPS, TextCleaner
from torchformer.text.tokenizer import Tokenizer

# Characters that have broken text pipelines: NUL, line and paragraph separators, BOM,
# combining marks, RTL, astral emoji, HTML and CSV/TSV syntax; and lone surrogates (valid
# in a Python str and in JSON as "\ud800", not valid Unicode), mixed into one text in five.
AWKWARD = [
    "\x00", "\r", "\n", "\r\n", "\t", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029",
    "\ufeff", "\u200b", "\u0301", "\u202e", "\U0001f600", "\uffff", "<br />", "<b>", "&amp;",
    "&#0;", "&#xD800;", '"', ",", "\\", "[", "{", " ",
]  # fmt: skip
PIECES = st.one_of(st.characters(codec="utf-8"), st.sampled_from(AWKWARD))
UNICODE_TEXT = st.lists(PIECES, max_size=40).map("".join)
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
BROKEN_TEXT = st.builds(lambda a, s, b: a + s + b, UNICODE_TEXT, SURROGATE, UNICODE_TEXT)
HUGE_TEXT = st.builds(
    lambda s, n: (s or "x") * n, st.lists(PIECES, max_size=4).map("".join), st.integers(1, 20_000)
)
TEXTS = st.one_of(UNICODE_TEXT, UNICODE_TEXT, UNICODE_TEXT, BROKEN_TEXT, HUGE_TEXT)
NOT_TEXT = st.one_of(
    st.binary(max_size=20),
    st.integers(),
    st.none(),
    st.floats(),
    st.lists(st.integers(), max_size=2),
)


@st.composite
def text_lists(draw) -> list:
    """1-5 texts; in one list in four, one of them is not a string."""
    texts = draw(st.lists(TEXTS, min_size=1, max_size=5))
    if draw(st.integers(0, 3)) == 0:
        texts[draw(st.integers(0, len(texts) - 1))] = draw(NOT_TEXT)
    return texts


# Text that a reader must give back exactly: valid Unicode, not blank.
VALID_TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=60).filter(str.strip)


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def _named_index(error: Exception) -> int:
    """The index an error names as ``texts[i]``; there must be exactly one."""
    found = set(re.findall(r"texts\[(\d+)\]", str(error)))
    assert len(found) == 1, f"{type(error).__name__} names no single text: {error}"
    return int(found.pop())


# --- readers: CSV / TSV / JSON Lines / JSON files ---------------------------------------------
def _encode(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogatepass")  # lone surrogates: invalid UTF-8


def _csv_bytes(rows: list[list[str]], delimiter: str) -> bytes:
    """CSV as Python's ``csv`` writes it; TSV as tab-joined lines (it has no quoting)."""
    if delimiter == "\t":
        return _encode("".join("\t".join(row) + "\n" for row in rows))
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return _encode(out.getvalue())


@st.composite
def table_files(draw) -> tuple[str, bytes]:
    """(extension, bytes): random bytes, or a well-formed file around awkward values."""
    ext = draw(st.sampled_from([".csv", ".tsv", ".jsonl", ".json"]))
    kind = draw(st.sampled_from(["binary", "structured", "structured", "nested"]))
    if kind == "binary":
        return ext, draw(st.binary(max_size=400))
    if kind == "nested":  # deep JSON, a huge integer: small inputs that blow up parsers
        value = draw(
            st.sampled_from(["[" * 100_000, '{"a":' * 50_000, "1" * 5_000, "-" + "9" * 5_000])
        )
        field = draw(st.sampled_from(["text", "label", "id"]))
        prefix = draw(st.sampled_from(["", "text,label\n", '{"text": "ok", "label": 1}\n']))
        row = f'{{"{field}": {value}}}' if ext.startswith(".json") else f"ok,{value}\n"
        return ext, _encode(prefix + row)
    names = st.lists(st.sampled_from(["text", "label", "id", "", "text "]), min_size=1, max_size=4)
    header = draw(st.one_of(st.just(["text", "label"]), st.just(["text", "label", "id"]), names))
    values = st.one_of(
        TEXTS, TEXTS, TEXTS, st.integers(), st.none(), st.booleans(), st.floats(allow_nan=False)
    )
    rows = draw(st.lists(st.lists(values, max_size=5), max_size=6))
    if ext in (".csv", ".tsv"):
        cells = [[v if isinstance(v, str) else json.dumps(v) for v in row] for row in rows]
        return ext, _csv_bytes([header, *cells], "," if ext == ".csv" else "\t")
    objects = [dict(zip(header, row)) for row in rows]
    if ext == ".json":
        return ext, _encode(json.dumps(objects, ensure_ascii=draw(st.booleans())))
    return ext, _encode(
        "".join(json.dumps(o, ensure_ascii=draw(st.booleans())) + "\n" for o in objects)
    )


@settings(FUZZ, max_examples=300)
@given(table_files(), st.booleans(), st.sampled_from([None, "id"]))
# Found by this test: RecursionError, and bare ValueErrors from int() past 4300 digits.
@example((".jsonl", b'{"text": "ok", "label": ' + b"[" * 100_000 + b"}"), False, None)
@example((".jsonl", b'{"text": "ok", "label": ' + b"1" * 5_000 + b"}"), True, None)
@example((".json", b"[" * 100_000), False, None)
@example((".json", b'[{"text": "ok", "label": ' + b"1" * 5_000 + b"}]"), False, None)
@example((".csv", b"text,label\nok," + b"1" * 5_000 + b"\n"), False, None)
def test_readers_return_valid_records_or_a_data_error_naming_the_file(
    tmp_path_factory, file, skip, id_column
):
    ext, data = file
    path = tmp_path_factory.mktemp("table") / f"data{ext}"
    path.write_bytes(data)
    try:
        table = read_table(path, id_column=id_column, skip_bad_rows=skip)
    except DataError as error:
        event(f"DataError: {error.kind or error.reason[:30]}")
        assert str(path) in str(error) and error.reason
        return
    event("records read")
    assert len(table) >= 1 and len(table.line_numbers) == len(table)
    for record in table.records:
        assert isinstance(record.text, str) and record.text.strip()
        assert not _has_surrogate(record.text)
        assert isinstance(record.label, (str, int)) and not isinstance(record.label, bool)
    assert len({type(r.label) for r in table.records}) == 1


@settings(FUZZ, max_examples=100)
@given(
    st.sampled_from(["csv", "tsv", "jsonl"]),
    st.lists(st.tuples(VALID_TEXT, st.sampled_from(["pos", "neg", "3"])), min_size=1, max_size=8),
)
def test_readers_give_back_exactly_what_was_written(tmp_path_factory, fmt, rows):
    if fmt == "tsv":  # no quoting in TSV: a text cannot hold a tab or a line break
        rows = [(t.translate({9: " ", 10: " ", 13: " "}), y) for t, y in rows]
        rows = [(t, y) for t, y in rows if t.strip()] or [("x", "pos")]
    path = tmp_path_factory.mktemp("table") / f"data.{fmt}"
    if fmt == "jsonl":
        path.write_text(
            "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows), encoding="utf-8"
        )
    else:
        path.write_bytes(
            _csv_bytes([["text", "label"], *map(list, rows)], "," if fmt == "csv" else "\t")
        )
    table = read_table(path)
    labels = [y for _, y in rows]
    if all(y == "3" for y in labels):
        labels = [3] * len(labels)  # labels that are all integer literals are read as integers
    assert [r.text for r in table.records] == [t for t, _ in rows]
    assert [r.label for r in table.records] == labels


# --- text cleaning ----------------------------------------------------------------------------
@settings(FUZZ, max_examples=300)
@given(TEXTS, st.lists(st.sampled_from(sorted(CLEANING_STEPS)), max_size=6))
@example("a\u2028b\x1c c\x85", ["normalize_whitespace"])
@example("<br /><br />&amp;lt;", ["strip_html", "strip_html"])
def test_cleaning_is_total_and_keeps_its_promises(text, steps):
    cleaned = TextCleaner(steps)(text)
    assert isinstance(cleaned, str)
    assert cleaning.normalize_whitespace(text) == " ".join(text.split())
    assert cleaning.lowercase(text) == text.lower()
    if not set(text) & set("<>&"):
        assert cleaning.strip_html(text) == text
    without = cleaning.remove_punctuation(text)
    assert not any(unicodedata.category(c).startswith("P") for c in without)
    if steps and steps[-1] == "normalize_whitespace":
        assert cleaned == cleaned.strip() and "  " not in cleaned


@settings(FUZZ, max_examples=100)
@given(st.lists(TEXTS, min_size=1, max_size=6))
def test_a_classifiers_cleaning_names_the_first_text_it_empties(tiny_classifier, texts):
    try:
        cleaned = tiny_classifier.clean(texts)
    except ValueError as error:
        event("refused")
        index = _named_index(error)
        emptied = [i for i, t in enumerate(texts) if not tiny_classifier.cleaner(t).strip()]
        assert emptied and index == emptied[0]
        return
    assert len(cleaned) == len(texts) and all(t.strip() for t in cleaned)


# --- tokenization -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    import deploy_fixtures

    texts = [text for text, _ in deploy_fixtures.toy_records(128)]
    return Tokenizer.train_wordpiece(texts, vocab_size=200, min_frequency=1)


def _bad(item: object) -> bool:
    return not isinstance(item, str) or not item.strip() or _has_surrogate(item)


@settings(FUZZ, max_examples=300)
@given(
    text_lists(),
    st.integers(3, 40),
    st.sampled_from(["head", "tail", "head+tail"]),
)
@example(["fine", "a \ud800 b"], 16, "head")  # a lone surrogate: the Rust side's TypeError
@example(["\udcff"], 16, "tail")
def test_tokenizer_encodes_any_text_or_names_the_bad_one(tokenizer, texts, max_length, truncation):
    try:
        batch = tokenizer.encode_batch(texts, max_length=max_length, truncation=truncation)
    except (TypeError, ValueError) as error:
        event(f"refused: {type(error).__name__}")
        assert _bad(texts[_named_index(error)])
        return
    event("encoded")
    assert not any(_bad(t) for t in texts)
    assert len(batch) == len(texts)
    for ids, text in zip(batch, texts):
        assert 2 <= len(ids) <= max_length
        assert ids[0] == tokenizer.cls_id and ids[-1] == tokenizer.sep_id
        assert all(0 <= i < tokenizer.vocab_size for i in ids)
        full = tokenizer.encode(text, max_length=None)[1:-1]
        if truncation == "head":  # truncation keeps a prefix of the whole encoding
            assert ids[1:-1] == full[: max_length - 2]
        elif truncation == "tail":
            assert ids[1:-1] == full[max(0, len(full) - (max_length - 2)) :]


# --- predict() --------------------------------------------------------------------------------
@settings(FUZZ, max_examples=200)
@given(st.one_of(text_lists(), text_lists(), TEXTS, NOT_TEXT))
@example(["a wonderful film", "so \ud800 dull"])  # a lone surrogate, second
@example(["<br /><br />"])  # empty after cleaning
@example([b"a wonderful film"])  # bytes
def test_predict_answers_every_text_or_names_the_bad_one(tiny_classifier, texts):
    try:
        predictions = tiny_classifier.predict(texts)
    except (TypeError, ValueError) as error:
        event(f"refused: {type(error).__name__}")
        if not isinstance(texts, (list, str)):
            assert isinstance(error, TypeError) and "texts must be" in str(error)
            return
        items = [texts] if isinstance(texts, str) else texts
        index = _named_index(error)
        bad = _bad(items[index]) or not tiny_classifier.cleaner(items[index]).strip()
        assert bad, f"texts[{index}] = {items[index]!r} is fine: {error}"
        return
    event("predicted")
    items = [texts] if isinstance(texts, str) else texts
    assert len(predictions) == len(items)
    for p in predictions:
        assert p["label"] in tiny_classifier.labels
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-5
        assert p["confidence"] == max(p["probabilities"].values())
