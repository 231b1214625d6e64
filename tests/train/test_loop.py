"""The one training loop (train.loop.fit), tested by its effects on a scripted task.

The task below is a linear classifier on random vectors whose validation "score" is
scripted by step, so that when early stopping fires, which evaluation becomes best/,
and what a resumed run does are all known in advance. Each test fails when the loop's
wiring breaks (early stopping ignored or not restored, best/ rewritten at every
evaluation, the loss not divided by the accumulation steps, ...).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from torchformer.data.batching import LengthBucketBatchSampler
from torchformer.train.checkpoint import load_checkpoint
from torchformer.train.guards import NonFiniteLossError
from torchformer.train.loop import LoopConfig, fit
from torchformer.train.schedules import build_scheduler

N_TRAIN, N_VAL = 32, 8


class WithUnused(nn.Module):
    """A linear model with a parameter that never gets a gradient (like BERT's pooler
    under mean pooling): it has no optimizer state in a checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.used, self.unused = nn.Linear(4, 2), nn.Linear(2, 2)

    def forward(self, x):
        return self.used(x)


@dataclass
class ScriptedConfig:
    task: str = "scripted"
    run_dir: str = "runs/scripted"
    train: LoopConfig = field(default_factory=LoopConfig)


class ScriptedTask:
    """A linear model on seeded random data; validation scores come from ``scores[step]``."""

    units = "examples"

    def __init__(self, config: ScriptedConfig, scores: dict[int, float], *, batch_size: int = 8,
                 optimizer: str = "sgd", nan_at_call: int | None = None,
                 nan_grad_at_call: int | None = None, shuffle: bool = True,
                 unused: bool = False) -> None:  # fmt: skip
        self.config, self.scores, self.batch_size = config, scores, batch_size
        self.optimizer, self.nan_at_call, self.shuffle = optimizer, nan_at_call, shuffle
        self.nan_grad_at_call, self.unused = nan_grad_at_call, unused
        self.saved_best: list[int] = []  # the step of each best/ write
        self.finished = False
        self.loss_calls = 0
        self.current_step = 0
        self.autocast_seen: set[tuple[str, bool, torch.dtype]] = set()  # (where, on, dtype)

    def prepare(self, run_dir: Path, *, resume: bool, main: bool) -> nn.Module:
        assert run_dir == Path(self.config.run_dir) and run_dir.is_dir()
        assert isinstance(resume, bool) and main is True  # one process: rank 0
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(N_TRAIN + N_VAL, 4, generator=g)
        self.y = (self.x[:, 0] > 0).long()
        self.model = WithUnused() if self.unused else nn.Linear(4, 2)
        return self.model

    def manifest(self) -> dict[str, Any]:
        return {"data_fingerprint": "scripted", "extra": {"examples": N_TRAIN}}

    def train_sampler(self, world):
        # Equal lengths; without shuffling the batches are [0..B-1], [B..2B-1], ...
        lengths = [1] * N_TRAIN
        return LengthBucketBatchSampler(
            lengths, self.batch_size, seed=0, shuffle=self.shuffle, **world.sampler_args
        )

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        lr = self.config.train.lr
        if self.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=lr)
        return torch.optim.SGD(model.parameters(), lr=lr)

    def build_scheduler(self, optimizer, total_steps: int):
        return build_scheduler(optimizer, "constant", total_steps=total_steps)

    def checkpoints_to_keep(self) -> int:
        return self.config.train.keep_checkpoints

    def batch_units(self, indices: list[int]) -> float:
        return float(len(indices))

    def _note_autocast(self, where: str, device) -> None:
        assert isinstance(device, torch.device)
        on = torch.is_autocast_enabled("cpu")
        self.autocast_seen.add((where, on, torch.get_autocast_dtype("cpu") if on else None))

    def batch_loss(self, model: nn.Module, indices: list[int], device) -> torch.Tensor:
        self._note_autocast("train", device)
        self.loss_calls += 1
        loss = nn.functional.cross_entropy(model(self.x[indices]), self.y[indices])
        if self.loss_calls == self.nan_grad_at_call:  # a finite loss whose gradient is NaN
            w = next(model.parameters())
            loss = loss + torch.where(w > 1e9, torch.sqrt(-w.abs() - 1), torch.zeros_like(w)).sum()
        return loss * float("nan") if self.loss_calls == self.nan_at_call else loss

    def split_size(self, split: str) -> int:
        return N_VAL if split == "val" else 0

    def evaluate(self, model: nn.Module, split: str, indices: list[int], device) -> dict[int, Any]:
        assert not model.training and split == "val"  # the loop evaluates in eval mode
        self._note_autocast("eval", device)
        logits = model(self.x[[N_TRAIN + i for i in indices]])
        return {i: float(logits[j, 0]) for j, i in enumerate(indices)}

    def summarize(self, split: str, outputs: dict[int, Any]) -> dict[str, float]:
        assert split == "val" and sorted(outputs) == list(range(N_VAL))  # every example once
        step = self.current_step
        return {"accuracy": self.scores[step], "loss": -self.scores[step]}

    def save_best(self, model: nn.Module, directory: Path) -> None:
        self.saved_best.append(self.current_step)
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            directory / "model.safetensors",
        )
        (directory / "config.json").write_text(json.dumps({"step": self.current_step}))

    def finish(self, run) -> None:
        assert (run.run_dir / "best" / "model.safetensors").is_file()
        self.finished = True


