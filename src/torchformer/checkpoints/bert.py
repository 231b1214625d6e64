"""BERT-family checkpoints (BERT, MiniLM, ...) in Hugging Face layout, both ways.

HF's BertModel names (optionally under a ``bert.`` prefix in task models) map
one-to-one onto ``torchformer.models.encoder``; the table below is the whole
correspondence.
"""

from __future__ import annotations

from dataclasses import dataclass
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

# Our attention module's names -> HF's BertLayer names (Longformer and BigBird share them).
LAYER_PAIRS = [
    ("self_attn.q_proj", "attention.self.query"),
    ("self_attn.k_proj", "attention.self.key"),
    ("self_attn.v_proj", "attention.self.value"),
    ("self_attn.out_proj", "attention.output.dense"),
    ("attn_norm", "attention.output.LayerNorm"),
    ("ffn.up_proj", "intermediate.dense"),
    ("ffn.down_proj", "output.dense"),
    ("ffn_norm", "output.LayerNorm"),
]


def encoder_map(
    layer_pairs=LAYER_PAIRS, *, pooler: str | None = "pooler.dense", layers: str = "encoder.layer"
) -> KeyMap:
    """Our ``Encoder`` names -> a BERT-like checkpoint's: ``layers`` holds the layers,
    ``pooler`` is its pooler Linear (None: the encoder has none, DistilBERT)."""
    pairs = [
        ("embeddings.token_embeddings.weight", "embeddings.word_embeddings.weight"),
        ("embeddings.position_embeddings.weight", "embeddings.position_embeddings.weight"),
        ("embeddings.token_type_embeddings.weight", "embeddings.token_type_embeddings.weight"),
        ("embeddings.norm.weight", "embeddings.LayerNorm.weight"),
        ("embeddings.norm.bias", "embeddings.LayerNorm.bias"),
        *[
            (f"layers.{{i}}.{ours}.{p}", f"{layers}.{{i}}.{theirs}.{p}")
            for ours, theirs in layer_pairs
            for p in ("weight", "bias")
        ],
    ]
    if pooler is not None:
        pairs += [("pooler.weight", f"{pooler}.weight"), ("pooler.bias", f"{pooler}.bias")]
    return KeyMap(pairs)


ENCODER_MAP = encoder_map()

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


@dataclass(frozen=True)
class Layout:
    """Where a BERT-like family keeps its weights in a Hugging Face checkpoint.

    Attributes:
        prefix: the encoder's prefix in task models ("bert.", "longformer.").
        encoder: our ``Encoder`` names <-> theirs.
        heads: our task heads' names (classifier, mlm_head, ...) <-> theirs.
        dropped: prefixes of their keys that carry no parameter of ours.
        decoder_bias: (their MLM bias key, their tied decoder's copy of it), written on
            save; None when the bias has one key only.
        head_pooler: a classification head whose first Linear is our pooler (RoBERTa-style
            ``classifier.dense`` + ``classifier.out_proj``): a classifier's encoder pooler
            is then unused (reported, not loaded, not written).
        mlm_pooler: whether their MLM model has a pooler (RoBERTa's has none: ours is
            then not written).
    """

    prefix: str
    encoder: KeyMap
    heads: KeyMap
    dropped: tuple[str, ...]
    decoder_bias: tuple[str, str] | None
    head_pooler: bool = False
    mlm_pooler: bool = True


# Checkpoint keys that carry no parameter of ours: a buffer, the tied MLM
# decoder (same tensor as the word embeddings) and the NSP head.
_DROPPED = ("embeddings.position_ids", "cls.predictions.decoder.", "cls.seq_relationship.")

BERT = Layout(
    prefix="bert.",
    encoder=ENCODER_MAP,
    heads=HEAD_MAP,
    dropped=_DROPPED,
    decoder_bias=("cls.predictions.bias", "cls.predictions.decoder.bias"),
)


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
    return encoder_config(hf)


