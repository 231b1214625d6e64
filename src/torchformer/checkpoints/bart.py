"""BART checkpoints (``model_type: bart``) in Hugging Face layout, both ways.

BART loads into ``Seq2Seq`` with ``flavour="bart"``; the map is a rename (no
transposes): ``model.shared`` is our one token table, each stack has its own
learned position table (``embed_positions``, rows offset by 2) and embedding
LayerNorm (``layernorm_embedding``), ``fc1``/``fc2`` are the FFN's up/down
projections, ``encoder_attn`` is the cross-attention, and ``final_logits_bias``
is kept as a buffer. The stacks' ``embed_tokens`` and ``lm_head`` are tied
copies of ``shared``: accepted when equal to it, and not written.

Options of ``BartConfig`` we do not implement are refused by name: different
encoder/decoder widths, heads or depths (one value each here), and the pre-norm
variants (``normalize_before``, ``add_final_layer_norm``: mBART). Separate
``attention_dropout``/``activation_dropout`` are read as the one ``dropout`` (they
only matter in training). Generation-time options of a checkpoint's config
(``forced_bos_token_id``, ``forced_eos_token_id``, ``no_repeat_ngram_size``) are
not applied by ``load_pretrained``; pass them to ``generate()``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from torchformer.checkpoints.hf import CheckpointError, LoadReport, load_state_strict
from torchformer.checkpoints.keymap import KeyMap
from torchformer.models.seq2seq import Seq2Seq, Seq2SeqConfig
from torchformer.nn.feed_forward import ACTIVATIONS

MODEL_TYPES = ("bart",)

_ATTENTION = [(p, p) for p in ("q_proj", "k_proj", "v_proj")] + [("out_proj", "out_proj")]


def _attention_pairs(ours: str, theirs: str) -> list[tuple[str, str]]:
    return [
        (f"{ours}.{o}.{w}", f"{theirs}.{t}.{w}") for o, t in _ATTENTION for w in ("weight", "bias")
    ]


def _params(ours: str, theirs: str) -> list[tuple[str, str]]:
    return [(f"{ours}.{w}", f"{theirs}.{w}") for w in ("weight", "bias")]


def _layer_pairs(stack: str) -> list[tuple[str, str]]:
    ours, theirs = f"{stack}.layers.{{i}}", f"model.{stack}.layers.{{i}}"
    pairs = [
        *_attention_pairs(f"{ours}.self_attn", f"{theirs}.self_attn"),
        *_params(f"{ours}.attn_norm", f"{theirs}.self_attn_layer_norm"),
        *_params(f"{ours}.ffn.up_proj", f"{theirs}.fc1"),
        *_params(f"{ours}.ffn.down_proj", f"{theirs}.fc2"),
        *_params(f"{ours}.ffn_norm", f"{theirs}.final_layer_norm"),
    ]
    if stack == "decoder":
        pairs += [
            *_attention_pairs(f"{ours}.cross_attn", f"{theirs}.encoder_attn"),
            *_params(f"{ours}.cross_attn_norm", f"{theirs}.encoder_attn_layer_norm"),
        ]
    return pairs


KEY_MAP = KeyMap(
    [
        ("src_embed.weight", "model.shared.weight"),
        ("src_positions.weight", "model.encoder.embed_positions.weight"),
        ("tgt_positions.weight", "model.decoder.embed_positions.weight"),
        *_params("src_embed_norm", "model.encoder.layernorm_embedding"),
        *_params("tgt_embed_norm", "model.decoder.layernorm_embedding"),
        ("final_logits_bias", "final_logits_bias"),
        *_layer_pairs("encoder"),
        *_layer_pairs("decoder"),
    ]
)
# Tied copies of model.shared.weight.
_TIED = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight")


def config_from_hf(hf: dict, *, source: str = "config.json") -> Seq2SeqConfig:
    """A bart-flavour ``Seq2SeqConfig`` from a BART ``config.json`` dict."""
    if hf.get("model_type") not in MODEL_TYPES:
        raise CheckpointError(f"{source}: model_type {hf.get('model_type')!r} is not BART")
    pairs = [
        ("encoder_layers", "decoder_layers"),
        ("encoder_attention_heads", "decoder_attention_heads"),
        ("encoder_ffn_dim", "decoder_ffn_dim"),
    ]
    for a, b in pairs:
        if hf.get(a) != hf.get(b):
            raise CheckpointError(f"{source}: {a}={hf.get(a)} != {b}={hf.get(b)} is not supported")
    for key in ("normalize_before", "add_final_layer_norm"):
        if hf.get(key):
            raise CheckpointError(f"{source}: {key}=true (mBART's pre-norm) is not supported")
    if not hf.get("tie_word_embeddings", True):
        raise CheckpointError(f"{source}: tie_word_embeddings=false is not supported for BART")
    activation = hf.get("activation_function", "gelu")
    if activation not in ACTIVATIONS:
        raise CheckpointError(f"{source}: activation_function {activation!r} is not supported")
    return Seq2SeqConfig(
        flavour="bart",
        vocab_size=hf["vocab_size"],
        d_model=hf["d_model"],
        n_heads=hf["encoder_attention_heads"],
        d_ff=hf["encoder_ffn_dim"],
        n_encoder_layers=hf["encoder_layers"],
        n_decoder_layers=hf["decoder_layers"],
        max_len=hf.get("max_position_embeddings", 1024),
        dropout=hf.get("dropout", 0.1),
        activation=activation,
        norm_first=False,
        norm_eps=1e-5,
        share_embeddings=True,
        tie_output=True,
        scale_embedding=bool(hf.get("scale_embedding", False)),
        pad_id=hf.get("pad_token_id", 1),
        decoder_start_id=hf.get("decoder_start_token_id", 2),
        eos_id=hf.get("eos_token_id", 2),
    )


def config_to_hf(
    config: Seq2SeqConfig, *, architecture: str = "BartForConditionalGeneration"
) -> dict:
    """A ``config.json`` dict that ``transformers`` reads as the same BART model."""
    if config.flavour != "bart":
        raise CheckpointError(f"flavour {config.flavour!r} has no BART layout")
    return {
        "model_type": "bart",
        "architectures": [architecture],
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "encoder_layers": config.n_encoder_layers,
        "decoder_layers": config.n_decoder_layers,
        "encoder_attention_heads": config.n_heads,
        "decoder_attention_heads": config.n_heads,
        "encoder_ffn_dim": config.d_ff,
        "decoder_ffn_dim": config.d_ff,
        "activation_function": config.activation,
        "dropout": config.dropout,
        "attention_dropout": config.dropout,
        "activation_dropout": config.dropout,
        "max_position_embeddings": config.max_len,
        "scale_embedding": bool(config.scale_embedding),
        "init_std": 0.02,
        "is_encoder_decoder": True,
        "tie_word_embeddings": True,
        "pad_token_id": config.pad_id,
        "bos_token_id": 0,
        "eos_token_id": config.eos_id,
        "decoder_start_token_id": config.decoder_start_id,
        "forced_eos_token_id": None,
    }


def state_from_hf(hf_state: dict[str, Tensor], *, source: str) -> dict[str, Tensor]:
    """Rename a BART state dict; tied copies must equal ``shared``; unknown keys are reported."""
    shared = hf_state.get("model.shared.weight")
    if shared is None:  # some saves keep only a stack's copy of the tied table
        shared = next((hf_state[k] for k in _TIED[:2] if k in hf_state), None)
    ours: dict[str, Tensor] = {}
    for key, value in hf_state.items():
        if key in _TIED:
            if shared is not None and not torch.equal(value, shared):
                raise CheckpointError(
                    f"{source}: {key} differs from model.shared.weight; BART ties them"
                )
            continue
        name = KEY_MAP.to_ours(key)
        ours[name if name is not None else f"<unmapped>{key}"] = value
    if shared is not None:
        ours["src_embed.weight"] = shared
    return ours


def state_to_hf(model: nn.Module) -> dict[str, Tensor]:
    """Our weights under BART names (the tied copies are not written)."""
    out = {}
    for key, value in model.state_dict().items():
        name = KEY_MAP.to_theirs(key)
        if name is None:
            raise CheckpointError(f"no BART name for parameter {key}")
        out[name] = value
    return out


def load_into(model: nn.Module, hf_state: dict[str, Tensor], *, source: str) -> LoadReport:
    """Load BART weights into a bart-flavour ``Seq2Seq``, strictly."""
    if model.config.flavour != "bart":
        raise CheckpointError(
            f"{source}: BART weights need flavour='bart', not {model.config.flavour!r}"
        )
    source = str(Path(source))
    return load_state_strict(model, state_from_hf(hf_state, source=source), source=source)


def _family():
    from torchformer.checkpoints.registry import Family

    return Family(
        model_types=MODEL_TYPES,
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        tasks={"seq2seq_lm": Seq2Seq},
        architectures={Seq2Seq: "BartForConditionalGeneration"},
        load_into=load_into,
        state_to_hf=state_to_hf,
        accepts=lambda model: model.config.flavour == "bart",
    )


FAMILY = _family()
