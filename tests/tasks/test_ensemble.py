"""Ensembles of classifiers (probability averaging) and checkpoint averaging.

Members are tiny classifiers trained a few steps from different seeds, each with its own
tokenizer and max length; the ensemble is built, loaded, evaluated and served through the
public paths (``torchformer ensemble``, ``torchformer.load``, ``torchformer evaluate``,
the HTTP app).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ensemble_fixtures import (
    TEXTS,
    member_on_own_tokenizer,
    member_on_tokenizer,
    save_run,
    shared_tokenizer,
    toy_records,
    write_jsonl,
)
from fastapi.testclient import TestClient

import torchformer
from torchformer.api import EnsembleClassifier, task_config, train
from torchformer.cli import main
from torchformer.serve.app import create_app, load_predictor
from torchformer.tasks.ensemble import write_ensemble
from torchformer.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def member_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two runs (their best/): different seeds, tokenizers and max lengths."""
    root = tmp_path_factory.mktemp("members")
    a = save_run(member_on_own_tokenizer(seed=0, max_length=64), root / "run-a")
    b = save_run(member_on_own_tokenizer(seed=1, max_length=24), root / "run-b")
    return a, b


@pytest.fixture(scope="module")
def ensemble_dir(member_runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ens") / "ensemble"
    assert main(["ensemble", str(member_runs[0]), str(member_runs[1]), "--out", str(out)]) == 0
    return out


def test_probabilities_are_the_mean_of_the_members(member_runs, ensemble_dir):
    ens = torchformer.load(ensemble_dir)
    assert isinstance(ens, EnsembleClassifier) and ens.labels == ["neg", "pos"]
    a, b = (torchformer.load(run) for run in member_runs)
    assert a.tokenizer.backend.to_str() != b.tokenizer.backend.to_str()  # own tokenizers
    assert (a.settings.max_length, b.settings.max_length) == (64, 24)
    pa, pb = a.predict_proba(TEXTS), b.predict_proba(TEXTS)
    assert (pa - pb).abs().max() > 1e-3  # the members disagree: the mean is not either one
    torch.testing.assert_close(ens.predict_proba(TEXTS), (pa + pb) / 2, rtol=0, atol=1e-6)
    expected = ((pa + pb) / 2).argmax(-1).tolist()
    predictions = ens.predict(TEXTS)
    assert [p["label"] for p in predictions] == [ens.labels[i] for i in expected]
    assert predictions[0]["confidence"] == pytest.approx(max((pa[0] + pb[0]).tolist()) / 2)
    # Members are stored relative to the ensemble directory, as their best/ directories.
    spec = json.loads((ensemble_dir / "ensemble.json").read_text())
    assert spec["task"] == "classification" and spec["weights"] is None
    assert all(not Path(m).is_absolute() and m.endswith("best") for m in spec["members"])
    assert [(ensemble_dir / m).resolve() for m in spec["members"]] == [
        (run / "best").resolve() for run in member_runs
    ]


def test_weights_give_the_weighted_mean(member_runs, tmp_path):
    out = tmp_path / "weighted"
    runs = [str(r) for r in member_runs]
    assert main(["ensemble", *runs, "--out", str(out), "--weights", "1,3"]) == 0
    ens = torchformer.load(out)
    pa, pb = (torchformer.load(r).predict_proba(TEXTS) for r in member_runs)
    torch.testing.assert_close(ens.predict_proba(TEXTS), 0.25 * pa + 0.75 * pb, rtol=0, atol=1e-6)
    assert main(["ensemble", *runs, "--out", str(tmp_path / "w2"), "--weights", "1"]) == 2


def test_members_with_labels_in_another_order_are_aligned_by_name(member_runs, tmp_path):
    """A member whose head lists ("pos", "neg") contributes its columns by label name."""
    b = torchformer.load(member_runs[1])
    swapped = torchformer.load(member_runs[1])
    head = swapped.model.classifier
    with torch.no_grad():
        head.weight.copy_(head.weight.flip(0))
        head.bias.copy_(head.bias.flip(0))
    swapped.model.config.id2label = {0: "pos", 1: "neg"}
    swapped.labels = ["pos", "neg"]
    a = torchformer.load(member_runs[0])
    expected = EnsembleClassifier([a, b]).predict_proba(TEXTS)
    torch.testing.assert_close(
        EnsembleClassifier([a, swapped]).predict_proba(TEXTS), expected, rtol=0, atol=1e-6
    )


def test_mismatched_labels_are_refused_naming_the_member(member_runs, tmp_path, capsys):
    odd = member_on_tokenizer(shared_tokenizer(), seed=3, steps=1, labels=("neg", "pos", "meh"))
    odd_run = save_run(odd, tmp_path / "run-odd")
    out = tmp_path / "bad"
    code = main(["ensemble", str(member_runs[0]), str(odd_run), "--out", str(out)])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert str(odd_run) in err and "'meh'" in err and "member" in err
    with pytest.raises(ValueError, match=r"run-odd.*only in .*run-odd.*\['meh'\]"):
        write_ensemble(tmp_path / "bad2", [member_runs[0], odd_run])


def test_evaluate_through_the_cli_scores_the_ensemble(ensemble_dir, tmp_path, capsys):
    records = [*toy_records(60, seed=11), ("<br /> superb film", "pos")]
    data = write_jsonl(records, tmp_path / "labelled.jsonl")
    assert main(["evaluate", str(ensemble_dir), "--data", str(data), "--name", "ens-eval"]) == 0
    # An ensemble directory keeps its evaluations (others may share its parent).
    metrics = json.loads((ensemble_dir / "eval" / "ens-eval" / "metrics.json").read_text())
    ens = torchformer.load(ensemble_dir)
    texts = [t for t, _ in records]
    predicted = [p["label"] for p in ens.predict(texts)]
    accuracy = sum(p == y for p, (_, y) in zip(predicted, records)) / len(records)
    assert metrics["num_examples"] == len(records)
    assert metrics["accuracy"] == pytest.approx(accuracy)
    # Each member scored in the same pass equals that member evaluated alone.
    assert [m["member"] for m in metrics["members"]] == ens.names
    printed = capsys.readouterr().out
    for member, name, row in zip(ens.members, ens.names, metrics["members"]):
        probs = member.predict_proba(texts)
        labels = torch.tensor([member.labels.index(y) for _, y in records])
        alone = (probs.argmax(-1) == labels).float().mean().item()
        assert row["accuracy"] == pytest.approx(alone)
        nll = -probs.gather(1, labels[:, None]).log().mean().item()
        assert row["loss"] == pytest.approx(nll, rel=1e-5)
        assert f"member {name} (weight 0.500): accuracy {alone:.4f}" in printed
    assert metrics["precision"] == "fp32"
    out = ensemble_dir / "eval" / "ens-bf16"
    assert (
        main(
            [
                "evaluate",
                str(ensemble_dir),
                "--data",
                str(data),
                "--name",
                "ens-bf16",
                "--precision",
                "bf16",
            ]
        )
        == 0
    )
    bf16 = json.loads((out / "metrics.json").read_text())
    assert bf16["precision"] == "bf16" and bf16["num_examples"] == len(records)
    assert bf16["loss"] == pytest.approx(metrics["loss"], abs=0.05)  # bf16 rounding only
    assert bf16["loss"] != pytest.approx(metrics["loss"], rel=1e-7)  # autocast took effect


def test_serve_answers_with_the_ensemble(ensemble_dir):
    ens = torchformer.load(ensemble_dir)
    with TestClient(create_app(load_predictor(ensemble_dir))) as client:
        response = client.post("/predict", json={"texts": TEXTS[:3]})
        assert response.status_code == 200, response.text
        for got, want in zip(response.json()["predictions"], ens.predict(TEXTS[:3])):
            assert got["label"] == want["label"]
            assert got["probabilities"]["pos"] == pytest.approx(want["probabilities"]["pos"])
        only_html = client.post("/predict", json={"texts": ["fine", "<br />"]})
        assert only_html.status_code == 422 and "texts[1]" in only_html.text
        assert client.get("/health").json()["labels"] == ["neg", "pos"]


# ------------------------------------------------------------------- checkpoint averaging
def _tiny_run_config(tmp_path: Path) -> object:
    train_file = write_jsonl(toy_records(96, seed=0), tmp_path / "train.jsonl")
    test_file = write_jsonl(toy_records(32, seed=1), tmp_path / "test.jsonl")
    return task_config(
        "classification",
        None,
        {
            "run_dir": str(tmp_path / "run"),
            "report": False,
            "data.source": str(train_file),
            "data.test_file": str(test_file),
            "data.val_fraction": 0.25,
            "data.max_length": 32,
            "model.base": "scratch",
            "model.preset": "tiny",
            "model.pooling": "mean",
            "tokenizer.vocab_size": 200,
            "tokenizer.min_frequency": 1,
            "train.max_steps": 10,
            "train.eval_every": 2,
            "train.keep_checkpoints": 10,
            "train.batch_size": 8,
            "train.lr": 3e-3,
            "train.progress": False,
            "train.patience": 10,
            "train.metric": "loss",
        },
    )


def test_average_writes_the_mean_of_the_last_checkpoints_up_to_the_best(tmp_path):
    run = train(_tiny_run_config(tmp_path))
    steps = sorted(int(p.name[5:11]) for p in (run / "checkpoints").glob("step-*.pt"))
    newest = load_checkpoint(run / "checkpoints" / f"step-{steps[-1]:06d}.pt")
    best_step = newest["early_stopping"]["best_step"]  # what the loop itself recorded
    window = [s for s in steps if s <= best_step][-3:]
    assert len(window) == 3
    out = tmp_path / "averaged"
    assert main(["ensemble", "--average", str(run), "--last", "3", "--out", str(out)]) == 0
    averaged = torchformer.load(out)
    assert type(averaged).__name__ == "TextClassifier"
    states = [load_checkpoint(run / "checkpoints" / f"step-{s:06d}.pt")["model"] for s in window]
    got = averaged.model.state_dict()
    for name in states[0]:
        mean = sum(state[name].double() for state in states) / len(states)
        torch.testing.assert_close(got[name].double(), mean, rtol=0, atol=1e-6)
    best = torchformer.load(run)
    moved = max((got[k] - v).abs().max().item() for k, v in best.model.state_dict().items())
    assert moved > 1e-4  # not best/ copied
    assert json.loads((out / "averaging.json").read_text())["steps"] == window
    assert averaged.settings == best.settings
    assert averaged.tokenizer.backend.to_str() == best.tokenizer.backend.to_str()
    too_many = ["ensemble", "--average", str(run), "--last", "50", "--out", str(tmp_path / "x")]
    assert main(too_many) == 2 and not (tmp_path / "x").exists()


def test_output_over_a_member_or_foreign_files_is_refused(member_runs, tmp_path):
    a, b = member_runs
    for out in (a, a / "best", a.parent):  # the member, inside it, or around it
        with pytest.raises(ValueError, match="which it is built from"):
            write_ensemble(out, [a, b], overwrite=True)
    assert (a / "best" / "config.json").is_file()  # nothing of the member was touched
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an ensemble or averaged model"):
        write_ensemble(foreign, [a, b], overwrite=True)
    assert (foreign / "todo.txt").read_text() == "mine"
    write_ensemble(tmp_path / "ens", [a, b])
    with pytest.raises(FileExistsError):  # overwrite is off by default
        write_ensemble(tmp_path / "ens", [b, a])
    write_ensemble(tmp_path / "ens", [b, a], overwrite=True)  # an ensemble of ours: replaced
