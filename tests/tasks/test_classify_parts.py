"""Parts of the classification task below a training run."""

from __future__ import annotations

import pytest
from test_classify import tiny_config  # tests/tasks is on sys.path

from torchformer.tasks.classify import scratch_tokenizer

TEXTS = [f"word{i} other{i * 7} thing{i * 13}" for i in range(300)]


def test_a_scratch_tokenizer_keeps_to_the_configured_vocabulary_size(tmp_path):
    small = scratch_tokenizer(
        tiny_config(tmp_path, **{"tokenizer.vocab_size": 120}), TEXTS, resume=False
    )
    large = scratch_tokenizer(
        tiny_config(tmp_path, **{"tokenizer.vocab_size": 400}), TEXTS, resume=False
    )
    assert small.vocab_size <= 120 < large.vocab_size <= 400


def test_an_ensemble_members_score_over_a_single_example():
    import math

    import torch

    from torchformer.tasks.classifier import _MemberScore

    score = _MemberScore(num_classes=2)
    score.update(torch.tensor([[0.25, 0.75]]), torch.tensor([1]))
    got = score.compute()
    assert got["accuracy"] == 1.0
    assert math.isclose(got["loss"], -math.log(0.75), rel_tol=1e-6)  # the mean over one
    empty = _MemberScore(num_classes=2).compute()
    assert empty["loss"] == 0.0 and empty["accuracy"] == 0.0  # nothing seen: no division by 0


def test_a_scratch_tokenizer_keeps_the_case_when_told_not_to_lowercase(tmp_path):
    texts = [*TEXTS, *["Word1 Other7 Thing13"] * 20]
    cased = scratch_tokenizer(
        tiny_config(tmp_path, **{"tokenizer.lowercase": False}), texts, resume=False
    )
    lower = scratch_tokenizer(tiny_config(tmp_path), texts, resume=False)
    assert cased.token_to_id("Word1") is not None and lower.token_to_id("Word1") is None
    assert cased.backend.encode("Word1").ids != cased.backend.encode("word1").ids
    assert lower.backend.encode("Word1").ids == lower.backend.encode("word1").ids


def test_evaluating_on_a_config_names_its_own_label_column(tmp_path):
    from test_classify import write_csv
    from test_evaluate_records import LengthClassifier

    from torchformer.data.records import DataError
    from torchformer.tasks.classify import evaluate_on_config

    rows = [{"review": f"a fine film {i}", "stars": "pos" if i % 2 else "neg"} for i in range(8)]
    test_rows = rows[:4]
    (tmp_path / "data").mkdir()
    config = tiny_config(tmp_path, **{
        "data.source": str(write_csv(tmp_path / "data" / "train.csv", rows)),
        "data.test_file": str(write_csv(tmp_path / "data" / "test.csv", test_rows)),
        "data.text_column": "review", "data.label_column": "stars",
    })  # fmt: skip
    trained_on = evaluate_on_config(LengthClassifier(), config, "train")  # every split by name
    assert (
        trained_on["num_examples"]
        == len(rows) - evaluate_on_config(LengthClassifier(), config, "val")["num_examples"]
    )
    clf = LengthClassifier()
    clf.labels = ("bad", "good")  # a model trained on other labels than the file's
    with pytest.raises(DataError, match=r"test\.csv.*field 'stars'.*\['neg', 'pos'\]"):
        evaluate_on_config(clf, config, "test")
    # without a split: the test split
    assert evaluate_on_config(LengthClassifier(), config) == evaluate_on_config(
        LengthClassifier(), config, "test"
    )
    emptied = LengthClassifier()  # a model whose cleaning leaves the first text empty
    emptied.cleaner.clean_and_find_empty = lambda texts: (list(texts), [0])
    with pytest.raises(
        DataError, match=r"test\.csv.*field 'review'.*empty after the model's cleaning"
    ):
        evaluate_on_config(emptied, config, "test")


def test_a_scratch_tokenizer_takes_the_configured_minimum_frequency(tmp_path):
    texts = [*TEXTS, "rareword"]  # once: in the vocabulary only at min_frequency 1
    once = scratch_tokenizer(
        tiny_config(tmp_path, **{"tokenizer.min_frequency": 1, "tokenizer.vocab_size": 3000}),
        texts,
        resume=False,
    )
    twice = scratch_tokenizer(
        tiny_config(tmp_path, **{"tokenizer.min_frequency": 2, "tokenizer.vocab_size": 3000}),
        texts,
        resume=False,
    )
    assert once.token_to_id("rareword") is not None and twice.token_to_id("rareword") is None
