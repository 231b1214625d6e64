"""BERT-family checkpoints (BERT, MiniLM, ...) in Hugging Face layout, both ways.

HF's BertModel names (optionally under a ``bert.`` prefix in task models) map
one-to-one onto ``torchformer.models.encoder``; the table below is the whole
correspondence.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from torchformer.checkpoints.hf import CheckpointError, LoadReport, load_state_strict
from torchformer.checkpoints.keymap import KeyMap
from torchformer.models.encoder import (
    PATTERN_SETTINGS,
    Encoder,
    EncoderConfig,
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
)

MODEL_TYPES = ("bert",)

ENCODER_MAP = KeyMap(
    [
        ("embeddings.token_embeddings.weight", "embeddings.word_embeddings.weight"),
        ("embeddings.position_embeddings.weight", "embeddings.position_embeddings.weight"),
        ("embeddings.token_type_embeddings.weight", "embeddings.token_type_embeddings.weight"),
        ("embeddings.norm.weight", "embeddings.LayerNorm.weight"),
        ("embeddings.norm.bias", "embeddings.LayerNorm.bias"),
        *[
            (f"layers.{{i}}.{ours}.{p}", f"encoder.layer.{{i}}.{theirs}.{p}")
            for ours, theirs in [
                ("self_attn.q_proj", "attention.self.query"),
                ("self_attn.k_proj", "attention.self.key"),
                ("self_attn.v_proj", "attention.self.value"),
                ("self_attn.out_proj", "attention.output.dense"),
                ("attn_norm", "attention.output.LayerNorm"),
                ("ffn.up_proj", "intermediate.dense"),
                ("ffn.down_proj", "output.dense"),
                ("ffn_norm", "output.LayerNorm"),
            ]
            for p in ("weight", "bias")
        ],
        ("pooler.weight", "pooler.dense.weight"),
        ("pooler.bias", "pooler.dense.bias"),
    ]
)

HEAD_MAP = KeyMap(
    [
        ("classifier.weight", "classifier.weight"),
        ("classifier.bias", "classifier.bias"),
        # chunk_pooling "attention": ours only (transformers ignores the key)
        ("chunk_scorer.weight", "torchformer_chunk_scorer.weight"),
        ("mlm_head.dense.weight", "cls.predictions.transform.dense.weight"),
        ("mlm_head.dense.bias", "cls.predictions.transform.dense.bias"),
        ("mlm_head.norm.weight", "cls.predictions.transform.LayerNorm.weight"),
        ("mlm_head.norm.bias", "cls.predictions.transform.LayerNorm.bias"),
        ("mlm_head.bias", "cls.predictions.bias"),
    ]
)

# Checkpoint keys that carry no parameter of ours: a buffer, the tied MLM
# decoder (same tensor as the word embeddings) and the NSP head.
_DROPPED = ("embeddings.position_ids", "cls.predictions.decoder.", "cls.seq_relationship.")


def config_from_hf(hf: dict, *, source: str = "config.json") -> EncoderConfig:
    """An ``EncoderConfig`` from a BERT ``config.json`` dict."""
    if hf.get("model_type") not in MODEL_TYPES:
        raise CheckpointError(
            f"{source}: model_type {hf.get('model_type')!r} is not a BERT-family model"
        )
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(
            f"{source}: position_embedding_type {hf['position_embedding_type']!r} is not supported "
            "(only 'absolute')"
        )
    id2label = {int(k): v for k, v in hf.get("id2label", {}).items()}
    return EncoderConfig(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"],
        max_len=hf.get("max_position_embeddings", 512),
        type_vocab_size=hf.get("type_vocab_size", 2),
        dropout=hf.get("hidden_dropout_prob", 0.1),
        attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        activation=hf.get("hidden_act", "gelu"),
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        pad_id=hf.get("pad_token_id") or 0,
        initializer_range=hf.get("initializer_range", 0.02),
        num_labels=len(id2label) or hf.get("num_labels", 2),
        pooling=hf.get("torchformer_pooling", "pooler"),
        **_pattern_from_hf(hf),
        classifier_dropout=hf.get("classifier_dropout"),
        id2label=id2label,
    )


# Our attention-pattern fields, saved as "torchformer_<field>" keys of config.json.
_PATTERN_FIELDS = (
    "attention",
    "global_tokens",
    *(f"attention_{name}" for name in PATTERN_SETTINGS),
)
# Long-document fields, saved as "torchformer_<field>" when not "truncate".
_LONG_DOCUMENT_FIELDS = (
    "long_document",
    "chunk_length",
    "chunk_stride",
    "chunk_pooling",
    "cls_id",
    "sep_id",
)


def _pattern_from_hf(hf: dict) -> dict:
    """The attention-pattern fields a config.json of ours holds (absent: the defaults)."""
    out = {}
    for name in (*_PATTERN_FIELDS, *_LONG_DOCUMENT_FIELDS):
        if f"torchformer_{name}" in hf:
            value = hf[f"torchformer_{name}"]
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def config_to_hf(config: EncoderConfig, *, architecture: str = "BertModel") -> dict:
    """A ``config.json`` dict that ``transformers`` reads as the same model."""
    hf = {
        "model_type": "bert",
        "architectures": [architecture],
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "intermediate_size": config.d_ff,
        "max_position_embeddings": config.max_len,
        "type_vocab_size": config.type_vocab_size,
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.attn_dropout,
        "hidden_act": config.activation,
        "layer_norm_eps": config.norm_eps,
        "pad_token_id": config.pad_id,
        "initializer_range": config.initializer_range,
        "position_embedding_type": "absolute",
    }
    if config.attention != "full":  # transformers ignores these keys (it would attend fully)
        for name in _PATTERN_FIELDS:
            value = getattr(config, name)
            hf[f"torchformer_{name}"] = list(value) if isinstance(value, tuple) else value
    if config.long_document != "truncate":  # transformers would read one chunk's worth
        for name in _LONG_DOCUMENT_FIELDS:
            hf[f"torchformer_{name}"] = getattr(config, name)
    if architecture == "BertForSequenceClassification":
        labels = config.id2label or {i: f"LABEL_{i}" for i in range(config.num_labels)}
        hf["id2label"] = {str(i): name for i, name in labels.items()}
        hf["label2id"] = {name: i for i, name in labels.items()}
        hf["classifier_dropout"] = config.classifier_dropout
        # transformers ignores this key and always uses the pooler; our loader honours it.
        hf["torchformer_pooling"] = config.pooling
    return hf


def _rename_legacy(key: str) -> str:
    """Old TF-converted checkpoints name LayerNorm parameters gamma/beta."""
    return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
        "LayerNorm.beta", "LayerNorm.bias"
    )


def state_from_hf(
    hf_state: dict[str, Tensor], *, source: str, encoder_prefix: str
) -> dict[str, Tensor]:
    """Rename a BERT state dict to our names; ``encoder_prefix`` is "" or "encoder."."""
    ours: dict[str, Tensor] = {}
    for raw_key, value in hf_state.items():
        key = _rename_legacy(raw_key)
        key = key.removeprefix("bert.")
        if key.startswith(_DROPPED):
            continue
        if (name := ENCODER_MAP.to_ours(key)) is not None:
            ours[encoder_prefix + name] = value
        elif (name := HEAD_MAP.to_ours(key)) is not None:
            ours[name] = value
        else:
            ours[f"<unmapped>{raw_key}"] = value  # reported as unexpected by the loader
    return ours


def state_to_hf(model: nn.Module) -> dict[str, Tensor]:
    """Our model's weights under HF names (task models get the ``bert.`` prefix)."""
    task = not isinstance(model, Encoder)
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if task and key.startswith("encoder."):
            out["bert." + ENCODER_MAP.to_theirs(key.removeprefix("encoder."))] = value
        elif not task:
            out[ENCODER_MAP.to_theirs(key)] = value
        else:
            out[HEAD_MAP.to_theirs(key)] = value
    if isinstance(model, EncoderForMaskedLM):  # HF expects the (tied) decoder bias too
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"].clone()
    return out


