"""The classification task end to end on tiny models and data (tier 1) and on real IMDB (tier 3)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch
import yaml

import torchformer
from torchformer.config import ConfigError, load_config
from torchformer.data.records import DataError
from torchformer.tasks.classify import ClassifyConfig, train
from torchformer.tasks.classify_data import load_splits
from torchformer.text.tokenizer import Tokenizer
from torchformer.train.checkpoint import load_checkpoint
from torchformer.train.run_dir import RunDirError

POS = ["great", "wonderful", "superb", "moving", "brilliant", "funny", "loved", "beautiful"]
NEG = ["awful", "boring", "dull", "terrible", "worst", "bad", "hated", "tedious"]
FILLER = ["the", "film", "movie", "plot", "actors", "was", "really", "and", "story", "a", "this"]


def toy_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = rng.choices(FILLER, k=rng.randint(3, 12)) + rng.choices(
            POS if label == "pos" else NEG, k=2
        )
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def tiny_config(tmp_path: Path, **overrides) -> ClassifyConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    train_csv = write_csv(tmp_path / "train.csv", toy_rows(96, 0))
    test_csv = write_csv(tmp_path / "test.csv", toy_rows(32, 1))
    base = {
        "run_dir": str(tmp_path / "run"),
        "report": False,
        "data.source": str(train_csv),
        "data.test_file": str(test_csv),
        "data.val_fraction": 0.25,
        "data.max_length": 32,
        "model.base": "scratch",
        "model.preset": "tiny",
        "model.pooling": "mean",
        "tokenizer.vocab_size": 200,
        "tokenizer.min_frequency": 1,
        "train.epochs": 3,
        "train.batch_size": 8,
        "train.lr": 3e-3,
        "train.warmup_ratio": 0.1,
        "train.progress": False,
        "train.patience": 10,
    }
    base.update(overrides)
    return load_config(ClassifyConfig, None, base)


def newest_checkpoint(run_dir: Path) -> dict:
    return load_checkpoint(sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1])


def test_tiny_run_learns_and_writes_the_run_directory(tmp_path):
    config = tiny_config(tmp_path, **{"train.epochs": 8})
    run = train(config)
    for name in (
        "config.yaml",
        "manifest.json",
        "metrics.jsonl",
        "best/config.json",
        "best/model.safetensors",
        "best/tokenizer.json",
        "best/torchformer.json",
        "eval/test/metrics.json",
        "eval/test/errors.jsonl",
    ):
        assert (run / name).is_file(), name
    test_metrics = json.loads((run / "eval/test/metrics.json").read_text())
    assert test_metrics["accuracy"] >= 0.9  # the toy task is separable by keywords
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"train", "val", "best_test"} <= {x["split"] for x in lines}
    clf = torchformer.load(run)
    preds = clf.predict(["a wonderful superb film", "an awful boring movie"])
    assert [p["label"] for p in preds] == ["pos", "neg"]
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 for p in preds)
    # The same split, drawn from the config, scored again outside the run.
    again = torchformer.api.evaluate_on_config(clf, config, "test")
    assert again["num_examples"] == 32
    assert again["accuracy"] == pytest.approx(test_metrics["accuracy"], abs=1 / 32)
    with pytest.raises(ValueError, match="split 'dev': expected 'train', 'val' or 'test'"):
        torchformer.api.evaluate_on_config(clf, config, "dev")


def test_resume_gives_the_same_weights_as_an_unbroken_run(tmp_path):
    # Both runs share one tokenizer file: WordPiece training breaks frequency ties
    # differently from one process to the next.
    tok = Tokenizer.train_wordpiece(
        [r["text"] for r in toy_rows(96, 0)], vocab_size=200, min_frequency=1
    )
    tok.save(tmp_path / "tokenizer.json")
    overrides = {
        "train.checkpoint_every": 1,
        "train.eval_every": 4,
        "model.classifier_dropout": 0.3,
        "tokenizer.path": str(tmp_path / "tokenizer.json"),
    }
    unbroken = train(tiny_config(tmp_path / "a", **overrides))
    cfg = tiny_config(tmp_path / "b", **overrides)
    train(cfg, stop_at_step=6)  # mid-epoch, between evaluations
    assert not (Path(cfg.run_dir) / "eval").exists()
    resumed = train(cfg, resume=True)
    a, b = newest_checkpoint(unbroken), newest_checkpoint(resumed)
    assert a["step"] == b["step"] > 6
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=1e-6, msg=key)
    assert json.loads((resumed / "eval/test/metrics.json").read_text()) == json.loads(
        (unbroken / "eval/test/metrics.json").read_text()
    )


def test_predict_rejects_bad_input(tmp_path):
    clf = torchformer.load(train(tiny_config(tmp_path, **{"train.epochs": 1})))
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        clf.predict(["fine", "  "])
    with pytest.raises(TypeError, match=r"texts\[0\] is int"):
        clf.predict([3])


def test_unknown_label_in_test_file_names_file_and_record(tmp_path):
    cfg = tiny_config(tmp_path)
    rows = toy_rows(8, 3)
    rows[5]["label"] = "neutral"
    write_csv(Path(cfg.data.test_file), rows)
    with pytest.raises(DataError) as err:
        train(cfg)
    assert "test.csv:7" in str(err.value) and "neutral" in str(err.value)  # rows[5]: line 7
    assert err.value.line == 7 and err.value.field == "label"


def test_missing_column_is_named(tmp_path):
    cfg = tiny_config(tmp_path, **{"data.text_column": "review"})
    with pytest.raises(DataError, match="review"):
        train(cfg)


def test_unknown_config_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(ClassifyConfig, path)
    assert "train.lrr" in str(err.value) and "bad.yaml" in str(err.value)


def test_shipped_configs_load_through_the_task_registry():
    from torchformer.tasks.registry import TASKS, task_module

    shipped = sorted((Path(torchformer.__file__).parent / "configs").glob("*.yaml"))
    assert shipped, "no shipped configs found"
    seen = set()
    for path in shipped:
        name = yaml.safe_load(path.read_text())["task"]
        cfg = load_config(task_module(name).CONFIG, path)
        assert cfg.task == name and cfg.run_dir and cfg.train.epochs >= 1
        seen.add(name)
    assert seen == set(TASKS)  # every registered task ships a config


@pytest.mark.data
def test_real_imdb_slice_from_archive_to_predict(tmp_path, imdb_labeled):
    """The whole path on real data: archive -> reader -> tokenizer -> MiniLM -> train -> best/ -> predict()."""
    cfg = load_config(
        ClassifyConfig,
        None,
        {
            "run_dir": str(tmp_path / "imdb"),
            "report": False,
            "data.train_samples": 32,
            "data.val_samples": 16,
            "data.test_samples": 16,
            "data.max_length": 48,
            "train.epochs": 1,
            "train.batch_size": 8,
            "train.progress": False,
        },
    )
    run = train(cfg)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["extra"]["sizes"] == {"train": 32, "val": 16, "test": 16}
    clf = torchformer.load(run)
    assert clf.labels == ["neg", "pos"]
    # predict() (raw text in: cleaning, truncation, tokenizer from best/) agrees with the
    # evaluation of the same 16 test reviews done inside training (encoded splits).
    test = load_splits(cfg.data, seed=cfg.train.seed).test
    preds = clf.predict([r.text for r in test])
    accuracy = sum(p["label"] == str(r.label) for p, r in zip(preds, test)) / len(test)
    evaluated = json.loads((run / "eval/test/metrics.json").read_text())
    assert evaluated["num_examples"] == 16 and accuracy == pytest.approx(evaluated["accuracy"])


def test_resume_keeps_the_runs_trained_tokenizer(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.checkpoint_every": 2})
    train(cfg, stop_at_step=2)
    saved = Path(cfg.run_dir) / "tokenizer.json"
    before = (saved.read_bytes(), saved.stat().st_mtime_ns)
    train(cfg, resume=True)
    assert (saved.read_bytes(), saved.stat().st_mtime_ns) == before  # loaded, not retrained


def test_a_fresh_run_never_writes_into_an_earlier_run(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.epochs": 1})
    run = train(cfg)
    best = (run / "best" / "model.safetensors").read_bytes()
    with pytest.raises(RunDirError, match="--resume"):
        train(cfg)
    assert (run / "best" / "model.safetensors").read_bytes() == best  # nothing lost
    assert train(cfg, overwrite=True) == run  # asked for: replaced
    assert len(list((run / "checkpoints").glob("step-*.pt"))) == 1


def test_the_last_step_is_always_evaluated(tmp_path):
    # 72 training rows / batch 8 = 9 steps per epoch, 27 in all; evaluations every 10 steps
    # would leave steps 21-27 unseen by model selection.
    run = train(tiny_config(tmp_path, **{"train.eval_every": 10}))
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["split"] == "val"] == [10, 20, 27]


def test_scratch_tokenizer_learns_from_cleaned_text(tmp_path):
    cfg = tiny_config(tmp_path, **{"data.cleaning": ["remove_urls", "normalize_whitespace"]})
    rows = [dict(r, text=f"{r['text']} http://spam.example.com/zzqx") for r in toy_rows(96, 0)]
    write_csv(Path(cfg.data.source), rows)
    run = train(cfg)
    vocab = Tokenizer.from_file(run / "tokenizer.json").backend.get_vocab()
    assert "film" in vocab and not {"http", "zzqx", "spam"} & set(vocab)


def test_resume_with_changed_settings_is_refused(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.checkpoint_every": 2})
    train(cfg, stop_at_step=2)
    changed = tiny_config(tmp_path, **{"train.checkpoint_every": 2, "train.lr": 1e-4})
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.003 -> 0\.0001"):
        train(changed, resume=True)


def files_of(run: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``run`` (hidden ones too): its bytes and modification time."""
    return {
        str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(run.rglob("*"))
        if p.is_file()
    }


