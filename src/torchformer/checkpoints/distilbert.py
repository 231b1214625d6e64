"""DistilBERT checkpoints (Sanh et al. 2019) in Hugging Face layout, both ways.

DistilBERT is BERT with half the layers, no segment embeddings and no pooler: our
``Encoder`` with ``type_vocab_size=0``. Its layers hold the same post-norm blocks under
other names (``q_lin`` … ``output_layer_norm``); its config.json too (``dim``,
``n_layers``, ``hidden_dim``, ...). The classifier is ``pre_classifier`` + ReLU +
``classifier`` on [CLS]: our pooler with ``pooler_activation="relu"`` and our classifier
(a base model's pooler is new when loaded, and not written back: DistilBertModel has
none). The MLM head is ``vocab_transform``, the activation, ``vocab_layer_norm`` and the
tied ``vocab_projector``.
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

MODEL_TYPES = ("distilbert",)

LAYOUT = Layout(
    prefix="distilbert.",
    encoder=encoder_map(
        [
            ("self_attn.q_proj", "attention.q_lin"),
            ("self_attn.k_proj", "attention.k_lin"),
            ("self_attn.v_proj", "attention.v_lin"),
            ("self_attn.out_proj", "attention.out_lin"),
            ("attn_norm", "sa_layer_norm"),
            ("ffn.up_proj", "ffn.lin1"),
            ("ffn.down_proj", "ffn.lin2"),
            ("ffn_norm", "output_layer_norm"),
        ],
        pooler=None,
        layers="transformer.layer",
    ),
    heads=KeyMap(
        [
            ("encoder.pooler.weight", "pre_classifier.weight"),
            ("encoder.pooler.bias", "pre_classifier.bias"),
            ("classifier.weight", "classifier.weight"),
            ("classifier.bias", "classifier.bias"),
            ("chunk_scorer.weight", "torchformer_chunk_scorer.weight"),
            ("mlm_head.dense.weight", "vocab_transform.weight"),
            ("mlm_head.dense.bias", "vocab_transform.bias"),
            ("mlm_head.norm.weight", "vocab_layer_norm.weight"),
            ("mlm_head.norm.bias", "vocab_layer_norm.bias"),
            ("mlm_head.bias", "vocab_projector.bias"),
        ]
    ),
    dropped=("embeddings.position_ids", "vocab_projector.weight"),
    decoder_bias=None,
    head_pooler=True,
    mlm_pooler=False,
)

# DistilBERT's config.json names for the BERT ones encoder_config reads.
_NAMES = {
    "dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "hidden_dim": "intermediate_size",
    "dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
    "activation": "hidden_act",
}


def config_from_hf(hf: dict, *, source: str = "config.json") -> EncoderConfig:
    """An ``EncoderConfig`` from a DistilBERT ``config.json`` dict."""
    if hf.get("model_type") not in MODEL_TYPES:
        raise CheckpointError(f"{source}: model_type {hf.get('model_type')!r} is not distilbert")
    if hf.get("sinusoidal_pos_embds", False):
        raise CheckpointError(
            f"{source}: field 'sinusoidal_pos_embds': true is not supported (fixed sinusoidal "
            "positions; only learned ones)"
        )
    for size in ("dim", "n_layers", "n_heads", "hidden_dim"):  # named as the file names it
        if size not in hf:
            raise CheckpointError(f"{source}: field {size!r}: missing")
    bert = {**hf, **{ours: hf[theirs] for theirs, ours in _NAMES.items() if theirs in hf}}
    return encoder_config(
        bert,
        type_vocab_size=0,
        norm_eps=1e-12,
        pad_id=hf.get("pad_token_id") or 0,
        pooler_activation="relu",
        classifier_dropout=hf.get("seq_classif_dropout", 0.2),
        flavour="distilbert",
    )


def config_to_hf(config: EncoderConfig, *, architecture: str = "DistilBertModel") -> dict:
    """A ``config.json`` dict that ``transformers`` reads as the same model."""
    problems = []
    if config.attention != "full":
        problems.append(f"attention={config.attention!r} (DistilBERT attends fully)")
    if config.type_vocab_size != 0:
        problems.append(f"type_vocab_size={config.type_vocab_size} (DistilBERT has no segments)")
    if config.pooler_activation != "relu":
        problems.append(f"pooler_activation={config.pooler_activation!r} (its head uses ReLU)")
    if config.position_offset:
        problems.append(f"position_offset={config.position_offset}")
    if problems:
        raise CheckpointError("not a DistilBERT model: " + "; ".join(problems))
    bert = encoder_config_to_hf(config, "distilbert", architecture)
    hf = {k: v for k, v in bert.items() if k not in _NAMES.values() and k != "type_vocab_size"}
    hf.update({theirs: bert[ours] for theirs, ours in _NAMES.items()})
    hf.update(
        sinusoidal_pos_embds=False,
        seq_classif_dropout=config.classifier_dropout
        if config.classifier_dropout is not None
        else config.dropout,
    )
    return hf


FAMILY = encoder_family(
    model_types=MODEL_TYPES,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    layout=LAYOUT,
    hf_name="DistilBert",
    flavour="distilbert",
)
