"""Contracts of train/logging.py that a user relies on: the values in metrics.jsonl,
how a resumed run trims it, what manifest.json records, the git state, the fingerprint
format and the progress bar."""

import dataclasses
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from tqdm.auto import tqdm

from torchformer.train import logging as tlog
from torchformer.train.logging import (
    MetricsLogger,
    ProgressPostfix,
    fingerprint_records,
    git_info,
    package_versions,
    progress_bar,
    read_metrics,
    write_manifest,
)

# ---------------------------------------------------------------------------
# metrics.jsonl: values
# ---------------------------------------------------------------------------


def test_tensor_and_numpy_values_are_written_as_json_numbers(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        written = logger.log(
            {
                "one_elem": torch.tensor([0.5]),  # 1-element 1-d tensor: a number
                "vec": torch.tensor([1.0, 2.0]),  # several elements: a list
                "np_float": np.float32(0.25),
                "np_int": np.int64(7),
                "word": "hello",  # a str has no .item(): kept as is
            },
            step=1,
        )
    (record,) = read_metrics(tmp_path)
    for got in (written, record):
        assert got["one_elem"] == 0.5 and isinstance(got["one_elem"], float)
        assert got["vec"] == [1.0, 2.0]
        assert got["np_float"] == 0.25 and isinstance(got["np_float"], float)
        assert got["np_int"] == 7 and isinstance(got["np_int"], int)
        assert got["word"] == "hello"


def test_unserialisable_values_are_written_as_strings(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log({"ckpt": Path("/runs/a/step_10.pt")}, step=10)
    assert read_metrics(tmp_path)[0]["ckpt"] == "/runs/a/step_10.pt"


def test_time_is_wall_clock_rounded_to_milliseconds(tmp_path, monkeypatch):
    monkeypatch.setattr(tlog.time, "time", lambda: 1_700_000_000.123456)
    with MetricsLogger(tmp_path) as logger:
        assert logger.log({"loss": 1.0}, step=1)["time"] == 1_700_000_000.123
    assert read_metrics(tmp_path)[0]["time"] == 1_700_000_000.123


def test_logger_creates_missing_parent_directories(tmp_path):
    run_dir = tmp_path / "runs" / "exp" / "seed0"
    with MetricsLogger(run_dir) as logger:
        logger.log({"loss": 1.0}, step=1)
    assert (run_dir / "metrics.jsonl").is_file()


def test_reserved_error_lists_the_reserved_names(tmp_path):
    with MetricsLogger(tmp_path) as logger, pytest.raises(ValueError) as err:
        logger.log({"time": 1.0, "loss": 2.0}, step=1)
    assert "['time']" in str(err.value) and "step, epoch, split, time" in str(err.value)


def test_closed_logger_refuses_to_log_or_trim_and_names_the_file(tmp_path):
    logger = MetricsLogger(tmp_path)
    logger.log({"loss": 1.0}, step=1)
    logger.close()
    logger.close()  # closing twice is fine
    with pytest.raises(ValueError, match=r"metrics\.jsonl is closed"):
        logger.log({"loss": 1.0}, step=2)
    with pytest.raises(ValueError, match=r"metrics\.jsonl is closed"):
        logger.drop_after(1)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]


# ---------------------------------------------------------------------------
# metrics.jsonl: drop_after (resume) and read_metrics
# ---------------------------------------------------------------------------


def test_drop_after_removes_later_steps_and_end_of_run_records(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        for step in (1, 2, 3):
            logger.log({"loss": float(step)}, step=step)
        logger.log({"f1": 0.5}, step=2, split="val")
        logger.log({"f1": 0.4}, step=2, split="test")  # end-of-run record at the ckpt step
        assert logger.drop_after(2) == 2  # step 3 train, step 2 test
        logger.log({"loss": 3.5}, step=3)  # the file is open again, appending
    records = read_metrics(tmp_path)
    assert [(r["step"], r["split"]) for r in records] == [
        (1, "train"),
        (2, "train"),
        (2, "val"),
        (3, "train"),
    ]
    assert records[-1]["loss"] == 3.5


def test_drop_after_keeps_valid_records_after_a_garbage_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 1, "split": "train"}\n'
        "garbage\n"
        "[1, 2]\n"  # valid JSON, not a record
        '{"step": 2, "split": "train"}\n'
        '{"step": 5, "split": "train"}\n'
    )
    with MetricsLogger(tmp_path) as logger:
        assert logger.drop_after(3) == 3
    assert path.read_text() == '{"step": 1, "split": "train"}\n{"step": 2, "split": "train"}\n'


