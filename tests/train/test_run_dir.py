"""The run directory guard, atomic directory replacement and metrics trimming on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchformer.io import recover_dir, replace_dir
from torchformer.train.logging import MetricsLogger, read_metrics
from torchformer.train.run_dir import (
    RunDirError,
    claim_run_dir,
    discard_previous_run,
    next_free_run_dir,
    restore_previous_run,
)


def make_run(run_dir: Path) -> Path:
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-00000010.pt").write_bytes(b"weights")
    (run_dir / "metrics.jsonl").write_text('{"step": 10}\n')
    return run_dir


def test_a_fresh_run_refuses_a_directory_holding_a_run(tmp_path):
    run_dir = make_run(tmp_path / "run")
    with pytest.raises(RunDirError) as err:
        claim_run_dir(run_dir, resume=False)
    message = str(err.value)
    assert str(run_dir) in message and "checkpoints" in message and "--resume" in message
    assert (run_dir / "checkpoints" / "step-00000010.pt").read_bytes() == b"weights"  # untouched


def test_resume_keeps_and_overwrite_replaces_only_the_run(tmp_path):
    run_dir = make_run(tmp_path / "run")
    (run_dir / "train.csv").write_text("text,label\n")  # the user's file, not the run's
    (run_dir / "config.yaml").write_text("task: classification\n")
    assert claim_run_dir(run_dir, resume=True) == run_dir
    assert (run_dir / "metrics.jsonl").is_file()
    claim_run_dir(run_dir, resume=False, overwrite=True)
    assert sorted(p.name for p in run_dir.iterdir()) == [".previous-run", "train.csv"]
    assert (run_dir / ".previous-run" / "metrics.jsonl").is_file()  # set aside, not deleted
    discard_previous_run(run_dir)  # the new run has set up
    assert sorted(p.name for p in run_dir.iterdir()) == ["train.csv"]
    with pytest.raises(ValueError, match="pick one"):
        claim_run_dir(run_dir, resume=True, overwrite=True)


def test_resume_without_a_checkpoint_starts_afresh(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "best").mkdir(parents=True)
    (run_dir / "best" / "config.json").write_text("{}")  # evaluated, killed before the checkpoint
    (run_dir / "metrics.jsonl").write_text('{"step": 5}\n')
    claim_run_dir(run_dir, resume=True)
    assert not any(run_dir.iterdir())


def test_a_directory_without_run_files_is_free(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    (tmp_path / "run" / "checkpoints").mkdir()  # empty: nothing to lose
    assert claim_run_dir(tmp_path / "run", resume=False) == tmp_path / "run"
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_next_free_run_dir_counts_up(tmp_path):
    assert next_free_run_dir(tmp_path / "demo") == tmp_path / "demo"
    make_run(tmp_path / "demo")
    make_run(tmp_path / "demo-2")
    assert next_free_run_dir(tmp_path / "demo") == tmp_path / "demo-3"


def test_replace_dir_swaps_in_the_new_version(tmp_path):
    target = tmp_path / "best"
    with replace_dir(target) as tmp:
        (tmp / "model").write_text("v1")
    with replace_dir(target) as tmp:
        (tmp / "model").write_text("v2")
    assert (target / "model").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no leftovers


def test_replace_dir_keeps_the_old_version_when_writing_fails(tmp_path):
    target = tmp_path / "best"
    with replace_dir(target) as tmp:
        (tmp / "model").write_text("v1")
    with pytest.raises(OSError), replace_dir(target) as tmp:
        (tmp / "model").write_text("half")
        raise OSError("disk full")
    assert (target / "model").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_recover_dir_restores_a_version_set_aside_by_a_crash(tmp_path):
    target = tmp_path / "best"
    with replace_dir(target) as tmp:
        (tmp / "model").write_text("v1")
    target.rename(tmp_path / ".best.old")  # killed between the two renames
    assert recover_dir(target) == target
    assert (target / "model").read_text() == "v1"


def test_drop_after_removes_the_steps_a_resume_redoes(tmp_path):
    with MetricsLogger(tmp_path) as log:
        for step in (10, 20, 30):
            log.log({"loss": 1.0 / step}, step=step)
        log.log({"accuracy": 0.9}, step=20, split="val")  # evaluation, then checkpoint 20
        log.log({"accuracy": 0.9}, step=20, split="best_test")  # the end of the run
        with (tmp_path / "metrics.jsonl").open("a") as f:
            f.write('{"step": 40, "lo')  # killed mid-line
        assert log.drop_after(20) == 3  # step 30, the cut line, the end-of-run record
        log.log({"loss": 0.04}, step=30)
    records = read_metrics(tmp_path)
    assert [(r["step"], r["split"]) for r in records] == [
        (10, "train"),
        (20, "train"),
        (20, "val"),
        (30, "train"),
    ]
    assert records[-1]["loss"] == 0.04
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])


def test_resume_refuses_changed_settings_but_not_runtime_ones(tmp_path):
    from torchformer.config import ConfigError, load_config, save_config
    from torchformer.tasks.classify import ClassifyConfig
    from torchformer.train.run_dir import check_resume_config

    config = load_config(ClassifyConfig, None, {"run_dir": str(tmp_path), "train.epochs": 3})
    save_config(config, tmp_path / "config.yaml")
    check_resume_config(tmp_path, config)  # unchanged
    runtime = load_config(ClassifyConfig, None, {"run_dir": str(tmp_path), "train.epochs": 3,
                                                 "train.threads": 1, "train.progress": False})  # fmt: skip
    check_resume_config(tmp_path, runtime)
    changed = load_config(ClassifyConfig, None, {"run_dir": str(tmp_path), "train.epochs": 5,
                                                 "train.lr": 1e-3})  # fmt: skip
    with pytest.raises(ConfigError) as err:
        check_resume_config(tmp_path, changed)
    message = str(err.value)
    assert "config.yaml" in message and "train.epochs: 3 -> 5" in message and "train.lr" in message


def test_claim_recovers_model_dirs_and_checks_the_resume_config(tmp_path):
    from torchformer.config import ConfigError, load_config, save_config
    from torchformer.tasks.classify import ClassifyConfig

    run_dir = make_run(tmp_path / "run")
    (run_dir / ".best.old").mkdir()  # killed between the two renames of replace_dir
    (run_dir / ".best.old" / "config.json").write_text("{}")
    config = load_config(ClassifyConfig, None, {"run_dir": str(run_dir), "train.lr": 1e-4})
    save_config(config, run_dir / "config.yaml")
    assert claim_run_dir(run_dir, resume=True, config=config) == run_dir
    assert (run_dir / "best" / "config.json").is_file()
    changed = load_config(ClassifyConfig, None, {"run_dir": str(run_dir), "train.lr": 1e-3})
    with pytest.raises(ConfigError, match=r"train\.lr"):
        claim_run_dir(run_dir, resume=True, config=changed)


def test_an_overwrite_that_fails_or_is_killed_before_setup_puts_the_old_run_back(tmp_path):
    run_dir = make_run(tmp_path / "run")
    (run_dir / "notes.txt").write_text("mine")
    claim_run_dir(run_dir, resume=False, overwrite=True)
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')  # the new run's first files
    (run_dir / "tokenizer.json").write_text("{}")
    assert restore_previous_run(run_dir)  # its data was bad: the old run comes back
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoints",
        "metrics.jsonl",
        "notes.txt",
    ]
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 10}\n'
    assert not restore_previous_run(run_dir)

    claim_run_dir(run_dir, resume=False, overwrite=True)
    (run_dir / "tokenizer.json").write_text("{}")  # then the process is killed
    with pytest.raises(RunDirError, match=r"checkpoints, metrics\.jsonl"):  # the next claim
        claim_run_dir(run_dir, resume=False)
    assert (run_dir / "checkpoints" / "step-00000010.pt").read_bytes() == b"weights"
    assert not (run_dir / "tokenizer.json").exists() and not (run_dir / ".previous-run").exists()

    # Killed while putting the old run back, then while setting it aside: each time the
    # next claim finds the whole old run (and only it).
    claim_run_dir(run_dir, resume=False, overwrite=True)
    (run_dir / "tokenizer.json").write_text("{}")
    (run_dir / ".previous-run" / ".restoring").touch()  # new files already cleared...
    (run_dir / "tokenizer.json").unlink()
    (run_dir / ".previous-run" / "metrics.jsonl").rename(run_dir / "metrics.jsonl")  # ...one back
    claim_run_dir(run_dir, resume=True)
    assert (run_dir / "checkpoints" / "step-00000010.pt").read_bytes() == b"weights"
    (run_dir / ".previous-run.tmp").mkdir()
    (run_dir / "checkpoints").rename(run_dir / ".previous-run.tmp" / "checkpoints")
    claim_run_dir(run_dir, resume=True)
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == ["checkpoints", "metrics.jsonl", "notes.txt"]
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 10}\n'