@pytest.fixture(autouse=True)
def _track_step(monkeypatch):
    """Let the scripted task read the step being evaluated (the loop passes the run)."""
    from torchformer.train import loop

    evaluate = loop.Run.evaluate

    def evaluate_with_step(run, split):
        run.task.current_step = run.state.step
        return evaluate(run, split)

    monkeypatch.setattr(loop.Run, "evaluate", evaluate_with_step)


def scripted(tmp_path: Path, scores: dict[int, float], **train) -> tuple[ScriptedConfig, dict]:
    names = ("batch_size", "optimizer", "nan_at_call", "nan_grad_at_call", "shuffle", "unused")
    options = {k: train.pop(k) for k in names if k in train}
    values = {"epochs": 10, "lr": 0.1, "metric": "accuracy", "patience": 2, "progress": False,
              "max_grad_norm": 0.0, "keep_checkpoints": 100, **train}  # fmt: skip
    return ScriptedConfig(run_dir=str(tmp_path / "run"), train=LoopConfig(**values)), options


def evaluations(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "val"]


# 4 batches of 8 per epoch: one evaluation per epoch at steps 4, 8, 12, ...
SCORES = {4: 0.5, 8: 0.7, 12: 0.6, 16: 0.65, 20: 0.69, 24: 0.9, 28: 0.95}


def test_early_stopping_stops_after_patience_evaluations_without_improvement(tmp_path):
    config, options = scripted(tmp_path, SCORES)
    task = ScriptedTask(config, SCORES, **options)
    run_dir = fit(task)
    # best at step 8; steps 12 and 16 do not improve; patience 2 -> stop at 16, never 20.
    assert [e["step"] for e in evaluations(run_dir)] == [4, 8, 12, 16]
    assert task.finished


def test_best_is_written_only_on_improvement_and_holds_the_best_weights(tmp_path):
    config, options = scripted(tmp_path, SCORES)
    task = ScriptedTask(config, SCORES, **options)
    run_dir = fit(task)
    assert task.saved_best == [4, 8]
    best = load_file(run_dir / "best" / "model.safetensors")
    at_8 = load_checkpoint(run_dir / "checkpoints" / "step-000008.pt")["model"]
    assert all(torch.equal(best[k], at_8[k]) for k in at_8)
    assert json.loads((run_dir / "best" / "config.json").read_text()) == {"step": 8}


def test_early_stopping_state_survives_a_resume(tmp_path):
    config, options = scripted(tmp_path, SCORES)
    fit(
        ScriptedTask(config, SCORES, **options), stop_at_step=12
    )  # one evaluation without improvement
    resumed = ScriptedTask(config, SCORES, **options)
    run_dir = fit(resumed, resume=True)
    # Restored: best 0.7 at step 8 and one bad evaluation, so step 16 stops the run. A
    # dropped state would take 0.65 at 16 as a new best and run on to 24.
    assert [e["step"] for e in evaluations(run_dir)] == [4, 8, 12, 16]
    assert resumed.saved_best == []


