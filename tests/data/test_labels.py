"""LabelVocab, check_labels, imbalance, class weights, stratified split."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import pytest

from torchformer.data.labels import (
    LabelVocab,
    check_labels,
    class_weights,
    label_counts,
    stratified_split,
    warn_if_imbalanced,
)
from torchformer.data.records import DataError, TextRecord
from torchformer.data.tabular import read_table


def _records(labels: list) -> list[TextRecord]:
    return [TextRecord(text=f"t{i}", label=label) for i, label in enumerate(labels)]


def test_vocab_sorts_ints_numerically_and_strings_alphabetically() -> None:
    assert LabelVocab.from_labels([10, 2, 1, 2]).to_list() == [1, 2, 10]
    vocab = LabelVocab.from_labels(["pos", "neg", "neutral", "pos"])
    assert vocab.to_list() == ["neg", "neutral", "pos"]
    assert (vocab.encode("pos"), vocab.decode(0), len(vocab)) == (2, "neg", 3)


def test_vocab_round_trips_through_json() -> None:
    vocab = LabelVocab.from_records(_records(["b", "a", "c"]))
    assert LabelVocab.from_list(json.loads(json.dumps(vocab.to_list()))) == vocab


def test_vocab_errors() -> None:
    vocab = LabelVocab.from_labels(["neg", "pos"])
    with pytest.raises(KeyError, match=r"unknown label 'neutral'; known labels: \['neg', 'pos'\]"):
        vocab.encode("neutral")
    with pytest.raises(TypeError, match="mix strings and integers"):
        LabelVocab.from_labels([1, "1"])
    with pytest.raises(TypeError, match="strings or integers"):
        LabelVocab.from_labels([True, False])
    with pytest.raises(ValueError, match="duplicate labels"):
        LabelVocab(["a", "a"])


def test_check_labels_names_the_file_and_first_unseen_record(tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,pos\nb,neg\n")
    valid = tmp_path / "valid.csv"
    valid.write_text("text,label\nc,pos\nd,neutral\ne,mixed\nf,neutral\n")
    with pytest.raises(DataError) as info:
        check_labels(read_table(train), read_table(valid))
    error = info.value
    assert (error.file, error.line, error.field) == (valid, 3, "label")
    assert "label 'neutral' does not occur in the training data" in str(error)
    assert "3 record(s) of validation data have unseen labels 'mixed', 'neutral'" in str(error)


def test_check_labels_on_plain_records_names_the_record() -> None:
    with pytest.raises(DataError, match=r"^test data: record 2: field 'label'"):
        check_labels(_records(["a", "b"]), _records(["a", "z"]), "test data")
    check_labels(_records(["a", "b"]), _records(["b", "a"]))  # all seen: no error


def test_check_labels_rejects_a_single_training_class(tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 1}\n')
    with pytest.raises(
        DataError, match=r"train\.jsonl: field 'label': training data has a single class \{1: 2\}"
    ):
        check_labels(read_table(train), _records([1]))


def test_label_counts_and_imbalance_warning() -> None:
    counts = label_counts(_records(["pos"] * 30 + ["neg"] * 10))
    assert counts == {"neg": 10, "pos": 30}
    with pytest.warns(UserWarning, match=r"class counts \{'neg': 10, 'pos': 30\}.*3\.00 > 1\.5"):
        assert warn_if_imbalanced(counts) is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_imbalanced({"neg": 10, "pos": 14}) is False


def test_class_weights_are_inverse_frequency_normalised() -> None:
    weights = class_weights({"neg": 10, "pos": 30})
    assert weights == pytest.approx({"neg": 2.0, "pos": 2 / 3})
    # Weighted example count equals the real one; balanced data gives all ones.
    assert 10 * weights["neg"] + 30 * weights["pos"] == pytest.approx(40)
    assert class_weights({"a": 5, "b": 5}) == {"a": 1.0, "b": 1.0}
    with pytest.raises(ValueError, match="no examples"):
        class_weights({"a": 0, "b": 3})


def test_stratified_split_keeps_proportions_and_is_seeded() -> None:
    records = _records(["a"] * 80 + ["b"] * 20 + ["c"])
    rest, held = stratified_split(records, 0.25, seed=0)
    assert Counter(r.label for r in held) == {"a": 20, "b": 5}  # 'c' (1 record) stays
    assert len(rest) + len(held) == len(records)
    assert {r.text for r in rest}.isdisjoint({r.text for r in held})
    assert stratified_split(records, 0.25, seed=0) == (rest, held)
    assert stratified_split(records, 0.25, seed=1)[1] != held
    assert held == sorted(held, key=lambda r: int(r.text[1:]))  # input order kept
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
        stratified_split(records, 1.0, seed=0)
