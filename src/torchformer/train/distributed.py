"""Training on several processes with ``torch.distributed``, started by ``torchrun``.

torchformer never launches processes itself: ``torchrun`` (or SLURM's ``srun``
calling it) starts one process per device and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous variables; :func:`init_distributed` reads them,
joins the process group (gloo on CPU, NCCL on CUDA) and picks the device from
``LOCAL_RANK``. A plain ``python``/``torchformer`` process is a world of one and
touches nothing here.

The rank checks of the loop live in these few helpers, so the loop reads like a
single-process one:

- :func:`is_main_process` — only rank 0 writes the run directory;
- :func:`main_process_first` — rank 0 runs a step that writes files (claiming the run
  directory, training a tokenizer), then the others run it and read what it wrote; an
  error on rank 0 is raised on every rank instead of leaving them waiting;
- :func:`wrap_model` — ``DistributedDataParallel``, or FSDP2 sharding;
- :func:`gather_objects` — per-example evaluation outputs from every rank.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "World",
    "broadcast_object",
    "gather_objects",
    "init_distributed",
    "is_main_process",
    "main_process_first",
    "resolve_device",
    "shutdown_distributed",
    "wrap_model",
]

T = TypeVar("T")
Strategy = Literal["ddp", "fsdp"]


@dataclass(frozen=True)
class World:
    """This process's place among the training processes.

    Attributes:
        rank: global rank (0 writes the run).
        size: number of processes.
        local_rank: rank on this node (the device index on GPU).
        device: the device this process trains on.
        owns_group: True when :func:`init_distributed` created the process group (and so
            :func:`shutdown_distributed` destroys it).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def sampler_args(self) -> dict[str, int]:
        """``num_replicas`` and ``rank`` for a rank-aware batch sampler (``data.batching``)."""
        return {"num_replicas": self.size, "rank": self.rank}


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA when available (``cuda:LOCAL_RANK`` under torchrun), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def init_distributed(device: str = "auto", *, timeout_s: float = 1800.0) -> World:
    """Join the process group torchrun describes in the environment (or a world of one).

    Args:
        device: the config's ``train.device`` ("auto", "cpu", "cuda", ...).
        timeout_s: how long collectives wait for a missing rank before failing.

    Raises:
        RuntimeError: ``WORLD_SIZE`` > 1 without ``RANK``/``LOCAL_RANK`` (not started by
            torchrun), naming the variables.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(device=resolve_device(device))
    missing = [
        k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
    ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={size} but {', '.join(missing)} not set: start several processes with "
            "torchrun (torchrun --nproc_per_node N -m torchformer train CONFIG)"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    where = resolve_device(device, local_rank)
    owns = not dist.is_initialized()
    if owns:
        if where.type == "cuda":
            torch.cuda.set_device(where)
        backend = "nccl" if where.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return World(rank=rank, size=size, local_rank=local_rank, device=where, owns_group=owns)


def shutdown_distributed(world: World) -> None:
    """Leave the process group if this module created it."""
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True on rank 0, and in a process that is not part of a distributed run.

    Outside the process group (before it is joined, after it is left) the rank torchrun
    gave the process (``RANK``) decides.
    """
    if dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def main_process_first(world: World, fn: Callable[[bool], T]) -> T:
    """Run ``fn(main=True)`` on rank 0, then ``fn(main=False)`` on the other ranks.

    For steps that write files the other ranks then read (the run directory, a trained
    tokenizer). When rank 0 fails, every rank raises (the others name rank 0's error)
    instead of waiting at a barrier until the timeout.
    """
    if not world.distributed:
        return fn(True)
    result: Any = None
    status: list[str | None] = [None]
    error: BaseException | None = None
    if world.is_main:
        try:
            result = fn(True)
        except Exception as e:
            error, status[0] = e, f"{type(e).__name__}: {e}"
    dist.broadcast_object_list(status, src=0)
    if error is not None:
        raise error
    if status[0] is not None:
        raise RuntimeError(f"rank 0 failed, so rank {world.rank} stops too: {status[0]}")
    if not world.is_main:
        result = fn(False)
    return result


def wrap_model(model: nn.Module, world: World, strategy: Strategy = "ddp") -> nn.Module:
    """The model as the loop trains it: itself (one process), ``DistributedDataParallel``,
    or sharded in place with FSDP2 (``strategy="fsdp"``, see ``train.fsdp``).

    One gradient reduction per optimizer step: the loop skips it on accumulation
    micro-steps (``train.accumulation.sync_gradients``). With DDP, parameters that get
    no gradient (BERT's pooler when the head pools by mean) are allowed; they keep
    ``grad=None`` on every rank, as in one process.
    """
    if not world.distributed:
        return model
    if strategy == "fsdp":
        from torchformer.train.fsdp import shard_model

        return shard_model(model)
    device_ids = [world.device.index] if world.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=True
    )


def broadcast_object(world: World, obj: T) -> T:
    """Rank 0's ``obj`` on every rank (itself in a world of one)."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(world: World, obj: T) -> list[T]:
    """``obj`` from every rank, in rank order (``[obj]`` in a world of one)."""
    if not world.distributed:
        return [obj]
    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, obj)
    return gathered
