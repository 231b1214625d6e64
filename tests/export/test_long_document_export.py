"""Long-document classifiers end to end: chunk-and-pool and a sliding-window encoder with
extended positions export to ONNX with the parity grid, the ONNX classifier predicts what
the PyTorch one does on a long review, and the server takes long texts (issue 13,
acceptance 4)."""

from __future__ import annotations

import pytest
import torch
from deploy_fixtures import POSITIVE, toy_records
from fastapi.testclient import TestClient

from torchformer.export.onnx import export_classifier
from torchformer.export.runtime import OnnxClassifier
from torchformer.models.encoder import EncoderForSequenceClassification, preset
from torchformer.serve.app import create_app, load_predictor
from torchformer.tasks.classifier import InferenceSettings, TextClassifier
from torchformer.text.tokenizer import Tokenizer

LONG_REVIEW = " ".join(["the film was quite long and the plot"] * 40 + [POSITIVE[0]] * 3)


def long_classifier(kind: str) -> TextClassifier:
    records = toy_records(64)
    tokenizer = Tokenizer.train_wordpiece([t for t, _ in records], vocab_size=200, min_frequency=1)
    extra = {
        "chunks": dict(
            long_document="chunks",
            chunk_length=16,
            chunk_stride=12,
            cls_id=tokenizer.cls_id,
            sep_id=tokenizer.sep_id,
            chunk_pooling="attention",
        ),
        "sliding_window": dict(attention="sliding_window", attention_window=8, max_len=512),
        # a Longformer as loaded from its checkpoint: global projections, RoBERTa positions
        "longformer": dict(
            attention="sliding_window",
            attention_window=8,
            max_len=512,
            global_tokens=(0,),
            global_projections=True,
            position_offset=tokenizer.pad_id + 1,
            pad_id=tokenizer.pad_id,
            flavour="longformer",
        ),
    }[kind]
    torch.manual_seed(0)
    config = preset(
        "tiny",
        vocab_size=tokenizer.vocab_size,
        num_labels=2,
        id2label={0: "neg", 1: "pos"},
        pooling="mean",
        dropout=0.0,
        attn_dropout=0.0,
        **extra,
    )
    model = EncoderForSequenceClassification(config).eval()
    if kind == "longformer":  # global projections unlike the local ones (else untested)
        with torch.no_grad():
            for layer in model.encoder.layers:
                layer.self_attn.q_global.weight.normal_(0.0, 0.5)
    return TextClassifier(model, tokenizer, InferenceSettings(max_length=400))


@pytest.fixture(scope="module", params=["chunks", "sliding_window", "longformer"])
def exported(request, tmp_path_factory):
    clf = long_classifier(request.param)
    out = tmp_path_factory.mktemp(f"export-{request.param}")
    clf.save(out / "model")
    result = export_classifier(clf, out / "onnx")
    return clf, result, out


def test_the_parity_grid_passes_up_to_the_long_length(exported):
    _, result, _ = exported
    assert result.parity.passed
    lengths = {cell.length for cell in result.parity.cells}
    assert 400 in lengths  # the run's max_length: beyond 128 positions for chunks
    assert max(cell.max_abs_diff for cell in result.parity.cells) < 1e-4


def test_the_onnx_classifier_predicts_a_long_review_as_pytorch_does(exported):
    clf, result, _ = exported
    ids, _ = clf.encode([LONG_REVIEW])
    assert ids.size(1) == 400  # the whole budget: longer than one chunk or one window
    onnx = OnnxClassifier.from_dir(result.out_dir)
    torch.testing.assert_close(
        torch.as_tensor(onnx.predict_proba([LONG_REVIEW])),
        torch.as_tensor(clf.predict_proba([LONG_REVIEW])),
        atol=1e-4,
        rtol=0,
    )


@pytest.mark.parametrize("backend", ["model", "onnx"])
def test_the_server_takes_long_texts(exported, backend):
    clf, result, out = exported
    predictor = load_predictor(out / "model" if backend == "model" else result.out_dir)
    with TestClient(create_app(predictor)) as client:
        response = client.post("/predict", json={"texts": [LONG_REVIEW, "great"]})
    assert response.status_code == 200
    got = response.json()["predictions"]
    expected = clf.predict([LONG_REVIEW, "great"])
    assert [p["label"] for p in got] == [p["label"] for p in expected]
