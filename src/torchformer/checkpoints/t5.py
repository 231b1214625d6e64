"""Encoder–decoder checkpoints: T5 in Hugging Face layout, the original Transformer in ours.

T5 (``model_type: "t5"``, ``T5ForConditionalGeneration``) maps one-to-one onto
``torchformer.models.seq2seq`` with ``flavour="t5"``; the key map below is the
whole correspondence. Hugging Face stores the relative position bias in block
0's self-attention; we keep it on the stack (it is shared by all layers).

Tied checkpoints may also hold ``encoder.embed_tokens.weight`` and
``decoder.embed_tokens.weight`` (copies of ``shared.weight``) and old ones an
unused ``decoder.block.0.layer.1.EncDecAttention.relative_attention_bias``;
these are dropped on load and not written on save.

``tie_word_embeddings`` (transformers 4.x meaning, which 5.x reads as
``scale_decoder_outputs``): True ties the LM head to ``shared`` and rescales the
decoder output by D^-0.5; False gives a separate ``lm_head`` and no rescaling.
A 5.x-saved untied model may carry no ``lm_head.weight`` (5.x ties the head
anyway): the head is then a copy of ``shared``, as transformers does.

The original Transformer (``flavour="transformer"``) has no Hugging Face
counterpart. It is saved as our own config (``model_type:
"torchformer-transformer"``, the ``Seq2SeqConfig`` fields) and our parameter
names in ``model.safetensors``, so ``load_pretrained`` reads it back.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch
from torch import Tensor, nn

from torchformer.checkpoints.hf import CheckpointError, LoadReport, load_state_strict
from torchformer.checkpoints.keymap import KeyMap
from torchformer.config import ConfigError, config_from_dict, config_to_dict
from torchformer.models.seq2seq import Seq2Seq, Seq2SeqConfig

T5_MODEL_TYPE = "t5"
TRANSFORMER_MODEL_TYPE = "torchformer-transformer"
MODEL_TYPES = (T5_MODEL_TYPE, TRANSFORMER_MODEL_TYPE)

_ATTENTION = [("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("out_proj", "o")]
_DROPPED = (
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
)


def _ffn_pairs(ours: str, theirs: str, *, gated: bool) -> list[tuple[str, str]]:
    proj = [("gate_proj", "wi_0"), ("up_proj", "wi_1")] if gated else [("up_proj", "wi")]
    return [(f"{ours}.{o}.weight", f"{theirs}.{t}.weight") for o, t in [*proj, ("down_proj", "wo")]]


def t5_key_map(*, gated: bool) -> KeyMap:
    """Our names <-> HF T5 names (gated: v1.1 ``wi_0``/``wi_1``; else v1.0 ``wi``)."""
    enc, dec = "encoder.block.{i}.layer", "decoder.block.{i}.layer"
    pairs = [
        ("src_embed.weight", "shared.weight"),
        ("lm_head.weight", "lm_head.weight"),
        (
            "encoder.relative_bias.embedding.weight",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        ),
        (
            "decoder.relative_bias.embedding.weight",
            "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        ),
        ("encoder.final_norm.weight", "encoder.final_layer_norm.weight"),
        ("decoder.final_norm.weight", "decoder.final_layer_norm.weight"),
        # Encoder block: layer.0 self-attention, layer.1 feed-forward.
        *[
            (f"encoder.layers.{{i}}.self_attn.{o}.weight", f"{enc}.0.SelfAttention.{t}.weight")
            for o, t in _ATTENTION
        ],
        ("encoder.layers.{i}.attn_norm.weight", f"{enc}.0.layer_norm.weight"),
        *_ffn_pairs("encoder.layers.{i}.ffn", f"{enc}.1.DenseReluDense", gated=gated),
        ("encoder.layers.{i}.ffn_norm.weight", f"{enc}.1.layer_norm.weight"),
        # Decoder block: layer.0 self-attention, layer.1 cross-attention, layer.2 feed-forward.
        *[
            (f"decoder.layers.{{i}}.self_attn.{o}.weight", f"{dec}.0.SelfAttention.{t}.weight")
            for o, t in _ATTENTION
        ],
        ("decoder.layers.{i}.attn_norm.weight", f"{dec}.0.layer_norm.weight"),
        *[
            (f"decoder.layers.{{i}}.cross_attn.{o}.weight", f"{dec}.1.EncDecAttention.{t}.weight")
            for o, t in _ATTENTION
        ],
        ("decoder.layers.{i}.cross_attn_norm.weight", f"{dec}.1.layer_norm.weight"),
        *_ffn_pairs("decoder.layers.{i}.ffn", f"{dec}.2.DenseReluDense", gated=gated),
        ("decoder.layers.{i}.ffn_norm.weight", f"{dec}.2.layer_norm.weight"),
    ]
    return KeyMap(pairs)


# --- configs ----------------------------------------------------------------------------


def _parse_feed_forward_proj(value: str, source: str) -> tuple[str, bool]:
    """HF ``feed_forward_proj`` -> (activation, gated): "relu", "gated-gelu", "gated-silu", ..."""
    parts = value.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise CheckpointError(f"{source}: feed_forward_proj {value!r} is not 'ACT' or 'gated-ACT'")
    gated = len(parts) == 2
    # transformers maps "gated-gelu" to the tanh approximation (T5 v1.1 was trained with it).
    activation = "gelu_new" if value == "gated-gelu" else parts[-1]
    return activation, gated


def _t5_config_from_hf(hf: dict, source: str) -> Seq2SeqConfig:
    activation, gated = _parse_feed_forward_proj(hf.get("feed_forward_proj", "relu"), source)
    # transformers 5.x writes the old tie_word_embeddings meaning as scale_decoder_outputs.
    tied = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
    pad_id = hf.get("pad_token_id", 0)
    eos_id = hf.get("eos_token_id", 1)
    start_id = hf.get("decoder_start_token_id")
    return Seq2SeqConfig(
        flavour="t5",
        vocab_size=hf["vocab_size"],
        d_model=hf["d_model"],
        n_heads=hf["num_heads"],
        head_dim=hf["d_kv"],
        d_ff=hf["d_ff"],
        n_encoder_layers=hf["num_layers"],
        n_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        dropout=hf.get("dropout_rate", 0.1),
        activation=activation,
        gated_ffn=gated,
        norm_first=True,
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        share_embeddings=True,
        tie_output=bool(tied),
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        pad_id=pad_id,
        decoder_start_id=pad_id if start_id is None else start_id,
        eos_id=eos_id[0] if isinstance(eos_id, list) else eos_id,
    )


def _t5_config_to_hf(config: Seq2SeqConfig, architecture: str) -> dict:
    if not config.share_embeddings:
        raise CheckpointError("T5 layout needs share_embeddings=True (one 'shared' table)")
    if config.gated_ffn:
        proj = "gated-gelu" if config.activation == "gelu_new" else f"gated-{config.activation}"
    else:
        proj = config.activation
    return {
        "model_type": T5_MODEL_TYPE,
        "architectures": [architecture],
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "d_kv": config.head_dim or config.d_model // config.n_heads,
        "d_ff": config.d_ff,
        "num_layers": config.n_encoder_layers,
        "num_decoder_layers": config.n_decoder_layers,
        "num_heads": config.n_heads,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout,
        "layer_norm_epsilon": config.norm_eps,
        "initializer_factor": 1.0,
        "feed_forward_proj": proj,
        "is_encoder_decoder": True,
        "tie_word_embeddings": config.tie_output,
        "scale_decoder_outputs": config.tie_output,
        "pad_token_id": config.pad_id,
        "eos_token_id": config.eos_id,
        "decoder_start_token_id": config.decoder_start_id,
    }


def config_from_hf(hf: dict, *, source: str = "config.json") -> Seq2SeqConfig:
    """A ``Seq2SeqConfig`` from a T5 ``config.json`` dict, or from one of ours."""
    model_type = hf.get("model_type")
    if model_type == T5_MODEL_TYPE:
        return _t5_config_from_hf(hf, source)
    if model_type == TRANSFORMER_MODEL_TYPE:
        names = {f.name for f in fields(Seq2SeqConfig)}
        data = {k: v for k, v in hf.items() if k not in ("model_type", "architectures")}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CheckpointError(
                f"{source}: unknown keys {', '.join(unknown)} for {TRANSFORMER_MODEL_TYPE}"
            )
        try:
            return config_from_dict(Seq2SeqConfig, data, source=source)
        except (ConfigError, ValueError) as e:
            raise CheckpointError(str(e)) from e
    raise CheckpointError(f"{source}: model_type {model_type!r} is not an encoder-decoder model")


def config_to_hf(
    config: Seq2SeqConfig, *, architecture: str = "T5ForConditionalGeneration"
) -> dict:
    """A ``config.json`` dict: T5's for ``flavour="t5"``, our own for the Transformer."""
    if config.flavour == "t5":
        return _t5_config_to_hf(config, architecture)
    return {
        "model_type": TRANSFORMER_MODEL_TYPE,
        "architectures": ["Seq2Seq"],
        **config_to_dict(config),
    }


