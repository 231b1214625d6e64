"""The deployment benchmark: shared fixed inputs, every path measured, report written."""

import json
import shutil

import numpy as np
import pytest
from onnx import numpy_helper

from torchformer.bench.deploy import (
    COMPUTE_DTYPE,
    BenchSettings,
    PathResult,
    add_fraction_of_ceiling,
    calibration_texts,
    encoder_flops,
    fixed_inputs,
    format_table,
    read_machine,
    run_benchmark,
    summary_lines,
    write_report,
)
from torchformer.cli import main
from torchformer.export.quantize import bf16_unsupported, default_reduce_range, op_counts


def test_fixed_inputs_are_length_sorted_padded_batches(tiny_classifier):
    import deploy_fixtures

    texts = [t for t, _ in deploy_fixtures.toy_records(11, seed=3)]
    inputs = fixed_inputs(tiny_classifier, texts, batch_size=4, latency_texts=3)
    assert [len(idx) for idx in inputs.batch_indices] == [4, 4, 3]
    assert sorted(i for idx in inputs.batch_indices for i in idx) == list(range(11))
    longest = [int(mask.sum(1).max()) for _, mask in inputs.batches]
    assert longest == sorted(longest)  # batches go from short to long texts
    for (ids, mask), idx in zip(inputs.batches, inputs.batch_indices):
        assert ids.dtype == np.int64 and ids.shape == mask.shape == (len(idx), mask.sum(1).max())
        assert mask.sum(1).tolist() == [inputs.lengths[i] for i in idx]
    expected = tiny_classifier.encode(texts[:1])[0].numpy()
    assert len(inputs.singles) == 3 and np.array_equal(
        inputs.singles[0][0], expected
    )  # unpadded, same ids
    assert 0.0 <= inputs.padding_fraction < 0.5


