"""The RNN baseline on the translation task (``model.preset: rnn-*``): the same loop,
tokenizers, batching, decoding, run directory, loading and alignment view as the
Transformer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_parallel import reversal_pairs, tiny_config

import torchformer
from torchformer.cli import main
from torchformer.models.rnn_seq2seq import RNNSeq2Seq
from torchformer.tasks.translate import train
from torchformer.tasks.translator import Translator
from torchformer.viz.attention import attention_for_translation
from torchformer.viz.explain import write_explain

RNN = {"model.preset": "rnn-tiny", "model.norm_first": None, "train.lr": 1e-2}


@pytest.fixture(scope="module")
def rnn_run(tmp_path_factory) -> Path:
    """The tiny RNN trained on the word-reversal pairs (~300 steps)."""
    folder = tmp_path_factory.mktemp("rnn")
    config = tiny_config(folder, **RNN, **{"train.max_steps": 300, "train.eval_every": 100,
                                           "train.average_last": 2, "train.schedule": "constant", "train.metric": "loss",
                                           "train.warmup_steps": 0, "train.optimizer": "adam",
                                           "train.adam_betas": [0.9, 0.999], "train.adam_eps": 1e-8})  # fmt: skip
    return train(config)


def test_rnn_learns_the_task_and_loads_as_a_translator(rnn_run: Path) -> None:
    records = [json.loads(line) for line in (rnn_run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val"]
    assert val[-1]["loss"] < 0.3 * val[0]["loss"]  # it learned
    translator = torchformer.load(rnn_run)
    assert isinstance(translator, Translator) and isinstance(translator.model, RNNSeq2Seq)
    src, tgt = reversal_pairs(64, 0)
    greedy = translator.translate(src, beam_size=1)
    beam = translator.translate(src, beam_size=3)
    assert sum(g == t for g, t in zip(greedy, tgt)) >= 48  # most reversed exactly
    assert sum(b == t for b, t in zip(beam, tgt)) >= 48
    assert translator.translate(src[:8], beam_size=3, use_cache=False) == beam[:8]
    config = json.loads((rnn_run / "best/config.json").read_text())
    assert config["model_type"] == "torchformer-rnn"
    scores = json.loads((rnn_run / "eval/val/scores.json").read_text())
    assert scores["beam3"]["bleu"] > 50


def test_averaged_rnn_checkpoints_are_written_and_scored(rnn_run: Path) -> None:
    assert (rnn_run / "averaged/config.json").is_file()
    assert (rnn_run / "eval/averaged_val/scores.json").is_file()
    averaged = Translator.from_dir(rnn_run / "averaged")
    assert isinstance(averaged.model, RNNSeq2Seq)


def test_alignment_view_of_the_rnn(rnn_run: Path, tmp_path: Path) -> None:
    translator = torchformer.load(rnn_run)
    att = attention_for_translation(translator, "one two three")
    L, H, T, S = att.cross_attentions.shape
    assert (L, H) == (1, 1) and T == len(att.target_tokens) and S == len(att.source_tokens)
    torch.testing.assert_close(att.cross_attentions.sum(-1), torch.ones(1, 1, T))
    page = write_explain(rnn_run, "one two three", tmp_path / "explain.html").read_text()
    assert "Cross-attention alignment" in page and att.translation in page


def test_cli_translates_with_the_rnn(rnn_run: Path, capsys) -> None:
    assert main(["translate", str(rnn_run), "one two three", "--beam-size", "2"]) == 0
    assert capsys.readouterr().out.strip()  # a translation printed


def test_rnn_preset_refuses_transformer_only_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="norm_first"):
        train(tiny_config(tmp_path, **{**RNN, "model.norm_first": True, "train.max_steps": 1}))
    with pytest.raises(ValueError, match=r"unknown 'nope'.*RNN presets: rnn-"):
        train(tiny_config(tmp_path / "b", **{"model.preset": "nope", "train.max_steps": 1}))
