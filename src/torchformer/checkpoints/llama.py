"""Llama-family checkpoints (``llama``, ``mistral``, ``qwen2``) in Hugging Face layout, both ways.

The three share one key layout, which maps name for name onto our
``DecoderForCausalLM`` with ``flavour="llama"`` (no transposes, no fused
projections); they differ in config only:

- ``qwen2`` puts biases on the q/k/v projections (not on the output one);
- ``mistral`` may set ``sliding_window`` W: each token attends to itself and the W − 1
  before it (``DecoderConfig.sliding_window``); such a model is saved back as
  ``mistral``. Qwen2's ``use_sliding_window`` (only above ``max_window_layers``) is not
  implemented: loading such a checkpoint warns, and it attends to every earlier token.

``LlamaForCausalLM`` prefixes the stack with ``model.`` and adds ``lm_head.weight``
(absent when ``tie_word_embeddings``). RoPE scaling variants (``rope_scaling`` /
``rope_parameters`` of a type other than "default") are refused by name.
"""

from __future__ import annotations

import logging

from torch import Tensor, nn

from torchformer.checkpoints.gpt2 import decoder_loader
from torchformer.checkpoints.hf import CheckpointError
from torchformer.checkpoints.keymap import KeyMap
from torchformer.models.decoder import Decoder, DecoderConfig, DecoderForCausalLM
from torchformer.nn.feed_forward import ACTIVATIONS

logger = logging.getLogger(__name__)

MODEL_TYPES = ("llama", "mistral", "qwen2")

# Our names (inside ``Decoder``) <-> LlamaModel names.
DECODER_MAP = KeyMap(
    [
        ("token_embeddings.weight", "embed_tokens.weight"),
        ("final_norm.weight", "norm.weight"),
        ("layers.{i}.attn_norm.weight", "layers.{i}.input_layernorm.weight"),
        ("layers.{i}.ffn_norm.weight", "layers.{i}.post_attention_layernorm.weight"),
        *[
            (f"layers.{{i}}.self_attn.{ours}.{p}", f"layers.{{i}}.self_attn.{theirs}.{p}")
            for ours, theirs in [
                ("q_proj", "q_proj"),
                ("k_proj", "k_proj"),
                ("v_proj", "v_proj"),
                ("out_proj", "o_proj"),
            ]
            for p in ("weight", "bias")
        ],
        *[
            (f"layers.{{i}}.ffn.{name}.{p}", f"layers.{{i}}.mlp.{name}.{p}")
            for name in ("gate_proj", "up_proj", "down_proj")
            for p in ("weight", "bias")
        ],
    ]
)
_LM_HEAD = "lm_head.weight"
_OTHER_HEADS = ("score.",)  # LlamaForSequenceClassification's head: not ours, reported