def test_resumed_run_ends_with_the_weights_of_an_unbroken_run(tmp_path):
    scores = dict.fromkeys(range(4, 100, 4), 0.5) | {4: 0.9}
    config, options = scripted(tmp_path / "a", scores, epochs=3, patience=10, optimizer="adam")
    unbroken = fit(ScriptedTask(config, scores, **options))
    config_b, _ = scripted(tmp_path / "b", scores, epochs=3, patience=10, checkpoint_every=1)
    fit(ScriptedTask(config_b, scores, **options), stop_at_step=6)  # mid-epoch
    resumed = fit(ScriptedTask(config_b, scores, **options), resume=True)
    a = load_checkpoint(unbroken / "checkpoints" / "step-000012.pt")
    b = load_checkpoint(resumed / "checkpoints" / "step-000012.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["optimizer"]["state"][0]["step"] == b["optimizer"]["state"][0]["step"] == 12


def test_accumulated_micro_batches_equal_one_big_batch(tmp_path):
    """grad_accum 2 x batch 4 == batch 8: the loss is divided by the accumulation steps."""
    scores = {s: 0.5 for s in range(1, 20)}
    big, o = scripted(
        tmp_path / "big", scores, epochs=1, batch_size=8, eval_every=100, shuffle=False
    )
    small, o2 = scripted(
        tmp_path / "small",
        scores,
        epochs=1,
        batch_size=4,
        grad_accum=2,
        eval_every=100,
        shuffle=False,
    )
    a, b = fit(ScriptedTask(big, scores, **o)), fit(ScriptedTask(small, scores, **o2))
    wa = load_checkpoint(a / "checkpoints" / "step-000004.pt")["model"]
    wb = load_checkpoint(b / "checkpoints" / "step-000004.pt")["model"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    # and the accumulated run took 4 optimizer steps for its 8 micro-batches
    assert load_checkpoint(b / "checkpoints" / "step-000004.pt")["metadata"]["samples"] == N_TRAIN


def test_max_steps_stops_and_the_last_step_is_evaluated(tmp_path):
    scores = {s: 0.5 for s in range(1, 40)}
    config, options = scripted(tmp_path, scores, max_steps=6, eval_every=4)
    task = ScriptedTask(config, scores, **options)
    run_dir = fit(task)
    assert [e["step"] for e in evaluations(run_dir)] == [4, 6]
    summary = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert (
        summary["split"] == "summary" and summary["samples"] == 6 * 8 and summary["world_size"] == 1
    )


def test_a_non_finite_loss_stops_before_the_update_and_names_the_kept_checkpoint(tmp_path):
    scores = {s: 0.5 for s in range(1, 40)}
    config, options = scripted(tmp_path, scores, checkpoint_every=2, nan_at_call=5)
    with pytest.raises(NonFiniteLossError, match="step 5") as err:
        fit(ScriptedTask(config, scores, **options))
    assert err.value.quantity == "loss" and err.value.step == 5
    assert "last good checkpoint (step 4)" in str(err.value)
    assert not (Path(config.run_dir) / "checkpoints" / "step-000005.pt").exists()
    rows = [
        json.loads(x) for x in (Path(config.run_dir) / "metrics.jsonl").read_text().splitlines()
    ]
    stop = [r for r in rows if "error" in r]
    assert len(stop) == 1 and stop[0]["step"] == 4 and stop[0]["epoch"] == 1


def test_a_finite_loss_with_a_non_finite_gradient_stops_before_the_update(tmp_path):
    scores = dict.fromkeys(range(1, 100), 0.5)
    config, options = scripted(tmp_path, scores, checkpoint_every=2, nan_grad_at_call=7)
    with pytest.raises(NonFiniteLossError, match="step 7") as err:
        fit(ScriptedTask(config, scores, **options))
    assert err.value.quantity == "grad_norm" and err.value.step == 7
    assert "last good checkpoint (step 6)" in str(err.value)


def test_gradients_are_clipped_to_max_grad_norm(tmp_path):
    """SGD with lr 0.1 and a clip of 1e-3 moves the weights by at most 1e-4 a step."""
    scores = dict.fromkeys(range(1, 100), 0.5)
    config, options = scripted(tmp_path, scores, epochs=1, max_grad_norm=1e-3, checkpoint_every=1)
    run_dir = fit(ScriptedTask(config, scores, **options))
    a = load_checkpoint(run_dir / "checkpoints" / "step-000001.pt")["model"]
    b = load_checkpoint(run_dir / "checkpoints" / "step-000002.pt")["model"]
    moved = torch.sqrt(sum(((b[k] - a[k]) ** 2).sum() for k in a))
    assert 0 < float(moved) <= 0.1 * 1e-3 * 1.0001
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["grad_norm"] > 1e-3 for r in rows if r["split"] == "train")  # norm before clipping


def test_a_plateau_schedule_hears_the_validation_metric(tmp_path):
    """The loop reports each evaluation's metric to the schedule: on a plateau the lr halves."""

    class Plateau(ScriptedTask):
        def build_scheduler(self, optimizer, total_steps):
            return build_scheduler(
                optimizer, "plateau", total_steps=total_steps, plateau_patience=1
            )

    scores = dict.fromkeys(range(1, 100), 0.5)  # never improves after the first evaluation
    config, options = scripted(tmp_path, scores, epochs=4, patience=10, eval_every=2)
    run_dir = fit(Plateau(config, scores, **options))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r["split"] == "train"]
    assert lrs[0] == 0.1 and lrs[-1] < 0.1 / 4