ARCHITECTURES = {
    Encoder: "BertModel",
    EncoderForSequenceClassification: "BertForSequenceClassification",
    EncoderForMaskedLM: "BertForMaskedLM",
}


def load_into(model: nn.Module, hf_state: dict[str, Tensor], *, source: str) -> LoadReport:
    """Load HF BERT weights into one of our encoder models, strictly."""
    prefix = "" if isinstance(model, Encoder) else "encoder."
    state = state_from_hf(hf_state, source=source, encoder_prefix=prefix)
    if isinstance(model, Encoder):
        ignore = ("classifier.", "mlm_head.", "chunk_scorer.")
        new_ok: tuple[str, ...] = ()
    elif isinstance(model, EncoderForSequenceClassification):
        ignore, new_ok = ("mlm_head.",), ("classifier.", "chunk_scorer.")
    else:
        ignore, new_ok = ("classifier.", "chunk_scorer."), ("mlm_head.",)
    if not model.config.add_pooler:
        ignore = (*ignore, "encoder.pooler.", "pooler.")
    else:  # BertForMaskedLM checkpoints have no pooler: it is then new (and reported)
        new_ok = (*new_ok, "encoder.pooler.", "pooler.")
    return load_state_strict(model, state, source=str(Path(source)), new_ok=new_ok, ignore=ignore)


def _family():
    from torchformer.checkpoints.registry import Family

    return Family(
        model_types=MODEL_TYPES,
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        tasks={
            "base": Encoder,
            "classification": EncoderForSequenceClassification,
            "masked_lm": EncoderForMaskedLM,
        },
        architectures=ARCHITECTURES,
        load_into=load_into,
        state_to_hf=state_to_hf,
    )


FAMILY = _family()