def test_drop_after_treats_a_record_without_step_as_step_0(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"split": "train", "note": "header"}\n{"step": 1, "split": "train"}\n')
    with MetricsLogger(tmp_path) as logger:
        assert logger.drop_after(0) == 1
    assert path.read_text() == '{"split": "train", "note": "header"}\n'


def test_drop_after_completes_a_last_line_missing_its_newline(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "split": "train"}')  # killed between record and newline
    with MetricsLogger(tmp_path) as logger:
        assert logger.drop_after(5) == 0
        logger.log({"loss": 1.0}, step=2)
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_drop_after_with_nothing_to_drop_leaves_the_file_untouched(tmp_path):
    path = tmp_path / "metrics.jsonl"
    text = '{"step": 1, "split": "train"}\n\n{"step": 2, "split": "val"}\n'
    path.write_text(text)
    inode = path.stat().st_ino
    with MetricsLogger(tmp_path) as logger:
        assert logger.drop_after(2) == 0
    assert path.read_text() == text
    assert path.stat().st_ino == inode  # not rewritten


def test_read_metrics_skips_blank_lines_anywhere(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n\n   \n{"step": 2}\n\n')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


# ---------------------------------------------------------------------------
# manifest.json, versions, git
# ---------------------------------------------------------------------------


def test_package_versions_report_cuda_and_missing_packages():
    versions = package_versions()
    assert "cuda" in versions and versions["cuda"] == torch.version.cuda
    assert set(versions) >= {"python", "torch", "numpy", "torchformer"}
    assert versions["python"] == platform.python_version()


@dataclasses.dataclass
class _Train:
    lr: float = 0.1
    data: Path = Path("/data/train.jsonl")


@dataclasses.dataclass
class _Run:
    train: _Train = dataclasses.field(default_factory=_Train)
    seed: int = 0


def test_manifest_records_a_dataclass_config_as_plain_json(tmp_path):
    path = write_manifest(tmp_path, config=_Run(), seed=0)
    manifest = json.loads(path.read_text())
    assert manifest["config"] == {"train": {"lr": 0.1, "data": "/data/train.jsonl"}, "seed": 0}


def test_manifest_stringifies_non_json_values_in_a_dict_config(tmp_path):
    path = write_manifest(tmp_path, config={"data": Path("/data/x")}, seed=1, extra=None)
    manifest = json.loads(path.read_text())
    assert manifest["config"] == {"data": "/data/x"} and manifest["extra"] == {}
    assert manifest["data_fingerprint"] is None


def test_manifest_records_time_host_and_command(tmp_path):
    before = datetime.now(UTC).replace(microsecond=0)
    path = write_manifest(tmp_path, config={}, seed=0)
    assert path == tmp_path / "manifest.json"
    text = path.read_text()
    manifest = json.loads(text)
    created = datetime.fromisoformat(manifest["created"])
    assert created.tzinfo is not None  # timezone-aware UTC
    assert before <= created <= datetime.now(UTC)
    assert manifest["command"] == sys.argv
    host = manifest["host"]
    assert host["platform"] == platform.platform()
    assert host["torch_threads"] == torch.get_num_threads()
    expected = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    assert host["cuda_devices"] == expected
    assert manifest["git"] == git_info()
    # human-readable: indented, one key per line, newline-terminated
    assert text.endswith("}\n") and '\n  "seed": 0,\n' in text


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="no git executable")


def _git(cwd, *args):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    out = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)
    return out.stdout.decode().strip()


@needs_git
def test_git_info_reports_commit_and_dirty_state_of_the_given_tree(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "first")
    head = _git(repo, "rev-parse", "HEAD")

    info = git_info(repo)
    assert info == {"commit": head, "dirty": False}
    assert isinstance(info["commit"], str) and len(head) == 40
    assert info["dirty"] is False
    assert git_info(str(repo)) == info  # a str path works too

    (repo / "untracked.txt").write_text("x\n")  # untracked files do not make it dirty
    assert git_info(repo) == {"commit": head, "dirty": False}
    (repo / "a.txt").write_text("two\n")  # a modified tracked file does
    assert git_info(repo) == {"commit": head, "dirty": True}