def encoder_config(hf: dict, **fields) -> EncoderConfig:
    """The ``EncoderConfig`` fields every BERT-like ``config.json`` holds, plus ``fields``
    (a family's own: attention pattern, position offset, ...), plus our saved ones."""
    id2label = {int(k): v for k, v in hf.get("id2label", {}).items()}
    common = dict(
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
        classifier_dropout=hf.get("classifier_dropout"),
        id2label=id2label,
    )
    return EncoderConfig(**{**common, **fields, **_pattern_from_hf(hf)})


def encoder_config_to_hf(config: EncoderConfig, model_type: str, architecture: str) -> dict:
    """The ``config.json`` keys every BERT-like family shares, our own saved ones included."""
    hf = {
        "model_type": model_type,
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
    }
    if config.long_document != "truncate":  # transformers would read one chunk's worth
        for name in _LONG_DOCUMENT_FIELDS:
            hf[f"torchformer_{name}"] = getattr(config, name)
    if architecture.endswith("ForSequenceClassification"):
        labels = config.id2label or {i: f"LABEL_{i}" for i in range(config.num_labels)}
        hf["id2label"] = {str(i): name for i, name in labels.items()}
        hf["label2id"] = {name: i for i, name in labels.items()}
        hf["classifier_dropout"] = config.classifier_dropout
        # transformers ignores this key and always uses the pooler; our loader honours it.
        hf["torchformer_pooling"] = config.pooling
    return hf


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
    hf = encoder_config_to_hf(config, "bert", architecture)
    hf["position_embedding_type"] = "absolute"
    if config.attention != "full":  # transformers ignores these keys (it would attend fully)
        hf.update(pattern_to_hf(config))
    return hf


def pattern_to_hf(config: EncoderConfig) -> dict:
    """Our attention-pattern fields as "torchformer_<field>" keys."""
    out = {}
    for name in _PATTERN_FIELDS:
        value = getattr(config, name)
        out[f"torchformer_{name}"] = list(value) if isinstance(value, tuple) else value
    return out


def _rename_legacy(key: str) -> str:
    """Old TF-converted checkpoints name LayerNorm parameters gamma/beta."""
    return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
        "LayerNorm.beta", "LayerNorm.bias"
    )


def state_from_hf(
    hf_state: dict[str, Tensor],
    *,
    source: str,
    encoder_prefix: str,
    layout: Layout = BERT,
    head_pooler: bool = False,
) -> dict[str, Tensor]:
    """Rename a checkpoint's state dict to our names; ``encoder_prefix`` is "" or "encoder.".

    ``head_pooler`` (a classifier of a ``layout.head_pooler`` family): the head's dense
    layer is our pooler and the encoder's pooler goes unused; otherwise the reverse.
    Unused keys come back under "<unused>" names, for the loader to report."""
    ours: dict[str, Tensor] = {}
    for raw_key, value in hf_state.items():
        key = _rename_legacy(raw_key).removeprefix(layout.prefix)
        if key.startswith(layout.dropped):
            continue
        name = layout.encoder.to_ours(key)
        if name is not None and head_pooler and name.startswith("pooler."):
            ours[f"<unused>{raw_key}"] = value
        elif name is not None:
            ours[encoder_prefix + name] = value
        elif (name := layout.heads.to_ours(key)) is not None:
            unused = name.startswith("encoder.pooler.") and not head_pooler
            ours[f"<unused>{raw_key}" if unused else name] = value
        else:
            ours[f"<unmapped>{raw_key}"] = value  # reported as unexpected by the loader
    return ours


