"""ONNX export: the parity grid passes for real models and fails loudly for broken ones."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from torchformer.cli import main
from torchformer.export import onnx as export_onnx
from torchformer.export.onnx import (
    ParityError,
    check_parity,
    default_grid_lengths,
    export_classifier,
    grid_inputs,
    read_metadata,
)
from torchformer.export.runtime import OnnxClassifier

TEXTS = [
    "a great and wonderful film",
    "dull, boring <br /> and awful",
    "the plot",
    "superb cast " * 40,
]


def test_export_dir_carries_what_serving_needs(tiny_export_dir, tiny_classifier):
    names = {p.name for p in tiny_export_dir.iterdir()}
    assert {
        "model.onnx",
        "tokenizer.json",
        "torchformer.json",
        "labels.json",
        "export.json",
    } <= names
    meta = read_metadata(tiny_export_dir)
    assert meta["opset"] == 23 and meta["inputs"] == ["input_ids", "attention_mask"]
    assert meta["attn_impl"] == "sdpa"  # auto at opset 23: one ONNX Attention node per layer
    assert (
        meta["labels"]
        == ["neg", "pos"]
        == json.loads((tiny_export_dir / "labels.json").read_text())
    )
    settings = json.loads((tiny_export_dir / "torchformer.json").read_text())
    assert (
        settings["max_length"] == 64
        and settings["truncation"] == tiny_classifier.settings.truncation
    )
    graph = onnx.load(tiny_export_dir / "model.onnx").graph
    dims = [[d.dim_param for d in i.type.tensor_type.shape.dim] for i in graph.input]
    assert dims == [["batch", "sequence"], ["batch", "sequence"]]  # both axes dynamic
    assert [o.name for o in graph.output] == ["logits"]
    assert sum(node.op_type == "Attention" for node in graph.node) == 2  # tiny has 2 layers


def test_parity_grid_passes_for_tiny_encoder(tiny_export_dir):
    parity = read_metadata(tiny_export_dir)["parity"]
    assert parity["passed"] and parity["tolerance"] == 1e-4
    grid = {(c["batch"], c["length"]) for c in parity["cells"]}
    assert grid == {(b, n) for b in (1, 3, 8) for n in (1, 7, 64, 128)}
    assert max(c["max_abs_diff"] for c in parity["cells"]) < 1e-4


def test_default_grid_has_run_and_model_max_lengths(tiny_classifier):
    assert default_grid_lengths(tiny_classifier) == (1, 7, 64, 128)  # max_length 64, max_len 128


def test_grid_inputs_pad_rows_differently():
    ids, mask = grid_inputs(100, 3, 64)
    assert ids.shape == mask.shape == (3, 64)
    assert mask.sum(1).tolist() == [64, 43, 22]


def test_onnx_classifier_predicts_like_pytorch(tiny_export_dir, tiny_classifier):
    onnx_clf = OnnxClassifier.from_dir(tiny_export_dir)
    ours, theirs = tiny_classifier.predict(TEXTS), onnx_clf.predict(TEXTS)
    assert [p["label"] for p in theirs] == [p["label"] for p in ours]
    for a, b in zip(ours, theirs):
        assert set(b) == {"label", "confidence", "probabilities"}
        assert b["confidence"] == pytest.approx(a["confidence"], abs=1e-5)
    # Same truncation: the 4th text is longer than max_length and must not break anything.
    assert onnx_clf.encode(TEXTS)[0].shape[1] == 64


def _damaged_copy(src, dst, initializer, rows_from=0, delta=0.5):
    """Copy an export and perturb rows ``rows_from:`` of one initializer by up to ``delta``.

    The perturbation varies along the last axis: a constant shift would be undone by LayerNorm.
    """
    shutil.copytree(src, dst)
    model = onnx.load(dst / "model.onnx")
    for init in model.graph.initializer:
        if init.name == initializer:
            array = numpy_helper.to_array(init).copy()
            array[rows_from:] += delta * np.linspace(-1.0, 1.0, array.shape[-1], dtype=array.dtype)
            init.CopyFrom(numpy_helper.from_array(array, init.name))
            break
    else:
        raise AssertionError(f"no initializer {initializer}")
    onnx.save(model, dst / "model.onnx")
    return dst


def test_parity_catches_graph_broken_only_for_long_inputs(
    tiny_export_dir, tiny_classifier, tmp_path
):
    # Corrupt position embeddings 64..127 only: lengths 1, 7 and 64 still agree, 128 must not.
    broken = _damaged_copy(
        tiny_export_dir,
        tmp_path / "broken",
        "model.encoder.embeddings.position_embeddings.weight",
        64,
        delta=3.0,
    )
    report = check_parity(tiny_classifier.model, broken / "model.onnx", lengths=(1, 7, 64, 128))
    assert not report.passed
    assert report.worst.length == 128 and report.worst.max_abs_diff > report.tolerance
    assert all(c.max_abs_diff < 1e-4 for c in report.cells if c.length <= 64)
    assert "batch=" in report.summary() and "length=128" in report.summary()


def test_export_cli_fails_loudly_with_worst_cell(
    tiny_export_dir, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    broken = _damaged_copy(tiny_export_dir, tmp_path / "broken", "model.classifier.bias")

    def export_broken(model, path, **kwargs):  # the "exporter" writes a wrong graph
        shutil.copyfile(broken / "model.onnx", path)
        return path

    monkeypatch.setattr(export_onnx, "export_model", export_broken)
    out = tmp_path / "out"
    assert main(["export", str(tiny_model_dir.parent), "--out", str(out), "--lengths", "1,7"]) == 1
    err = capsys.readouterr().err
    assert "parity check FAILED" in err and "worst cell batch=" in err and "tolerance 0.0001" in err
    assert read_metadata(out)["parity"]["passed"] is False
    with pytest.raises(ValueError, match="failed its parity check"):
        OnnxClassifier.from_dir(out)  # a failed export is never served


def test_export_classifier_raises_parity_error(
    tiny_classifier, tiny_export_dir, tmp_path, monkeypatch
):
    broken = _damaged_copy(
        tiny_export_dir, tmp_path / "broken", "model.classifier.bias", delta=1e-3
    )
    monkeypatch.setattr(
        export_onnx,
        "export_model",
        lambda model, path, **kw: shutil.copyfile(broken / "model.onnx", path),
    )
    with pytest.raises(ParityError, match=r"worst cell batch=\d+ length=\d+"):
        export_classifier(tiny_classifier, tmp_path / "out", lengths=(1, 7))


@pytest.mark.parity
def test_parity_grid_passes_for_minilm_classifier(tmp_path):
    import deploy_fixtures

    clf = deploy_fixtures.minilm_classifier(max_length=128)
    result = export_classifier(clf, tmp_path / "minilm", lengths=(1, 7, 64, 128))
    assert result.parity.passed and len(result.parity.cells) == 12
    assert result.parity.worst.max_abs_diff < 1e-4
    # Real text through the whole pipeline (MiniLM tokenizer, truncation) agrees too.
    onnx_clf = OnnxClassifier.from_dir(tmp_path / "minilm")
    expected = clf.predict_proba(TEXTS).numpy()
    np.testing.assert_allclose(onnx_clf.predict_proba(TEXTS).numpy(), expected, atol=1e-5)


@pytest.mark.slow
def test_reference_attention_at_opset_20_exports_too(tiny_classifier, tmp_path):
    result = export_classifier(tiny_classifier, tmp_path / "ref", opset=20)
    assert result.metadata["attn_impl"] == "reference" and result.parity.passed


def test_a_graph_that_cannot_run_some_shapes_fails_the_grid(tiny_classifier, tmp_path):
    # The classic broken export: a shape frozen at trace time (here batch 1) errors at batch 3.
    from onnx import TensorProto, helper

    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f", "axis1"], ["m"], keepdims=1),  # (B, 1)
        helper.make_node("Mul", ["m", "scale"], ["logits_b"]),  # (B, 2)
        helper.make_node(
            "Reshape", ["logits_b", "frozen"], ["logits"]
        ),  # frozen at (1, 2): raises for B > 1
    ]
    inits = [numpy_helper.from_array(np.zeros((1, 2), np.float32), "scale"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "frozen"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]  # fmt: skip
    graph = helper.make_graph(nodes, "frozen_batch", [ids, mask], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "frozen.onnx")
    report = check_parity(
        tiny_classifier.model, tmp_path / "frozen.onnx", batches=(1, 3), lengths=(7,)
    )
    assert not report.passed
    failed = [c for c in report.cells if c.error]
    assert [c.batch for c in failed] == [3] and "Reshape" in failed[0].error
    assert "error:" in report.summary()
    assert report.worst.batch == 3 and report.to_dict()["worst"]["max_abs_diff"] is None


def test_exported_copy_uses_reference_attention_without_touching_the_model(tiny_classifier):
    twin = export_onnx.with_attention(tiny_classifier.model, "reference")
    assert tiny_classifier.model.config.attn_impl == "sdpa" and twin.config.attn_impl == "reference"
    ids, mask = grid_inputs(tiny_classifier.model.config.vocab_size, 3, 20)
    with torch.inference_mode():
        a = tiny_classifier.model(ids, attention_mask=mask).logits
        b = twin(ids, attention_mask=mask).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
