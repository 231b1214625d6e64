"""The one training loop: every task trains through ``fit(task)``.

What every task shares lives here, readable top to bottom: steps and epochs, gradient
accumulation, clipping, schedules, precision (fp32 / bf16 autocast), evaluation
cadence, early stopping, ``best/``, atomic checkpoints with exact resume, the NaN/inf
guard, the progress bar, ``metrics.jsonl``, the manifest, and distribution over
``torchrun`` processes. A task (``torchformer.tasks.*``) supplies only what differs,
through the small ``Task`` contract of ``train.run``; the ``Run`` it trains lives there too.

Distributed training (``torchrun --nproc_per_node N -m torchformer train CONFIG``):

- the sampler builds the same *global* batches on every rank (a config's batch size is
  the global batch) and each rank trains on its disjoint shard;
- each rank's loss is weighted by its share of the global batch's units (examples,
  target tokens, class weights), so after DDP averages the gradients they equal the
  gradient of the whole batch in one process: the same config trains the same model
  on 1, 2 or N processes, also when the batch does not divide by N;
- accumulation micro-steps skip the all-reduce (``no_sync``): one per optimizer step;
- evaluation is sharded (every example once, no padding duplicates), the per-example
  outputs gathered, and the metrics computed from all of them, so they equal the
  single-process ones and every rank takes the same early-stopping decision;
- only rank 0 writes (run directory, logs, checkpoints, ``best/``, report).

    run_dir = fit(task, resume=False)
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchformer.config import config_to_dict, save_config
from torchformer.nn.sparse import fallbacks
from torchformer.train.accumulation import (
    is_accumulation_boundary,
    optimizer_step,
    sync_gradients,
)
from torchformer.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    unwrap_model,
)
from torchformer.train.distributed import (
    World,
    init_distributed,
    main_process_first,
    shutdown_distributed,
    wrap_model,
)
from torchformer.train.early_stopping import EarlyStopping
from torchformer.train.guards import check_finite
from torchformer.train.logging import MetricsLogger, ProgressPostfix, progress_bar, write_manifest
from torchformer.train.run import LoopConfig, LoopState, Run, Task, _NoLog
from torchformer.train.run_dir import claim_run_dir, discard_previous_run, restore_previous_run
from torchformer.train.seed import seed_everything

__all__ = ["LoopConfig", "LoopState", "Run", "Task", "fit"]

logger = logging.getLogger(__name__)


def _setup(task: Task, world: World, *, resume: bool, overwrite: bool) -> Run:
    """Claim the run directory (rank 0), prepare data and model (rank 0 first), build the
    optimizer, schedule, sampler and checkpoints, restore the newest checkpoint, and only
    then write the run's config and manifest: a refused resume leaves the run untouched.

    A run replaced by ``overwrite`` is set aside by the claim and deleted only at the end,
    once all of this has succeeded; a failure on the way puts it back."""
    run = None
    try:
        run = _build_run(task, world, resume=resume, overwrite=overwrite)
        if resume:
            _resume(run)
        if world.is_main:
            _write_run_record(run)
    except BaseException:
        if run is not None:
            run.log.close()
        if world.is_main:
            restore_previous_run(task.config.run_dir)
        raise
    if world.is_main:
        discard_previous_run(run.run_dir)
    return run


def _build_run(task: Task, world: World, *, resume: bool, overwrite: bool) -> Run:
    config, tc = task.config, task.config.train

    def prepare(main: bool) -> tuple[Path, nn.Module, CheckpointManager]:
        if main:
            run_dir = claim_run_dir(
                config.run_dir, resume=resume, overwrite=overwrite, config=config
            )
        else:
            run_dir = Path(config.run_dir)
        seed_everything(tc.seed)
        model = task.prepare(run_dir, resume=resume, main=main)
        ckpts = CheckpointManager(
            run_dir / "checkpoints", keep_last=task.checkpoints_to_keep(), sharded=sharded
        )
        return run_dir, model, ckpts

    sharded = tc.distributed == "fsdp"  # checkpoint format; the model is sharded on N > 1
    run_dir, model, ckpts = main_process_first(world, prepare)
    replica = copy.deepcopy(model) if sharded and world.distributed and world.is_main else None
    model.to(world.device)  # before the optimizer and its restored state are created
    model = wrap_model(model, world, tc.distributed)
    sampler = task.train_sampler(world)
    total_steps = tc.max_steps or math.ceil(len(sampler) / tc.grad_accum) * tc.epochs
    optimizer = task.build_optimizer(unwrap_model(model))
    return Run(
        task=task,
        world=world,
        run_dir=run_dir,
        model=model,
        optimizer=optimizer,
        scheduler=task.build_scheduler(optimizer, total_steps),
        sampler=sampler,
        stopper=EarlyStopping(
            tc.metric, mode="min" if tc.metric == "loss" else "max", patience=tc.patience
        ),
        ckpts=ckpts,
        log=MetricsLogger(run_dir) if world.is_main else _NoLog(),
        total_steps=total_steps,
        replica=replica,
    )


def _resume(run: Run) -> None:
    """Restore the newest checkpoint (the run starts from scratch when there is none)."""
    ckpts = run.ckpts
    if run.sharded_checkpoints and ckpts.steps():
        run.restore_sharded(ckpts.path_for(ckpts.steps()[-1]))
        run.log.drop_after(run.state.step)
        logger.info("resumed from sharded step %d, epoch %d", run.state.step, run.state.epoch)
    elif not run.sharded_checkpoints and (ckpt := ckpts.latest()) is not None:
        if "metadata" not in ckpt.state:
            raise CheckpointError(
                f"{ckpt.path}: written by an earlier torchformer (no 'metadata' entry); it "
                "cannot be resumed by this version: start a new run (--overwrite)"
            )
        run.restore(ckpt.state)
        run.log.drop_after(run.state.step)  # the steps after the checkpoint are redone
        logger.info(
            "resumed from %s (step %d, epoch %d)", ckpt.path, run.state.step, run.state.epoch
        )
    else:
        logger.warning("no checkpoint in %s; starting from scratch", ckpts.directory)


def _write_run_record(run: Run) -> None:
    """``config.yaml`` and ``manifest.json`` (rank 0), once the run has set up."""
    config, info = run.task.config, run.task.manifest()
    save_config(config, run.run_dir / "config.yaml")
    write_manifest(
        run.run_dir,
        config=config_to_dict(config),
        seed=config.train.seed,
        data_fingerprint=info.get("data_fingerprint"),
        extra={**info.get("extra", {}), "task": config.task, "world_size": run.world.size},
    )


def _forward_backward(run: Run, batch: list[int], sync: bool) -> tuple[torch.Tensor, float]:
    """One micro-batch (a global batch): this rank's shard forward under autocast, the
    finite check, and the backward of its loss weighted by its share of the batch.
    Returns the loss and the batch's units."""
    task, world, tc = run.task, run.world, run.config
    local, units = run.sampler.shard(batch), task.batch_units(batch)
    # A batch smaller than the world leaves some ranks without examples: they still take
    # part in the all-reduce, with a zero-weighted copy of the first example.
    weight = task.batch_units(local) / units if local else 0.0
    with sync_gradients(run.model, sync=sync):
        with run.autocast(tc.precision):
            loss = task.batch_loss(run.model, local or batch[:1], run.device)
        if not world.distributed:  # (several ranks: the synced gradient norm is checked)
            with run.stop_on_non_finite():  # before the bad gradient touches the weights
                check_finite(loss, run.state.step + 1)
        # DDP averages over ranks, hence the world size: sum over ranks = the batch's mean.
        (loss * (weight * world.size / tc.grad_accum)).backward()
    return loss.detach(), units


