"""Families saved in a model directory of our own layout (no Hugging Face counterpart).

``config.json`` holds ``model_type`` and the fields of our config dataclass;
``model.safetensors`` holds our own parameter names. ``load_pretrained`` reads such a
directory back like any other family. Used by the RNN encoder–decoder
(``checkpoints/rnn.py``) and Transformer-XL (``checkpoints/transformer_xl.py``).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from torchformer.checkpoints.hf import CheckpointError, LoadReport, load_state_strict
from torchformer.config import ConfigError, config_from_dict, config_to_dict


def own_layout_family(model_type: str, config_class: type, task: str, model_class: type) -> Any:
    """The ``registry.Family`` of ``model_class`` (built from a ``config_class``) for
    ``load_pretrained(..., task=task)``; unknown keys or bad values in ``config.json``
    raise a ``CheckpointError`` naming the file."""
    from torchformer.checkpoints.registry import Family

    names = {f.name for f in fields(config_class)}

    def config_from_hf(hf: dict, *, source: str = "config.json") -> Any:
        data = {k: v for k, v in hf.items() if k not in ("model_type", "architectures")}
        if unknown := sorted(set(data) - names):
            raise CheckpointError(f"{source}: unknown keys {', '.join(unknown)} for {model_type}")
        try:
            return config_from_dict(config_class, data, source=source)
        except (ConfigError, ValueError) as e:
            raise CheckpointError(str(e)) from e

    def config_to_hf(config: Any, *, architecture: str = model_class.__name__) -> dict:
        return {"model_type": model_type, "architectures": [architecture], **config_to_dict(config)}

    def state_to_hf(model: nn.Module) -> dict[str, Tensor]:
        return dict(model.state_dict())

    def load_into(model: nn.Module, state: dict[str, Tensor], *, source: str) -> LoadReport:
        return load_state_strict(model, dict(state), source=str(Path(source)))

    return Family(
        model_types=(model_type,),
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        tasks={task: model_class},
        architectures={model_class: model_class.__name__},
        load_into=load_into,
        state_to_hf=state_to_hf,
    )