def test_bench_cli_measures_every_path_on_the_same_inputs(
    tiny_model_dir, tiny_export_dir, val_file, tmp_path, capsys
):
    onnx_dir = tmp_path / "onnx"
    shutil.copytree(tiny_export_dir, onnx_dir)  # fp32 export given; int8 is made by bench
    out = tmp_path / "bench"
    args = ["bench", str(tiny_model_dir.parent), "--texts-file", str(val_file), "--texts", "40",
            "--latency-texts", "5", "--rounds", "1", "--threads", "1", "--onnx-dir", str(onnx_dir),
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "× transformers" in printed and "best path:" in printed
    report = json.loads((out / "deploy.json").read_text())
    results = report["results"]
    assert list(results) == ["torchformer", "transformers", "onnx-fp32", "onnx-int8"]
    # Same weights, same inputs: transformers (pooler pooling) and ONNX fp32 reproduce our logits.
    assert (
        results["transformers"]["max_logit_diff"] < 1e-4
        and results["transformers"]["agreement"] == 100
    )
    assert results["onnx-fp32"]["max_logit_diff"] < 1e-4
    assert results["onnx-int8"]["agreement"] >= 90 and results["onnx-int8"]["max_logit_diff"] > 0
    for r in results.values():
        assert r["accuracy"] >= 90 and r["throughput"] > 0 and len(r["throughput_rounds"]) == 1
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p95"] <= r["latency_ms"]["p99"]
    assert results["transformers"]["speedup_vs_reference"] == 1.0
    best = max(results.values(), key=lambda r: r["throughput"])
    assert (
        report["best"] == best["name"]
        and report["best_vs_reference"] == best["speedup_vs_reference"]
    )
    assert results["onnx-int8"]["size_mb"] < results["onnx-fp32"]["size_mb"]
    # Each path runs in its own process: the ONNX ones never load torch.
    assert results["onnx-fp32"]["peak_rss_mb"] < results["torchformer"]["peak_rss_mb"]
    assert report["texts"]["n"] == 40 and report["settings"]["threads"] == 1
    md = (out / "deploy.md").read_text()
    assert md.count("\n| onnx-") == 2 and "| torchformer |" in md and "| transformers |" in md


def test_summary_warns_when_transformers_pools_differently():
    report = {
        "texts": {"source": "x", "n": 1, "mean_tokens": 5, "max_tokens": 5, "padding_fraction": 0.0,
                  "tokenize_texts_per_s": 1.0},
        "settings": {"threads": 1, "rounds": 1, "batch_size": 32}, "method": "m", "cpu": {"flags": []},
        "best": "onnx-int8", "best_vs_reference": 2.5, "pooling": "mean",
        "results": {"onnx-int8": {"throughput_rounds": [10.0], "throughput": 10.0, "speedup_vs_reference": 2.5,
                                  "latency_ms": {"p50": 1, "p95": 2, "p99": 3}, "size_mb": 1.0,
                                  "peak_rss_mb": 50, "accuracy": None, "agreement": 99.0}},
    }  # fmt: skip
    lines = "\n".join(summary_lines(report))
    assert (
        "onnx-int8 at 2.50× the throughput of transformers" in lines
        and "pools with 'mean'" in lines
    )
    assert "| onnx-int8 | 1.0 | 2.0 | 3.0 | 10.0 (10.0–10.0) | 2.50× |" in format_table(report)


def test_calibration_texts_are_never_the_benchmark_texts(tmp_path):
    import deploy_fixtures

    records = deploy_fixtures.toy_records(30, seed=4)
    texts_file = deploy_fixtures.write_jsonl(records, tmp_path / "texts.jsonl")
    bench = [t for t, _ in records[:10]]
    # Default: the rows after the benchmark's own.
    settings = BenchSettings(n_texts=10, texts_file=str(texts_file), calibration_texts=8)
    texts, source = calibration_texts(settings, bench)
    assert texts == [t for t, _ in records[10:18]] and source.startswith("8 texts of")
    # A calibration file that repeats benchmark texts: those are left out.
    mixed = deploy_fixtures.write_jsonl(records[5:25], tmp_path / "calibration.jsonl")
    settings.calibration_file, settings.calibration_texts = str(mixed), 100
    texts, _ = calibration_texts(settings, bench)
    assert texts == [t for t, _ in records[10:25]] and not set(texts) & set(bench)
    with pytest.raises(ValueError, match="no calibration texts"):
        calibration_texts(BenchSettings(n_texts=30, texts_file=str(texts_file)), bench)


# ----------------------------------------------------------------- FLOPs and the CPU's ceiling
TINY_CONFIG = {"hidden_size": 4, "num_hidden_layers": 2, "intermediate_size": 8,
               "id2label": {"0": "neg", "1": "pos"}}  # fmt: skip


def _shaped(*shapes):
    return [(np.zeros(s, dtype=np.int64), np.ones(s, dtype=np.int64)) for s in shapes]


def test_encoder_flops_by_hand():
    batches = _shaped((2, 3), (1, 5))
    # (2, 3): linear 2·2·3·(4·16 + 2·4·8) = 1536, attention 4·2·9·4 = 288, × 2 layers = 3648;
    #         pooler 2·2·16 = 64, classifier 2·2·4·2 = 32.
    # (1, 5): linear 2·1·5·128 = 1280, attention 4·1·25·4 = 400, × 2 = 3360; head 32 + 16.
    assert encoder_flops(TINY_CONFIG, batches) == 3648 + 64 + 32 + 3360 + 32 + 16
    assert encoder_flops(TINY_CONFIG, batches, head=False) == 3648 + 3360
    mean_pooled = TINY_CONFIG | {"torchformer_pooling": "mean"}  # no pooler layer
    assert encoder_flops(mean_pooled, batches) == 3648 + 32 + 3360 + 16
    distil = {"dim": 4, "n_layers": 2, "hidden_dim": 8, "id2label": {"0": "a", "1": "b"}}
    assert encoder_flops(distil, batches) == encoder_flops(TINY_CONFIG, batches)
    with pytest.raises(KeyError, match="intermediate_size"):
        encoder_flops({"hidden_size": 4, "num_hidden_layers": 2}, batches)


def _result(name, throughput):
    return PathResult(name, "f", 1.0, 0.0, throughput=throughput, compute_dtype=COMPUTE_DTYPE[name])


def test_fraction_of_ceiling_is_flops_times_passes_over_the_dtype_peak(tmp_path):
    machine_file = tmp_path / "machine.json"
    machine_file.write_text(json.dumps(
        {"peaks": {"fp32": 0.001, "bf16": None, "int8": 0.004}, "threads": 2, "cpu": "x"}))  # fmt: skip
    machine = read_machine(machine_file)
    assert machine == {"file": str(machine_file), "peaks": {"fp32": 0.001, "bf16": None,
                                                            "int8": 0.004}, "threads": 2}  # fmt: skip
    results = {p: _result(p, 300.0) for p in ("onnx-fp32", "onnx-int8-static", "torchformer-bf16")}
    results["onnx-fp32"].throughput = 150.0
    flops = encoder_flops(TINY_CONFIG, _shaped((2, 3), (1, 5)))  # 7152 per pass over 3 texts
    add_fraction_of_ceiling(results, flops, 3, machine["peaks"])
    # fp32: 150 texts/s = 50 passes/s -> 357,600 FLOP/s = 3.576e-4 GFLOP/s, of 0.001.
    assert results["onnx-fp32"].achieved_gflops == pytest.approx(3.576e-4)
    assert results["onnx-fp32"].fraction_of_ceiling == pytest.approx(0.3576)
    # int8: 100 passes/s -> 7.152e-4 GOP/s, of the int8 peak 0.004.
    assert results["onnx-int8-static"].fraction_of_ceiling == pytest.approx(0.1788)
    # bf16: no measured peak, so no fraction (the achieved rate is still there).
    bf16 = results["torchformer-bf16"]
    assert bf16.fraction_of_ceiling is None and bf16.achieved_gflops == pytest.approx(7.152e-4)


@pytest.mark.parametrize(
    ("content", "message"),
    [("[1, 2]", "'peaks' object"), ('{"peaks": {"fp32": -3}}', "peaks.fp32 must be a positive"),
     ('{"peaks": {"fp32": 10}, "threads": 0}', "threads must be"), ("{nope", "not a JSON")],
)  # fmt: skip
def test_read_machine_names_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "m.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as caught:
        read_machine(path)
    assert str(path) in str(caught.value)


# ----------------------------------------------------------------- the added paths
NEW_PATHS = ["torchformer-bf16", "torchformer-bf16-weights", "torchformer-compile",
             "torchformer-bf16-compile", "onnx-fp32-fused", "onnx-int8-fused",
             "onnx-int8-static"]  # fmt: skip


def test_bench_new_paths_agree_with_torchformer_fp32(
    tiny_classifier, tiny_model_dir, tiny_export_dir, val_file, tmp_path, capsys
):
    onnx_dir = tmp_path / "onnx"
    shutil.copytree(tiny_export_dir, onnx_dir)
    machine_file = tmp_path / "machine.json"
    machine_file.write_text(json.dumps({"peaks": {"fp32": 20.0, "bf16": 40.0, "int8": 80.0},
                                        "threads": 2}))  # fmt: skip
    out = tmp_path / "bench"
    args = ["bench", str(tiny_model_dir.parent), "--texts-file", str(val_file), "--texts", "40",
            "--batch-size", "8", "--latency-texts", "3", "--rounds", "1", "--threads", "1",
            "--onnx-dir", str(onnx_dir), "--out", str(out), "--paths", ",".join(NEW_PATHS),
            "--calibration-texts", "64", "--machine", str(machine_file)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "deploy.json").read_text())
    results, skipped = report["results"], report["skipped"]
    # torchformer fp32 is not measured: the reference logits are computed untimed instead.
    for bf16_path in ("torchformer-bf16", "torchformer-bf16-weights"):
        if bf16_unsupported() is not None:
            assert skipped.pop(bf16_path) == bf16_unsupported()
        else:
            bf16 = results[bf16_path]
            assert bf16["agreement"] >= 95 and 0 < bf16["max_logit_diff"] < 0.1, bf16_path
    if bf16_unsupported() is None:
        assert results["torchformer-bf16-weights"]["details"]["weights"].startswith("bfloat16")
    if "torchformer-compile" in skipped:  # no working compiler here: the error is the reason
        assert skipped.pop("torchformer-compile").startswith("failed on")
    else:
        compiled = results["torchformer-compile"]
        assert compiled["max_logit_diff"] < 1e-4 and compiled["agreement"] == 100
        assert compiled["details"]["recompilations_while_timed"] == 0  # dynamic shapes hold
        assert compiled["details"]["graphs_compiled_in_warmup"] >= 1
        assert compiled["details"]["compile_s"] == compiled["warmup_s"] > 0
    if bf16_unsupported() is not None:
        assert skipped.pop("torchformer-bf16-compile") == bf16_unsupported()
    elif "torchformer-bf16-compile" in skipped:  # no working compiler here
        assert skipped.pop("torchformer-bf16-compile").startswith("failed on")
    else:
        compiled = results["torchformer-bf16-compile"]
        assert compiled["agreement"] >= 95 and 0 < compiled["max_logit_diff"] < 0.1
        assert compiled["details"]["weights"].startswith("bfloat16, torch.compile")
        assert compiled["details"]["recompilations_while_timed"] == 0
        assert compiled["details"]["compile_s"] == compiled["warmup_s"] > 0
    assert skipped == {}
    fused = results["onnx-fp32-fused"]
    assert fused["max_logit_diff"] < 1e-4 and fused["agreement"] == 100
    assert fused["model_file"].endswith("model.fused.onnx")
    assert fused["details"]["parity_max_abs_diff"] <= 1e-4
    assert fused["details"]["ops_after"] != fused["details"]["ops_before"]
    # Quantized: close, not identical. The error is read against the spread of the fp32
    # logits: 0.07% of it here (AMD EPYC, AVX-512 VNNI); 5.3% on a CI machine whose flags
    # were not recorded (the report header prints them now) — the size that onnxruntime's
    # 16-bit multiply-adds saturating on CPUs without VNNI/AMX gives, where 7-bit weights
    # are now chosen. A broken scale or zero point gives errors of the order of the spread.
    spread = report["reference_logit_range"]
    assert spread > 1
    bound = 0.1
    for name in ("onnx-int8-fused", "onnx-int8-static"):
        diff = results[name]["max_logit_diff"]
        assert results[name]["agreement"] >= 90, name
        assert 0 < diff < bound * spread, (name, diff, spread)
        assert ("7-bit" in results[name]["details"]["quantization"]) == default_reduce_range()
    static = onnx_dir / "model.int8-static.onnx"
    assert results["onnx-int8-static"]["model_file"] == str(static)
    assert set(op_counts(static, ("QuantizeLinear", "DequantizeLinear"))) == {
        "QuantizeLinear", "DequantizeLinear"}  # fmt: skip
    assert "64 texts of" in results["onnx-int8-static"]["details"]["calibration"]
    assert "after the benchmark's first 40" in results["onnx-int8-static"]["details"]["calibration"]
    # Fraction of the ceiling, by hand: H 32, F 64, 2 layers, 2 classes, pooler.
    texts = [json.loads(line)["text"] for line in val_file.read_text().splitlines()[:40]]
    flops = 0
    for ids, _ in fixed_inputs(tiny_classifier, texts, batch_size=8, latency_texts=0).batches:
        B, T = ids.shape
        flops += 2 * (2 * B * T * (4 * 32 * 32 + 2 * 32 * 64) + 4 * B * T * T * 32)
        flops += 2 * B * 32 * 32 + 2 * B * 32 * 2
    assert report["flops"]["per_pass"] == flops
    peaks = {"fp32": 20.0, "bf16": 40.0, "int8": 80.0}
    for name, r in results.items():
        expected = flops * r["throughput"] / 40 / 1e9 / peaks[COMPUTE_DTYPE[name]]
        assert r["fraction_of_ceiling"] == pytest.approx(expected)
    assert "measured on 2 threads, the benchmark ran on 1" in report["machine"]["warning"]
    assert "WARNING: the machine's peaks were measured on 2 threads" in printed
    md = (out / "deploy.md").read_text()
    assert "% of ceiling |" in md and "| onnx-int8-static |" in md