# --- weights ----------------------------------------------------------------------------


def state_from_hf(
    hf_state: dict[str, Tensor], config: Seq2SeqConfig, *, source: str
) -> dict[str, Tensor]:
    """Rename a T5 state dict to our names; unmatched keys are kept to be reported."""
    key_map = t5_key_map(gated=config.gated_ffn)
    ours: dict[str, Tensor] = {}
    for key, value in hf_state.items():
        if key in _DROPPED:
            continue
        name = key_map.to_ours(key)
        ours[name if name is not None else f"<unmapped>{key}"] = value
    shared = ours.get("src_embed.weight")
    head = ours.get("lm_head.weight")
    if config.tie_output and head is not None:
        if shared is not None and not torch.equal(head, shared):
            raise CheckpointError(
                f"{source}: the config ties the LM head to the embeddings (tie_word_embeddings), "
                "but lm_head.weight differs from shared.weight"
            )
        del ours["lm_head.weight"]
    elif not config.tie_output and head is None and shared is not None:
        ours["lm_head.weight"] = shared.clone()  # a 5.x untied save without its (tied) head
    return ours


def state_to_hf(model: nn.Module) -> dict[str, Tensor]:
    """Our weights under T5 names (t5 flavour) or under our own names (transformer)."""
    state = model.state_dict()
    if model.config.flavour != "t5":
        return dict(state)
    key_map = t5_key_map(gated=model.config.gated_ffn)
    out = {}
    for key, value in state.items():
        name = key_map.to_theirs(key)
        if name is None:
            raise CheckpointError(f"no T5 name for parameter {key}")
        out[name] = value
    return out


def load_into(model: nn.Module, hf_state: dict[str, Tensor], *, source: str) -> LoadReport:
    """Load T5 (or our Transformer) weights into a ``Seq2Seq``, strictly."""
    if model.config.flavour == "t5":
        state = state_from_hf(hf_state, model.config, source=source)
    else:
        state = dict(hf_state)
    return load_state_strict(model, state, source=str(Path(source)))


def _family():
    from torchformer.checkpoints.registry import Family

    return Family(
        model_types=MODEL_TYPES,
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        tasks={"seq2seq_lm": Seq2Seq},
        architectures={Seq2Seq: "T5ForConditionalGeneration"},
        load_into=load_into,
        state_to_hf=state_to_hf,
        accepts=lambda model: model.config.flavour in ("transformer", "t5"),
    )


FAMILY = _family()
