"""Bad input to the classification task: each case is refused early with the file, the
record (line) and the field named, or, with ``skip_bad_rows``, skipped and counted."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from test_classify import tiny_config, toy_rows, write_csv

import torchformer
from torchformer.cli import main
from torchformer.config import ConfigError, load_config
from torchformer.data.records import DataError
from torchformer.tasks import classify
from torchformer.tasks.classify import ClassifyConfig, train
from torchformer.tasks.classify_data import load_splits
from torchformer.text.tokenizer import Tokenizer
from torchformer.train.checkpoint import load_checkpoint
from torchformer.train.guards import NonFiniteLossError


def test_single_class_training_file_is_refused_before_training(tmp_path):
    rows = [{"text": f"review number {i}", "label": "pos"} for i in range(20)]
    cfg = tiny_config(tmp_path, **{"data.source": str(write_csv(tmp_path / "one.csv", rows)),
                                   "data.test_file": None})  # fmt: skip
    with pytest.raises(DataError, match="single class") as err:
        load_splits(cfg.data, seed=0)
    assert err.value.file == tmp_path / "one.csv" and err.value.field == "label"
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("key", "value"),
    [("model.pooling", "max"), ("train.metric", "f1"), ("train.schedule", "cosin"),
     ("data.truncation", "middle"), ("train.precision", "fp16")],
)  # fmt: skip
def test_misspelt_choices_are_refused_when_the_config_loads(key, value):
    with pytest.raises(ConfigError) as err:
        load_config(ClassifyConfig, None, {key: value})
    assert key in str(err.value) and value in str(err.value)


def test_text_empty_after_cleaning_names_file_and_line_and_a_retry_is_not_refused(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.epochs": 1})
    rows = toy_rows(8, 3)
    rows[4]["text"] = "<br /><br />"  # line 6 of test.csv (the header is line 1)
    write_csv(Path(cfg.data.test_file), rows)
    with pytest.raises(DataError) as err:
        train(cfg)
    assert "test.csv:6" in str(err.value) and err.value.field == "text"
    assert "strip_html" in str(err.value) and "skip_bad_rows" in str(err.value)
    # The failed run left no trained tokenizer (a run marker) behind: the same command
    # works once the data is fixed, without --overwrite.
    rows[4]["text"] = "a plain review again"
    write_csv(Path(cfg.data.test_file), rows)
    assert (train(cfg) / "best" / "config.json").is_file()


def test_skip_bad_rows_counts_by_reason_and_errors_name_the_row(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.epochs": 1, "data.skip_bad_rows": True})
    rows = toy_rows(12, 3)
    rows[2]["text"] = "<p></p>"  # empty after cleaning
    rows[3]["text"] = ""  # empty
    rows[5]["label"] = ""  # missing label
    write_csv(Path(cfg.data.test_file), rows)
    run = train(cfg)
    manifest = json.loads((run / "manifest.json").read_text())["extra"]
    assert manifest["skipped_rows"] == {
        "test": {"field 'text': empty text": 1, "field 'label': missing": 1,
                 "empty after cleaning": 1},
    }  # fmt: skip
    assert manifest["sizes"]["test"] == 9
    errors = [
        json.loads(line) for line in (run / "eval/test/errors.jsonl").read_text().splitlines()
    ]
    ids = {e["id"] for e in errors}
    assert ids and all(i.startswith("test.csv:") for i in ids), ids
    bad_lines = {"test.csv:4", "test.csv:5", "test.csv:7"}
    assert not ids & bad_lines


def test_predict_names_the_callers_index_of_a_text_that_cleans_to_nothing(tmp_path):
    clf = torchformer.load(train(tiny_config(tmp_path, **{"train.epochs": 1})))
    texts = ["a long enough review that sorts last by length", "<br />", "ok"]
    with pytest.raises(ValueError, match=r"texts\[1\] is empty after the cleaning steps"):
        clf.predict(texts)
    assert len(clf.predict([texts[0], texts[2]])) == 2


def test_labels_typed_per_file_do_not_make_false_unseen_labels(tmp_path):
    train_rows = [{"text": f"text {i}", "label": ["1", "2", "n/a"][i % 3]} for i in range(30)]
    val_rows = [{"text": f"other {i}", "label": ["1", "2"][i % 2]} for i in range(6)]
    cfg = tiny_config(tmp_path, **{
        "data.source": str(write_csv(tmp_path / "t.csv", train_rows)),
        "data.val_file": str(write_csv(tmp_path / "v.csv", val_rows)),
        "data.test_file": None,
    })  # fmt: skip
    splits = load_splits(cfg.data, seed=0)
    assert set(splits.labels.to_list()) == {"1", "2", "n/a"}
    assert {r.label for r in splits.val} == {"1", "2"}


def test_imbalance_is_reported_on_the_full_data_before_a_balanced_sample(tmp_path):
    rows = [{"text": f"text {i}", "label": "a" if i % 10 else "b"} for i in range(100)]
    cfg = tiny_config(tmp_path, **{"data.source": str(write_csv(tmp_path / "imb.csv", rows)),
                                   "data.test_file": None, "data.train_samples": 10})  # fmt: skip
    with pytest.warns(UserWarning, match="imbalanced"):
        splits = load_splits(cfg.data, seed=0)
    assert len(splits.train) == 10


def test_balanced_sample_larger_than_a_class_names_the_setting_and_file(tmp_path):
    rows = [{"text": f"text {i}", "label": "a" if i % 10 else "b"} for i in range(100)]
    cfg = tiny_config(tmp_path, **{"data.source": str(write_csv(tmp_path / "imb.csv", rows)),
                                   "data.test_file": None, "data.train_samples": 60})  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=r"data\.train_samples=60") as err:
            load_splits(cfg.data, seed=0)
    assert err.value.file == tmp_path / "imb.csv"


def test_a_supplied_tokenizer_file_is_protected_like_a_pretrained_one(tmp_path):
    tok = Tokenizer.train_wordpiece([r["text"] for r in toy_rows(50, 0)], vocab_size=120,
                                    min_frequency=1, lowercase=False)  # fmt: skip
    tok.save(tmp_path / "cased.json")
    cfg = tiny_config(tmp_path, **{"tokenizer.path": str(tmp_path / "cased.json"),
                                   "data.cleaning": ["strip_html", "lowercase"]})  # fmt: skip
    with pytest.raises(ValueError, match="refused"):
        train(cfg)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    build = classify.build_model

    def build_with_a_nan_at_step_5(*args, **kwargs):
        model, tokenizer = build(*args, **kwargs)
        forward, calls = model.forward, []

        def poisoned(*a, **k):
            out = forward(*a, **k)
            if k.get("labels") is not None:
                calls.append(1)
                if len(calls) == 5:
                    out.loss = out.loss * float("nan")
            return out

        model.forward = poisoned
        return model, tokenizer

    monkeypatch.setattr(classify, "build_model", build_with_a_nan_at_step_5)
    cfg = tiny_config(tmp_path, **{"train.checkpoint_every": 2})
    with pytest.raises(NonFiniteLossError, match="step 5") as err:
        train(cfg)
    assert "last good checkpoint (step 4)" in str(err.value)
    run = Path(cfg.run_dir)
    assert load_checkpoint(run / "checkpoints" / "step-000004.pt")["step"] == 4
    assert not (run / "checkpoints" / "step-000005.pt").exists()
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("non-finite loss" in r.get("error", "") for r in logged)
    # The run goes on from the kept checkpoint once the cause is gone.
    monkeypatch.setattr(classify, "build_model", build)
    assert (train(cfg, resume=True) / "eval" / "test" / "metrics.json").is_file()


def test_zero_max_grad_norm_measures_without_clipping(tmp_path, monkeypatch):
    """max_grad_norm <= 0 means "no clipping" (clipping to 0 would zero every gradient;
    then biases, which get no weight decay, would never move)."""
    initial = _initial_weights(monkeypatch)
    run = train(tiny_config(tmp_path, **{"train.epochs": 1, "train.max_grad_norm": 0}))
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["grad_norm"] for r in logged if "grad_norm" in r]
    final = load_checkpoint(sorted((run / "checkpoints").glob("step-*.pt"))[-1])["model"]
    # (a key bias never gets a gradient: softmax ignores a constant shift of the scores;
    # the pooler is unused with mean pooling)
    biases = [k for k in final if k.endswith(".bias") and "k_proj" not in k and "pooler" not in k]
    unmoved = [k for k in biases if torch.equal(final[k], initial[k])]
    assert biases and not unmoved, unmoved


def test_cli_prints_input_errors_without_a_traceback(tmp_path, capsys):
    run = train(tiny_config(tmp_path, **{"train.epochs": 1}))
    assert main(["predict", str(run), "<br />"]) == 2
    err = capsys.readouterr().err
    assert "texts[0] is empty after the cleaning steps" in err and "Traceback" not in err
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("fine review\ncaf\xe9 review\n".encode("latin-1"))
    assert main(["predict", str(run), "--file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "latin1.txt:2" in err and "UTF-8" in err


def _initial_weights(monkeypatch) -> dict:
    build, initial = classify.build_model, {}

    def recording(*args, **kwargs):
        model, tokenizer = build(*args, **kwargs)
        initial.update({k: v.clone() for k, v in model.state_dict().items()})
        return model, tokenizer

    monkeypatch.setattr(classify, "build_model", recording)
    return initial


def test_freeze_encoder_trains_only_the_head(tmp_path, monkeypatch):
    initial = _initial_weights(monkeypatch)
    run = train(tiny_config(tmp_path, **{"train.epochs": 1, "model.freeze_encoder": True}))
    final = load_checkpoint(sorted((run / "checkpoints").glob("step-*.pt"))[-1])["model"]
    moved = {k for k in final if not torch.equal(final[k], initial[k])}
    assert moved == {"classifier.weight", "classifier.bias"}


def test_class_weights_follow_inverse_frequency_and_plateau_schedule_runs(tmp_path):
    rows = toy_rows(96, 0)
    rows = [r for i, r in enumerate(rows) if r["label"] == "pos" or i % 4 == 0]  # 48 pos, 24 neg
    cfg = tiny_config(tmp_path, **{
        "data.source": str(write_csv(tmp_path / "imb.csv", rows)), "data.class_weights": True,
        "train.epochs": 2, "train.schedule": "plateau",
    })  # fmt: skip
    with pytest.warns(UserWarning, match="imbalanced"):
        task = classify.ClassificationTask(cfg)
        task.prepare(Path(cfg.run_dir), resume=False, main=True)
    weights = dict(zip(task.label_names, task.class_weights.tolist()))
    assert weights["neg"] == pytest.approx(2 * weights["pos"])  # 2x rarer, 2x the weight
    # The weights are in the loss the loop trains on, and in the units it averages over.
    split, idx = task.encoded["train"], list(range(12))
    labels = torch.tensor([split.labels[i] for i in idx])
    task.model.eval()
    with torch.no_grad():
        loss = task.batch_loss(task.model, idx, torch.device("cpu"))
        ids, mask = classify._batch(split, idx, task.tokenizer.pad_id)[:2]
        logits = task.model(ids, attention_mask=mask).logits
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=task.class_weights)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss) != pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-3
    )
    assert task.batch_units(idx) == pytest.approx(float(task.class_weights[labels].sum()))
    with pytest.warns(UserWarning, match="imbalanced"):
        out = train(cfg, overwrite=True)
    # plateau: after warm-up the lr holds (halved at most once in 2 evaluations with
    # patience 2); a linear decay would end near 0.
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in logged if r["split"] == "train" and "lr" in r]
    assert lrs[-1] >= 0.5 * cfg.train.lr and max(lrs) == pytest.approx(cfg.train.lr)
