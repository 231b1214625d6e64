"""The CPU-ceiling bench on tiny shapes: its arithmetic, its kernel check, its CLI."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from torchformer.bench import machine
from torchformer.cli import main as cli_main

TINY = {"shapes": [(32, 48), (48, 32)], "rows": 16, "seconds": 0.02, "threads": 1}
KEYS = {"threads", "cpu", "flags", "torch", "onnxruntime", "rows", "shapes", "per_shape",
        "peaks", "means", "int8_backends", "int8_detail", "fp32_backends", "fp32_detail",
        "seconds"}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_result() -> dict:
    return machine.measure_ceiling(**TINY)


def test_result_has_every_key_and_positive_peaks(tiny_result) -> None:
    r = tiny_result
    assert set(r) == KEYS
    assert json.loads(json.dumps(r)) == r  # JSON-able as it is
    assert r["threads"] == 1 and r["rows"] == 16 and r["shapes"] == [[32, 48], [48, 32]]
    assert set(r["peaks"]) == set(r["means"]) == set(r["per_shape"]) == {"fp32", "bf16", "int8"}
    for dtype, per in r["per_shape"].items():
        assert set(per) == {"32x48", "48x32"}
        assert r["peaks"][dtype] == max(per.values())
        assert math.isfinite(r["peaks"][dtype]) and r["peaks"][dtype] > 0
        # all shapes' operations over all shapes' time lies between the slowest and fastest
        assert min(per.values()) <= r["means"][dtype] <= r["peaks"][dtype]
    assert set(r["int8_backends"]) == {"onnxruntime MatMulInteger", "torch._int_mm"}
    assert r["int8_backends"]["onnxruntime MatMulInteger"] > 0
    ran = {n: p for n, p in r["int8_backends"].items() if p is not None}
    assert r["peaks"]["int8"] == max(ran.values())
    # fp32: torch.matmul, oneDNN's linear (our models' inference kernel) and onnxruntime's
    # MatMul (the ONNX paths' kernel); the fastest counts
    assert set(r["fp32_backends"]) == {"torch.matmul", "oneDNN linear", "onnxruntime MatMul"}
    assert (r["fp32_backends"]["oneDNN linear"] is None) == (
        not torch.backends.mkldnn.is_available()
    )
    assert all(v > 0 for v in r["fp32_backends"].values() if v is not None)
    assert r["peaks"]["fp32"] == max(r["fp32_backends"].values())
    assert set(r["flags"]) <= set(machine.RELEVANT_FLAGS) and r["flags"] == sorted(r["flags"])
    assert r["torch"] == torch.__version__


def test_format_ceiling_lists_each_dtype_and_backend(tiny_result) -> None:
    text = machine.format_ceiling(tiny_result)
    assert text.splitlines()[0].startswith("| dtype | 32x48 (M=16) | 48x32 (M=16) | peak | mean |")
    assert "| fp32 GFLOP/s, torch.matmul |" in text and "| bf16 GFLOP/s |" in text
    assert "| fp32 GFLOP/s, onnxruntime MatMul |" in text and "(fp32 peak)" in text
    assert "| fp32 GFLOP/s, oneDNN linear |" in text
    assert "| int8 GOP/s, onnxruntime MatMulInteger |" in text and "(int8 peak)" in text
    assert "flags: " in text


def test_throughput_is_two_mkn_over_the_median_call(monkeypatch) -> None:
    # A fake clock: successive calls take 1 ms, 1 ms, 4 ms, 1 ms, ... so the median is
    # 1 ms while the mean is not; warm-up calls do not read the clock.
    steps = itertools.cycle([1e-3, 1e-3, 4e-3])
    now = [0.0]

    def clock() -> float:
        now[0] += next(steps)
        return now[0]

    monkeypatch.setattr(machine, "_clock", clock)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        r = machine.measure_ceiling(dtypes=("fp32",), **TINY)  # threads=1
        assert torch.get_num_threads() == 2  # restored, not left at the bench's setting
    finally:
        torch.set_num_threads(before)
    assert r["per_shape"]["fp32"]["32x48"] == pytest.approx(2 * 16 * 32 * 48 / 1e-3 / 1e9)
    assert r["per_shape"]["fp32"]["48x32"] == pytest.approx(2 * 16 * 48 * 32 / 1e-3 / 1e9)
    assert set(r["peaks"]) == {"fp32"} and "int8_backends" not in r


def test_mean_is_all_operations_over_all_time() -> None:
    s = machine._summarize(10, [(2, 3), (4, 5)], [1e-6, 4e-6])
    assert s["per_shape"] == pytest.approx({"2x3": 0.12, "4x5": 0.1})
    assert s["peak"] == pytest.approx(0.12)
    assert s["mean"] == pytest.approx((120 + 400) / 5e-6 / 1e9)


def test_both_int8_backends_pass_the_exact_product_check() -> None:
    for name, build in machine.INT8_BACKENDS.items():
        machine.check_int8_kernel(name, build)  # raises when wrong


def test_a_wrong_int8_kernel_is_refused_not_timed(monkeypatch) -> None:
    def off_by_one(a, b, threads):
        return lambda: (
            a.astype(np.int32) @ b.astype(np.int32) + (np.arange(a.shape[0]) == 3)[:, None]
        )

    monkeypatch.setitem(machine.INT8_BACKENDS, "torch._int_mm", off_by_one)
    timed = []
    monkeypatch.setattr(machine, "_median_seconds", lambda run, s: timed.append(run) or 1.0)
    with pytest.raises(machine.KernelCheckError, match=r"'torch._int_mm'.*first at \[3, 0\]"):
        machine.measure_ceiling(dtypes=("int8",), **TINY)
    assert len(timed) == 2  # onnxruntime's two shapes only; the wrong kernel never ran timed


def test_a_wrongly_shaped_int8_result_is_refused() -> None:
    def transposed(a, b, threads):
        return lambda: (a.astype(np.int32) @ b.astype(np.int32)).T

    with pytest.raises(machine.KernelCheckError, match="result shape"):
        machine.check_int8_kernel("transposed", transposed)


def test_an_int8_backend_that_cannot_run_is_reported_as_null(monkeypatch) -> None:
    def no_kernel(a, b, threads):
        raise RuntimeError("no CPU kernel for _int_mm\nmore detail")

    monkeypatch.setitem(machine.INT8_BACKENDS, "torch._int_mm", no_kernel)
    r = machine.measure_ceiling(dtypes=("int8",), **TINY)
    assert r["int8_backends"]["torch._int_mm"] is None
    assert r["int8_detail"]["torch._int_mm"] == {"error": "RuntimeError: no CPU kernel for _int_mm"}
    assert r["peaks"]["int8"] == r["int8_backends"]["onnxruntime MatMulInteger"]
    assert "n/a" in machine.format_ceiling(r)


def test_shapes_of_a_model_and_of_a_run_directory(tmp_path) -> None:
    (tmp_path / "best").mkdir()
    config = {"model_type": "bert", "hidden_size": 384, "intermediate_size": 1536}
    (tmp_path / "best" / "config.json").write_text(json.dumps(config))
    assert machine.shapes_of_model_dir(tmp_path / "best") == list(machine.DEFAULT_SHAPES)
    assert machine.shapes_of_model_dir(tmp_path) == [(384, 384), (384, 1536), (1536, 384)]
    (tmp_path / "config.json").write_text(json.dumps({"dim": 8, "hidden_dim": 20}))  # DistilBERT
    assert machine.shapes_of_model_dir(tmp_path) == [(8, 8), (8, 20), (20, 8)]


def test_bad_model_directories_name_the_file_and_field(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"best/config\.json"):
        machine.shapes_of_model_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "intermediate_size": 0}))
    with pytest.raises(ValueError, match=r"config.json: field 'intermediate_size' must be a posi"):
        machine.shapes_of_model_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"intermediate_size": 64}))
    with pytest.raises(ValueError, match="expected one of hidden_size"):
        machine.shapes_of_model_dir(tmp_path)


def test_cli_writes_the_json_and_prints_the_table(tmp_path, capsys) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 16, "intermediate_size": 24}))
    out = tmp_path / "ceiling.json"
    argv = ["bench", "machine", "--threads", "1", "--seconds", "0.01", "--rows", "8",
            "--model", str(tmp_path), "--dtypes", "fp32", "int8", "--out", str(out)]  # fmt: skip
    assert cli_main(argv) == 0
    written = json.loads(out.read_text())
    assert written["shapes"] == [[16, 16], [16, 24], [24, 16]] and written["rows"] == 8
    assert set(written["peaks"]) == {"fp32", "int8"}
    assert written["peaks"]["fp32"] == max(written["per_shape"]["fp32"].values())
    assert "| fp32 GFLOP/s, torch.matmul |" in capsys.readouterr().out


def test_cli_reports_a_missing_model_directory(tmp_path, capsys) -> None:
    assert cli_main(["bench", "machine", "--model", str(tmp_path / "nope")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_bad_settings_are_refused_before_measuring() -> None:
    with pytest.raises(ValueError, match="unknown dtype"):
        machine.measure_ceiling(dtypes=("fp16",), **TINY)
    with pytest.raises(ValueError, match="rows and seconds must be positive"):
        machine.measure_ceiling(**{**TINY, "rows": 0})
    with pytest.raises(ValueError, match=r"\(K, N\) pairs"):
        machine.measure_ceiling(**{**TINY, "shapes": [(32, 0)]})