def test_the_run_records_what_happened(tmp_path):
    """metrics.jsonl (train every 10 steps, the first and the last; val; summary),
    config.yaml and manifest.json, with the loop's counters."""
    scores = dict.fromkeys(range(1, 100), 0.5)
    config, options = scripted(tmp_path, scores, epochs=3, patience=10)
    run_dir = fit(ScriptedTask(config, scores, **options))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 10, 12]
    assert all(r["lr"] == 0.1 and r["loss"] > 0 and r["grad_norm"] > 0 for r in train)
    # a step of 8 examples takes milliseconds here: far more than 100 examples a second
    assert all(r["examples_per_s"] > 100 and r["epoch"] in (0, 1, 2) for r in train)
    val = [r for r in rows if r["split"] == "val"]
    assert [(r["step"], r["epoch"]) for r in val] == [(4, 1), (8, 2), (12, 3)]
    assert all(0 < r["eval_s"] < 60 for r in val)
    summary = rows[-1]
    assert summary["split"] == "summary" and summary["epoch"] == 3 and summary["step"] == 12
    assert summary["samples"] == summary["examples"] == 3 * N_TRAIN and summary["world_size"] == 1
    assert 0 < summary["train_seconds"] < 60 and summary["total_steps"] == 12
    # CPU time: positive, and at most all cores busy the whole time (plus timer slack)
    cores = os.cpu_count() or 1
    assert 0 < summary["train_cpu_seconds"] <= cores * summary["train_seconds"] + 0.5
    assert summary["train_samples_per_s"] == pytest.approx(3 * N_TRAIN / summary["train_seconds"])
    assert summary["train_examples_per_s"] == pytest.approx(summary["train_samples_per_s"])
    assert summary["train_samples_per_cpu_s"] == pytest.approx(
        3 * N_TRAIN / summary["train_cpu_seconds"]
    )
    assert all(r["samples_per_s"] == pytest.approx(r["examples_per_s"]) for r in train)
    assert summary["train_examples_per_cpu_s"] == pytest.approx(
        3 * N_TRAIN / summary["train_cpu_seconds"]
    )
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["extra"] == {"examples": N_TRAIN, "task": "scripted", "world_size": 1}
    assert manifest["data_fingerprint"] == "scripted" and manifest["seed"] == 42
    assert (run_dir / "config.yaml").read_text().startswith("task: scripted")


def test_precision_autocasts_training_and_evaluation(tmp_path):
    scores = dict.fromkeys(range(1, 100), 0.5)
    for precision, eval_precision, expect in [
        ("fp32", None, {("train", False, None), ("eval", False, None)}),
        ("bf16", None, {("train", True, torch.bfloat16), ("eval", True, torch.bfloat16)}),
        ("bf16", "fp32", {("train", True, torch.bfloat16), ("eval", False, None)}),
    ]:
        config, options = scripted(tmp_path / f"{precision}-{eval_precision}", scores, epochs=1,
                                   precision=precision, eval_precision=eval_precision)  # fmt: skip
        task = ScriptedTask(config, scores, **options)
        fit(task)
        assert task.autocast_seen == expect, (precision, eval_precision)


def test_checkpoints_at_every_n_steps_evaluations_and_epoch_ends_and_stop_at_step(tmp_path):
    scores = dict.fromkeys(range(1, 100), 0.5)
    config, options = scripted(tmp_path, scores, epochs=2, eval_every=3, checkpoint_every=5)
    run_dir = fit(ScriptedTask(config, scores, **options), stop_at_step=7)
    steps = sorted(int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("*.pt"))
    assert steps == [3, 4, 5, 6]  # evaluations 3, 6; epoch end 4; every 5; stopped after 7
    assert not (run_dir / "eval").exists()