@needs_git
def test_git_info_is_none_outside_a_repository(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_info(tmp_path) is None
    repo = tmp_path / "empty"
    repo.mkdir()
    _git(repo, "init", "-q")
    assert git_info(repo) is None  # a repository without commits


# ---------------------------------------------------------------------------
# fingerprint
# ---------------------------------------------------------------------------


def test_fingerprint_format_is_stable():
    # 8-byte little-endian length prefix + UTF-8 bytes per record, SHA-256: fingerprints
    # stored in old manifests must still compare equal.
    expected = hashlib.sha256(
        b"\x02\x00\x00\x00\x00\x00\x00\x00ab" + b"\x03\x00\x00\x00\x00\x00\x00\x00\xc3\xa9c"
    ).hexdigest()
    assert fingerprint_records(["ab", "éc"]) == expected
    assert fingerprint_records([]) == hashlib.sha256().hexdigest()


# ---------------------------------------------------------------------------
# progress bar
# ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _process_local_tqdm_lock(monkeypatch):
    """tqdm's default lock holds a multiprocessing semaphore shared by forked processes
    (mutmut's runners): one that dies holding it would hang every later bar. Use a
    process-local lock, and no monitor thread."""
    monkeypatch.setattr(tqdm, "_lock", threading.RLock(), raising=False)
    monkeypatch.setattr(tqdm, "monitor_interval", 0)


def test_progress_bar_counts_steps_and_passes_options_to_tqdm():
    out = io.StringIO()  # not a terminal: the bar must still be shown
    bar = progress_bar(10, "train", file=out, unit_scale=False)
    assert bar.disable is False
    assert bar.total == 10 and bar.desc == "train" and bar.unit == "step"
    bar.update(3)
    bar.refresh()
    bar.close()
    text = out.getvalue()
    assert "train:" in text and "3/10" in text and "step" in text
    assert progress_bar(5, "x", unit="batch", file=io.StringIO()).unit == "batch"
    assert progress_bar(5, "x", disable=True).disable is True


def test_postfix_default_interval_is_one_second():
    now = [100.0]
    bar = progress_bar(10, "train", disable=True)
    postfix = ProgressPostfix(bar, clock=lambda: now[0])
    assert postfix.postfix == {}
    now[0] = 100.5  # elapsed is measured from construction, not from 0
    assert postfix.update(loss=1.0) is False
    now[0] = 101.0  # exactly the interval: redraw
    assert postfix.update(loss=1.0) is True
    assert postfix.postfix == {"loss": "1.0000"}  # no samples counted: no throughput
    assert bar.postfix == "loss=1.0000"  # shown on the bar
    bar.close()


def test_postfix_throughput_counts_only_samples_since_last_redraw():
    now = [0.0]
    bar = progress_bar(10, "train", disable=True)
    postfix = ProgressPostfix(bar, min_interval_s=1.0, clock=lambda: now[0])
    now[0] = 2.0
    assert postfix.update(samples=64) is True
    assert postfix.postfix == {"samples/s": "32.0"}
    now[0] = 4.0
    assert postfix.update(lr=1e-3) is True
    assert postfix.postfix == {"lr": "1.00e-03"}  # no samples since the last redraw


def test_postfix_shows_non_finite_loss_readably():
    now = [0.0]
    bar = progress_bar(10, "train", disable=True)
    postfix = ProgressPostfix(bar, min_interval_s=0.5, clock=lambda: now[0])
    now[0] = 1.0
    postfix.update(loss=torch.tensor(float("nan")))
    assert postfix.postfix == {"loss": "nan"}
    now[0] = 2.0
    postfix.update(loss=float("inf"))
    assert postfix.postfix == {"loss": "inf"}


def test_package_versions_uses_none_for_a_missing_package(monkeypatch):
    real = tlog.metadata.version

    def version(name):
        if name == "tokenizers":
            raise tlog.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(tlog.metadata, "version", version)
    versions = package_versions()
    assert versions["tokenizers"] is None and versions["torch"] == real("torch")
