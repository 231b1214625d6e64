"""int8 quantization: the accuracy gate passes, refuses loudly, and the CPU report."""

import json
import shutil

import numpy as np
import pytest
import torch

from torchformer.cli import main
from torchformer.export.onnx import read_metadata
from torchformer.export.quantize import (
    GateResult,
    accuracy,
    accuracy_gate,
    cpu_flags,
    cpu_int8_support,
    default_reduce_range,
    quantize_onnx,
)
from torchformer.export.runtime import OnnxClassifier


def test_quantize_cli_from_a_run_exports_quantizes_and_passes_the_gate(
    tiny_model_dir, val_file, tmp_path, capsys
):
    out = tmp_path / "q"
    rc = main(
        ["quantize", str(tiny_model_dir.parent), "--out", str(out), "--val-file", str(val_file)]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "CPU instruction sets:" in printed and "int8 accuracy gate PASSED" in printed
    assert (out / "model.onnx").is_file() and (out / "model.int8.onnx").is_file()
    assert (out / "model.int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size
    meta = read_metadata(out)
    assert meta["parity"]["passed"]  # exported first, with its parity check
    gate = meta["int8"]["gate"]
    assert gate["passed"] and gate["n"] == 300 and gate["fp32_accuracy"] > 90
    assert gate["drop"] <= 1.0 and meta["int8"]["quantization"]["per_channel"] is True
    int8 = OnnxClassifier.from_dir(out, int8=True)
    assert int8.path.name == "model.int8.onnx"
    assert int8.predict(["a wonderful film"])[0]["label"] == "pos"


def test_quantize_cli_refuses_and_prints_both_accuracies(
    tiny_export_dir, val_file, tmp_path, capsys
):
    out = tmp_path / "q"
    # A threshold of -101 points cannot be met (the drop is at least -100): the refuse path.
    rc = main(["quantize", str(tiny_export_dir), "--out", str(out), "--val-file", str(val_file),
               "--val-size", "50", "--threshold", "-101"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 1
    assert "REFUSED" in captured.out and "fp32 " in captured.out and "vs int8 " in captured.out
    assert "refused" in captured.err
    assert not (out / "model.int8.onnx").exists() and (out / "model.int8.rejected.onnx").is_file()
    assert read_metadata(out)["int8"]["gate"]["passed"] is False
    with pytest.raises(ValueError, match="accuracy gate"):
        OnnxClassifier.from_dir(out, int8=True)
    assert read_metadata(tiny_export_dir).get("int8") is None  # the source export is untouched


class _Damaged:
    """A broken 'int8 model': always predicts the first label."""

    labels = ("neg", "pos")

    def predict_proba(self, texts, *, batch_size=32):
        return torch.tensor([[1.0, 0.0]] * len(texts))


def test_gate_refuses_a_damaged_model(tiny_export_dir):
    fp32 = OnnxClassifier.from_dir(tiny_export_dir)
    texts = ["a wonderful film", "great acting", "awful plot", "boring and dull"]
    result = accuracy_gate(fp32, _Damaged(), texts, ["pos", "pos", "neg", "neg"], threshold=1.0)
    assert isinstance(result, GateResult) and not result.passed
    assert result.fp32_accuracy == 100.0 and result.int8_accuracy == 50.0 and result.drop == 50.0
    assert (
        "REFUSED" in result.message()
        and "100.00%" in result.message()
        and "50.00%" in result.message()
    )


def test_quantized_graph_stays_close_to_fp32(tiny_export_dir, tmp_path):
    shutil.copytree(tiny_export_dir, tmp_path / "e")
    quantize_onnx(tmp_path / "e" / "model.onnx", tmp_path / "e" / "model.int8.onnx")
    fp32 = OnnxClassifier.from_dir(tmp_path / "e")
    int8 = OnnxClassifier.from_dir(tmp_path / "e", int8=True, allow_unchecked=True)
    texts = ["a wonderful film", "awful and boring", "the plot was really quite good"]
    diff = (fp32.predict_proba(texts) - int8.predict_proba(texts)).abs().max().item()
    assert 0 < diff < 0.05  # int8 changes the numbers (it did quantize) but not by much


def test_accuracy_accepts_names_or_indices_and_rejects_unknown_labels():
    assert accuracy([1, 0, 1], ["pos", "neg", "neg"], ["neg", "pos"]) == pytest.approx(200 / 3)
    assert accuracy([1, 0], [1, 1], ["neg", "pos"]) == 50.0
    with pytest.raises(ValueError, match=r"'positive'.*not one of the model's labels"):
        accuracy([1], ["positive"], ["neg", "pos"])


def test_cpu_flags_and_int8_warning(tmp_path):
    vnni = tmp_path / "vnni"
    vnni.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 avx512f avx512bw avx512_vnni\n")
    plain = tmp_path / "avx2"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\n")
    assert "avx512_vnni" in cpu_flags(vnni)
    good = cpu_int8_support(cpu_flags(vnni))
    assert good.int8_dot_product and good.warning is None and "avx512_vnni" in good.summary()
    slow = cpu_int8_support(cpu_flags(plain))
    assert not slow.int8_dot_product and "VNNI" in slow.warning and "WARNING" in slow.summary()
    assert cpu_int8_support(cpu_flags(arm)).int8_dot_product
    assert "slower" in cpu_int8_support({"sse2"}).warning
    assert cpu_flags(tmp_path / "missing") == set()
    # 7-bit weights exactly where onnxruntime's u8*s8 multiply-adds can saturate.
    assert default_reduce_range(cpu_flags(plain)) is True
    assert default_reduce_range({"avx512f", "avx512bw"}) is True
    assert default_reduce_range(cpu_flags(vnni)) is False
    assert default_reduce_range(cpu_flags(arm)) is False
    assert default_reduce_range(set()) is False  # unknown CPU: full 8 bits


@pytest.mark.parametrize("reduce_range", [True, False])
def test_reduce_range_stores_7_bit_weights(tiny_export_dir, tmp_path, reduce_range):
    import onnx
    from onnx import numpy_helper

    path = quantize_onnx(
        tiny_export_dir / "model.onnx", tmp_path / "model.int8.onnx", reduce_range=reduce_range
    )
    weights = [
        numpy_helper.to_array(i)
        for i in onnx.load(str(path)).graph.initializer
        if i.data_type == onnx.TensorProto.INT8 and i.dims and len(i.dims) == 2
    ]
    assert weights
    largest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert largest <= 64 if reduce_range else largest == 127


def test_quantize_cli_rejects_a_failed_export(tiny_export_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_export_dir, bad)
    meta = json.loads((bad / "export.json").read_text())
    meta["parity"]["passed"] = False
    (bad / "export.json").write_text(json.dumps(meta))
    assert main(["quantize", str(bad), "--out", str(bad)]) == 1
    assert "failed its parity check" in capsys.readouterr().err


@pytest.mark.data
def test_gate_reads_a_balanced_imdb_test_slice_by_default(tiny_export_dir, tmp_path, capsys):
    from torchformer.data.imdb import find_imdb

    try:
        find_imdb()
    except FileNotFoundError as e:
        pytest.skip(f"IMDB not available: {e}")
    out = tmp_path / "q"
    # The tiny toy model knows nothing of IMDB: the threshold is irrelevant here, the data path is not.
    assert (
        main(
            [
                "quantize",
                str(tiny_export_dir),
                "--out",
                str(out),
                "--val-size",
                "20",
                "--threshold",
                "100",
            ]
        )
        == 0
    )
    gate = read_metadata(out)["int8"]["gate"]
    assert gate["n"] == 20 and gate["source"].startswith("IMDB test, balanced sample of 20")


def test_quantize_cli_reports_bad_validation_data_before_quantizing(
    tiny_export_dir, tmp_path, capsys
):
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"text": "a fine film", "label": "positive"}\n', encoding="utf-8")
    out = tmp_path / "q"
    assert (
        main(["quantize", str(tiny_export_dir), "--out", str(out), "--val-file", str(wrong)]) == 1
    )
    assert "'positive'" in capsys.readouterr().err  # a label the model does not know, named
    missing = tmp_path / "missing.jsonl"
    assert (
        main(["quantize", str(tiny_export_dir), "--out", str(out), "--val-file", str(missing)]) == 1
    )
    assert "missing.jsonl" in capsys.readouterr().err
