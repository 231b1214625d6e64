"""One preprocessor from training to every use: the ids the model was trained on equal the
ids ``torchformer.load(run).predict()`` and the ONNX export feed it, for the same text."""

from __future__ import annotations

import torch
from test_classify import tiny_config, toy_rows, write_csv

import torchformer
from torchformer.tasks.classify import prepare_run, train


def _unpadded(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
    return [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)]


def test_training_predict_and_onnx_feed_the_model_the_same_ids(tmp_path):
    # HTML to strip, and texts longer than max_length: cleaning and head+tail truncation matter.
    rows = [{"text": f"<b>{r['text']}</b><br />" + " and the plot" * 6, "label": r["label"]}
            for r in toy_rows(32, 1)]  # fmt: skip
    cfg = tiny_config(tmp_path, **{
        "data.test_file": str(write_csv(tmp_path / "html.csv", rows)), "data.max_length": 16,
        "data.head_tokens": 5, "train.epochs": 1,
    })  # fmt: skip
    run = train(cfg)
    trained = prepare_run(cfg, resume=True).encoded["test"]  # what training encodes and feeds
    assert max(map(len, trained.input_ids)) == 16  # truncated

    clf = torchformer.load(run)
    seen: list[list[int]] = []
    logits = clf._logits

    def recording(input_ids, attention_mask):
        seen.extend(_unpadded(input_ids, attention_mask))
        return logits(input_ids, attention_mask)

    clf._logits = recording
    clf.predict(trained.texts)
    assert sorted(seen) == sorted(trained.input_ids)  # predict() sorts by length
    assert _unpadded(*clf.encode(trained.texts)) == trained.input_ids

    from torchformer.export.onnx import export_classifier
    from torchformer.export.runtime import OnnxClassifier

    export_classifier(clf, tmp_path / "onnx")
    onnx = OnnxClassifier.from_dir(tmp_path / "onnx")
    fed: list[list[int]] = []
    session_logits = onnx.logits

    def recording_onnx(input_ids, attention_mask):
        fed.extend(_unpadded(torch.from_numpy(input_ids), torch.from_numpy(attention_mask)))
        return session_logits(input_ids, attention_mask)

    onnx.logits = recording_onnx
    onnx.predict(trained.texts)
    assert sorted(fed) == sorted(trained.input_ids)