def test_a_resumed_schedule_continues_where_it_stopped(tmp_path):
    """With a decaying schedule, a resume that lost the scheduler's state would restart
    the decay: the resumed run's lrs and weights would differ from the unbroken run's."""

    class Decaying(ScriptedTask):
        def build_scheduler(self, optimizer, total_steps):
            return build_scheduler(optimizer, "linear", total_steps=total_steps, warmup_steps=2)

    scores = dict.fromkeys(range(1, 100), 0.5)
    config, options = scripted(tmp_path / "a", scores, epochs=2, patience=10)
    unbroken = fit(Decaying(config, scores, **options))
    config_b, _ = scripted(tmp_path / "b", scores, epochs=2, patience=10, checkpoint_every=1)
    fit(Decaying(config_b, scores, **options), stop_at_step=5)
    resumed = fit(Decaying(config_b, scores, **options), resume=True)
    a = load_checkpoint(unbroken / "checkpoints" / "step-000008.pt")
    b = load_checkpoint(resumed / "checkpoints" / "step-000008.pt")
    assert a["scheduler"] == b["scheduler"]
    lrs = [json.loads(x).get("lr") for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    lrs = [lr for lr in lrs if lr is not None]
    assert lrs[-1] < lrs[0] / 2  # the schedule decayed (it is stepped every optimizer step)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_fresh_run_refuses_an_existing_run_unless_overwrite_and_resume_checks_settings(tmp_path):
    from torchformer.config import ConfigError
    from torchformer.train.run_dir import RunDirError

    scores = dict.fromkeys(range(1, 100), 0.5)
    config, options = scripted(tmp_path, scores, epochs=1)
    fit(ScriptedTask(config, scores, **options))
    with pytest.raises(RunDirError, match="already holds a run"):
        fit(ScriptedTask(config, scores, **options))
    fit(ScriptedTask(config, scores, **options), overwrite=True)
    config.train.lr = 0.2
    with pytest.raises(ConfigError, match=r"train.lr: 0.1 -> 0.2"):
        fit(ScriptedTask(config, scores, **options), resume=True)


def test_a_loss_metric_is_minimised(tmp_path):
    """metric "loss": lower is better (the scripted loss is minus the score)."""
    scores = {4: 0.5, 8: 0.4, 12: 0.3, 16: 0.2}  # loss rises: -0.5, -0.4, ...
    config, options = scripted(tmp_path, scores, metric="loss", epochs=4, patience=2)
    task = ScriptedTask(config, scores, **options)
    fit(task)
    assert task.saved_best == [4]


def test_total_steps_count_optimizer_steps_with_accumulation(tmp_path):
    scores = dict.fromkeys(range(1, 100), 0.5)
    config, options = scripted(tmp_path, scores, epochs=2, grad_accum=3, patience=10)
    run_dir = fit(ScriptedTask(config, scores, **options))
    # 4 micro-batches an epoch, accumulation 3: steps of 3 and 1 micro-batches, 2 per epoch.
    assert [e["step"] for e in evaluations(run_dir)] == [2, 4]
    summary = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert summary["total_steps"] == 4 and summary["examples"] == summary["samples"] == 2 * N_TRAIN


@pytest.fixture
def process_group(tmp_path):
    """A one-process gloo group, as torchrun leaves for rank 0 (the sharded save writes
    loop.pt from rank 0 of the group)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_an_fsdp_run_in_one_process_writes_sharded_checkpoints_and_resumes_from_them(
    tmp_path, process_group
):
    """train.distributed: fsdp writes DCP checkpoints at any world size (so that a run
    started on N processes resumes on 1): here the whole path in one process, with a
    parameter that never had a gradient (no optimizer state to load for it)."""
    scores = dict.fromkeys(range(1, 100), 0.5)
    base = {"epochs": 3, "patience": 10, "optimizer": "adam", "distributed": "fsdp",
            "keep_checkpoints": 2, "unused": True}  # fmt: skip
    config, options = scripted(tmp_path / "a", scores, **base)
    unbroken = fit(ScriptedTask(config, scores, **options))
    config_b, _ = scripted(
        tmp_path / "b", scores, checkpoint_every=1, **base | {"keep_checkpoints": 3}
    )
    fit(ScriptedTask(config_b, scores, **options), stop_at_step=6)
    names = sorted(p.name for p in (Path(config_b.run_dir) / "checkpoints").iterdir())
    assert names == [f"step-00000{s}.dcp" for s in (4, 5, 6)]  # keep_last counts directories
    assert (Path(config_b.run_dir) / "checkpoints" / "step-000006.dcp" / "loop.pt").is_file()
    task = ScriptedTask(config_b, scores, **options)
    resumed = fit(task, resume=True)
    assert task.loss_calls == 6  # steps 7-12: resumed from the newest checkpoint, step 6
    from torchformer.train.fsdp import consolidate

    a = consolidate(unbroken / "checkpoints" / "step-000012.dcp")
    b = consolidate(resumed / "checkpoints" / "step-000012.dcp")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert evaluations(resumed) == evaluations(resumed)[:3] and len(evaluations(resumed)) == 3


def test_a_task_counting_samples_logs_example_throughput_only(tmp_path):
    """Units named "samples" may be loss weights (class weights): throughput then counts
    examples, and no second, weighted, samples figure is logged."""

    class Weighted(ScriptedTask):
        units = "samples"

        def batch_units(self, indices):
            return 2.5 * len(indices)  # e.g. class weights

    scores = dict.fromkeys(range(1, 100), 0.5)
    config, options = scripted(tmp_path, scores, epochs=1)
    run_dir = fit(Weighted(config, scores, **options))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = rows[-1]
    assert summary["samples"] == N_TRAIN and "samples_per_cpu_s" not in summary
    assert set(summary) >= {"train_samples_per_s", "train_samples_per_cpu_s"}
    assert summary["train_samples_per_s"] == pytest.approx(N_TRAIN / summary["train_seconds"])
    train = [r for r in rows if r["split"] == "train"]
    assert train and all(set(r) & {"samples_per_s"} and "examples_per_s" not in r for r in train)


def test_a_checkpoint_from_an_earlier_version_is_refused_naming_the_file(tmp_path):
    from torchformer.train.checkpoint import CheckpointError, save_checkpoint

    scores = dict.fromkeys(range(1, 100), 0.5)
    config, options = scripted(tmp_path, scores, epochs=1)
    fit(ScriptedTask(config, scores, **options), stop_at_step=2)
    old = Path(config.run_dir) / "checkpoints" / "step-000009.pt"
    save_checkpoint(old, {"model": {}, "loop": {"step": 9}})  # the per-task format before
    with pytest.raises(CheckpointError, match=r"step-000009\.pt: written by an earlier"):
        fit(ScriptedTask(config, scores, **options), resume=True)


def test_rank_zero_of_an_fsdp_run_shards_evaluates_everything_and_gathers_best(
    tmp_path, process_group, monkeypatch
):
    """Rank 0's side of a 2-process FSDP run, in one process (a one-process group stands
    in for the other rank's collectives): the model is sharded, every rank evaluates every
    validation example (each forward is a collective), the metrics are rank 0's, and best/
    holds the whole weights gathered into rank 0's CPU replica."""
    from safetensors.torch import load_file

    from torchformer.train import distributed, loop
    from torchformer.train.fsdp import consolidate

    monkeypatch.setattr(loop, "init_distributed", lambda device="auto": distributed.World(size=2))
    scores = {4: 0.5, 8: 0.7, 12: 0.6}
    config, options = scripted(tmp_path, scores, epochs=3, distributed="fsdp", patience=10)
    task = ScriptedTask(config, scores, **options)
    run_dir = fit(task)
    assert type(task.model).__name__.startswith("FSDP")  # sharded in place
    assert task.saved_best == [4, 8] and task.finished
    best = load_file(run_dir / "best" / "model.safetensors")
    at_8 = consolidate(run_dir / "checkpoints" / "step-000008.dcp")
    assert best.keys() == at_8.keys() and all(torch.equal(best[k], at_8[k]) for k in best)


def test_a_refused_resume_leaves_the_run_untouched(tmp_path):
    from torchformer.train.checkpoint import CheckpointError, save_checkpoint

    scores = dict.fromkeys(range(1, 100), 0.5)
    config, options = scripted(tmp_path, scores, epochs=1)
    run_dir = fit(ScriptedTask(config, scores, **options), stop_at_step=2)
    save_checkpoint(run_dir / "checkpoints" / "step-000009.pt", {"model": {}, "loop": {}})
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match=r"step-000009\.pt: written by an earlier"):
        fit(ScriptedTask(config, scores, **options), resume=True)
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}
    assert after == files  # manifest.json and config.yaml not rewritten, nothing added