def _rope_theta(hf: dict, source: str) -> float:
    """The rotary base; scaled-RoPE variants are not implemented and are named."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise CheckpointError(
            f"{source}: rope_type {kind!r} is not supported (only 'default' RoPE)"
        )
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict, *, source: str = "config.json") -> DecoderConfig:
    """A llama-flavour ``DecoderConfig`` from a llama / mistral / qwen2 ``config.json`` dict.

    Raises:
        CheckpointError: wrong model_type, or an option we do not implement (named).
    """
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"{source}: model_type {model_type!r} is not a Llama-family model")
    activation = hf.get("hidden_act", "silu")
    if activation not in ACTIVATIONS:
        raise CheckpointError(f"{source}: hidden_act {activation!r} is not supported")
    if hf.get("pretraining_tp", 1) != 1:
        raise CheckpointError(f"{source}: pretraining_tp={hf['pretraining_tp']} is not supported")
    max_len = hf.get("max_position_embeddings", 2048)
    qwen2 = model_type == "qwen2"
    window = hf.get("sliding_window") if model_type == "mistral" else None
    if qwen2 and hf.get("use_sliding_window") and hf.get("sliding_window"):
        logger.warning(
            "%s: Qwen2's sliding window (layers from max_window_layers on) is not applied: "
            "sequences longer than %d attend to every earlier token here",
            source,
            hf["sliding_window"],
        )
    attn_bias = bool(hf.get("attention_bias", False))
    eos = hf.get("eos_token_id")
    if isinstance(eos, list):  # several end ids (Llama 3 chat models): generation stops on any
        eos = (eos[0] if len(eos) == 1 else list(eos)) if eos else None
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or d_model // n_heads
    return DecoderConfig(
        flavour="llama",
        vocab_size=hf["vocab_size"],
        d_model=d_model,
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=None if head_dim * n_heads == d_model else head_dim,
        d_ff=hf["intermediate_size"],
        max_len=max_len,
        dropout=0.0,
        attn_dropout=hf.get("attention_dropout", 0.0),
        embd_dropout=0.0,
        activation=activation,
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        initializer_range=hf.get("initializer_range", 0.02),
        rope_theta=_rope_theta(hf, source),
        bos_id=hf.get("bos_token_id"),
        eos_id=eos,
        pad_id=hf.get("pad_token_id"),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        attn_bias=attn_bias and not qwen2,
        qkv_bias=True if qwen2 else attn_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        sliding_window=window,
    )


def config_to_hf(config: DecoderConfig, *, architecture: str = "LlamaForCausalLM") -> dict:
    """A ``config.json`` dict that ``transformers`` reads as the same model.

    Biases on q/k/v only are Qwen2's layout; anything else is written as ``llama``.
    """
    qwen2 = bool(config.qkv_bias) and not config.attn_bias
    if qwen2 and config.mlp_bias:
        raise CheckpointError("q/k/v-only attention biases with MLP biases: no Hugging Face layout")
    mistral = config.sliding_window is not None
    if mistral and (qwen2 or config.attn_bias or config.mlp_bias):
        raise CheckpointError(
            "a sliding window with biases: no Hugging Face layout (Mistral has none)"
        )
    model_type = "qwen2" if qwen2 else "mistral" if mistral else "llama"
    name = {"qwen2": "Qwen2", "mistral": "Mistral", "llama": "Llama"}[model_type]
    out = {
        "model_type": model_type,
        "architectures": [architecture.replace("Llama", name)],
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads or config.n_heads,
        "head_dim": config.head_dim or config.d_model // config.n_heads,
        "max_position_embeddings": config.max_len,
        "hidden_act": config.activation,
        "rms_norm_eps": config.norm_eps,
        "initializer_range": config.initializer_range,
        "rope_theta": config.rope_theta,
        "attention_dropout": config.attn_dropout,
        "bos_token_id": config.bos_id,
        "eos_token_id": config.eos_id,
        "pad_token_id": config.pad_id,
        "tie_word_embeddings": config.tie_embeddings,
        "use_cache": True,
    }
    if mistral:
        out["sliding_window"] = config.sliding_window
    elif not qwen2:
        out |= {"attention_bias": bool(config.attn_bias), "mlp_bias": bool(config.mlp_bias)}
    return out


def state_from_hf(hf_state: dict[str, Tensor], *, decoder_prefix: str) -> dict[str, Tensor]:
    """Rename a Llama-family state dict to our names (unknown keys marked ``<unmapped>``)."""
    ours: dict[str, Tensor] = {}
    for raw_key, value in hf_state.items():
        key = raw_key.removeprefix("model.")
        if key == _LM_HEAD or key.startswith(_OTHER_HEADS):
            ours[key] = value
        elif key.endswith("rotary_emb.inv_freq"):
            continue  # a buffer some old checkpoints saved; recomputed from rope_theta
        elif (name := DECODER_MAP.to_ours(key)) is not None:
            ours[decoder_prefix + name] = value
        else:
            ours[f"<unmapped>{raw_key}"] = value
    return ours


def _decoder_state_to_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        name = DECODER_MAP.to_theirs(key)
        if name is None:
            raise CheckpointError(f"no Llama name for parameter {key}")
        out[name] = value
    return out


def state_to_hf(model: nn.Module) -> dict[str, Tensor]:
    """Our weights under HF names (``model.`` prefix for the causal LM; a tied head is not written)."""
    if isinstance(model, Decoder):
        return _decoder_state_to_hf(model.state_dict())
    state = model.state_dict()
    decoder = {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")}
    out = {"model." + k: v for k, v in _decoder_state_to_hf(decoder).items()}
    if _LM_HEAD in state:
        out[_LM_HEAD] = state[_LM_HEAD]
    return out


# Load Llama-family weights into ``Decoder`` or ``DecoderForCausalLM``, strictly (a tied
# model's ``lm_head.weight`` must equal the embeddings).
load_into = decoder_loader(
    state_from_hf, embeddings_name="model.embed_tokens.weight", other_heads=_OTHER_HEADS
)


def _family():
    from torchformer.checkpoints.registry import Family

    return Family(
        model_types=MODEL_TYPES,
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        tasks={"base": Decoder, "causal_lm": DecoderForCausalLM},
        architectures={Decoder: "LlamaModel", DecoderForCausalLM: "LlamaForCausalLM"},
        load_into=load_into,
        state_to_hf=state_to_hf,
        accepts=lambda model: model.config.flavour == "llama",
    )


FAMILY = _family()
