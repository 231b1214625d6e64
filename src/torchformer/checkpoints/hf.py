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
from typing import Any

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


# The largest model :func:`~torchformer.checkpoints.load_pretrained` builds: 2**33
# parameters (34 GB in float32), above any model this toolkit trains or serves. A
# config.json asking for more is corrupt or hostile: refused before any tensor exists.
MAX_PARAMETERS = 2**33

# config.json fields that size a model (across the supported families), each with a
# bound far above any published model: a value past it is a typo or a corrupt file.
_LAYERS, _HEADS, _WIDTH, _FFN = 2**10, 2**10, 2**16, 2**18
SIZE_FIELDS = {
    "vocab_size": 2**22,
    "type_vocab_size": 2**16,
    "max_position_embeddings": 2**24,
    "n_positions": 2**24,
    "hidden_size": _WIDTH,
    "n_embd": _WIDTH,
    "d_model": _WIDTH,
    "num_hidden_layers": _LAYERS,
    "n_layer": _LAYERS,
    "num_layers": _LAYERS,
    "num_decoder_layers": _LAYERS,
    "encoder_layers": _LAYERS,
    "decoder_layers": _LAYERS,
    "num_attention_heads": _HEADS,
    "n_head": _HEADS,
    "num_heads": _HEADS,
    "encoder_attention_heads": _HEADS,
    "decoder_attention_heads": _HEADS,
    "num_key_value_heads": _HEADS,
    "head_dim": 2**12,
    "d_kv": 2**12,
    "intermediate_size": _FFN,
    "n_inner": _FFN,
    "d_ff": _FFN,
    "encoder_ffn_dim": _FFN,
    "decoder_ffn_dim": _FFN,
    "relative_attention_num_buckets": 2**16,
}


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
    config = _read_json(path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(config).__name__}")
    return config


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text (byte offset {e.start})") from e


def check_config_sizes(hf: dict, *, source: str) -> None:
    """Every size field of a ``config.json`` dict present is a positive integer within bounds.

    Raises:
        CheckpointError: names ``source`` and the field.
    """
    for key, bound in SIZE_FIELDS.items():
        value = hf.get(key)
        if value is None:  # absent, or null for "the family's default" (GPT-2's n_inner)
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(
                f"{source}: field {key!r}: expected a positive integer, found {value!r}"
            )
        if value > bound:
            raise CheckpointError(
                f"{source}: field {key!r}: {value} is larger than {bound}, beyond any "
                "published model; is the file corrupt?"
            )


def estimate_parameters(config: Any) -> int:
    """A lower bound on the parameters of a model built from ``config`` (any family's
    ``Config``): embeddings (a ViT's patch projection), position tables and the attention
    and feed-forward matrices (norms, biases and heads left out). A config with an
    ``estimate_parameters()`` method (the RNN encoder–decoder) answers for itself."""
    own = getattr(config, "estimate_parameters", None)
    if callable(own):
        return int(own())
    d, f, heads = config.d_model, config.d_ff, config.n_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv_heads = getattr(config, "n_kv_heads", None) or heads
    attention = 2 * d * head_dim * (heads + kv_heads)  # q and out; k and v
    gated = getattr(config, "flavour", None) == "llama" or getattr(config, "gated_ffn", False)
    ffn = (3 if gated else 2) * d * f  # (gate,) up and down
    encoder_layers = getattr(config, "n_layers", 0) + getattr(config, "n_encoder_layers", 0)
    decoder_layers = getattr(config, "n_decoder_layers", 0)  # with cross-attention
    blocks = encoder_layers * (attention + ffn) + decoder_layers * (2 * attention + ffn)
    if hasattr(config, "num_patches"):  # ViT: the patch projection and the position table
        return blocks + (config.num_channels * config.patch_size**2 + config.num_patches + 1) * d
    vocab = config.vocab_size + (getattr(config, "src_vocab_size", None) or 0)
    if not getattr(config, "tie_embeddings", getattr(config, "tie_output", True)):
        vocab += config.vocab_size  # an output projection of its own
    # Llama (rotary), T5 (relative buckets) and Transformer-XL (relative sinusoids, which
    # has a memory length) have no position table.
    relative = getattr(config, "flavour", None) in ("llama", "t5") or hasattr(config, "mem_len")
    positions = 0 if relative else config.max_len
    return blocks + (vocab + positions) * d