def test_a_full_disk_stops_the_run_naming_the_last_good_checkpoint(tmp_path, monkeypatch):
    import errno

    from torchformer.train import checkpoint

    scores = dict.fromkeys(range(1, 100), 0.5)
    config, options = scripted(tmp_path, scores, epochs=2, checkpoint_every=1)
    real_save = checkpoint.save_checkpoint

    def save_until_full(path, state):
        if state["step"] >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(path, state)

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_until_full)
    with pytest.raises(OSError, match=r"step-000002\.pt") as info:
        fit(ScriptedTask(config, scores, **options))
    assert info.value.errno == errno.ENOSPC and info.value.__cause__ is None
    kept = load_checkpoint(Path(config.run_dir) / "checkpoints" / "step-000002.pt")
    assert kept["step"] == 2


def test_a_full_disk_stops_a_sharded_run_naming_the_last_good_checkpoint(
    tmp_path, monkeypatch, process_group
):
    import errno

    from torchformer.train import run as run_module

    scores = dict.fromkeys(range(1, 100), 0.5)
    config, options = scripted(tmp_path, scores, epochs=2, checkpoint_every=1,
                               distributed="fsdp")  # fmt: skip
    real_save = run_module.save_sharded

    def save_until_full(path, model, optimizer, loop_state):
        if loop_state["metadata"]["step"] >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(path, model, optimizer, loop_state)

    monkeypatch.setattr(run_module, "save_sharded", save_until_full)
    with pytest.raises(OSError, match=r"step-000003\.dcp: cannot write .*No space left.* "
                       r"intact, is .*step-000002\.dcp \(step 2\)") as info:  # fmt: skip
        fit(ScriptedTask(config, scores, **options))
    assert info.value.errno == errno.ENOSPC


def test_save_sharded_replaces_a_leftover_temporary_and_an_older_save(tmp_path):
    """Called in a plain process (no process group): a temporary directory left by a
    killed save is cleared first, and saving to a path again replaces it."""
    from torchformer.train.fsdp import consolidate, save_sharded

    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "step-000001.dcp"
    leftover = tmp_path / ".step-000001.dcp.tmp"
    leftover.mkdir()
    (leftover / "junk").write_text("from a killed save")
    save_sharded(path, model, optimizer, {"step": 1})
    with torch.no_grad():
        model.weight.add_(1.0)
    save_sharded(path, model, optimizer, {"step": 2})
    assert not leftover.exists() and not (path / "junk").exists()
    saved = consolidate(path)
    assert torch.equal(saved["weight"], model.weight.detach())
    assert load_checkpoint(path / "loop.pt")["step"] == 2


