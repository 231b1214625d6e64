"""``torchformer.load``: dispatch on the task a directory records, run → best/ resolution."""

from __future__ import annotations

import json
import shutil

import pytest

import torchformer
from torchformer import api
from torchformer.tasks.registry import TASKS, task_module


def test_a_directory_of_no_task_is_a_clear_error_not_a_translator(tmp_path):
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "num_layers": 2}))
    with pytest.raises(ValueError, match=r"'t5' model directory records no torchformer task"):
        torchformer.load(t5)


def test_a_plain_gpt2_directory_is_a_language_model_not_a_translator(tmp_path):
    from torchformer.tasks.registry import task_of_model_dir

    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    assert task_of_model_dir(gpt2) == "language_model"


def test_a_run_loads_its_best_model_restoring_one_set_aside_by_a_crash(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(tiny_model_dir, run / ".best.old")  # killed between the renames of best/
    clf = torchformer.load(run)
    assert isinstance(clf, api.TextClassifier)
    assert (run / "best" / "config.json").is_file() and not (run / ".best.old").exists()
    reference = api.TextClassifier.from_dir(tiny_model_dir)
    texts = ["a superb film", "a dull film"]
    assert clf.labels == reference.labels
    assert clf.predict_proba(texts).tolist() == reference.predict_proba(texts).tolist()


@pytest.fixture
def loaders(monkeypatch):
    """Record which task's ``load`` ``torchformer.load`` calls, with which directory."""
    calls = []
    for name in TASKS:
        monkeypatch.setattr(
            task_module(name), "load", lambda path, _name=name, **kw: calls.append((_name, path))
        )
    return calls


def _model_dir(path, sidecar, task, model_type):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    if sidecar:
        (path / sidecar).write_text(json.dumps({"task": task}))
    return path


def test_load_dispatches_on_the_recorded_task_not_the_model_type(tmp_path, loaders):
    # A translation run: its load() gets the run (it reads selected_model.json itself).
    run = tmp_path / "tr"
    _model_dir(run / "best", "translation.json", "translation", "torchformer-transformer")
    torchformer.load(run)
    # A classifier directory whose model type alone would say nothing about the task.
    clf = _model_dir(tmp_path / "clf", "torchformer.json", "classification", "custom")
    torchformer.load(clf)
    # A plain Hugging Face BERT directory (no sidecar): the one task that claims "bert".
    bert = _model_dir(tmp_path / "bert", None, None, "bert")
    torchformer.load(bert)
    assert loaders == [("translation", run), ("classification", clf), ("classification", bert)]


def test_an_unknown_recorded_task_names_the_known_ones(tmp_path, loaders):
    odd = _model_dir(tmp_path / "odd", "torchformer.json", "summarisation", "bert")
    with pytest.raises(
        ValueError,
        match=r"'summarisation'.*classification, denoising, image_classification, language_model, "
        r"masked_lm, translation",
    ):
        torchformer.load(odd)
    assert loaders == []
