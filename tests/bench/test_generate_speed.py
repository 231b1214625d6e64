"""The generation-speed benchmark runs end to end on a tiny GPT-2 (its numbers are not checked)."""

import json

import pytest
import torch

from torchformer.bench.generate_speed import main

transformers = pytest.importorskip("transformers")


def test_benchmark_reports_every_path_and_checks_their_outputs(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=50, n_positions=64, initializer_range=0.3
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    out = tmp_path / "speed.json"
    summary = main(
        [
            "--model",
            str(tmp_path / "gpt2"),
            "--batch-sizes",
            "1",
            "3",
            "--new-tokens",
            "6",
            "--prompt-len",
            "5",
            "--repeats",
            "2",
            "--threads",
            "1",
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == summary
    for key in ("b1", "b3"):
        r = summary["results"][key]
        assert set(r["tokens_per_s"]) == {"ours", "transformers", "ours_no_cache"}
        assert all(len(v) == 2 for v in r["seconds"].values())
        assert r["cached_equals_uncached"] is True
        assert r["tokens_equal_to_transformers"] == 1.0
        assert r["ratio_vs_transformers"] == pytest.approx(
            r["tokens_per_s"]["ours"] / r["tokens_per_s"]["transformers"]
        )
