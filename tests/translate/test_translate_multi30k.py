"""The translation task on the real Multi30k files (tier 3): gz files -> tokenizers ->
a few training steps -> best/ -> ``translate()`` -> a sacreBLEU score with its signature."""

from __future__ import annotations

import json

import pytest
from tiny_parallel import tiny_config

import torchformer
from torchformer.data.parallel import find_multi30k
from torchformer.data.paths import data_dir
from torchformer.tasks.translate import train

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def multi30k_dir():
    try:
        return find_multi30k(data_dir())
    except FileNotFoundError as error:
        pytest.skip(f"Multi30k absent (set TORCHFORMER_DATA): {error}")


def test_a_few_steps_on_multi30k_end_to_end(tmp_path, multi30k_dir) -> None:
    config = tiny_config(tmp_path, **{
        "data.source": "multi30k", "data.data_dir": str(multi30k_dir), "data.max_length": 64,
        "data.train_samples": 300, "data.val_samples": 20, "data.test_samples": 20,
        "tokenizer.vocab_size": 600, "tokenizer.min_frequency": 2,
        "train.max_steps": 8, "train.max_tokens": 1500, "train.schedule": "noam", "train.lr": 1.0,
        "train.warmup_steps": 4, "eval.beam_size": 2, "eval.max_len_offset": 5,
    })  # fmt: skip
    run = train(config)
    manifest = json.loads((run / "manifest.json").read_text())
    sizes, dropped = manifest["extra"]["sizes"], manifest["extra"]["dropped_long"]
    assert (sizes["val"], sizes["test"]) == (20, 20)
    assert sizes["train"] + dropped["train"] == 300 and sizes["train"] > 250  # a few > 64 tokens
    train_losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                    if r["split"] == "train"]  # fmt: skip
    assert train_losses[-1] < train_losses[0]  # it learns something in 8 steps
    scores = json.loads((run / "eval/test/scores.json").read_text())
    assert scores["num_sentences"] == 20
    assert 0.0 <= scores["beam2"]["bleu"] <= 100.0
    assert "tok:13a" in scores["beam2"]["bleu_signature"]
    hyps = (run / "eval/test/hypotheses.beam2.txt").read_text().splitlines()
    assert len(hyps) == 20
    translator = torchformer.load(run)
    out = translator.translate(
        ["Ein Hund läuft im Park.", "Zwei Männer spielen Fußball."], beam_size=2
    )
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
