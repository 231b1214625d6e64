"""Runs one training under torchrun with instruments the tests read (not a launcher).

    torchrun --nproc_per_node 2 tests/distributed/ddp_driver.py CONFIG --out DIR
             [--stop-at-step N] [--resume]

Writes, per rank, ``DIR/rank{R}.json``: the gradient all-reduces a counting DDP
communication hook saw, the optimizer steps taken, and the training examples this rank
trained on (its shards of the global batches). Training itself is the real
``train.loop.fit`` through the task registry.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from torchformer.config import load_config
from torchformer.data import batching
from torchformer.tasks.registry import task_module
from torchformer.train import loop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("--task", default="classification")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stop-at-step", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    rank = int(os.environ.get("RANK", "0"))

    allreduces: list[int] = []
    seen: list[int] = []
    wrap = loop.wrap_model

    def counting_hook(state, bucket):
        allreduces.append(1)
        return default_hooks.allreduce_hook(state, bucket)

    def wrap_and_count(model, world, *strategy):
        wrapped = wrap(model, world, *strategy)
        if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
            wrapped.register_comm_hook(None, counting_hook)
        return wrapped

    shard = batching._EpochBatchSampler.shard

    def recording_shard(self, batch):
        local = shard(self, batch)
        seen.extend(local)
        return local

    loop.wrap_model = wrap_and_count
    batching._EpochBatchSampler.shard = recording_shard

    module = task_module(args.task)
    config = load_config(module.CONFIG, args.config)
    steps: list[int] = []
    step_epoch = loop.run_epoch

    def counting_epoch(run, *a, **k):
        before = run.state.step
        try:
            return step_epoch(run, *a, **k)
        finally:
            steps.append(run.state.step - before)

    loop.run_epoch = counting_epoch
    module.train(config, resume=args.resume, stop_at_step=args.stop_at_step)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"allreduces": len(allreduces), "optimizer_steps": sum(steps), "seen": seen}
    (args.out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