def _evaluate_now(run: Run, end_of_epoch: bool) -> bool:
    every, step = run.config.eval_every, run.state.step
    last_step = step >= run.total_steps  # always evaluated: it may be the best
    return bool((every and step % every == 0) or (end_of_epoch and not every) or last_step)


def run_epoch(run: Run, bar, postfix: ProgressPostfix, stop_at_step: int | None) -> bool:
    """Train to the end of the current epoch (or a stop); True when stopped by ``stop_at_step``."""
    tc, state, sampler, task = run.config, run.state, run.sampler, run.task
    if sampler.epoch != state.epoch:  # equal on a fresh start and when resuming mid-epoch
        sampler.set_epoch(state.epoch)
    remaining = len(sampler) - sampler.state_dict()["batches_yielded"]
    micro, window_samples, window_units = 0, 0, 0.0
    t0, cpu0 = time.perf_counter(), time.process_time()
    for batch in sampler:
        micro += 1
        end_of_epoch = micro == remaining
        boundary = is_accumulation_boundary(micro, tc.grad_accum, last=end_of_epoch)
        loss, units = _forward_backward(run, batch, sync=boundary)
        window_samples += len(batch)
        window_units += units
        if not boundary:
            continue
        with run.stop_on_non_finite():  # e.g. a bf16 overflow with a finite loss
            grad_norm = optimizer_step(
                run.model,
                run.optimizer,
                run.scheduler,
                max_grad_norm=tc.max_grad_norm,
                check_step=state.step + 1,
            )
        elapsed = time.perf_counter() - t0
        state.step += 1
        state.samples += window_samples
        state.units += window_units
        state.train_seconds += elapsed
        state.train_cpu_seconds += time.process_time() - cpu0
        bar.update(1)
        postfix.update(loss=loss, lr=run.scheduler.lr, samples=window_samples)
        if state.step % 10 == 0 or state.step in (1, run.total_steps):
            # (under torchrun "loss" is rank 0's: its share of the step's last micro-batch)
            run.log.log(
                {
                    "loss": loss.item(),
                    "lr": run.scheduler.lr,
                    "grad_norm": float(grad_norm),
                    "samples_per_s": window_samples / max(elapsed, 1e-9),
                    **(
                        {f"{task.units}_per_s": window_units / max(elapsed, 1e-9)}
                        if task.units != "samples"  # (then units may be loss weights)
                        else {}
                    ),
                },
                step=state.step,
                epoch=state.epoch,
                split="train",
            )
        state.epoch += end_of_epoch
        evaluate_now = _evaluate_now(run, end_of_epoch)
        if evaluate_now:
            run.evaluate_and_keep_best()
        save_now = tc.checkpoint_every and state.step % tc.checkpoint_every == 0
        if evaluate_now or end_of_epoch or save_now:
            run.checkpoint()
        if stop_at_step is not None and state.step >= stop_at_step:
            return True
        if state.stopped_early or state.step >= run.total_steps:
            return False
        window_samples, window_units = 0, 0.0
        t0, cpu0 = time.perf_counter(), time.process_time()
    return False


