"""The RNN-vs-Transformer training-throughput bench on a few Multi30k batches."""

from __future__ import annotations

import json

import pytest

from torchformer.bench import seq2seq_throughput
from torchformer.data.parallel import find_multi30k
from torchformer.data.paths import data_dir

pytestmark = pytest.mark.data


def test_bench_times_both_models_on_the_same_batches(tmp_path) -> None:
    try:
        folder = find_multi30k(data_dir())
    except FileNotFoundError as error:
        pytest.skip(f"Multi30k absent (set TORCHFORMER_DATA): {error}")
    out = tmp_path / "bench.json"
    result = seq2seq_throughput.main(["--data-dir", str(folder), "--samples", "300", "--steps", "2",
                                      "--warmup", "1", "--max-tokens", "300", "--threads", "1",
                                      "--json", str(out)])  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["timed_batches"] == 2 and result["target_tokens"] > 0
    per_s = result["tokens_per_s"]
    for name in ("rnn", "transformer"):
        assert per_s[name] == pytest.approx(result["target_tokens"] / result["seconds"][name])
    assert result["rnn_vs_transformer_tokens_per_s_ratio"] == pytest.approx(
        per_s["rnn"] / per_s["transformer"]
    )
    assert set(result["parameters"]) == {"rnn", "transformer"}
