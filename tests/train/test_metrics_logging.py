"""metrics.jsonl, manifest.json, fingerprints and the progress postfix."""

import json
import os

import pytest
import torch

from torchformer.train.logging import (
    MetricsLogger,
    ProgressPostfix,
    fingerprint_records,
    progress_bar,
    read_metrics,
    write_manifest,
)


def test_metrics_are_flushed_per_line_and_read_back(tmp_path):
    logger = MetricsLogger(tmp_path)
    logger.log({"loss": torch.tensor(0.5), "lr": 1e-3}, step=1, epoch=0.1)
    # flushed: readable while the logger is still open
    records = read_metrics(tmp_path)
    assert records[0]["loss"] == 0.5 and records[0]["split"] == "train"
    assert set(records[0]) == {"step", "epoch", "split", "time", "loss", "lr"}
    logger.log({"f1": 0.8}, step=2, epoch=1, split="val")
    logger.close()
    with MetricsLogger(tmp_path) as again:  # appends, never truncates
        again.log({"loss": float("nan")}, step=3)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    val = read_metrics(tmp_path, split="val")
    assert [(r["step"], r["epoch"], r["f1"]) for r in val] == [(2, 1, 0.8)]


def test_reserved_names_are_rejected(tmp_path):
    with MetricsLogger(tmp_path) as logger, pytest.raises(ValueError, match="reserved"):
        logger.log({"step": 1}, step=1)


def test_truncated_last_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
    with pytest.warns(UserWarning, match="truncated"):
        assert [r["step"] for r in read_metrics(path)] == [1]
    path.write_text('{"step": 1\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:1"):
        read_metrics(path)


def test_manifest_contents(tmp_path):
    path = write_manifest(
        tmp_path, config={"train": {"lr": 0.1}}, seed=3, data_fingerprint="abc",
        extra={"n_train": 10},
    )  # fmt: skip
    manifest = json.loads(path.read_text())
    assert manifest["seed"] == 3 and manifest["data_fingerprint"] == "abc"
    assert manifest["config"] == {"train": {"lr": 0.1}}
    assert manifest["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert manifest["versions"]["python"].count(".") == 2
    assert manifest["host"]["cpu_count"] == os.cpu_count()
    assert "git" in manifest and manifest["extra"] == {"n_train": 10}


def test_fingerprint_is_order_and_boundary_sensitive():
    base = fingerprint_records(["ab", "c"])
    assert len(base) == 64 and base == fingerprint_records(iter(["ab", "c"]))
    assert base != fingerprint_records(["a", "bc"])
    assert base != fingerprint_records(["c", "ab"])


def test_postfix_is_rate_limited_and_reports_throughput():
    now = [0.0]
    bar = progress_bar(10, "train", disable=True)
    postfix = ProgressPostfix(bar, min_interval_s=1.0, clock=lambda: now[0])
    now[0] = 0.5
    assert postfix.update(loss=1.0, lr=0.1, samples=32) is False  # too soon
    now[0] = 2.0
    assert postfix.update(loss=torch.tensor(0.25), lr=3e-4, samples=32) is True
    assert postfix.postfix == {"loss": "0.2500", "lr": "3.00e-04", "samples/s": "32.0"}
    bar.close()
