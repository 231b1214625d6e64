"""Reading and writing Hugging Face layout model directories.

A model directory holds ``config.json``, the weights (``model.safetensors``,
a sharded ``model.safetensors.index.json``, or a legacy ``pytorch_model.bin``)
and usually ``tokenizer.json``. This module knows the files; the per-family
modules (``bert.py``, ``gpt2.py``, ``t5.py``) know the key names.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from torchformer.io import atomic_write_bytes, atomic_write_text

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"
TOKENIZER_NAME = "tokenizer.json"
HUB_FILES = [
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
]


class CheckpointError(ValueError):
    """A checkpoint does not fit the model: names the file and the key."""


def resolve_model_dir(
    name_or_path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None
) -> Path:
    """A local directory for a path or a Hugging Face Hub name.

    A path that exists is returned as is. Otherwise the name goes to
    ``huggingface_hub.snapshot_download`` (which uses its cache when offline).

    Raises:
        FileNotFoundError: offline and not cached, naming the model and the cache.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(
                f"{path} is a file; expected a model directory with {CONFIG_NAME}"
            )
        return path
    name = str(name_or_path)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError as e:  # pragma: no cover - huggingface_hub is a core dependency
        raise ImportError(
            "loading by hub name needs huggingface_hub: pip install huggingface_hub"
        ) from e
    cache = Path(cache_dir) if cache_dir is not None else Path(HF_HUB_CACHE)
    try:
        return Path(snapshot_download(name, cache_dir=cache_dir, allow_patterns=HUB_FILES))
    except Exception as e:
        raise FileNotFoundError(
            f"{name!r} is not a local directory and could not be fetched from the Hugging Face Hub "
            f"({type(e).__name__}: {e}). When offline, the model must already be in the cache "
            f"{cache}, or pass a local directory holding {CONFIG_NAME} and {WEIGHTS_NAME}."
        ) from e


def read_config(model_dir: Path) -> dict:
    """``config.json`` as a dict, with the file named in any error."""
    path = Path(model_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{model_dir} has no {CONFIG_NAME}; is it a Hugging Face model directory?"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e


def read_weights(model_dir: Path) -> dict[str, Tensor]:
    """All weights of a model directory, never unpickling arbitrary objects."""
    model_dir = Path(model_dir)
    if (model_dir / WEIGHTS_NAME).is_file():
        return load_file(model_dir / WEIGHTS_NAME)
    if (model_dir / WEIGHTS_INDEX_NAME).is_file():
        index = json.loads((model_dir / WEIGHTS_INDEX_NAME).read_text(encoding="utf-8"))
        state: dict[str, Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_file(model_dir / shard))
        return state
    if (model_dir / LEGACY_WEIGHTS_NAME).is_file():
        return torch.load(model_dir / LEGACY_WEIGHTS_NAME, map_location="cpu", weights_only=True)
    raise FileNotFoundError(
        f"{model_dir} has no weights: expected {WEIGHTS_NAME}, {WEIGHTS_INDEX_NAME} or {LEGACY_WEIGHTS_NAME}"
    )


def write_model_dir(model_dir: Path, config: dict, weights: dict[str, Tensor]) -> None:
    """Write ``config.json`` and ``model.safetensors`` (each atomically)."""
    model_dir = Path(model_dir)
    # safetensors refuses tensors that share storage; tied weights are dropped by the key maps.
    weights = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    atomic_write_bytes(model_dir / WEIGHTS_NAME, save(weights, metadata={"format": "pt"}))
    atomic_write_text(model_dir / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")


@dataclass
class LoadReport:
    """What loading a checkpoint did: which of our parameters were newly initialised."""

    new_keys: list[str] = field(default_factory=list)
    ignored_keys: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = []
        if self.new_keys:
            parts.append(f"newly initialised (not in the checkpoint): {', '.join(self.new_keys)}")
        if self.ignored_keys:
            parts.append(f"checkpoint weights not used: {', '.join(self.ignored_keys)}")
        return "; ".join(parts) or "all weights loaded"


def load_state_strict(
    model: nn.Module,
    state: dict[str, Tensor],
    *,
    source: str,
    new_ok: tuple[str, ...] = (),
    ignore: tuple[str, ...] = (),
) -> LoadReport:
    """Load ``state`` into ``model``; every mismatch is an error naming the key.

    Args:
        model: the target module.
        state: converted weights, in our key names.
        source: the file or directory, for error messages.
        new_ok: prefixes of our keys that may be missing (a new task head);
            they keep their fresh initialisation and are reported.
        ignore: prefixes of checkpoint keys that may be dropped (e.g. the
            pre-training head when loading an encoder); they are reported.

    Raises:
        CheckpointError: missing, unexpected or wrongly shaped weights.
    """
    ours = model.state_dict()
    report = LoadReport()
    missing = [k for k in ours if k not in state]
    report.new_keys = [k for k in missing if k.startswith(new_ok) and new_ok]
    missing = [k for k in missing if k not in report.new_keys]
    unexpected = [k for k in state if k not in ours]
    report.ignored_keys = [k for k in unexpected if ignore and k.startswith(ignore)]
    unexpected = [k for k in unexpected if k not in report.ignored_keys]
    if missing:
        raise CheckpointError(
            f"{source}: weights missing for {', '.join(missing[:10])}"
            + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        )
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected weights {', '.join(unexpected[:10])}"
            + (f" and {len(unexpected) - 10} more" if len(unexpected) > 10 else "")
        )
    for key, value in state.items():
        if key in ours and ours[key].shape != value.shape:
            raise CheckpointError(
                f"{source}: shape mismatch for {key}: checkpoint {tuple(value.shape)}, "
                f"model {tuple(ours[key].shape)}"
            )
    model.load_state_dict({k: v for k, v in state.items() if k in ours}, strict=False)
    return report