def test_bench_skips_paths_that_cannot_run_with_the_reason(tiny_model_dir, tiny_export_dir,
                                                            tmp_path, monkeypatch):  # fmt: skip
    import deploy_fixtures
    from onnxruntime.transformers import optimizer

    from torchformer.export import quantize

    onnx_dir = tmp_path / "onnx"
    shutil.copytree(tiny_export_dir, onnx_dir)
    (onnx_dir / "model.int8.onnx").write_bytes(b"not an onnx graph")  # its process fails to load
    monkeypatch.setattr(quantize, "cpu_flags", lambda *a: {"avx2"})  # a CPU without bf16
    real = optimizer.optimize_model

    def broken(*args, **kwargs):  # the optimizer returns a graph with a perturbed weight
        result = real(*args, **kwargs)
        weight = max(
            result.model.graph.initializer, key=lambda i: np.prod(i.dims) * (i.data_type == 1)
        )
        values = numpy_helper.to_array(weight)
        noise = np.random.default_rng(0).normal(0.0, 0.5, values.shape).astype(values.dtype)
        weight.CopyFrom(numpy_helper.from_array(values + noise, weight.name))
        return result

    monkeypatch.setattr(optimizer, "optimize_model", broken)
    texts_file = deploy_fixtures.write_jsonl(deploy_fixtures.toy_records(10), tmp_path / "t.jsonl")
    settings = BenchSettings(n_texts=10, batch_size=4, latency_texts=2, threads=1, rounds=1,
                             texts_file=str(texts_file),
                             paths=("torchformer", "torchformer-bf16", "onnx-fp32-fused",
                                    "onnx-int8-fused", "onnx-int8-static", "onnx-int8"))  # fmt: skip
    report = run_benchmark(tiny_model_dir.parent, settings, onnx_dir=onnx_dir, log=lambda m: None)
    assert list(report["results"]) == ["torchformer"]  # measured, the rest skipped
    skipped = report["skipped"]
    assert set(skipped) == {"torchformer-bf16", "onnx-fp32-fused", "onnx-int8-fused",
                            "onnx-int8-static", "onnx-int8"}  # fmt: skip
    assert skipped["torchformer-bf16"].startswith("the CPU has no bf16")
    assert (
        "ParityError" in skipped["onnx-fp32-fused"]
        and "parity check FAILED" in skipped["onnx-fp32-fused"]
    )
    assert skipped["onnx-int8-fused"].startswith("needs the fused graph: ParityError")
    assert "no calibration texts" in skipped["onnx-int8-static"]  # the file holds only the sample
    assert skipped["onnx-int8"].startswith("failed on 'load'")
    assert not (onnx_dir / "model.fused.onnx").exists()
    assert (onnx_dir / "model.fused.rejected.onnx").is_file()
    _, md_path = write_report(report, tmp_path / "out")
    md = md_path.read_text()
    assert "- skipped onnx-fp32-fused: ParityError" in md and "| torchformer |" in md


