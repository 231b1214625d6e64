"""The ensemble directory's file and its members: relative member paths (the ensemble moves
with its members), malformed ``ensemble.json`` files, weights, member checks, the
combined cleaning, and the checkpoint-averaging helpers (best step, checkpoint files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from ensemble_fixtures import TEXTS, member_on_tokenizer, save_run, shared_tokenizer

import torchformer
from torchformer.api import EnsembleClassifier
from torchformer.tasks.classifier import InferenceSettings, TextClassifier
from torchformer.tasks.ensemble import (
    average_run,
    best_step_of,
    checkpoint_paths,
    member_model_dir,
    read_ensemble,
    write_ensemble,
)


@pytest.fixture(scope="module")
def members_root(tmp_path_factory) -> Path:
    """``<root>/runs/run-a`` and ``run-b``: two tiny classifiers on one tokenizer."""
    root = tmp_path_factory.mktemp("tree")
    tokenizer = shared_tokenizer()
    for name, seed in (("run-a", 0), ("run-b", 1)):
        save_run(member_on_tokenizer(tokenizer, seed=seed, steps=3), root / "runs" / name)
    return root


def _copy_tree(members_root: Path, dest: Path) -> Path:
    shutil.copytree(members_root / "runs", dest / "runs")
    return dest


def test_members_are_stored_relative_so_the_ensemble_moves_with_them(
    members_root, tmp_path, monkeypatch
):
    tree = _copy_tree(members_root, tmp_path / "project")
    monkeypatch.chdir(tmp_path)  # not the ensemble's directory: paths must not follow the cwd
    out = tree / "ensembles" / "pair"
    runs = [tree / "runs" / "run-a", tree / "runs" / "run-b"]
    written = write_ensemble(out, runs)
    spec = json.loads((out / "ensemble.json").read_text())
    assert spec["members"] == ["../../runs/run-a/best", "../../runs/run-b/best"]
    assert written.path == out and written.names == [str(r) for r in runs]
    before = written.predict_proba(TEXTS)
    # The whole tree moves elsewhere (one level deeper): the ensemble still finds its members.
    moved = tmp_path / "elsewhere" / "deeper" / "project"
    moved.parent.mkdir(parents=True)
    shutil.move(str(tree), str(moved))
    ens = torchformer.load(moved / "ensembles" / "pair")
    assert isinstance(ens, EnsembleClassifier)
    assert ens.path == moved / "ensembles" / "pair"
    assert ens.names == spec["members"]  # the stored names, as written
    torch.testing.assert_close(ens.predict_proba(TEXTS), before, rtol=0, atol=1e-6)
    dirs, weights, names = read_ensemble(moved / "ensembles" / "pair")
    assert [d.resolve() for d in dirs] == [
        (moved / "runs" / r / "best").resolve() for r in ("run-a", "run-b")
    ]
    assert weights is None and names == spec["members"]


def test_an_absolute_member_path_stays_absolute(members_root, tmp_path):
    best = (members_root / "runs" / "run-a" / "best").resolve()
    other = (members_root / "runs" / "run-b" / "best").resolve()
    out = tmp_path / "abs"
    out.mkdir()
    spec = {"task": "classification", "members": [str(best), str(other)], "weights": [1, 3]}
    (out / "ensemble.json").write_text(json.dumps(spec))
    dirs, weights, names = read_ensemble(out)
    assert dirs == [best, other] and weights == [1, 3] and names == [str(best), str(other)]
    ens = EnsembleClassifier.from_dir(out)
    assert ens.path == out and ens.weights == [0.25, 0.75]
    a, b = (TextClassifier.from_dir(d) for d in (best, other))
    expected = 0.25 * a.predict_proba(TEXTS) + 0.75 * b.predict_proba(TEXTS)
    torch.testing.assert_close(ens.predict_proba(TEXTS), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "content, field",
    [
        ({"members": "run-a/best"}, "members"),  # one string, not a list
        ({"members": 7}, "members"),
        ({"members": ["../run-a/best", 3]}, "members"),
        ({"weights": [1, 1]}, "members"),  # no members at all
        ([["../run-a/best", "../run-b/best"]], "members"),  # not an object
        ({"members": ["a", "b"], "weights": "1,3"}, "weights"),
        ({"members": ["a", "b"], "weights": [1, "3"]}, "weights"),
        ({"members": ["a", "b"], "weights": {"a": 1}}, "weights"),
    ],
)
def test_a_malformed_ensemble_file_names_the_file_and_the_field(tmp_path, content, field):
    (tmp_path / "ensemble.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match=rf"ensemble\.json: {field}: expected a list"):
        read_ensemble(tmp_path)


def test_unreadable_or_missing_ensemble_files_and_members_are_named(members_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no ensemble\.json; not an ensemble directory"):
        read_ensemble(tmp_path)
    (tmp_path / "ensemble.json").write_text('{"members": [')
    with pytest.raises(ValueError, match=r"ensemble\.json: not valid JSON"):
        read_ensemble(tmp_path)
    good = str(members_root / "runs" / "run-a" / "best")
    spec = {"members": [good, "../gone/best"], "weights": None}
    (tmp_path / "ensemble.json").write_text(json.dumps(spec))
    with pytest.raises(FileNotFoundError, match=r"ensemble\.json: member \.\./gone/best: no model"):
        read_ensemble(tmp_path)
    with pytest.raises(FileNotFoundError):
        torchformer.load(tmp_path)


def _members(members_root: Path) -> list[TextClassifier]:
    return [TextClassifier.from_dir(members_root / "runs" / r / "best") for r in ("run-a", "run-b")]


def test_an_ensemble_built_in_memory_has_default_names_equal_weights_and_no_path(members_root):
    a, b = _members(members_root)
    ens = EnsembleClassifier([a, b])
    assert ens.path is None and ens.names == ["member 0", "member 1"]
    assert ens.weights == [0.5, 0.5] and ens.labels == a.labels
    probs, each = ens.predict_proba(TEXTS, return_members=True)
    torch.testing.assert_close(each[0], a.predict_proba(TEXTS), rtol=0, atol=0)
    torch.testing.assert_close(each[1], b.predict_proba(TEXTS), rtol=0, atol=0)
    torch.testing.assert_close(probs, (each[0] + each[1]) / 2, rtol=0, atol=1e-6)
    assert torch.equal(ens.predict_proba(TEXTS), probs)  # without the members: the mean only
    assert ens.predict("a great film")[0]["label"] in ens.labels  # one string is one text
    with pytest.raises(ValueError, match="at least two members, got 1"):
        EnsembleClassifier([a])
    with pytest.raises(ValueError, match="at least two members, got 0"):
        EnsembleClassifier([])


@pytest.mark.parametrize("weights", [[1, 0], [1, -2], [1, float("nan")], [1, float("inf")]])
def test_weights_must_be_finite_and_positive(members_root, weights):
    with pytest.raises(ValueError, match="finite and positive"):
        EnsembleClassifier(_members(members_root), weights)


def test_one_weight_per_member_and_weights_are_normalised(members_root):
    members = _members(members_root)
    with pytest.raises(ValueError, match="3 weights for 2 ensemble members"):
        EnsembleClassifier(members, [1, 2, 3])
    assert EnsembleClassifier(members, [2, 6]).weights == [0.25, 0.75]
    assert EnsembleClassifier(members, [0.5, 0.5]).weights == [0.5, 0.5]


def test_weights_written_to_the_file_are_the_ones_given(members_root, tmp_path):
    runs = [members_root / "runs" / r for r in ("run-a", "run-b")]
    ens = write_ensemble(tmp_path / "w", runs, weights=[1, 3])
    assert ens.weights == [0.25, 0.75]
    spec = json.loads((tmp_path / "w" / "ensemble.json").read_text())
    assert spec["weights"] == [1.0, 3.0] and spec["task"] == "classification"
    assert set(spec) == {"task", "combine", "members", "weights"}
    assert torchformer.load(tmp_path / "w").weights == [0.25, 0.75]


def test_a_text_any_member_cleans_to_nothing_is_reported(members_root):
    a, b = _members(members_root)
    keeps_html = TextClassifier(a.model, a.tokenizer, InferenceSettings(cleaning=[]))
    ens = EnsembleClassifier([keeps_html, b])  # only the second member strips HTML
    assert ens.cleaner.steps == ["strip_html", "normalize_whitespace"]
    texts = ["fine", "<br />", "a <b>good</b> film", "<p></p>"]
    assert ens.cleaner.clean_and_find_empty(texts) == (texts, [1, 3])
    assert ens.clean(["fine", "a <b>good</b> film"]) == ["fine", "a <b>good</b> film"]
    with pytest.raises(ValueError, match=r"texts\[1\] is empty after the cleaning"):
        ens.clean(["fine", "<br />"])
    with pytest.raises(ValueError, match=r"texts\[0\]"):
        ens.predict(["<br />"])


def test_overrides_reach_every_member(members_root, tmp_path):
    runs = [members_root / "runs" / r for r in ("run-a", "run-b")]
    write_ensemble(tmp_path / "ens", runs)
    ens = EnsembleClassifier.from_dir(tmp_path / "ens", attn_impl="reference")
    assert [m.model.config.attn_impl for m in ens.members] == ["reference", "reference"]
    assert (
        torchformer.load(tmp_path / "ens", attn_impl="reference").members[1].model.config.attn_impl
        == "reference"
    )


def test_labels_only_the_first_member_has_are_named(members_root):
    tokenizer = shared_tokenizer()
    three = member_on_tokenizer(tokenizer, seed=2, steps=1, labels=("neg", "pos", "meh"))
    two = _members(members_root)
    with pytest.raises(ValueError, match=r"only in member 1: \[\]; only in member 0: \['meh'\]"):
        EnsembleClassifier([three, *two])
    with pytest.raises(
        ValueError,
        match=r"member 2: .* differ from those of member 0 .*only in member 2: \['meh'\]; only in member 0: \[\]",
    ):
        EnsembleClassifier([*two, three])


def test_a_member_whose_best_was_being_replaced_is_recovered(members_root, tmp_path):
    run = _copy_tree(members_root, tmp_path)
    a = run / "runs" / "run-a"
    (a / "best").rename(a / ".best.old")  # a crash between replace_dir's two renames
    assert member_model_dir(a) == a / "best" and (a / "best" / "config.json").is_file()


def test_a_member_must_be_a_text_classifier_directory(members_root, tmp_path):
    run = members_root / "runs" / "run-a"
    assert member_model_dir(run) == run / "best"  # a run: its best/
    assert member_model_dir(run / "best") == run / "best"  # a model directory itself
    with pytest.raises(FileNotFoundError, match="no such run or model directory"):
        member_model_dir(tmp_path / "missing")
    ens = write_ensemble(tmp_path / "ens", [run, members_root / "runs" / "run-b"])
    with pytest.raises(ValueError, match="is an ensemble; list its members instead"):
        member_model_dir(ens.path)
    other = tmp_path / "image-model"
    other.mkdir()
    (other / "image_classification.json").write_text('{"task": "image_classification"}')
    (other / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(ValueError, match="is a image_classification model"):
        member_model_dir(other)


# ------------------------------------------------------------- checkpoint-averaging helpers
def _fake_run(tmp_path: Path, metric: str | None, rows: list[str]) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    train = {} if metric is None else {"metric": metric}
    (run / "config.yaml").write_text(json.dumps({"train": train}))
    (run / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    return run


VAL_ROWS = [
    '{"split": "val", "step": 2, "loss": 0.9, "accuracy": 0.6}',
    '{"split": "train", "step": 3, "loss": 0.1, "accuracy": 1.0}',
    '{"split": "val", "step": 4, "loss": 0.5, "accuracy": 0.7}',
    '{"split": "val", "step": 6, "loss": 0.7, "accuracy": 0.8}',
    '{"split": "val", "step": 8, "loss": 0.4, "acc',  # a line cut by a crash; resumed after
    '{"split": "val", "step": 8, "loss": 0.45, "accuracy": 0.75}',
    '{"split": "val", "step": 10, "loss": 0.6, "accuracy": 0.9}',
]


@pytest.mark.parametrize("metric, best", [("loss", 8), ("accuracy", 10), (None, 10)])
def test_the_best_step_follows_the_metrics_direction(tmp_path, metric, best):
    assert best_step_of(_fake_run(tmp_path, metric, VAL_ROWS)) == best


def test_a_config_without_train_settings_scores_by_accuracy(tmp_path):
    run = _fake_run(tmp_path, None, VAL_ROWS)
    (run / "config.yaml").write_text("task: classification\n")
    assert best_step_of(run) == 10


def test_a_run_that_never_validated_has_no_best_step(tmp_path):
    run = _fake_run(tmp_path, "loss", ['{"split": "train", "step": 1, "loss": 0.3}'])
    assert best_step_of(run) is None
    (run / "metrics.jsonl").unlink()
    assert best_step_of(run) is None


def test_checkpoint_files_are_found_by_step_in_order(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("step-000010.pt", "step-000002.pt", "step-000006.dcp", "step-000004.pt.tmp",
                 "step-latest.pt", "step-000008.json", "other.pt", "step-123456.pt",
                 "step-1000000.pt"):  # fmt: skip
        (folder / name).mkdir() if name.endswith(".dcp") else (folder / name).write_text("")
    found = checkpoint_paths(tmp_path)
    assert list(found) == [2, 6, 10, 123456, 1000000]
    assert found[6] == folder / "step-000006.dcp" and found[10] == folder / "step-000010.pt"


def test_averaging_refuses_fewer_than_two_checkpoints_or_an_unfinished_run(tmp_path):
    with pytest.raises(ValueError, match="--last 1: averaging needs at least 2"):
        average_run(tmp_path, tmp_path / "out", last=1)
    with pytest.raises(FileNotFoundError, match="no best/ model"):
        average_run(tmp_path, tmp_path / "out", last=2)
    assert not (tmp_path / "out").exists()