class FallingBackTask(ScriptedTask):
    """A task whose model's sparse attention ran as dense attention on some batches."""

    def batch_loss(self, model: nn.Module, indices: list[int], device) -> torch.Tensor:
        from torchformer.nn.sparse import AttentionPattern, record_fallback

        if self.loss_calls % 2 == 0:  # every other batch
            record_fallback(AttentionPattern(kind="lsh"), "a test reason")
        return super().batch_loss(model, indices, device)


def test_attention_fallbacks_of_the_run_are_logged_once_at_its_end_and_then_reset(tmp_path):
    from torchformer.nn.sparse import fallbacks

    scores = dict.fromkeys(range(1, 100), 0.5)
    config, options = scripted(tmp_path, scores, epochs=2, patience=10)
    fallbacks(reset=True)
    run_dir = fit(FallingBackTask(config, scores, **options))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    attention = [r for r in rows if r["split"] == "attention"]
    assert len(attention) == 1
    row = attention[0]
    assert row["attention_fallbacks"] == {"lsh: a test reason": 4}  # 8 batches, every other
    assert (row["step"], row["epoch"]) == (8, 2)
    assert fallbacks() == {}  # counted from zero again for the next run in this process
    config, options = scripted(tmp_path / "plain", scores, epochs=1, patience=10)
    plain = fit(ScriptedTask(config, scores, **options))
    assert all(json.loads(x)["split"] != "attention"
               for x in (plain / "metrics.jsonl").read_text().splitlines())  # fmt: skip


class StatefulTask(ScriptedTask):
    """A task with training state of its own (like Transformer-XL's memory)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loaded: list[dict] = []

    def train_state(self) -> dict:
        return {"loss_calls": self.loss_calls}

    def load_train_state(self, state: dict) -> None:
        self.loaded.append(state)
        self.loss_calls = state["loss_calls"]


class LoaderOnlyTask(ScriptedTask):
    """Loads task state but saves none: its checkpoints hold no "task" entry."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loaded: list[dict] = []

    def load_train_state(self, state: dict) -> None:
        self.loaded.append(state)


def test_a_tasks_own_training_state_is_checkpointed_and_handed_back_on_resume(tmp_path):
    scores = dict.fromkeys(range(1, 100), 0.5)
    config, options = scripted(tmp_path, scores, epochs=2, patience=10, checkpoint_every=1)
    first = StatefulTask(config, scores, **options)
    run_dir = fit(first, stop_at_step=5)
    ckpt = load_checkpoint(run_dir / "checkpoints" / "step-000005.pt")
    assert ckpt["task"] == {"loss_calls": 5}
    resumed = StatefulTask(config, scores, **options)
    fit(resumed, resume=True)
    assert resumed.loaded == [{"loss_calls": 5}]  # once, the newest checkpoint's
    assert resumed.loss_calls == 8  # went on counting from the restored state
    # A task that loads state but never saved any is not handed None.
    config_b, _ = scripted(tmp_path / "b", scores, epochs=2, patience=10, checkpoint_every=1)
    fit(LoaderOnlyTask(config_b, scores, **options), stop_at_step=3)
    assert "task" not in load_checkpoint(tmp_path / "b" / "run" / "checkpoints" / "step-000003.pt")
    loader = LoaderOnlyTask(config_b, scores, **options)
    fit(loader, resume=True)
    assert loader.loaded == []


class FakeBar:
    """Stands in for the tqdm bar: records what the loop asks of it. (A real bar drawn
    in this process shares tqdm's inter-process lock with the children mutmut forks from
    it, which then hang.)"""

    def __init__(self, total, desc, *, disable=False, **kwargs) -> None:
        self.args, self.kwargs = (total, desc, disable), kwargs
        self.n, self.postfixes, self.closed = kwargs.get("initial", 0), [], False

    def update(self, n: int) -> None:
        self.n += n

    def set_postfix(self, values, refresh=True) -> None:
        self.postfixes.append(dict(values))

    def close(self) -> None:
        self.closed = True


