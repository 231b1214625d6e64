"""``torchformer ablate``: a tiny classifier config, 2 variants x 2 seeds (+ the baseline);
the table is recomputed from the runs' own files, and a rerun redoes nothing finished."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml
from deploy_fixtures import toy_records, write_jsonl  # tests/export, on the path (conftest)

import torchformer
from torchformer import api
from torchformer.bench.ablate import Variant, parse_variant, reading, run_ablation
from torchformer.cli import main

VARIANTS = ["frozen=--model.freeze_encoder true", "fastlr=--train.lr 1e-2 --train.warmup_ratio 0"]


def tiny_config(directory: Path) -> Path:
    train_file = write_jsonl(toy_records(96, seed=0), directory / "train.jsonl")
    test_file = write_jsonl(toy_records(40, seed=1), directory / "test.jsonl")
    config = {
        "task": "classification",
        "run_dir": str(directory / "unused"),
        "report": False,
        "data": {
            "source": str(train_file),
            "test_file": str(test_file),
            "val_fraction": 0.25,
            "max_length": 32,
        },
        "model": {"base": "scratch", "preset": "tiny", "pooling": "mean"},
        "tokenizer": {"vocab_size": 200, "min_frequency": 1},
        "train": {
            "epochs": 4,
            "max_steps": 24,
            "batch_size": 8,
            "lr": 3e-3,
            "progress": False,
            "seed": 7,
            "metric": "accuracy",
        },
    }
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ablate")
    config, out = tiny_config(directory), directory / "out"
    args = ["ablate", str(config), "--variants", *VARIANTS, "--seeds", "2", "--out", str(out)]
    assert main([*args, "--train.eval_every", "6"]) == 0  # a common override: every run
    return config, out, args


def test_table_aggregates_the_runs_own_metrics(ablation):
    _, out, _ = ablation
    report = json.loads((out / "ablation.json").read_text())
    assert report["seeds"] == [7, 8] and report["common_overrides"] == ["--train.eval_every", "6"]
    rows = {row["variant"]: row for row in report["variants"]}
    assert list(rows) == ["baseline", "frozen", "fastlr"]
    for name, row in rows.items():
        metrics = []
        for seed in (7, 8):
            run = out / name / f"seed-{seed}"
            saved = yaml.safe_load((run / "config.yaml").read_text())
            assert saved["train"]["seed"] == seed and saved["train"]["eval_every"] == 6
            metrics.append(json.loads((run / "eval" / "test" / "metrics.json").read_text()))
        for metric in ("accuracy", "macro_f1"):
            values = [m[metric] for m in metrics]
            assert row[metric]["mean"] == pytest.approx(statistics.mean(values))
            assert row[metric]["std"] == pytest.approx(statistics.stdev(values))
    assert rows["frozen"]["overrides"] == ["--model.freeze_encoder", "true"]
    assert yaml.safe_load((out / "frozen/seed-7/config.yaml").read_text())["model"][
        "freeze_encoder"
    ]
    base = rows["baseline"]
    for name in ("frozen", "fastlr"):
        for metric in ("accuracy", "macro_f1"):
            mean, std = rows[name][metric]["mean"], rows[name][metric]["std"]
            diff, noise = mean - base[metric]["mean"], max(std, base[metric]["std"])
            expected = "within noise" if abs(diff) <= noise else ("gain" if diff > 0 else "loss")
            assert rows[name]["reading"][metric] == expected
    # Trainable parameters: all of the model, or (frozen encoder) only the head. The
    # vocabulary (trained on each seed's split) and so the count differ between seeds.
    for record in report["runs"]:
        model = torchformer.load(record["run_dir"]).model
        every = sum(p.numel() for p in model.parameters())
        head = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("encoder."))
        frozen = record["variant"] == "frozen"
        assert record["trainable_parameters"] == (head if frozen else every)
        assert head < every
    assert rows["frozen"]["trainable_parameters"] == 66  # 32 x 2 + 2, whatever the vocabulary
    markdown = (out / "ablation.md").read_text()
    acc = rows["frozen"]["accuracy"]
    assert (
        f"| frozen | `--model.freeze_encoder true` | 2 | {acc['mean']:.4f} ± {acc['std']:.4f}"
        in (markdown)
    )


def test_rerun_skips_finished_runs_and_redoes_an_unfinished_one(ablation, monkeypatch):
    _, out, args = ablation
    before = json.loads((out / "ablation.json").read_text())
    calls = []
    real_train = api.train

    def counting_train(cfg, **options):
        calls.append((cfg.run_dir, options))
        return real_train(cfg, **options)

    monkeypatch.setattr(api, "train", counting_train)
    assert main([*args, "--train.eval_every", "6"]) == 0
    assert calls == []  # every (variant, seed) was finished
    after = json.loads((out / "ablation.json").read_text())
    assert after["variants"] == before["variants"]
    (out / "fastlr" / "seed-8" / "ablation_run.json").unlink()  # as if killed before its record
    assert main([*args, "--train.eval_every", "6"]) == 0
    assert calls == [(str(out / "fastlr" / "seed-8"), {"resume": True})]
    again = json.loads((out / "ablation.json").read_text())
    assert again["variants"][2]["accuracy"] == pytest.approx(before["variants"][2]["accuracy"])


def test_a_finished_run_with_other_overrides_is_refused(ablation):
    config, out, _ = ablation
    changed = [Variant("frozen", ["--train.lr", "1e-4"])]
    with pytest.raises(ValueError, match=r"frozen/seed-7.*--model\.freeze_encoder"):
        run_ablation(
            config, changed, seeds=2, out_dir=out, common=["--train.eval_every", "6"], log=str
        )


def test_reading_and_variant_parsing():
    assert reading(0.80, 0.01, 0.78, 0.03) == "within noise"  # |0.02| <= 0.03
    assert reading(0.85, 0.01, 0.78, 0.03) == "gain"
    assert reading(0.70, 0.05, 0.78, 0.01) == "loss"
    assert reading(0.85, None, 0.78, 0.01) == "no estimate (1 seed)"
    v = parse_variant("wide=--model.preset bert-mini --train.lr 1e-3")
    assert (v.name, v.overrides) == ("wide", ["--model.preset", "bert-mini", "--train.lr", "1e-3"])
    for bad in ("nolist", "baseline=--train.lr 1", "a/b=--train.lr 1", "x=train.lr 1", "y="):
        with pytest.raises(ValueError):
            parse_variant(bad)


def test_a_variant_the_task_cannot_run_is_refused_before_any_run(tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a run started before every variant was checked")

    monkeypatch.setattr(api, "train", no_training)
    bad = Variant("both", ["--train.rdrop_alpha", "1.0", "--train.adversarial", "fgm"])
    with pytest.raises(ValueError, match=r"rdrop_alpha and train\.adversarial"):
        run_ablation(
            tiny_config(tmp_path), [Variant("ok", []), bad], seeds=1, out_dir=tmp_path / "a"
        )


def test_evaluate_on_config_reproduces_a_runs_own_test_metrics(ablation):
    """The split a config describes, scored through the public API, is the split the run
    was tested on: same accuracy and loss as its own eval/test."""
    _, out, _ = ablation
    run = out / "frozen" / "seed-8"
    cfg = api.task_config("classification", run / "config.yaml")
    got = api.evaluate_on_config(api.load(run), cfg, "test")
    own = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert got["num_examples"] == own["num_examples"] == 40
    assert got["accuracy"] == pytest.approx(own["accuracy"])
    assert got["loss"] == pytest.approx(own["loss"], rel=1e-4)
    with pytest.raises(ValueError, match="split 'dev'"):
        api.evaluate_on_config(api.load(run), cfg, "dev")


def test_ensemble_row_is_the_probability_average_of_the_seed_runs(ablation, monkeypatch):
    config, out, args = ablation
    before = json.loads((out / "ablation.json").read_text())
    monkeypatch.setattr(api, "train", lambda *a, **k: pytest.fail("nothing is to be retrained"))
    assert main([*args, "--train.eval_every", "6", "--ensemble", "baseline"]) == 0
    report = json.loads((out / "ablation.json").read_text())
    rows = {row["variant"]: row for row in report["variants"]}
    assert list(rows) == ["baseline", "frozen", "fastlr", "baseline-ensemble"]
    for name in ("baseline", "frozen", "fastlr"):  # the single runs' rows are unchanged
        assert rows[name]["accuracy"] == before["variants"][list(rows).index(name)]["accuracy"]

    # By hand: the two baseline runs' probabilities averaged, on the test file.
    test = [json.loads(line) for line in (config.parent / "test.jsonl").read_text().splitlines()]
    members = [torchformer.load(out / "baseline" / f"seed-{s}") for s in (7, 8)]
    texts, labels = [r["text"] for r in test], [str(r["label"]) for r in test]
    probs = (
        sum(
            m.predict_proba(texts)[:, [m.labels.index(c) for c in members[0].labels]]
            for m in members
        )
        / 2
    )
    predicted = [members[0].labels[i] for i in probs.argmax(-1).tolist()]
    expected = sum(p == y for p, y in zip(predicted, labels)) / len(labels)
    ens = rows["baseline-ensemble"]
    assert ens["accuracy"]["mean"] == pytest.approx(expected)
    for record in (r for r in report["runs"] if r["variant"] == "baseline-ensemble"):
        alone = [
            sum(pred["label"] == y for pred, y in zip(m.predict(texts), labels)) / len(labels)
            for m in members
        ]
        got = [m["accuracy"] for m in record["members_test"]]
        assert got == pytest.approx(alone)
    assert ens["accuracy"]["std"] == pytest.approx(0.0)  # one test file: every seed's sample
    assert ens["trainable_parameters"] == sum(
        r["trainable_parameters"] for r in report["runs"] if r["variant"] == "baseline"
    )
    # Paired differences: per seed, this row minus the baseline run of that seed.
    base = {r["seed"]: r["test"]["accuracy"] for r in report["runs"] if r["variant"] == "baseline"}
    for name in ("frozen", "baseline-ensemble"):
        diffs = [
            r["test"]["accuracy"] - base[r["seed"]] for r in report["runs"] if r["variant"] == name
        ]
        assert len(diffs) == 2
        paired = rows[name]["paired_difference"]["accuracy"]
        assert paired["mean"] == pytest.approx(statistics.mean(diffs))
        assert paired["std"] == pytest.approx(statistics.stdev(diffs))
    assert "| baseline-ensemble |" in (out / "ablation.md").read_text()
    # A second call scores nothing again (the record is kept) and gives the same row.
    monkeypatch.setattr(api, "evaluate_on_config", lambda *a, **k: pytest.fail("rescored"))
    assert main([*args, "--train.eval_every", "6", "--ensemble", "baseline"]) == 0
    again = json.loads((out / "ablation.json").read_text())["variants"][-1]
    assert again["accuracy"] == ens["accuracy"]
    with pytest.raises(ValueError, match=r"--ensemble.*nosuch"):
        run_ablation(config, [], seeds=2, out_dir=out, ensembles=["nosuch"], log=str)