def _log_summary(run: Run) -> None:
    """Totals and throughput: examples, and the task's units when it counts others (target
    tokens); a task whose units are "samples" may weight them (class weights), so its
    throughput counts examples."""
    s, units = run.state, run.task.units
    seconds, cpu = max(s.train_seconds, 1e-9), max(s.train_cpu_seconds, 1e-9)
    values: dict[str, Any] = {
        "samples": s.samples,
        "train_seconds": s.train_seconds,
        "train_cpu_seconds": s.train_cpu_seconds,
        "world_size": run.world.size,
        "total_steps": run.total_steps,
        "train_samples_per_s": s.samples / seconds,
        "train_samples_per_cpu_s": s.samples / cpu,
    }
    if units != "samples":
        values |= {
            units: s.units,
            f"train_{units}_per_s": s.units / seconds,
            f"train_{units}_per_cpu_s": s.units / cpu,
        }
    run.log.log(values, step=s.step, epoch=s.epoch, split="summary")


def _log_attention_fallbacks(run: Run) -> None:
    """Calls of sparse attention that ran as dense masked attention (a configured
    ``fallback: dense``), written into ``metrics.jsonl``: never a silent fallback."""
    counts = fallbacks(reset=True)
    if counts:
        run.log.log(
            {"attention_fallbacks": counts},
            step=run.state.step,
            epoch=run.state.epoch,
            split="attention",
        )


def fit(
    task: Task, *, resume: bool = False, overwrite: bool = False, stop_at_step: int | None = None
) -> Path:
    """Train ``task`` to the end, evaluate ``best/`` and write the run; returns the run directory.

    Args:
        task: the task, holding its resolved config.
        resume: continue from the newest loadable checkpoint in ``run_dir``.
        overwrite: a fresh run may replace a run already in ``run_dir`` (else it refuses).
        stop_at_step: stop right after this optimizer step, as if the process had been
            interrupted (tests of exact resume use it with a checkpoint there).
    """
    tc = task.config.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    world = init_distributed(tc.device)
    try:
        run = _setup(task, world, resume=resume, overwrite=overwrite)
        state = run.state
        show = tc.progress and world.is_main
        bar = progress_bar(run.total_steps, "train", disable=not show, initial=state.step)
        postfix = ProgressPostfix(bar)
        run.model.train()
        try:
            while (
                state.epoch < tc.epochs and state.step < run.total_steps and not state.stopped_early
            ):
                if run_epoch(run, bar, postfix, stop_at_step):
                    return run.run_dir
            bar.close()
            if run.stopper.best_step is None:  # never evaluated: max_steps came first
                run.evaluate_and_keep_best()
            _log_summary(run)
            _log_attention_fallbacks(run)
            if world.is_main:
                task.finish(run)
        finally:
            bar.close()
            run.log.close()
        return run.run_dir
    finally:
        shutdown_distributed(world)
