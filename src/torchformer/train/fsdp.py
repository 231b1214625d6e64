"""Sharded training state for FSDP2 (``torch.distributed.fsdp.fully_shard``).

With ``train.distributed: fsdp`` each rank holds only its shard of every parameter,
gradient and optimizer state, so a step checkpoint is sharded too: every rank writes
its own shards with ``torch.distributed.checkpoint`` (DCP) into one directory,
``checkpoints/step-000123.dcp/``, next to ``loop.pt`` (schedule, sampler, early
stopping, RNG, counters; written by rank 0). The directory is written under a
temporary name and renamed when every rank has finished, so a crash leaves either the
old checkpoints or a complete new one.

Such a checkpoint loads back into a single-process model without any process group:
:func:`consolidate` gathers the shards into one plain state dict.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from torchformer.train.checkpoint import load_checkpoint, save_checkpoint

__all__ = [
    "LOOP_FILE",
    "consolidate",
    "full_model_state_dict",
    "load_sharded",
    "save_sharded",
    "shard_model",
]

LOOP_FILE = "loop.pt"
SUFFIX = ".dcp"


def shard_model(model: nn.Module) -> nn.Module:
    """FSDP2: shard each encoder/decoder layer, then the rest (embeddings, heads) at the root.

    Layers are found by class name (``EncoderLayer``, ``DecoderLayer``, ...): one
    all-gather per layer in the forward pass, freed after it.
    """
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if module is not model and type(module).__name__.endswith("Layer"):
            fully_shard(module)
    fully_shard(model)
    # Methods other than forward that run the model (a seq2seq model's encode/decode, used
    # by beam search and greedy decoding) must gather the root's parameters as well.
    from torch.distributed.fsdp import register_fsdp_forward_method

    for name in ("encode", "decode"):
        if callable(getattr(model, name, None)):
            register_fsdp_forward_method(model, name)
    return model


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_sharded(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, loop_state: dict[str, Any]
) -> Path:
    """Every rank writes its shards of the model and optimizer to ``path`` (a ``.dcp``
    directory); rank 0 adds ``loop.pt`` and renames the finished directory into place."""
    main = not dist.is_initialized() or dist.get_rank() == 0
    tmp = path.with_name(f".{path.name}.tmp")
    if main and tmp.exists():
        shutil.rmtree(tmp)
    _barrier()
    state = {
        "model": get_model_state_dict(model),
        "optimizer": get_optimizer_state_dict(model, optimizer),
    }
    dcp.save(state, checkpoint_id=tmp)
    if main:
        save_checkpoint(tmp / LOOP_FILE, loop_state)
    _barrier()
    if main:
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    _barrier()
    return path


def load_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load a sharded checkpoint into the (sharded) model and optimizer of every rank;
    returns the loop state of ``loop.pt``."""
    state = {
        "model": get_model_state_dict(model),
        "optimizer": get_optimizer_state_dict(model, optimizer),
    }
    # Partial: parameters that never had a gradient (BERT's pooler under mean pooling)
    # have no optimizer state in the checkpoint; they keep the fresh (unused) one.
    planner = dcp.DefaultLoadPlanner(allow_partial_load=True)
    dcp.load(state, checkpoint_id=path, planner=planner)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    return load_checkpoint(path / LOOP_FILE)


def full_model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole, unsharded weights on rank 0's CPU (empty on the other ranks); a
    collective: every rank calls it."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def consolidate(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The model weights of a sharded checkpoint as one plain state dict, in a single
    process (no process group): load them with ``model.load_state_dict``."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "full.pt"
        dcp_to_torch_save(path, out)
        return torch.load(out, map_location="cpu", weights_only=True)["model"]