def state_to_hf(model: nn.Module, layout: Layout = BERT) -> dict[str, Tensor]:
    """Our model's weights under the layout's names (task models get its prefix)."""
    task = not isinstance(model, Encoder)
    head_pooler = layout.head_pooler and isinstance(model, EncoderForSequenceClassification)
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if not task:
            name = layout.encoder.to_theirs(key)
        elif head_pooler and key.startswith("encoder.pooler."):
            name = layout.heads.to_theirs(key)
        elif key.startswith("encoder."):
            name = layout.encoder.to_theirs(key.removeprefix("encoder."))
            name = None if name is None else layout.prefix + name
        else:
            name = layout.heads.to_theirs(key)
        pooler = key.removeprefix("encoder.").startswith("pooler.")
        if pooler and isinstance(model, EncoderForMaskedLM) and not layout.mlm_pooler:
            continue  # their MLM model has no pooler
        if name is None and pooler:
            continue  # a pooler the layout has no place for (DistilBERT's encoder)
        if name is None:
            raise CheckpointError(f"{key}: no name for it in the {layout.prefix[:-1]} layout")
        out[name] = value
    if isinstance(model, EncoderForMaskedLM) and layout.decoder_bias is not None:
        bias, copy = layout.decoder_bias  # HF expects the (tied) decoder's bias too
        out[copy] = out[bias].clone()
    return out


ARCHITECTURES = {
    Encoder: "BertModel",
    EncoderForSequenceClassification: "BertForSequenceClassification",
    EncoderForMaskedLM: "BertForMaskedLM",
}


def load_into(
    model: nn.Module, hf_state: dict[str, Tensor], *, source: str, layout: Layout = BERT
) -> LoadReport:
    """Load a BERT-like checkpoint's weights into one of our encoder models, strictly."""
    prefix = "" if isinstance(model, Encoder) else "encoder."
    classifier = isinstance(model, EncoderForSequenceClassification)
    state = state_from_hf(
        hf_state,
        source=source,
        encoder_prefix=prefix,
        layout=layout,
        head_pooler=layout.head_pooler and classifier,
    )
    if isinstance(model, Encoder):
        ignore = ("classifier.", "mlm_head.", "chunk_scorer.", "<unused>")
        new_ok: tuple[str, ...] = ()
    elif classifier:
        ignore, new_ok = ("mlm_head.", "<unused>"), ("classifier.", "chunk_scorer.")
    else:
        ignore, new_ok = ("classifier.", "chunk_scorer.", "<unused>"), ("mlm_head.",)
    if not model.config.add_pooler:
        ignore = (*ignore, "encoder.pooler.", "pooler.")
    else:  # MLM checkpoints may have no pooler: it is then new (and reported)
        new_ok = (*new_ok, "encoder.pooler.", "pooler.")
    return load_state_strict(model, state, source=str(Path(source)), new_ok=new_ok, ignore=ignore)


def encoder_family(
    *,
    model_types: tuple[str, ...],
    config_from_hf,
    config_to_hf,
    layout: Layout,
    hf_name: str,
    flavour: str,
    classifier=EncoderForSequenceClassification,
):
    """The ``Family`` of a BERT-like checkpoint layout: base, classification and masked-LM
    models named ``{hf_name}Model`` / ``ForSequenceClassification`` / ``ForMaskedLM``,
    their weights moved by ``layout``, and models of ``flavour`` saved in it.
    ``classifier``: builds the classification model from a config (BigBird's differs)."""
    from torchformer.checkpoints.registry import Family

    return Family(
        model_types=model_types,
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        tasks={"base": Encoder, "classification": classifier, "masked_lm": EncoderForMaskedLM},
        architectures={
            Encoder: f"{hf_name}Model",
            EncoderForSequenceClassification: f"{hf_name}ForSequenceClassification",
            EncoderForMaskedLM: f"{hf_name}ForMaskedLM",
        },
        load_into=lambda model, hf_state, *, source: load_into(
            model, hf_state, source=source, layout=layout
        ),
        state_to_hf=lambda model: state_to_hf(model, layout),
        accepts=lambda model: model.config.flavour == flavour,
    )


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
        accepts=lambda model: model.config.flavour == "bert",
    )


FAMILY = _family()
