"""The deployment benchmark: shared fixed inputs, every path measured, report written."""

import json
import shutil

import numpy as np

from torchformer.bench.deploy import fixed_inputs, format_table, summary_lines
from torchformer.cli import main


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