def check_parameter_count(config: Any, hf: dict, *, source: str) -> None:
    """Refuse a model above :data:`MAX_PARAMETERS` before any of its tensors exists.

    Raises:
        CheckpointError: names ``source``, the size fields and the estimate.
    """
    n = estimate_parameters(config)
    if n <= MAX_PARAMETERS:
        return
    shown = (*SIZE_FIELDS, "image_size", "patch_size")  # ViT: the two set the token count
    sizes = ", ".join(f"{k}={hf[k]}" for k in shown if hf.get(k) is not None)
    raise CheckpointError(
        f"{source}: fields {sizes} make a model of at least {n:.3g} parameters "
        f"({n * 4 / 1e9:.0f} GB in float32), more than the {MAX_PARAMETERS:.3g} this loader "
        "builds; is the file corrupt?"
    )


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    """``load_file``, with the file named when it is truncated or corrupt."""
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own SafetensorError, OSError, ...
        size = path.stat().st_size if path.is_file() else 0
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({size} bytes; truncated or corrupt?): "
            f"{type(e).__name__}: {e}"
        ) from e


def _shard_files(model_dir: Path) -> list[Path]:
    """The shard files a ``model.safetensors.index.json`` names, each inside ``model_dir``.

    Raises:
        CheckpointError: a malformed index, or a shard path that is absolute, leaves the
            model directory (``..``) or names no file; the message names the index.
    """
    path = model_dir / WEIGHTS_INDEX_NAME
    index = _read_json(path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(
            f"{path}: expected a JSON object with a 'weight_map' of weight name -> shard file"
        )
    shards = []
    for name in sorted(set(weight_map.values())):
        shard = Path(name)
        # Checked by name, not resolved: a hub cache's shards are symlinks to its blobs.
        if shard.is_absolute() or shard.drive or ".." in shard.parts or not name:
            raise CheckpointError(
                f"{path}: shard {name!r} is outside the model directory; expected a file "
                f"name inside {model_dir}"
            )
        if not (model_dir / shard).is_file():
            raise CheckpointError(f"{path}: shard {name!r} not found in {model_dir}")
        shards.append(model_dir / shard)
    return shards


def read_weights(model_dir: Path) -> dict[str, Tensor]:
    """All weights of a model directory, never unpickling arbitrary objects.

    Raises:
        CheckpointError: a truncated or corrupt weights file, or a malformed shard index
            (names the file).
        FileNotFoundError: no weights file.
    """
    model_dir = Path(model_dir)
    if (model_dir / WEIGHTS_NAME).is_file():
        return _load_safetensors(model_dir / WEIGHTS_NAME)
    if (model_dir / WEIGHTS_INDEX_NAME).is_file():
        state: dict[str, Tensor] = {}
        for shard in _shard_files(model_dir):
            state.update(_load_safetensors(shard))
        return state
    if (model_dir / LEGACY_WEIGHTS_NAME).is_file():
        path = model_dir / LEGACY_WEIGHTS_NAME
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # RuntimeError, UnpicklingError, EOFError, ...
            lines = [x.strip() for x in str(e).splitlines() if x.strip()] or [""]
            # torch's weights-only refusal is a page of advice; one line of it says why.
            why = next((x for x in lines if x.startswith("WeightsUnpickler error")), lines[0])
            raise CheckpointError(
                f"{path}: not a readable weights file (truncated, corrupt, or holds "
                f"objects other than tensors): {type(e).__name__}: {why}"
            ) from e
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
