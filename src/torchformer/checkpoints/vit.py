"""Vision Transformer checkpoints (``vit``) in Hugging Face layout, both ways.

HF's ViTModel names (under a ``vit.`` prefix in ``ViTForImageClassification``) map
one-to-one onto ``torchformer.models.vit``; the table below is the whole
correspondence. These are the names on the Hub and what ``transformers``'
``save_pretrained`` writes (its in-memory module names may differ; it renames on
load and back on save).

HF's ``ViTModel`` has an optional pooler (``pooler.dense``: a linear map and tanh on
the [CLS] vector) that nothing in ``ViTForImageClassification`` uses and that our
``ViTModel`` does not have: its weights are left out on load and reported in the
``LoadReport`` (``ignored_keys``), and a saved ``ViTModel`` has none (``transformers``
then initialises a fresh one, and reports it missing).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from torchformer.checkpoints.hf import CheckpointError, LoadReport, load_state_strict
from torchformer.checkpoints.keymap import KeyMap
from torchformer.models.vit import ViTConfig, ViTForImageClassification, ViTModel
from torchformer.nn.feed_forward import ACTIVATIONS

MODEL_TYPES = ("vit",)

# Our names (inside ``ViTModel``) <-> HF ViTModel names.
MODEL_MAP = KeyMap(
    [
        ("embeddings.cls_token", "embeddings.cls_token"),
        ("embeddings.position_embeddings", "embeddings.position_embeddings"),
        ("embeddings.patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight"),
        ("embeddings.patch_embed.proj.bias", "embeddings.patch_embeddings.projection.bias"),
        *[
            (f"layers.{{i}}.{ours}.{p}", f"encoder.layer.{{i}}.{theirs}.{p}")
            for ours, theirs in [
                ("self_attn.q_proj", "attention.attention.query"),
                ("self_attn.k_proj", "attention.attention.key"),
                ("self_attn.v_proj", "attention.attention.value"),
                ("self_attn.out_proj", "attention.output.dense"),
                ("attn_norm", "layernorm_before"),
                ("ffn.up_proj", "intermediate.dense"),
                ("ffn.down_proj", "output.dense"),
                ("ffn_norm", "layernorm_after"),
            ]
            for p in ("weight", "bias")
        ],
        ("norm.weight", "layernorm.weight"),
        ("norm.bias", "layernorm.bias"),
    ]
)

HEAD_MAP = KeyMap(
    [
        ("classifier.weight", "classifier.weight"),
        ("classifier.bias", "classifier.bias"),
    ]
)

# HF ViTModel's pooler: no parameter of ours; kept under this name so the loader reports it.
_POOLER = "pooler."

_POOLINGS = ("cls", "mean")
_PATCH_EMBEDS = ("conv", "linear")


def _positive_int(value: object, key: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(
            f"{source}: field {key!r}: expected a positive integer, found {value!r}"
        )
    return value


def _square(hf: dict, key: str, default: int, source: str) -> int:
    """A positive int, or a list/tuple of two equal ones (HF allows (height, width))."""
    value = hf.get(key, default)
    if isinstance(value, list | tuple):
        if len(value) != 2 or value[0] != value[1]:
            raise CheckpointError(
                f"{source}: field {key!r}: {value!r} is not square; only equal height and "
                "width are supported"
            )
        value = value[0]
    return _positive_int(value, key, source)


def _choice(hf: dict, key: str, default: str, allowed: tuple[str, ...], source: str) -> str:
    value = hf.get(key, default)
    if value not in allowed:
        raise CheckpointError(
            f"{source}: field {key!r}: {value!r} is not one of {', '.join(allowed)}"
        )
    return value


def config_from_hf(hf: dict, *, source: str = "config.json") -> ViTConfig:
    """A ``ViTConfig`` from a ViT ``config.json`` dict.

    Raises:
        CheckpointError: wrong model_type, a non-square or non-positive image/patch size,
            an activation or option we do not implement (each named).
    """
    if hf.get("model_type") not in MODEL_TYPES:
        raise CheckpointError(f"{source}: model_type {hf.get('model_type')!r} is not a ViT model")
    activation = hf.get("hidden_act", "gelu")
    if activation not in ACTIVATIONS:
        raise CheckpointError(
            f"{source}: hidden_act {activation!r} is not supported; "
            f"expected one of {sorted(ACTIVATIONS)}"
        )
    id2label = {int(k): v for k, v in hf.get("id2label", {}).items()}
    return ViTConfig(
        image_size=_square(hf, "image_size", 224, source),
        patch_size=_square(hf, "patch_size", 16, source),
        num_channels=_positive_int(hf.get("num_channels", 3), "num_channels", source),
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"],
        dropout=hf.get("hidden_dropout_prob", 0.0),
        attn_dropout=hf.get("attention_probs_dropout_prob", 0.0),
        activation=activation,
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        qkv_bias=hf.get("qkv_bias", True),
        initializer_range=hf.get("initializer_range", 0.02),
        patch_embed=_choice(hf, "torchformer_patch_embed", "conv", _PATCH_EMBEDS, source),
        pooling=_choice(hf, "torchformer_pooling", "cls", _POOLINGS, source),
        num_labels=len(id2label) or hf.get("num_labels", 2),
        id2label=id2label,
    )


def config_to_hf(config: ViTConfig, *, architecture: str = "ViTModel") -> dict:
    """A ``config.json`` dict that ``transformers`` reads as the same model."""
    hf = {
        "model_type": "vit",
        "architectures": [architecture],
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "intermediate_size": config.d_ff,
        "hidden_act": config.activation,
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.attn_dropout,
        "initializer_range": config.initializer_range,
        "layer_norm_eps": config.norm_eps,
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "num_channels": config.num_channels,
        "qkv_bias": config.qkv_bias,
        # transformers ignores this key (its patch embedding is always the convolution,
        # the same weights); our loader honours it.
        "torchformer_patch_embed": config.patch_embed,
    }
    if architecture == "ViTForImageClassification":
        labels = config.id2label or {i: f"LABEL_{i}" for i in range(config.num_labels)}
        hf["id2label"] = {str(i): name for i, name in labels.items()}
        hf["label2id"] = {name: i for i, name in labels.items()}
        # transformers ignores this key and always classifies the [CLS] vector; our
        # loader honours it.
        hf["torchformer_pooling"] = config.pooling
    return hf


def state_from_hf(hf_state: dict[str, Tensor], *, model_prefix: str) -> dict[str, Tensor]:
    """Rename a ViT state dict to our names; ``model_prefix`` is "" or "vit."."""
    ours: dict[str, Tensor] = {}
    for raw_key, value in hf_state.items():
        key = raw_key.removeprefix("vit.")
        if (name := MODEL_MAP.to_ours(key)) is not None:
            ours[model_prefix + name] = value
        elif (name := HEAD_MAP.to_ours(key)) is not None:
            ours[name] = value
        elif key.startswith(_POOLER):
            ours[key] = value  # no place in our model: ignored and reported by the loader
        else:
            ours[f"<unmapped>{raw_key}"] = value  # reported as unexpected by the loader
    return ours


def state_to_hf(model: nn.Module) -> dict[str, Tensor]:
    """Our model's weights under HF names (the classifier model gets the ``vit.`` prefix)."""
    task = not isinstance(model, ViTModel)
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if task and key.startswith("vit."):
            out["vit." + MODEL_MAP.to_theirs(key.removeprefix("vit."))] = value
        elif not task:
            out[MODEL_MAP.to_theirs(key)] = value
        else:
            out[HEAD_MAP.to_theirs(key)] = value
    return out


