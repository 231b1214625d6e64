"""The classification CLI: train with overrides, predict, evaluate, demo without data;
``train`` dispatching through the task registry; ``python -m torchformer``."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from dataclasses import dataclass

import pytest
from test_classify import toy_rows, write_csv

from torchformer.cli import main
from torchformer.config import ConfigError
from torchformer.tasks import registry


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    train_csv = write_csv(tmp / "train.csv", toy_rows(96, 0))
    config = tmp / "run.yaml"
    config.write_text(
        "task: classification\n"
        f"run_dir: {tmp / 'run'}\n"
        "report: false\n"
        f"data: {{source: {train_csv}, val_fraction: 0.25, max_length: 32}}\n"
        "model: {base: scratch, preset: tiny, pooling: mean}\n"
        "tokenizer: {vocab_size: 200, min_frequency: 1}\n"
        "train: {epochs: 2, batch_size: 8, lr: 0.003, progress: false}\n"
    )
    # An override on the command line wins over the file.
    assert main(["train", str(config), "--train.epochs", "6"]) == 0
    return tmp / "run", tmp


def test_train_override_is_saved_in_the_run_config(tiny_run):
    run, _ = tiny_run
    assert "epochs: 6" in (run / "config.yaml").read_text()


def test_predict_prints_json_lines(tiny_run, capsys):
    run, _ = tiny_run
    assert main(["predict", str(run), "a superb brilliant film", "awful dull movie", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["label"] for x in lines] == ["pos", "neg"]
    assert all(set(x["probabilities"]) == {"neg", "pos"} for x in lines)


def test_evaluate_writes_report_for_a_user_file(tiny_run, capsys):
    run, tmp = tiny_run
    test_csv = write_csv(tmp / "holdout.csv", toy_rows(40, 7))
    assert main(["evaluate", str(run), "--data", str(test_csv)]) == 0
    metrics = json.loads((run / "eval" / "holdout" / "metrics.json").read_text())
    assert metrics["num_examples"] == 40 and metrics["accuracy"] > 0.8
    assert "accuracy" in capsys.readouterr().out


def test_evaluate_refuses_labels_the_model_does_not_know(tiny_run, capsys):
    run, tmp = tiny_run
    rows = toy_rows(4, 9)
    rows[2]["label"] = "mixed"
    assert main(["evaluate", str(run), "--data", str(write_csv(tmp / "odd.csv", rows))]) == 2
    assert "mixed" in capsys.readouterr().err


def test_demo_without_data_says_what_to_download(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCHFORMER_DATA", str(tmp_path))
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "aclImdb_v1.tar.gz" in err and str(tmp_path) in err


def test_unknown_override_fails_with_the_key(tiny_run, capsys):
    run, _ = tiny_run
    assert main(["train", str(run / "config.yaml"), "--train.lrr", "1"]) == 2
    assert "train.lrr" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"train\.lrr"):  # -v shows the traceback
        main(["-v", "train", str(run / "config.yaml"), "--train.lrr", "1"])


def test_evaluate_names_rows_by_file_and_line(tiny_run, capsys):
    run, tmp = tiny_run
    rows = toy_rows(20, 5)
    for row in rows[:10]:  # wrong labels: the model gets these "wrong", so errors exist
        row["label"] = "pos" if row["label"] == "neg" else "neg"
    assert main(["evaluate", str(run), "--data", str(write_csv(tmp / "lines.csv", rows))]) == 0
    errors = [
        json.loads(x) for x in (run / "eval" / "lines" / "errors.jsonl").read_text().splitlines()
    ]
    assert errors
    for error in errors:  # the id leads back to the row: "lines.csv:<line>", header = line 1
        line = int(error["id"].removeprefix("lines.csv:"))
        assert rows[line - 2]["text"] == error["text"] and rows[line - 2]["label"] == error["true"]
    rows[3]["text"] = "<div></div>"
    assert main(["evaluate", str(run), "--data", str(write_csv(tmp / "html.csv", rows))]) == 2
    err = capsys.readouterr().err
    assert "lines.csv" not in err and "html.csv:5" in err and "field 'text'" in err


def test_train_dispatches_through_the_task_registry(tmp_path, monkeypatch, capsys):
    @dataclass
    class EchoConfig:
        task: str = "echo"
        run_dir: str = "runs/echo"
        steps: int = 1

    calls = []

    def train(config, *, resume, overwrite):
        calls.append((config, resume, overwrite))
        return tmp_path / "echo-run"

    module = types.ModuleType("echo_task")
    module.CONFIG, module.train = EchoConfig, train
    monkeypatch.setitem(sys.modules, "echo_task", module)
    monkeypatch.setitem(
        registry.TASKS, "echo", registry.TaskEntry("echo", "echo_task", "echo.json")
    )
    config = tmp_path / "echo.yaml"
    config.write_text("task: echo\nsteps: 3\n")
    assert main(["train", str(config), "--steps", "5", "--resume"]) == 0
    assert calls == [(EchoConfig(steps=5), True, False)]  # file, then the override on top
    assert f"run written to {tmp_path / 'echo-run'}" in capsys.readouterr().out


def test_train_with_an_unknown_task_names_the_file_and_the_known_tasks(tmp_path, capsys):
    config = tmp_path / "summarise.yaml"
    config.write_text("task: summarisation\nrun_dir: runs/x\n")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "'summarisation'" in err
    assert (
        "known tasks: classification, denoising, image_classification, language_model, "
        "masked_lm, translation" in err
    )


def test_python_dash_m_torchformer_runs_the_command_and_exits_with_its_code():
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "torchformer", *args], capture_output=True, text=True
        )

    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("torchformer ")
    no_command = run()  # main() prints the help and returns 2
    assert no_command.returncode == 2 and "usage: torchformer" in no_command.stdout


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (b"task: classification\ntrain: {epochs: 2\n  lr: 3\n", 3),  # an unclosed flow mapping
        (b"task: classification\n\tbad: 1\n", 2),  # a tab
        (b"task: classification\nrun_dir: caf\xe9\n", 2),  # Latin-1, not UTF-8
        (b"task: classification\nrun_dir: a\x00b\n", 2),  # a control character
    ],
)
def test_malformed_yaml_is_one_line_naming_the_file_and_line(tmp_path, capsys, content, line):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"error: {path}: line {line}")
    assert err[1:] == ["(run with -v for the traceback)"]


def test_evaluate_never_writes_over_the_runs_own_evaluation_nor_outside_eval(tiny_run, capsys):
    run, tmp = tiny_run
    own = (run / "eval" / "val" / "metrics.json").read_bytes()  # written by training
    (tmp / "other").mkdir(exist_ok=True)
    data = write_csv(tmp / "other" / "val.csv", toy_rows(12, 3))  # a user's file, same stem
    assert main(["evaluate", str(run), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert str(run / "eval" / "val") in err and "--overwrite" in err and "--name" in err
    assert (run / "eval" / "val" / "metrics.json").read_bytes() == own
    best = {p.name: p.read_bytes() for p in (run / "best").iterdir()}
    for name in ("../best", str(tmp / "elsewhere"), "..", ".", "a/b", ""):
        assert main(["evaluate", str(run), "--data", str(data), "--name", name]) == 2
        assert "--name" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (run / "best").iterdir()} == best
    assert not (tmp / "elsewhere").exists() and not (run / "eval" / "a").exists()
    assert main(["evaluate", str(run), "--data", str(data), "--name", "other-val"]) == 0
    first = (run / "eval" / "other-val" / "metrics.json").read_bytes()
    assert json.loads(first)["num_examples"] == 12
    (run / "eval" / "other-val" / "note.txt").write_text("mine")
    assert main(["evaluate", str(run), "--data", str(data), "--name", "other-val"]) == 2
    smaller = write_csv(tmp / "other" / "val.csv", toy_rows(6, 4))
    args = ["evaluate", str(run), "--data", str(smaller), "--name", "other-val", "--overwrite"]
    assert main(args) == 0  # asked for: replaced, as a whole
    assert (
        json.loads((run / "eval" / "other-val" / "metrics.json").read_text())["num_examples"] == 6
    )
    assert not (run / "eval" / "other-val" / "note.txt").exists()


def test_a_checkpoint_that_cannot_be_written_stops_train_with_one_line(
    tmp_path, monkeypatch, capsys
):
    import errno

    from torchformer.train.checkpoint import CheckpointManager

    manager = CheckpointManager(tmp_path / "checkpoints")
    manager.save(1, {"step": 1})

    def train(config, *, resume, overwrite):  # the disk fills at the second checkpoint
        raise manager.write_error(2, OSError(errno.ENOSPC, "No space left on device"))

    module = types.ModuleType("full_task")
    module.CONFIG, module.train = ConfigWithTask, train
    monkeypatch.setitem(sys.modules, "full_task", module)
    monkeypatch.setitem(registry.TASKS, "full", registry.TaskEntry("full", "full_task", "f.json"))
    config = tmp_path / "full.yaml"
    config.write_text("task: full\n")
    assert main(["train", str(config)]) == 3
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: training stopped: [Errno 28] ")
    assert f"is {manager.path_for(1)} (step 1)" in err[0]


@dataclass
class ConfigWithTask:
    task: str = "full"
    run_dir: str = "runs/full"