def test_call_order_lets_every_path_follow_every_other():
    """A rotation kept each path behind the same neighbour (a spinning neighbour slowed one
    path only); the seeded shuffle puts every path behind every other one, about equally."""
    from collections import Counter

    from torchformer.bench.deploy import call_order

    paths = ["a", "b", "c", "d"]
    orders = [call_order(paths, 0, r, i) for r in range(3) for i in range(200)]
    assert all(sorted(o) == paths for o in orders)
    assert call_order(paths, 0, 1, 5) == call_order(paths, 0, 1, 5)  # seeded
    assert len({tuple(o) for o in orders}) > 12  # not a handful of rotations
    follows = Counter((o[k - 1], o[k]) for o in orders for k in range(1, len(o)))
    pairs = [(x, y) for x in paths for y in paths if x != y]
    assert set(follows) == set(pairs)
    expected = sum(follows.values()) / len(pairs)
    assert all(0.7 * expected < follows[p] < 1.3 * expected for p in pairs)


def test_bench_torchao_paths_quantize_our_model_or_say_why_not(
    tiny_model_dir, tiny_export_dir, val_file, tmp_path
):
    onnx_dir = tmp_path / "onnx"
    shutil.copytree(tiny_export_dir, onnx_dir)
    out = tmp_path / "bench"
    paths = ["torchao-int8", "torchao-int8-weight-only"]
    args = ["bench", str(tiny_model_dir.parent), "--texts-file", str(val_file), "--texts", "24",
            "--batch-size", "8", "--latency-texts", "2", "--rounds", "1", "--threads", "1",
            "--onnx-dir", str(onnx_dir), "--out", str(out), "--paths", ",".join(paths)]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "deploy.json").read_text())
    try:
        import torchao  # noqa: F401
    except ImportError:
        assert set(report["skipped"]) == set(paths)
        assert all("torchao is not installed" in why for why in report["skipped"].values())
        return
    assert report["skipped"] == {}
    spread = report["reference_logit_range"]
    for name in paths:
        result = report["results"][name]
        assert "torchao" in result["details"]["quantization"]
        # quantized (not a copy of fp32) and close to it
        assert result["agreement"] >= 90 and 0 < result["max_logit_diff"] < 0.1 * spread, name