def test_the_progress_setting_reaches_the_bar_and_its_postfix(tmp_path, monkeypatch):
    import functools

    from torchformer.train import loop
    from torchformer.train.logging import ProgressPostfix

    bars: list[FakeBar] = []
    monkeypatch.setattr(
        loop, "progress_bar", lambda *a, **kw: bars.append(FakeBar(*a, **kw)) or bars[-1]
    )
    # redraw the postfix at every step (the default waits a second: longer than this run)
    monkeypatch.setattr(loop, "ProgressPostfix", functools.partial(ProgressPostfix,
                                                                   min_interval_s=0.0))  # fmt: skip
    scores = dict.fromkeys(range(1, 100), 0.5)
    config, options = scripted(tmp_path / "on", scores, epochs=2, progress=True, checkpoint_every=1)
    fit(ScriptedTask(config, scores, **options), stop_at_step=3)
    fit(ScriptedTask(config, scores, **options), resume=True)
    first, resumed = bars
    assert first.args == (8, "train", False) and first.kwargs == {"initial": 0}
    assert resumed.args == (8, "train", False) and resumed.kwargs == {"initial": 3}
    assert first.n == 3 and resumed.n == 8 and first.closed and resumed.closed
    assert len(resumed.postfixes) == 5 and all("loss" in p and "lr" in p for p in resumed.postfixes)
    bars.clear()
    config, options = scripted(tmp_path / "off", scores, epochs=1, progress=False)
    fit(ScriptedTask(config, scores, **options))
    assert bars[0].args == (4, "train", True)


def test_train_threads_sets_torchs_intra_op_threads(tmp_path, monkeypatch):
    # Recorded, not set: a second OpenMP thread in this process would make a later fork
    # (mutmut runs each mutant in a forked child) hang in its first parallel region.
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    scores = dict.fromkeys(range(1, 100), 0.5)
    config, options = scripted(tmp_path, scores, epochs=1, threads=2)
    fit(ScriptedTask(config, scores, **options))
    assert calls == [2]
    calls.clear()
    config, options = scripted(tmp_path / "unset", scores, epochs=1)  # 0: torch decides
    fit(ScriptedTask(config, scores, **options))
    assert calls == []


def test_epochs_end_a_run_whose_max_steps_is_larger(tmp_path):
    scores = {4: 0.5}
    config, options = scripted(tmp_path, scores, epochs=1, max_steps=100)
    run_dir = fit(ScriptedTask(config, scores, **options))
    summary = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert (summary["step"], summary["epoch"]) == (4, 1)


def test_train_seconds_add_up_and_samples_per_s_counts_examples(tmp_path, monkeypatch):
    """With a clock that advances one second per reading, every step takes 1 s: the run's
    train_seconds are its steps, and a task whose units are weighted "samples" logs
    examples per second, not weighted units."""
    import itertools
    from types import SimpleNamespace

    from torchformer.train import loop

    class Weighted(ScriptedTask):
        units = "samples"

        def batch_units(self, indices):
            return 2.5 * len(indices)

    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=itertools.count().__next__,
                                                      process_time=itertools.count().__next__))  # fmt: skip
    scores = dict.fromkeys(range(1, 100), 0.5)
    config, options = scripted(tmp_path, scores, epochs=2)
    run_dir = fit(Weighted(config, scores, **options))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = next(r for r in rows if r["split"] == "summary")
    assert summary["train_seconds"] == summary["step"] == 8
    train = [r for r in rows if r["split"] == "train"]
    assert train and all(r["samples_per_s"] == 8.0 for r in train)  # 8 examples in 1 s


def test_bf16_precision_autocasts_to_bfloat16_on_every_device_type():
    """On CUDA torch.autocast defaults to float16 (which would need a grad scaler):
    bf16 must be asked for by name. (On a CPU-only build CUDA autocast is disabled with
    a warning, but keeps the dtype it was given.)"""
    import warnings
    from types import SimpleNamespace

    from torchformer.train.run import Run

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for device in ("cpu", "cuda"):
            ac = Run.autocast(SimpleNamespace(device=torch.device(device)), "bf16")
            assert ac.fast_dtype is torch.bfloat16, device


class RecordsTo(nn.Linear):
    def __init__(self) -> None:
        super().__init__(4, 2)
        self.moved_to: list = []

    def to(self, *args, **kwargs):
        self.moved_to.append(args)
        return super().to(*args, **kwargs)


class RecordsToTask(ScriptedTask):
    def prepare(self, run_dir: Path, *, resume: bool, main: bool) -> nn.Module:
        super().prepare(run_dir, resume=resume, main=main)
        self.model = RecordsTo()
        return self.model


@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_a_one_process_run_moves_the_model_to_its_device_and_makes_no_copy_of_it(
    tmp_path, monkeypatch, distributed, request
):
    """Only rank 0 of a sharded run with several processes keeps an unsharded copy of
    the model (for best/); a one-process run holds the model once."""
    from torchformer.train import loop

    if distributed == "fsdp":
        request.getfixturevalue("process_group")
    built = []
    monkeypatch.setattr(loop, "Run", lambda **kw: built.append(kw) or Run(**kw))
    from torchformer.train.run import Run

    scores = dict.fromkeys(range(1, 100), 0.5)
    config, options = scripted(tmp_path, scores, epochs=1, distributed=distributed)
    task = RecordsToTask(config, scores, **options)
    fit(task)
    assert len(built) == 1 and built[0]["replica"] is None
    assert (torch.device("cpu"),) in task.model.moved_to