def test_overwrite_keeps_the_earlier_run_until_the_new_one_has_read_its_data(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.epochs": 1})
    run = train(cfg)
    before = files_of(run)
    bad = write_csv(tmp_path / "bad.csv", [{"review": "a fine film", "label": "pos"}])
    bad_cfg = tiny_config(tmp_path, **{"train.epochs": 1, "data.source": str(bad)})
    with pytest.raises(DataError, match=r"bad\.csv:1: field 'text': missing column"):
        train(bad_cfg, overwrite=True)
    assert files_of(run) == before  # the earlier run, whole: nothing lost, nothing left over
    cfg.train.lr = 1e-3
    assert train(cfg, overwrite=True) == run  # a good config does replace it
    assert "lr: 0.001" in (run / "config.yaml").read_text()
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # the old one gone


@pytest.mark.parametrize(
    "overrides",
    [
        {
            "model.long_document": "chunks",
            "model.chunk_length": 6,
            "model.chunk_stride": 4,
            "model.chunk_pooling": "attention",
        },
        {
            "model.attention": "sliding_window",
            "model.attention_window": 3,
            "model.max_positions": 256,
        },
    ],
    ids=["chunk_and_pool", "sliding_window"],
)
def test_long_document_strategies_train_evaluate_and_predict_the_same_way(tmp_path, overrides):
    run = train(tiny_config(tmp_path, **{"train.epochs": 8, "report": True, **overrides}))
    clf = torchformer.load(run)
    config = clf.model.config
    from torchformer.viz.attention import attention_for_text
    from torchformer.viz.report import write_report

    assert write_report(run).is_file()  # the report's attention views read the text too
    view = attention_for_text(clf, " ".join(["wonderful film"] * 10))
    assert view.attentions.shape[-1] == len(view.tokens)
    if "model.long_document" in overrides:
        assert (config.long_document, config.chunk_length, config.chunk_pooling) == (
            "chunks",
            6,
            "attention",
        )
        assert clf.model.chunk_scorer is not None
    else:
        assert (config.attention, config.attention_window, config.max_len) == (
            "sliding_window",
            3,
            256,
        )
    test_metrics = json.loads((run / "eval/test/metrics.json").read_text())
    assert test_metrics["accuracy"] >= 0.85
    # predict() reads a text as training and evaluation did: the run's own test errors
    # are the examples predict() gets wrong too
    errors = [json.loads(x) for x in (run / "eval/test/errors.jsonl").read_text().splitlines()]
    rows = toy_rows(32, 1)
    wrong = [
        r["text"]
        for r, p in zip(rows, clf.predict([r["text"] for r in rows]))
        if p["label"] != r["label"]
    ]
    assert sorted(wrong) == sorted(e["text"] for e in errors)


def test_a_truncating_model_refuses_a_max_length_beyond_its_positions(tmp_path):
    # (a scratch encoder is built with as many positions as data.max_length asks for)
    overrides = {"data.max_length": 600, "model.base": "minilm"}
    with pytest.raises(ValueError, match="exceeds the model's 512 positions"):
        train(tiny_config(tmp_path, **overrides))
    assert not (tmp_path / "run" / "best").exists()


def test_a_token_budget_bounds_the_padded_size_of_every_batch(tmp_path):
    from torchformer.data.batching import pack_by_tokens

    lengths = [5, 50, 7, 30, 12, 48, 3, 9]
    order = sorted(range(8), key=lengths.__getitem__)
    batches = pack_by_tokens(order, lengths, max_batch_size=3, max_tokens=60)
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert all(len(b) <= 3 and len(b) * max(lengths[i] for i in b) <= 60 for b in batches)
    assert pack_by_tokens(order, lengths, max_batch_size=3, max_tokens=None) == [
        order[:3],
        order[3:6],
        order[6:],
    ]
    run = train(tiny_config(tmp_path, **{"train.max_tokens": 64, "train.epochs": 4}))
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    summary = next(x for x in steps if x["split"] == "summary")
    assert summary["total_steps"] > 4 * 72 // 8  # smaller batches than batch_size 8: more steps
    assert json.loads((run / "eval/test/metrics.json").read_text())["accuracy"] >= 0.85