ARCHITECTURES = {
    ViTModel: "ViTModel",
    ViTForImageClassification: "ViTForImageClassification",
}


def load_into(model: nn.Module, hf_state: dict[str, Tensor], *, source: str) -> LoadReport:
    """Load HF ViT weights into our ``ViTModel`` or ``ViTForImageClassification``, strictly."""
    if isinstance(model, ViTModel):
        prefix, new_ok = "", ()
        ignore: tuple[str, ...] = (_POOLER, "classifier.")
    else:
        prefix, new_ok, ignore = "vit.", ("classifier.",), (_POOLER,)
    state = state_from_hf(hf_state, model_prefix=prefix)
    ours = model.state_dict()
    head = [k for k in state if k.startswith("classifier.") and k in ours]
    if any(state[k].shape != ours[k].shape for k in head):
        # A classifier for other classes (e.g. ImageNet's 1,000): fine-tuning replaces the
        # head, which starts fresh and is reported as new.
        for k in head:
            del state[k]
    return load_state_strict(model, state, source=str(Path(source)), new_ok=new_ok, ignore=ignore)


def _family():
    from torchformer.checkpoints.registry import Family

    return Family(
        model_types=MODEL_TYPES,
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        tasks={"base": ViTModel, "classification": ViTForImageClassification},
        architectures=ARCHITECTURES,
        load_into=load_into,
        state_to_hf=state_to_hf,
    )


FAMILY = _family()
