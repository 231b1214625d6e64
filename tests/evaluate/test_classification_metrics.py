"""StreamingClassificationMetrics against sklearn, error heap, report files."""

import json

import numpy as np
import pytest
import torch

from torchformer.evaluate.classification import (
    StreamingClassificationMetrics,
    classification_report_text,
    expected_calibration_error,
    write_evaluation,
)

metrics_lib = pytest.importorskip("sklearn.metrics")

LABELS = ["negative", "neutral", "positive", "other"]


def random_batches(seed: int, n: int = 503, batch_size: int = 64):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, len(LABELS), generator=gen) * 2
    labels = torch.randint(0, len(LABELS), (n,), generator=gen)
    labels[labels == 3] = 2  # class "other" never occurs: zero support
    logits[:, 1] -= 10  # class "neutral" (almost) never predicted: zero precision
    return [
        (logits[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, n, batch_size)
    ]


def test_matches_sklearn_on_random_data():
    batches = random_batches(0)
    metrics = StreamingClassificationMetrics(LABELS)
    for logits, labels in batches:
        metrics.update(logits, labels)
    result = metrics.compute()

    y_true = torch.cat([b[1] for b in batches]).numpy()
    y_pred = torch.cat([b[0] for b in batches]).argmax(-1).numpy()
    ids = list(range(len(LABELS)))
    assert result["accuracy"] == pytest.approx(metrics_lib.accuracy_score(y_true, y_pred))
    assert (
        result["confusion_matrix"]
        == metrics_lib.confusion_matrix(y_true, y_pred, labels=ids).tolist()
    )
    p, r, f, s = metrics_lib.precision_recall_fscore_support(
        y_true, y_pred, labels=ids, zero_division=0
    )
    for c, name in enumerate(LABELS):
        per = result["per_class"][name]
        assert (per["precision"], per["recall"], per["f1"], per["support"]) == pytest.approx(
            (p[c], r[c], f[c], s[c])
        )
    for avg in ("macro", "weighted"):
        ref = metrics_lib.f1_score(y_true, y_pred, labels=ids, average=avg, zero_division=0)
        assert result[f"{avg}_f1"] == pytest.approx(ref)
    assert result["num_examples"] == len(y_true)

    expected_text = metrics_lib.classification_report(
        y_true, y_pred, labels=ids, target_names=LABELS, digits=4, zero_division=0
    )
    assert classification_report_text(result) == expected_text


def test_batching_does_not_change_the_result():
    one = StreamingClassificationMetrics(LABELS)
    many = StreamingClassificationMetrics(LABELS)
    batches = random_batches(1)
    one.update(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    for logits, labels in batches:
        many.update(logits, labels)
    assert one.compute() == many.compute()


def test_most_confident_errors_are_kept_in_order():
    metrics = StreamingClassificationMetrics(["a", "b"], top_errors=2, excerpt_chars=5)
    # confidences of the wrong predictions: 0.73, 0.98, 0.88 (logit gaps 1, 4, 2)
    logits = torch.tensor([[1.0, 0.0], [4.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    labels = torch.tensor([1, 1, 0, 0])  # the last is correct
    texts = ["first text", "second text", "third text", "fourth"]
    metrics.update(logits[:2], labels[:2], texts=texts[:2], ids=["x1", "x2"])
    metrics.update(logits[2:], labels[2:], texts=texts[2:], ids=["x3", "x4"])
    errors = metrics.errors()
    assert [e["id"] for e in errors] == ["x2", "x3"]
    assert errors[0] == {
        "id": "x2", "true": "b", "predicted": "a",
        "confidence": pytest.approx(torch.tensor([4.0, 0.0]).softmax(-1)[0].item(), abs=1e-6),
        "true_probability": pytest.approx(torch.tensor([4.0, 0.0]).softmax(-1)[1].item(), abs=1e-6),
        "text": "secon",
    }  # fmt: skip


def test_losses_ignore_index_and_per_example_arrays():
    metrics = StreamingClassificationMetrics(["a", "b"])
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [5.0, 0.0]])
    labels = torch.tensor([0, 0, -100])  # the third is padding
    metrics.update(
        logits, labels, texts=["ab", "abcd", "zzzzzz"], loss=torch.tensor([0.5, 1.5, 9.0])[:2]
    )
    metrics.update(logits[:1], labels[:1], texts=["xyz"], loss=1.0)  # a batch mean
    result = metrics.compute()
    assert result["num_examples"] == 3
    assert result["loss"] == pytest.approx((0.5 + 1.5 + 1.0) / 3)
    examples = metrics.examples()
    assert examples["correct"].tolist() == [True, False, True]
    assert examples["length"].tolist() == [2, 4, 3]
    assert examples["confidence"].dtype == np.float32


def test_expected_calibration_error():
    confidence = np.array([0.95, 0.95, 0.55, 0.55], dtype=np.float32)
    correct = np.array([True, True, False, True])
    # bin of 0.95: acc 1.0 (gap 0.05); bin of 0.55: acc 0.5 (gap 0.05)
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.05)


def test_invalid_input_is_rejected():
    metrics = StreamingClassificationMetrics(["a", "b"])
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        metrics.update(torch.zeros(2, 2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="texts has 1 entries for a batch of 2"):
        metrics.update(torch.zeros(2, 2), torch.tensor([0, 1]), texts=["x"])
    with pytest.raises(ValueError, match=r"logits must be \(B, 2\)"):
        metrics.update(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_write_evaluation_files(tmp_path):
    metrics = StreamingClassificationMetrics(["neg", "pos"], top_errors=3)
    metrics.update(
        torch.tensor([[3.0, 0.0], [0.0, 1.0], [2.0, 0.0]]), torch.tensor([1, 0, 0]),
        texts=["bad but good", "meh", "fine"],
    )  # fmt: skip
    result = metrics.compute()
    paths = write_evaluation(tmp_path, result, prefix="test_")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "test_classification_report.txt", "test_confusion_matrix.json", "test_correct.jsonl",
        "test_errors.jsonl", "test_examples.json", "test_metrics.json",
    ]  # fmt: skip
    saved = json.loads(paths["metrics"].read_text())
    assert saved["accuracy"] == pytest.approx(1 / 3) and "errors" not in saved
    assert json.loads(paths["confusion_matrix"].read_text()) == {
        "labels": ["neg", "pos"], "matrix": [[1, 1], [1, 0]],
    }  # fmt: skip
    errors = [json.loads(line) for line in paths["errors"].read_text().splitlines()]
    assert [e["text"] for e in errors] == ["bad but good", "meh"]  # most confident first
    correct = [json.loads(line) for line in paths["correct"].read_text().splitlines()]
    assert [e["text"] for e in correct] == ["fine"]
    examples = json.loads(paths["examples"].read_text())
    assert examples["correct"] == [False, False, True] and examples["length"] == [12, 3, 4]
    assert "examples" not in saved and "correct_examples" not in saved
    assert paths["report"].read_text().splitlines()[0].split() == [
        "precision", "recall", "f1-score", "support",
    ]  # fmt: skip


def test_classes_seen_or_predicted_once_and_an_empty_stream():
    """Exact per-class numbers where a class is predicted once and another has one true
    example (random data rarely has either), and what nothing seen gives."""
    metrics = StreamingClassificationMetrics(["a", "b", "c"])
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.3, 0.6, 0.1],
                          [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])  # fmt: skip
    labels = torch.tensor([0, 0, 0, 1, 2])  # predicted: a, a, b, b, c
    metrics.update(probs.log(), labels, texts=["t1", "t2", "t3", "t4", "t5"])
    result = metrics.compute()
    per = {k: (v["precision"], v["recall"], v["support"]) for k, v in result["per_class"].items()}
    assert per == {"a": (1.0, pytest.approx(2 / 3), 3), "b": (0.5, 1.0, 1), "c": (1.0, 1.0, 1)}
    assert result["accuracy"] == pytest.approx(0.8) and result["num_examples"] == 5
    confidence = [0.9, 0.8, 0.6, 0.7, 0.7]
    assert result["examples"]["confidence"] == pytest.approx(confidence, abs=1e-5)
    assert result["examples"]["correct"] == [True, True, False, True, True]
    assert result["ece"] == pytest.approx(
        expected_calibration_error(np.array(confidence), np.array([1, 1, 0, 1, 1], dtype=bool))
    )
    empty = StreamingClassificationMetrics(["a", "b"]).compute()
    assert empty["accuracy"] == 0.0 and empty["num_examples"] == 0
    assert empty["ece"] is None and empty["examples"] is None and empty["loss"] is None
    assert empty["weighted_f1"] == 0.0 and empty["macro_f1"] == 0.0


@pytest.mark.parametrize("field", ["labels", "texts", "ids", "lengths"])
def test_a_batch_of_the_wrong_size_names_its_field(field):
    metrics = StreamingClassificationMetrics(["a", "b"])
    batch = {"labels": torch.tensor([0, 1]), "texts": ["x", "y"], "ids": [1, 2], "lengths": [3, 4]}
    batch[field] = batch[field][:1]
    with pytest.raises(ValueError, match=rf"^{field} has 1 entries for a batch of 2$"):
        metrics.update(torch.zeros(2, 2), **batch)
    with pytest.raises(ValueError, match=r"labels \[2, 3, 4, 5, 6\] are outside \[0, 2\)"):
        metrics.update(torch.zeros(6, 2), torch.tensor([0, 2, 3, 4, 5, 6]))  # the first 5 named


def test_per_example_arrays_keep_their_lengths_and_types_even_when_empty():
    metrics = StreamingClassificationMetrics(["a", "b"])
    empty = metrics.examples()
    assert {k: (v.dtype, v.shape) for k, v in empty.items()} == {
        "confidence": (np.float32, (0,)),
        "correct": (np.bool_, (0,)),
        "length": (np.int32, (0,)),
    }
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    metrics.update(logits, torch.tensor([0, 0]), texts=["abc", "de"], lengths=[7, 9])
    assert metrics.examples()["length"].tolist() == [7, 9]  # given lengths win over len(text)
    assert metrics.examples()["correct"].tolist() == [True, False]
    untracked = StreamingClassificationMetrics(["a", "b"], track_examples=False)
    with pytest.raises(
        ValueError, match=r"^per-example arrays were not tracked \(track_examples=False\)$"
    ):
        untracked.examples()


def test_correct_examples_come_most_confident_first():
    metrics = StreamingClassificationMetrics(["a", "b"], top_correct=3)
    logits = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0]])  # all correct (label a)
    metrics.update(logits, torch.tensor([0, 0, 0]), texts=["one", "three", "two"])
    assert [e["text"] for e in metrics.correct_examples()] == ["three", "two", "one"]


def test_written_files_default_names_and_results_without_examples(tmp_path):
    metrics = StreamingClassificationMetrics(["a", "b"], track_examples=False)
    metrics.update(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), texts=["x", "y"])
    result = metrics.compute()
    result["note"] = tmp_path  # not JSON: written with str()
    del result["correct_examples"]
    paths = write_evaluation(tmp_path, result)
    assert sorted(p.name for p in paths.values()) == [
        "classification_report.txt", "confusion_matrix.json", "correct.jsonl", "errors.jsonl",
        "metrics.json",
    ]  # fmt: skip
    written = (tmp_path / "metrics.json").read_text()
    assert json.loads(written)["note"] == str(tmp_path) and written.startswith('{\n  "accuracy"')
    assert (tmp_path / "correct.jsonl").read_text() == ""
    assert len((tmp_path / "errors.jsonl").read_text().splitlines()) == 1
