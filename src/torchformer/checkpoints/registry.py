"""Load and save any supported family by its ``config.json`` ``model_type``.

Each family module (``bert.py``, ``gpt2.py``, ``llama.py``, ``t5.py``) exposes a ``FAMILY``
describing how to translate its config and weights; this module dispatches.
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from torchformer.checkpoints.hf import (
    TOKENIZER_NAME,
    CheckpointError,
    LoadReport,
    check_config_sizes,
    check_parameter_count,
    read_config,
    read_weights,
    resolve_model_dir,
    write_model_dir,
)

FAMILY_MODULES = {
    "bart": "torchformer.checkpoints.bart",
    "bert": "torchformer.checkpoints.bert",
    "big_bird": "torchformer.checkpoints.big_bird",
    "distilbert": "torchformer.checkpoints.distilbert",
    "gpt2": "torchformer.checkpoints.gpt2",
    "llama": "torchformer.checkpoints.llama",
    "longformer": "torchformer.checkpoints.longformer",
    "mistral": "torchformer.checkpoints.llama",
    "qwen2": "torchformer.checkpoints.llama",
    "roberta": "torchformer.checkpoints.roberta",
    "t5": "torchformer.checkpoints.t5",
    "torchformer-rnn": "torchformer.checkpoints.rnn",
    "torchformer-transformer": "torchformer.checkpoints.t5",
    "torchformer-transformer-xl": "torchformer.checkpoints.transformer_xl",
    "vit": "torchformer.checkpoints.vit",
}


@dataclass
class Family:
    """How one model family maps to and from Hugging Face layout."""

    model_types: tuple[str, ...]
    config_from_hf: Callable[..., Any]  # (hf_dict, *, source) -> our Config
    config_to_hf: Callable[..., dict]  # (our Config, *, architecture) -> hf_dict
    tasks: dict[str, Callable[[Any], nn.Module]]  # task name -> model class (or builder)
    architectures: dict[type[nn.Module], str]  # model class -> HF architecture name
    load_into: Callable[..., LoadReport]  # (model, hf_state, *, source) -> report
    state_to_hf: Callable[[nn.Module], dict[str, Tensor]]
    # Whether a model of one of ``architectures`` is this family's (GPT-2 and Llama
    # share the decoder classes and differ by ``config.flavour``).
    accepts: Callable[[nn.Module], bool] = lambda model: True


def family_for(model_type: str, *, source: str = "config.json") -> Family:
    """The family that handles a ``model_type``."""
    for name, module in FAMILY_MODULES.items():
        if model_type == name:
            return importlib.import_module(module).FAMILY
    raise CheckpointError(
        f"{source}: unsupported model_type {model_type!r}; supported: {', '.join(sorted(FAMILY_MODULES))}"
    )


def family_of_model(model: nn.Module) -> Family:
    """The family whose task classes include ``type(model)``."""
    for module in FAMILY_MODULES.values():
        try:
            fam = importlib.import_module(module).FAMILY
        except ModuleNotFoundError:
            continue
        if type(model) in fam.architectures and fam.accepts(model):
            return fam
    raise CheckpointError(f"no Hugging Face layout is known for {type(model).__name__}")


def load_pretrained(
    name_or_path: str | os.PathLike,
    *,
    task: str = "base",
    cache_dir: str | os.PathLike | None = None,
    **config_overrides: Any,
) -> tuple[nn.Module, LoadReport]:
    """Build our model for ``task`` from a Hugging Face layout directory or hub name.

    Args:
        name_or_path: a local directory, or a hub name such as "bert-base-uncased".
        task: "base", "classification", "masked_lm", "causal_lm", "seq2seq_lm"
            (which exist depends on the family).
        cache_dir: hub cache directory (default: huggingface_hub's).
        **config_overrides: fields of our Config to change (e.g. num_labels,
            attn_impl, dropout).

    Returns:
        (model in eval mode, report of newly initialised weights).

    Raises:
        CheckpointError: unknown model_type or task, a missing or invalid size in
            ``config.json`` (checked before the model is built, also against
            :data:`~torchformer.checkpoints.hf.MAX_PARAMETERS`), a truncated or corrupt
            weights file, missing/unexpected/mis-shaped weights.
    """
    model_dir = resolve_model_dir(name_or_path, cache_dir=cache_dir)
    hf_config = read_config(model_dir)
    source = str(model_dir / "config.json")
    family = family_for(hf_config.get("model_type", ""), source=source)
    if task not in family.tasks:
        raise CheckpointError(
            f"{source}: task {task!r} is not available for model_type {hf_config.get('model_type')!r}; "
            f"choose one of {sorted(family.tasks)}"
        )
    check_config_sizes(hf_config, source=source)
    config = _config_from_hf(family, hf_config, source)
    if config_overrides:
        config = replace(config, **config_overrides)
    check_parameter_count(config, hf_config, source=source)
    model = family.tasks[task](config)
    report = family.load_into(model, read_weights(model_dir), source=str(model_dir))
    return model.eval(), report


def _config_from_hf(family: Family, hf_config: dict, source: str) -> Any:
    """The family's ``Config``; a missing field or a value it rejects names the file."""
    try:
        return family.config_from_hf(hf_config, source=source)
    except CheckpointError:
        raise
    except KeyError as e:
        raise CheckpointError(f"{source}: field {e.args[0]!r}: missing") from None
    except (TypeError, ValueError, AttributeError) as e:  # e.g. a Config's own checks
        raise CheckpointError(f"{source}: {type(e).__name__}: {e}") from e


def save_pretrained(model: nn.Module, out_dir: str | os.PathLike, *, tokenizer: Any = None) -> Path:
    """Write ``model`` (and its tokenizer) in Hugging Face layout.

    Args:
        model: one of our models with a known family.
        out_dir: target directory (created).
        tokenizer: an object with ``save(path)``, a ``tokenizers.Tokenizer``,
            or a path to an existing ``tokenizer.json`` to copy.

    Returns:
        The directory.
    """
    out = Path(out_dir)
    family = family_of_model(model)
    hf_config = family.config_to_hf(model.config, architecture=family.architectures[type(model)])
    write_model_dir(out, hf_config, family.state_to_hf(model))
    if tokenizer is not None:
        target = out / TOKENIZER_NAME
        if isinstance(tokenizer, (str, os.PathLike)):
            shutil.copyfile(tokenizer, target)
        else:
            tokenizer.save(str(target))
    return out
