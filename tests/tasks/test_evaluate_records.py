"""``evaluate_records``: the one scoring loop behind ``torchformer evaluate`` and
``api.evaluate_on_config``; the whole data is sorted by length before batching."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from torchformer.data.records import DataError
from torchformer.tasks.classifier import evaluate_records


@dataclass
class Record:
    text: str
    label: str
    id: str


class Cleaner:
    steps = ("strip",)

    def clean_and_find_empty(self, texts):
        cleaned = [t.strip() for t in texts]
        return cleaned, [i for i, t in enumerate(cleaned) if not t]


class LengthClassifier:
    """Says "pos" for texts longer than 5 characters; records every batch it is given."""

    labels = ("neg", "pos")

    def __init__(self):
        self.cleaner = Cleaner()
        self.batches = []

    def predict_proba(self, texts, *, batch_size, cleaned):
        assert cleaned and len(texts) <= batch_size
        self.batches.append(list(texts))
        p = torch.tensor([[0.1, 0.9] if len(t) > 5 else [0.8, 0.2] for t in texts])
        return p


def test_batches_are_sorted_by_length_over_the_whole_data():
    lengths = [9, 1, 7, 3, 8, 2, 6, 4, 5]
    records = [Record(" " + "x" * n + " ", "pos" if n > 5 else "neg", f"r{n}") for n in lengths]
    records[0].label = "neg"  # one error: r9 is predicted pos
    clf = LengthClassifier()
    result = evaluate_records(clf, records, batch_size=4)
    seen = [len(t) for batch in clf.batches for t in batch]
    assert seen == sorted(lengths)  # across batches, not only within each
    assert [len(b) for b in clf.batches] == [4, 4, 1]
    assert result["num_examples"] == 9
    assert result["accuracy"] == pytest.approx(8 / 9)
    assert [e["id"] for e in result["errors"]] == ["r9"]
    # the loss is the mean NLL of the true label's probability
    expected = (
        -sum(
            torch.tensor(0.1 if r.id == "r9" else (0.9 if r.label == "pos" else 0.8)).log().item()
            for r in records
        )
        / 9
    )
    assert result["loss"] == pytest.approx(expected, rel=1e-5)


def test_unknown_labels_and_texts_cleaned_to_nothing_are_named():
    clf = LengthClassifier()
    with pytest.raises(DataError, match=r"my\.csv.*field 'stars'.*\['meh'\]"):
        evaluate_records(clf, [Record("fine", "meh", "a")], source="my.csv", label_field="stars")
    with pytest.raises(DataError, match=r"my\.csv.*field 'review'.*record 'b'"):
        evaluate_records(
            clf,
            [Record("fine", "pos", "a"), Record("   ", "neg", "b")],
            source="my.csv",
            text_field="review",
        )


def test_without_field_names_the_errors_name_the_text_and_label_fields():
    clf = LengthClassifier()
    with pytest.raises(DataError, match=r"field 'label'.*\['meh'\]"):
        evaluate_records(clf, [Record("fine", "meh", "a")])
    with pytest.raises(DataError, match=r"field 'text'.*record 'b'"):
        evaluate_records(clf, [Record("fine", "pos", "a"), Record("   ", "neg", "b")])


class TwoMemberEnsemble(LengthClassifier):
    """An ensemble of the length rule and a member that always says "neg" (0.6); its own
    probabilities are the weighted mean, as ``tasks.ensemble`` computes them."""

    names, weights = ("length", "neg"), (0.75, 0.25)
    members = names

    def predict_proba(self, texts, *, batch_size, cleaned, return_members=False):
        a = super().predict_proba(texts, batch_size=batch_size, cleaned=cleaned)
        b = torch.tensor([[0.6, 0.4]] * len(texts))
        mean = 0.75 * a + 0.25 * b
        return (mean, [a, b]) if return_members else mean


def test_an_ensemble_reports_each_member_on_the_same_batches():
    records = [Record("x" * n, "pos" if n > 5 else "neg", f"r{n}") for n in (1, 2, 3, 7, 8, 9)]
    records[5].label = "neg"  # the length rule misses r9; the "neg" member gets 4 of 6
    clf = TwoMemberEnsemble()
    result = evaluate_records(clf, records, batch_size=4)
    assert result["accuracy"] == pytest.approx(5 / 6)
    length, neg = result["members"]
    assert (length["member"], length["weight"], neg["member"], neg["weight"]) == (
        "length", 0.75, "neg", 0.25)  # fmt: skip
    assert length["accuracy"] == pytest.approx(5 / 6) and neg["accuracy"] == pytest.approx(4 / 6)
    # macro F1: length rule neg F1 = 2*3/(3+4) , pos F1 = 2*2/(2+3); the "neg" member: 0.8, 0
    assert length["macro_f1"] == pytest.approx((6 / 7 + 4 / 5) / 2)
    assert neg["macro_f1"] == pytest.approx((2 * 4 / (4 + 6)) / 2)
    nll = -(3 * torch.tensor(0.8).log() + 2 * torch.tensor(0.9).log() + torch.tensor(0.1).log())
    assert length["loss"] == pytest.approx(nll.item() / 6, rel=1e-5)
    assert neg["loss"] == pytest.approx(
        -(4 * torch.tensor(0.6).log() + 2 * torch.tensor(0.4).log()).item() / 6, rel=1e-5
    )
