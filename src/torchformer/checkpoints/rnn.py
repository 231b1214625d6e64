"""The RNN encoder–decoder (``models.rnn_seq2seq``) in a model directory of our own.

Hugging Face has no RNN translation architecture, so there is no layout to match: the
model is saved as our own config (``model_type: "torchformer-rnn"``, the
``RNNSeq2SeqConfig`` fields) and our parameter names in ``model.safetensors``, as
``checkpoints/t5.py`` saves the original Transformer; ``load_pretrained`` reads it back
(``task="seq2seq_lm"``), so ``torchformer.load`` and the translator load it like any
translation model.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from torch import Tensor, nn

from torchformer.checkpoints.hf import CheckpointError, LoadReport, load_state_strict
from torchformer.config import ConfigError, config_from_dict, config_to_dict
from torchformer.models.rnn_seq2seq import RNNSeq2Seq, RNNSeq2SeqConfig

MODEL_TYPE = "torchformer-rnn"


def config_from_hf(hf: dict, *, source: str = "config.json") -> RNNSeq2SeqConfig:
    """Our config from ``config.json``; an unknown key or bad value names the file."""
    data = {k: v for k, v in hf.items() if k not in ("model_type", "architectures")}
    unknown = sorted(set(data) - {f.name for f in fields(RNNSeq2SeqConfig)})
    if unknown:
        raise CheckpointError(f"{source}: unknown keys {', '.join(unknown)} for {MODEL_TYPE}")
    try:
        return config_from_dict(RNNSeq2SeqConfig, data, source=source)
    except (ConfigError, ValueError) as e:
        raise CheckpointError(str(e)) from e


def config_to_hf(config: RNNSeq2SeqConfig, *, architecture: str = "RNNSeq2Seq") -> dict:
    return {"model_type": MODEL_TYPE, "architectures": [architecture], **config_to_dict(config)}


def state_to_hf(model: nn.Module) -> dict[str, Tensor]:
    return dict(model.state_dict())


def load_into(model: nn.Module, state: dict[str, Tensor], *, source: str) -> LoadReport:
    return load_state_strict(model, dict(state), source=str(Path(source)))


def _family():
    from torchformer.checkpoints.registry import Family

    return Family(
        model_types=(MODEL_TYPE,),
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        tasks={"seq2seq_lm": RNNSeq2Seq},
        architectures={RNNSeq2Seq: "RNNSeq2Seq"},
        load_into=load_into,
        state_to_hf=state_to_hf,
    )


FAMILY = _family()
