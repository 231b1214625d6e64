"""What a training run is: the loop's settings (``LoopConfig``), its position
(``LoopState``), the contract a task fulfils (``Task``) and the ``Run`` that holds model,
optimizer, schedule, sampler, checkpoints and logs, and writes and reads its checkpoints.

``train.loop.fit`` builds a ``Run`` from a task and trains it.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from torchformer.io import replace_dir
from torchformer.train.checkpoint import (
    CheckpointManager,
    restore_training_state,
    training_state,
    unwrap_model,
)
from torchformer.train.distributed import (
    World,
    broadcast_object,
    gather_objects,
)
from torchformer.train.early_stopping import EarlyStopping
from torchformer.train.fsdp import full_model_state_dict, load_sharded, save_sharded
from torchformer.train.guards import stop_on_non_finite
from torchformer.train.logging import MetricsLogger
from torchformer.train.schedules import ScheduleName, Scheduler
from torchformer.train.seed import capture_rng_state, restore_rng_state

__all__ = ["LoopConfig", "LoopState", "Precision", "Run", "Task"]

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]


@dataclass
class LoopConfig:
    """The ``train:`` settings every task shares (a task's ``TrainConfig`` extends it).

    Attributes:
        epochs / max_steps: stop after this many epochs or optimizer steps.
        grad_accum: micro-batches per optimizer step.
        eval_every: evaluate every N optimizer steps (None: at the end of each epoch);
            the last step is always evaluated.
        metric: the validation metric for early stopping and ``best/``.
        checkpoint_every: also checkpoint every N optimizer steps (None: at evaluations
            and epoch ends).
        precision: "bf16" autocasts matmuls to bfloat16 (fast on AVX512-BF16/AMX CPUs
            and on GPUs); eval_precision: validation's and the final evaluation's
            (None: the training precision).
        threads: torch intra-op threads per process (None: torch's default).
        device: "auto" (CUDA when available, ``cuda:LOCAL_RANK`` under torchrun), "cpu",
            "cuda", "cuda:1", ...
        distributed: under torchrun, "ddp" (a full model per process; gradients
            all-reduced) or "fsdp" (FSDP2: parameters, gradients and optimizer state
            sharded across processes, for models that do not fit one device; sharded
            checkpoints, see ``train.fsdp``; evaluation replicated on every rank).
    """

    epochs: int = 3
    max_steps: int | None = None
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    schedule: ScheduleName = "linear"
    max_grad_norm: float = 1.0
    eval_every: int | None = None
    metric: str = "loss"
    patience: int = 2
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    seed: int = 42
    threads: int | None = None
    device: str = "auto"
    precision: Precision = "fp32"
    eval_precision: Precision | None = None
    progress: bool = True
    distributed: Literal["ddp", "fsdp"] = "ddp"


@dataclass
class LoopState:
    """Counters saved in every checkpoint (its ``metadata``)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs completed
    samples: int = 0  # examples trained on (all ranks)
    units: float = 0.0  # what the loss is averaged over: examples, target tokens, ...
    train_seconds: float = 0.0  # time in forward/backward/optimizer steps only
    train_cpu_seconds: float = 0.0  # CPU time of those (rank 0, all threads)
    stopped_early: bool = False


class Task(Protocol):
    """What a task supplies to the loop; everything else is the loop's.

    ``config`` is the task's config dataclass: ``run_dir``, a ``train`` section that
    extends :class:`LoopConfig`, and the task's own sections. ``units`` names what
    ``batch_units`` counts ("samples", "tgt_tokens"): it names the throughput in
    ``metrics.jsonl`` (``samples_per_s``, ``tgt_tokens_per_s``).
    """

    config: Any
    units: str

    def prepare(self, run_dir: Path, *, resume: bool, main: bool) -> nn.Module:
        """Read and encode the data, build (or load) tokenizers and the model (on the CPU).

        ``main`` is True on rank 0, which runs first and may write files into
        ``run_dir`` (a trained tokenizer); the other ranks then read them.
        """
        ...

    def manifest(self) -> dict[str, Any]:
        """``data_fingerprint`` and ``extra`` (sizes, labels, ...) for ``manifest.json``."""
        ...

    def train_sampler(self, world: World) -> Any:
        """The rank-aware batch sampler of the training split (``data.batching``)."""
        ...

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer: ...

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Scheduler: ...

    def checkpoints_to_keep(self) -> int:
        """How many step checkpoints to keep (e.g. more for checkpoint averaging)."""
        ...

    def batch_units(self, indices: list[int]) -> float:
        """What the loss of these training examples is averaged over (its weight)."""
        ...

    def batch_loss(
        self, model: nn.Module, indices: list[int], device: torch.device
    ) -> torch.Tensor:
        """The mean loss of these training examples (averaged over their ``batch_units``)."""
        ...

    def split_size(self, split: str) -> int:
        """Examples in an evaluation split ("val"); 0 when the run has none."""
        ...

    def evaluate(
        self, model: nn.Module, split: str, indices: list[int], device: torch.device
    ) -> dict[int, Any]:
        """Per-example outputs of ``model`` (in eval mode) on these examples, by index."""
        ...

    def summarize(self, split: str, outputs: dict[int, Any]) -> dict[str, float]:
        """Metrics (including ``train.metric``) from the outputs of every example."""
        ...

    # Optional: a task with state of its own that the next batches depend on (a
    # Transformer-XL memory) adds ``train_state() -> dict`` and ``load_train_state(dict)``;
    # single-process checkpoints hold it, so a resume continues exactly.

    def save_best(self, model: nn.Module, directory: Path) -> None:
        """Write the model directory ``best/`` holds (model, tokenizer, settings)."""
        ...

    def finish(self, run: Run) -> None:
        """After training, on rank 0: final evaluation of ``best/``, files, report."""
        ...


class _NoLog:
    """The metrics log of ranks other than 0: they write nothing."""

    def log(self, values: Any, **where: Any) -> dict:
        return {}

    def drop_after(self, step: int) -> int:
        return 0

    def close(self) -> None:
        pass


@dataclass
class Run:
    """Everything a training run holds; ``checkpoint()`` writes what ``restore()`` reads."""

    task: Task
    world: World
    run_dir: Path
    model: nn.Module  # what the loop trains: the task's model, or DDP around it
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    sampler: Any
    stopper: EarlyStopping
    ckpts: CheckpointManager
    log: MetricsLogger | _NoLog
    total_steps: int
    state: LoopState = field(default_factory=LoopState)
    replica: nn.Module | None = None  # FSDP: rank 0's unsharded CPU copy, for best/

    @property
    def sharded(self) -> bool:
        """FSDP2 over several processes: parameters and optimizer state are sharded."""
        return self.world.distributed and self.config.distributed == "fsdp"

    @property
    def sharded_checkpoints(self) -> bool:
        """An FSDP run writes DCP checkpoints at any world size (so that it resumes from
        them on 1 process, or on another number: DCP reshards)."""
        return self.config.distributed == "fsdp"

    @property
    def config(self) -> LoopConfig:
        return self.task.config.train

    @property
    def module(self) -> nn.Module:
        """The task's model itself (without the DDP wrapper)."""
        return unwrap_model(self.model)

    @property
    def device(self) -> torch.device:
        return self.world.device

    @property
    def eval_precision(self) -> str:
        return self.config.eval_precision or self.config.precision

    def autocast(self, precision: str) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def checkpoint(self) -> None:
        """Write the step's checkpoint and prune the older ones (a full disk stops the run
        with :class:`CheckpointWriteError`, naming the last good checkpoint)."""
        if self.sharded_checkpoints:  # every rank writes its shards
            path = self.ckpts.path_for(self.state.step)
            try:
                save_sharded(path, self.model, self.optimizer, self._loop_state())
            except OSError as e:
                raise self.ckpts.write_error(self.state.step, e) from None
            if self.world.is_main:
                self.ckpts.prune(keep=path)
            return
        if not self.world.is_main:
            return
        state = training_state(
            step=self.state.step,
            epoch=self.state.epoch,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            sampler=self.sampler,
            early_stopping=self.stopper,
            metadata=asdict(self.state),
        )
        if hasattr(self.task, "train_state"):  # e.g. Transformer-XL's memory
            state["task"] = self.task.train_state()
        self.ckpts.save(self.state.step, state)

    def _loop_state(self) -> dict[str, Any]:
        """What a sharded checkpoint holds besides the model and optimizer shards."""
        return {
            "step": self.state.step,
            "epoch": self.state.epoch,
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "early_stopping": self.stopper.state_dict(),
            "rng": capture_rng_state(),
            "metadata": asdict(self.state),
        }

    def restore_sharded(self, path: Path) -> None:
        loop = load_sharded(path, self.model, self.optimizer)
        self.scheduler.load_state_dict(loop["scheduler"])
        self.sampler.load_state_dict(loop["sampler"])
        self.stopper.load_state_dict(loop["early_stopping"])
        restore_rng_state(loop["rng"])
        self.state = LoopState(**loop["metadata"])

    def restore(self, ckpt: dict) -> None:
        restore_training_state(
            ckpt,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            sampler=self.sampler,
            early_stopping=self.stopper,
        )
        self.state = LoopState(**ckpt["metadata"])
        if ckpt.get("task") is not None and hasattr(self.task, "load_train_state"):
            self.task.load_train_state(ckpt["task"])

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics of the model on ``split``: each rank evaluates every N-th example,
        the outputs are gathered, and every rank computes the same metrics. (FSDP: every
        forward is a collective, so every rank evaluates every example.)"""
        module, world, n = self.module, self.world, self.task.split_size(split)
        shards = 1 if self.sharded else world.size
        indices = list(range(world.rank % shards, n, shards))
        was_training = module.training
        module.eval()
        with torch.inference_mode(), self.autocast(self.eval_precision):
            outputs = self.task.evaluate(module, split, indices, self.device)
        module.train(was_training)
        merged: dict[int, Any] = {}
        for part in [outputs] if self.sharded else gather_objects(world, outputs):
            merged.update(part)
        values = self.task.summarize(split, merged)
        # FSDP ranks computed their metrics apart: take rank 0's, so that every rank makes
        # the same early-stopping and best/ decision (best/ is gathered collectively).
        return broadcast_object(world, values) if self.sharded else values

    def evaluate_and_keep_best(self) -> None:
        """Validate; save ``best/`` on improvement; update early stopping and the plateau schedule."""
        start, metric = time.perf_counter(), self.config.metric
        values = self.evaluate("val")
        values["eval_s"] = time.perf_counter() - start
        self.log.log(values, step=self.state.step, epoch=self.state.epoch, split="val")
        logger.info(
            "step %d val %s",
            self.state.step,
            {k: round(v, 4) for k, v in values.items() if isinstance(v, float)},
        )
        self.scheduler.step_metric(values[metric])
        if self.stopper.update(values[metric], step=self.state.step):
            self.save_best()
        self.state.stopped_early = self.stopper.should_stop

    def save_best(self) -> None:
        """``best/`` from rank 0 (FSDP: the shards gathered into rank 0's CPU replica)."""
        module = self.module
        if self.sharded:
            full = full_model_state_dict(self.model)  # a collective: every rank takes part
            if self.world.is_main:
                self.replica.load_state_dict(full)
                module = self.replica
        if self.world.is_main:
            with replace_dir(self.run_dir / "best") as tmp:  # a crash keeps the previous best/
                self.task.save_best(module, tmp)

    def stop_on_non_finite(self) -> AbstractContextManager:
        s = self.state
        return stop_on_non_finite(self.log, step=s.step, epoch=s.epoch, note=self.ckpts.kept_note)
