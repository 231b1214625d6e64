"""RoBERTa checkpoints (Liu et al. 2019) in Hugging Face layout, both ways.

RoBERTa is BERT's encoder, re-trained: the same layers under a ``roberta.`` prefix,
positions that start at pad_token_id + 1 (``position_offset``), and RoBERTa-style heads —
the classifier is dense + tanh + out_proj on <s> (our pooler and classifier), the MLM
head ``lm_head`` (our ``mlm_head``). Longformer (``checkpoints.longformer``) shares the
heads and the positions.
"""

from __future__ import annotations

from torchformer.checkpoints.bert import (
    Layout,
    encoder_config,
    encoder_config_to_hf,
    encoder_family,
    encoder_map,
)
from torchformer.checkpoints.hf import CheckpointError
from torchformer.checkpoints.keymap import KeyMap
from torchformer.models.encoder import (
    EncoderConfig,
)

MODEL_TYPES = ("roberta",)

# RoBERTa's task heads (Longformer's too): classifier.dense is our pooler.
HEADS = KeyMap(
    [
        ("encoder.pooler.weight", "classifier.dense.weight"),
        ("encoder.pooler.bias", "classifier.dense.bias"),
        ("classifier.weight", "classifier.out_proj.weight"),
        ("classifier.bias", "classifier.out_proj.bias"),
        ("chunk_scorer.weight", "torchformer_chunk_scorer.weight"),
        ("mlm_head.dense.weight", "lm_head.dense.weight"),
        ("mlm_head.dense.bias", "lm_head.dense.bias"),
        ("mlm_head.norm.weight", "lm_head.layer_norm.weight"),
        ("mlm_head.norm.bias", "lm_head.layer_norm.bias"),
        ("mlm_head.bias", "lm_head.bias"),
    ]
)

LAYOUT = Layout(
    prefix="roberta.",
    encoder=encoder_map(),
    heads=HEADS,
    dropped=("embeddings.position_ids", "lm_head.decoder."),
    decoder_bias=("lm_head.bias", "lm_head.decoder.bias"),
    head_pooler=True,
    mlm_pooler=False,
)


def config_from_hf(hf: dict, *, source: str = "config.json") -> EncoderConfig:
    """An ``EncoderConfig`` from a RoBERTa ``config.json`` dict."""
    if hf.get("model_type") not in MODEL_TYPES:
        raise CheckpointError(f"{source}: model_type {hf.get('model_type')!r} is not roberta")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(
            f"{source}: field 'position_embedding_type': {hf['position_embedding_type']!r} "
            "is not supported (only 'absolute')"
        )
    pad_id = hf.get("pad_token_id", 1)
    return encoder_config(
        hf,
        pad_id=pad_id,
        norm_eps=hf.get("layer_norm_eps", 1e-5),
        position_offset=pad_id + 1,
        flavour="roberta",
    )


def config_to_hf(config: EncoderConfig, *, architecture: str = "RobertaModel") -> dict:
    """A ``config.json`` dict that ``transformers`` reads as the same model."""
    if config.attention != "full":
        raise CheckpointError(f"RoBERTa checkpoints attend fully, not {config.attention!r}")
    if config.position_offset != config.pad_id + 1:
        raise CheckpointError(
            f"RoBERTa positions start at pad_id + 1 = {config.pad_id + 1}, "
            f"got position_offset={config.position_offset}"
        )
    hf = encoder_config_to_hf(config, "roberta", architecture)
    hf.update(position_embedding_type="absolute", bos_token_id=0, eos_token_id=2)
    return hf


FAMILY = encoder_family(
    model_types=MODEL_TYPES,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    layout=LAYOUT,
    hf_name="Roberta",
    flavour="roberta",
)
