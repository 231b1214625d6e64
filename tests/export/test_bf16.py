"""bf16 weights behind the accuracy gate: `quantize --dtype bf16`, its record, and serving."""

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from torchformer.cli import main
from torchformer.export import quantize as quantize_module
from torchformer.export.bf16 import BF16_GATE_NAME, bf16_choice, gate_bf16, to_bf16
from torchformer.export.onnx import sha256_of
from torchformer.export.quantize import GateResult
from torchformer.serve.app import load_predictor

TEXTS = ["a wonderful film", "great acting", "awful plot", "boring and dull"]


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU that reports bf16 dot products, whatever this one has (bf16 still runs
    without them, emulated), so the choice logic is tested on every machine."""
    monkeypatch.setattr(quantize_module, "cpu_flags", lambda *a, **k: {"avx2", "avx512_bf16"})


@pytest.fixture
def run(tiny_model_dir, tmp_path):
    """A copy of the tiny classifier's run (the gate writes next to its weights)."""
    shutil.copytree(tiny_model_dir.parent, tmp_path / "run")
    return tmp_path / "run"


def _dtype(predictor) -> torch.dtype:
    return next(predictor.model.parameters()).dtype


def test_quantize_bf16_gates_and_records_the_verdict_for_these_weights(
    run, val_file, bf16_cpu, capsys
):
    rc = main(["quantize", str(run), "--dtype", "bf16", "--val-file", str(val_file)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "bf16 accuracy gate PASSED" in printed and "vs bf16 " in printed
    record = json.loads((run / "best" / BF16_GATE_NAME).read_text())["bf16"]
    gate = record["gate"]
    assert gate["passed"] and gate["name"] == "bf16" and gate["n"] == 300
    assert gate["fp32_accuracy"] > 90 and abs(gate["drop"]) <= 1.0
    assert "bf16_accuracy" in gate and "int8_accuracy" not in gate
    assert str(val_file) in gate["source"]
    assert record["weights"]["sha256"] == sha256_of(run / "best" / "model.safetensors")
    assert "avx512_bf16" in record["cpu"]["flags"]
    assert bf16_choice(run).use


def test_a_refused_bf16_gate_keeps_fp32_serving(run, val_file, bf16_cpu, capsys):
    # A threshold of -101 points cannot be met (the drop is at least -100): the refuse path.
    rc = main(["quantize", str(run), "--dtype", "bf16", "--val-file", str(val_file),
               "--val-size", "40", "--threshold", "-101"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 1 and "REFUSED" in captured.out and "keeps fp32" in captured.err
    assert (
        json.loads((run / "best" / BF16_GATE_NAME).read_text())["bf16"]["gate"]["passed"] is False
    )
    choice = bf16_choice(run)
    assert not choice.use and "refused" in choice.reason
    assert _dtype(load_predictor(run)) == torch.float32


def test_auto_serves_bf16_only_for_the_gated_weights_on_a_bf16_cpu(run, val_file, bf16_cpu):
    assert _dtype(load_predictor(run)) == torch.float32  # no gate yet
    from torchformer.export.quantize import validation_slice

    texts, gold, source = validation_slice(100, file=val_file)
    assert gate_bf16(run, texts, gold, source=source).passed
    served = load_predictor(run)
    assert _dtype(served) == torch.bfloat16
    fp32 = load_predictor(run, precision="fp32")
    assert _dtype(fp32) == torch.float32
    assert [p["label"] for p in served.predict(TEXTS)] == [p["label"] for p in fp32.predict(TEXTS)]
    # On a CPU without bf16 dot products: fp32, with the reason.
    choice = bf16_choice(run, flags={"avx2"})
    assert not choice.use and "no bf16 dot-product instructions" in choice.reason
    # Other weights than the gated ones: fp32.
    weights = run / "best" / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3  # retrained, say
    save_file(tensors, weights)
    choice = bf16_choice(run)
    assert not choice.use and "other weights" in choice.reason
    assert _dtype(load_predictor(run)) == torch.float32


def test_forced_bf16_warns_without_a_gate_and_refuses_what_it_cannot_serve(
    run, tiny_export_dir, monkeypatch, caplog
):
    monkeypatch.setattr(quantize_module, "cpu_flags", lambda *a, **k: {"avx2", "amx_bf16"})
    with caplog.at_level(logging.WARNING, logger="torchformer.serve.app"):
        served = load_predictor(run, precision="bf16")
    assert _dtype(served) == torch.bfloat16
    assert "without a passed accuracy gate" in caplog.text and BF16_GATE_NAME in caplog.text
    with pytest.raises(ValueError, match="not an ONNX export"):
        load_predictor(tiny_export_dir, precision="bf16")
    monkeypatch.setattr(quantize_module, "cpu_flags", lambda *a, **k: {"avx2"})
    with pytest.raises(ValueError, match="--precision bf16: the CPU has no bf16 dot-product"):
        load_predictor(run, precision="bf16")


def test_a_malformed_gate_record_is_named_with_its_field(run, bf16_cpu):
    path = run / "best" / BF16_GATE_NAME
    path.write_text(json.dumps({"bf16": {"gate": {"passed": True}}}))
    with pytest.raises(ValueError, match=r"bf16_gate\.json: not a bf16 gate record .*'weights'"):
        bf16_choice(run)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"bf16_gate\.json: not a bf16 gate record"):
        bf16_choice(run)


def test_to_bf16_is_for_pytorch_text_classifiers(tiny_export_dir):
    from torchformer.export.runtime import OnnxClassifier

    with pytest.raises(ValueError, match="PyTorch text classifiers; got OnnxClassifier"):
        to_bf16(OnnxClassifier.from_dir(tiny_export_dir))


def test_gate_result_names_the_cheaper_models_accuracy():
    int8 = GateResult(4, 100.0, 75.0, 25.0, 1.0, 75.0, passed=False)
    bf16 = GateResult(4, 100.0, 100.0, 0.0, 1.0, 100.0, passed=True, name="bf16")
    assert int8.to_dict()["int8_accuracy"] == 75.0 and "bf16_accuracy" not in int8.to_dict()
    assert bf16.to_dict()["bf16_accuracy"] == 100.0 and "int8_accuracy" not in bf16.to_dict()
    assert bf16.message().startswith("bf16 accuracy gate PASSED: fp32 100.00% vs bf16 100.00%")


def test_quantize_options_belong_to_their_dtype(run, capsys):
    assert main(["quantize", str(run)]) == 2
    assert "--out is required with --dtype int8" in capsys.readouterr().err
    assert main(["quantize", str(run), "--dtype", "bf16", "--out", str(run / "x")]) == 2
    assert "--out is for int8" in capsys.readouterr().err
    assert not (run / "best" / BF16_GATE_NAME).exists()


def test_health_says_which_weights_are_served(run, bf16_cpu):
    from fastapi.testclient import TestClient

    from torchformer.serve.app import create_app

    for precision, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        with TestClient(create_app(load_predictor(run, precision=precision))) as client:
            assert client.get("/health").json()["weights_dtype"] == dtype


def test_the_gate_takes_a_run_or_its_best_directory_and_refuses_an_export(
    run, tiny_export_dir, val_file, bf16_cpu, capsys
):
    from torchformer.export.bf16 import classifier_dir

    assert classifier_dir(run) == classifier_dir(run / "best") == run / "best"
    rc = main(["quantize", str(run / "best"), "--dtype", "bf16", "--val-file", str(val_file),
               "--val-size", "20"])  # fmt: skip
    assert rc == 0 and (run / "best" / BF16_GATE_NAME).is_file()
    assert bf16_choice(run).use and bf16_choice(run / "best").use
    rc = main(["quantize", str(tiny_export_dir), "--dtype", "bf16", "--val-file", str(val_file)])
    assert rc == 1 and "an ONNX export; bf16 gates a PyTorch run" in capsys.readouterr().err
    assert not (tiny_export_dir / BF16_GATE_NAME).exists()
    rc = main(["quantize", str(run / "nowhere"), "--dtype", "bf16", "--val-file", str(val_file)])
    assert rc == 1 and "not a local run or model directory" in capsys.readouterr().err


def test_a_gate_record_needs_a_true_boolean_and_its_weights(run, bf16_cpu):
    path = run / "best" / BF16_GATE_NAME
    record = {"bf16": {"gate": {"passed": "false"}, "weights": {"sha256": "0" * 64}}}
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"bf16\.gate\.passed is 'false'"):
        bf16_choice(run)
    record["bf16"]["gate"]["passed"] = True
    path.write_text(json.dumps(record))
    (run / "best" / "model.safetensors").unlink()
    choice = bf16_choice(run)
    assert not choice.use and "no model.safetensors, the weights the gate was for" in choice.reason
