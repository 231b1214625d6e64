"""Static int8 (QDQ) and fused graphs: close to fp32, QDQ nodes, fusion behind a parity gate."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from torchformer.export.onnx import ONNX_NAME, ParityError
from torchformer.export.quantize import (
    bf16_unsupported,
    fuse_onnx,
    op_counts,
    quantize_onnx_static,
)
from torchformer.export.session import make_session


def _batches(clf, texts, size=8):
    """Padded (input_ids, attention_mask) int64 batches, as the model sees them."""
    out = []
    for s in range(0, len(texts), size):
        ids, mask = clf.encode(texts[s : s + size])  # (B, T) each
        out.append((ids.numpy(), mask.numpy()))
    return out


def _logits(path, batches):
    session = make_session(path, threads=1)
    feed = [{"input_ids": ids, "attention_mask": mask} for ids, mask in batches]
    return np.concatenate([session.run(["logits"], f)[0] for f in feed])  # (N, C)


def test_static_int8_is_qdq_per_channel_and_close_to_fp32(
    tiny_classifier, tiny_export_dir, tmp_path
):
    import deploy_fixtures

    calibration = [t for t, _ in deploy_fixtures.toy_records(64, seed=11)]
    evaluation = [t for t, _ in deploy_fixtures.toy_records(24, seed=12)]
    int8_path = quantize_onnx_static(
        tiny_export_dir / ONNX_NAME, tmp_path / "model.int8-static.onnx", _batches(tiny_classifier, calibration)
    )  # fmt: skip
    counts = op_counts(int8_path, ("QuantizeLinear", "DequantizeLinear", "MatMul", "Gemm"))
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > counts["QuantizeLinear"]
    # Per-channel: the weights' DequantizeLinear nodes carry one scale per output channel.
    graph = onnx.load(str(int8_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weight_scales = [
        inits[n.input[1]]
        for n in graph.node
        if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
    ]
    assert weight_scales and all(s.size > 1 for s in weight_scales)
    batches = _batches(tiny_classifier, evaluation)
    fp32, int8 = _logits(tiny_export_dir / ONNX_NAME, batches), _logits(int8_path, batches)
    assert 0 < np.abs(fp32 - int8).max() < 0.1  # quantized (not a copy), yet close
    assert (fp32.argmax(-1) == int8.argmax(-1)).mean() >= 0.95


def test_static_int8_needs_calibration_batches(tiny_export_dir, tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        quantize_onnx_static(tiny_export_dir / ONNX_NAME, tmp_path / "x.onnx", [])
    assert not (tmp_path / "x.onnx").exists()


def _feeds(clf):
    import deploy_fixtures

    return _batches(clf, [t for t, _ in deploy_fixtures.toy_records(12, seed=5)], size=6)


def test_fuse_onnx_fuses_and_reproduces_the_unfused_logits(
    tiny_classifier, tiny_export_dir, tmp_path
):
    fused = fuse_onnx(
        tiny_export_dir / ONNX_NAME, tmp_path / "model.fused.onnx", num_heads=4, hidden_size=32,
        feeds=_feeds(tiny_classifier),
    )  # fmt: skip
    assert fused.parity.passed and fused.parity.worst.max_abs_diff <= 1e-4
    assert len(fused.parity.cells) == 2  # one cell per feed
    assert fused.ops_after != fused.ops_before  # something was fused ...
    before = len(onnx.load(str(tiny_export_dir / ONNX_NAME)).graph.node)
    assert len(onnx.load(str(fused.path)).graph.node) < before  # ... into fewer nodes
    assert fused.to_dict()["ops_after"] == fused.ops_after


def _perturbed(model):
    """``model`` (a ModelProto) with noise on its largest weight (noise, not a shift: the
    LayerNorm after the embeddings would cancel a constant)."""
    weight = max(model.graph.initializer, key=lambda i: np.prod(i.dims) if i.data_type == 1 else 0)
    values = numpy_helper.to_array(weight)
    noise = np.random.default_rng(0).normal(0.0, 0.5, values.shape).astype(values.dtype)
    weight.CopyFrom(numpy_helper.from_array(values + noise, weight.name))
    return model


def test_fuse_onnx_refuses_a_fused_graph_that_differs(
    tiny_classifier, tiny_export_dir, tmp_path, monkeypatch
):
    from onnxruntime.transformers import optimizer

    real = optimizer.optimize_model

    def broken(*args, **kwargs):
        result = real(*args, **kwargs)
        _perturbed(result.model)
        return result

    monkeypatch.setattr(optimizer, "optimize_model", broken)
    with pytest.raises(ParityError, match="parity check FAILED") as caught:
        fuse_onnx(
            tiny_export_dir / ONNX_NAME, tmp_path / "model.fused.onnx", num_heads=4, hidden_size=32,
            feeds=_feeds(tiny_classifier),
        )  # fmt: skip
    assert caught.value.report.worst.max_abs_diff > 1e-4
    assert not (tmp_path / "model.fused.onnx").exists()  # never left where it would be used
    assert (tmp_path / "model.fused.rejected.onnx").is_file()  # kept for inspection


def test_fuse_onnx_rechecks_an_existing_fused_file(tiny_classifier, tiny_export_dir, tmp_path):
    fused_path = tmp_path / "model.fused.onnx"
    onnx.save(_perturbed(onnx.load(str(tiny_export_dir / ONNX_NAME))), str(fused_path))
    with pytest.raises(ParityError):
        fuse_onnx(tiny_export_dir / ONNX_NAME, fused_path, num_heads=4, hidden_size=32,
                  feeds=_feeds(tiny_classifier))  # fmt: skip
    assert not fused_path.exists()


def test_bf16_needs_bf16_dot_products():
    assert bf16_unsupported({"avx2", "avx512f"}).startswith("the CPU has no bf16")
    assert bf16_unsupported({"avx512_bf16"}) is None
    assert bf16_unsupported({"amx_bf16", "amx_tile"}) is None
