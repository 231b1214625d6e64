"""Contracts of train/run_dir.py: what the user is told, sharded checkpoints count for
resume, both model directories are recovered, run-name numbering, and the resume check
on keys present on one side only."""

import logging

import pytest
import yaml

from torchformer.config import ConfigError
from torchformer.train.run_dir import (
    RunDirError,
    check_resume_config,
    claim_run_dir,
    next_free_run_dir,
)


def make_run(run_dir):
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-000010.pt").write_bytes(b"weights")
    (run_dir / "metrics.jsonl").write_text('{"step": 10}\n')
    return run_dir


def test_resume_and_overwrite_together_is_refused(tmp_path):
    with pytest.raises(ValueError) as err:
        claim_run_dir(tmp_path, resume=True, overwrite=True)
    assert str(err.value) == (
        "--resume continues the run in run_dir, --overwrite replaces it: pick one"
    )


def test_refusal_lists_what_is_there_and_the_ways_out(tmp_path):
    run_dir = make_run(tmp_path / "run")
    with pytest.raises(RunDirError) as err:
        claim_run_dir(run_dir, resume=False)
    assert str(err.value) == (
        f"{run_dir} already holds a run (checkpoints, metrics.jsonl); pass --resume to "
        "continue it, --overwrite to replace it, or set --run_dir to a new directory"
    )


def test_a_sharded_checkpoint_is_something_to_resume_from(tmp_path):
    run_dir = tmp_path / "run"
    shard = run_dir / "checkpoints" / "step-000010.dcp"
    shard.mkdir(parents=True)
    (shard / "__0_0.distcp").write_bytes(b"shard")
    (run_dir / "metrics.jsonl").write_text('{"step": 10}\n')
    claim_run_dir(run_dir, resume=True)
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 10}\n'
    assert (shard / "__0_0.distcp").is_file()


def test_resume_without_checkpoint_warns_naming_the_directory(tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 5}\n')
    with caplog.at_level(logging.WARNING, logger="torchformer.train.run_dir"):
        claim_run_dir(run_dir, resume=True)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert messages == [f"{run_dir} has no checkpoint to resume from: starting the run afresh"]


@pytest.mark.parametrize("name", ["best", "averaged"])
def test_claim_recovers_a_model_directory_set_aside_by_a_crash(tmp_path, name):
    run_dir = make_run(tmp_path / "run")
    (run_dir / f".{name}.old").mkdir()
    (run_dir / f".{name}.old" / "config.json").write_text("{}")
    claim_run_dir(run_dir, resume=True)
    assert (run_dir / name / "config.json").read_text() == "{}"


def test_next_free_run_dir_takes_dash_2_first(tmp_path):
    make_run(tmp_path / "demo")
    assert next_free_run_dir(tmp_path / "demo") == tmp_path / "demo-2"
    make_run(tmp_path / "demo-2")
    make_run(tmp_path / "demo-3")
    assert next_free_run_dir(tmp_path / "demo") == tmp_path / "demo-4"


def test_resume_check_reports_a_removed_key_but_not_one_added_since(tmp_path):
    """A key the saved config lacks is a setting added since the run started (the run had
    its default): resuming a run from an earlier version is not refused for it."""
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump({"train": {"lr": 0.1, "old_option": 1}, "threads": 2})
    )
    current = {"train": {"lr": 0.1, "warmup": 5}, "threads": 2}
    with pytest.raises(ConfigError) as err:
        check_resume_config(tmp_path, current)
    assert "(train.old_option: 1 -> None)" in str(err.value)
    check_resume_config(
        tmp_path, {"train": {"lr": 0.1, "old_option": 1, "warmup": 5}, "threads": 2}
    )
    check_resume_config(tmp_path, {"train": {"lr": 0.1, "old_option": 1}, "threads": 2})
