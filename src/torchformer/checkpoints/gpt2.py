"""GPT-2 checkpoints in Hugging Face layout, both ways.

Two things differ from a plain rename:

- GPT-2 uses ``Conv1D`` layers whose weight is (in, out), the transpose of
  ``nn.Linear``'s (out, in): every projection weight is transposed.
- The attention's q, k and v projections are one fused ``attn.c_attn``
  (D -> 3D, q | k | v along the output axis): split into q_proj/k_proj/v_proj
  on load, concatenated back on save.

``GPT2LMHeadModel`` prefixes the stack with ``transformer.`` and adds
``lm_head.weight``, tied to ``transformer.wte.weight``; ``GPT2Model`` has no
prefix. Old checkpoints carry the causal-mask buffers ``attn.bias`` and
``attn.masked_bias``, which hold no parameter and are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from torchformer.checkpoints.hf import CheckpointError, LoadReport, load_state_strict
from torchformer.checkpoints.keymap import KeyMap
from torchformer.models.decoder import Decoder, DecoderConfig, DecoderForCausalLM
from torchformer.nn.feed_forward import ACTIVATIONS

MODEL_TYPES = ("gpt2",)

# Our names (inside ``Decoder``) <-> GPT2Model names. The fused c_attn is handled apart.
DECODER_MAP = KeyMap(
    [
        ("token_embeddings.weight", "wte.weight"),
        ("position_embeddings.weight", "wpe.weight"),
        ("final_norm.weight", "ln_f.weight"),
        ("final_norm.bias", "ln_f.bias"),
        *[
            (f"layers.{{i}}.{ours}.{p}", f"h.{{i}}.{theirs}.{p}")
            for ours, theirs in [
                ("attn_norm", "ln_1"),
                ("self_attn.out_proj", "attn.c_proj"),
                ("ffn_norm", "ln_2"),
                ("ffn.up_proj", "mlp.c_fc"),
                ("ffn.down_proj", "mlp.c_proj"),
            ]
            for p in ("weight", "bias")
        ],
    ]
)

# Conv1D weights, stored (in, out): transposed to and from nn.Linear's (out, in).
_CONV1D_WEIGHTS = KeyMap(
    [
        (f"layers.{{i}}.{ours}.weight", f"h.{{i}}.{theirs}.weight")
        for ours, theirs in [
            ("self_attn.out_proj", "attn.c_proj"),
            ("ffn.up_proj", "mlp.c_fc"),
            ("ffn.down_proj", "mlp.c_proj"),
        ]
    ]
)

FUSED_QKV = KeyMap([("layers.{i}.self_attn", "h.{i}.attn.c_attn")])

# Heads of other GPT-2 task models: not used by ours, reported as ignored.
_OTHER_HEADS = ("score.", "multiple_choice_head.")
_LM_HEAD = "lm_head.weight"


def _dropped(key: str) -> bool:
    """The causal-mask buffers of old checkpoints (``h.{i}.attn.bias`` / ``.masked_bias``)."""
    return key.startswith("h.") and key.endswith((".attn.bias", ".attn.masked_bias"))


# config.json keys whose non-default values this implementation does not compute.
_UNSUPPORTED = {
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "scale_attn_weights": True,
    "add_cross_attention": False,
}


def config_from_hf(hf: dict, *, source: str = "config.json") -> DecoderConfig:
    """A ``DecoderConfig`` from a GPT-2 ``config.json`` dict.

    Raises:
        CheckpointError: wrong model_type, or an option we do not implement (named).
    """
    if hf.get("model_type") not in MODEL_TYPES:
        raise CheckpointError(f"{source}: model_type {hf.get('model_type')!r} is not a GPT-2 model")
    for key, supported in _UNSUPPORTED.items():
        if hf.get(key, supported) != supported:
            raise CheckpointError(
                f"{source}: {key}={hf[key]!r} is not supported (only {supported!r})"
            )
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise CheckpointError(
            f"{source}: activation_function {activation!r} is not supported; "
            f"expected one of {sorted(ACTIVATIONS)}"
        )
    d_model = hf["n_embd"]
    eos = hf.get("eos_token_id")
    if isinstance(eos, list):  # HF allows several; generation here stops on one
        eos = eos[0] if eos else None
    return DecoderConfig(
        vocab_size=hf["vocab_size"],
        d_model=d_model,
        n_layers=hf["n_layer"],
        n_heads=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * d_model,
        max_len=hf.get("n_positions", 1024),
        dropout=hf.get("resid_pdrop", 0.1),
        attn_dropout=hf.get("attn_pdrop", 0.1),
        embd_dropout=hf.get("embd_pdrop", 0.1),
        activation=activation,
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        initializer_range=hf.get("initializer_range", 0.02),
        bos_id=hf.get("bos_token_id"),
        eos_id=eos,
        pad_id=hf.get("pad_token_id"),
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def config_to_hf(config: DecoderConfig, *, architecture: str = "GPT2LMHeadModel") -> dict:
    """A ``config.json`` dict that ``transformers`` reads as the same model."""
    return {
        "model_type": "gpt2",
        "architectures": [architecture],
        "vocab_size": config.vocab_size,
        "n_embd": config.d_model,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": config.d_ff,
        "n_positions": config.max_len,
        "resid_pdrop": config.dropout,
        "attn_pdrop": config.attn_dropout,
        "embd_pdrop": config.embd_dropout,
        "activation_function": config.activation,
        "layer_norm_epsilon": config.norm_eps,
        "initializer_range": config.initializer_range,
        "bos_token_id": config.bos_id,
        "eos_token_id": config.eos_id,
        "pad_token_id": config.pad_id,
        "tie_word_embeddings": config.tie_embeddings,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "use_cache": True,
    }


def state_from_hf(hf_state: dict[str, Tensor], *, decoder_prefix: str) -> dict[str, Tensor]:
    """Rename (and split/transpose) a GPT-2 state dict to our names.

    Args:
        hf_state: GPT2Model or GPT2LMHeadModel weights.
        decoder_prefix: "" for ``Decoder``, "decoder." for ``DecoderForCausalLM``.

    Returns:
        Our state dict; ``lm_head.weight`` and other task heads keep their HF
        names, and unknown keys are marked ``<unmapped>`` for the loader to report.
    """
    ours: dict[str, Tensor] = {}
    for raw_key, value in hf_state.items():
        key = raw_key.removeprefix("transformer.")
        if _dropped(key):
            continue
        if key == _LM_HEAD or key.startswith(_OTHER_HEADS):
            ours[key] = value
        elif (name := FUSED_QKV.to_ours(key.rsplit(".", 1)[0])) is not None:
            param = key.rsplit(".", 1)[1]  # "weight" (D, 3D) or "bias" (3D,)
            fused = value.t() if param == "weight" else value  # (3D, D) or (3D,)
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), fused.chunk(3, dim=0)):
                ours[f"{decoder_prefix}{name}.{proj}.{param}"] = part.contiguous()
        elif (name := DECODER_MAP.to_ours(key)) is not None:
            transpose = _CONV1D_WEIGHTS.to_ours(key) is not None
            ours[decoder_prefix + name] = (
                value.t().contiguous() if transpose else value
            )  # (out, in)
        else:
            ours[f"<unmapped>{raw_key}"] = value  # reported as unexpected by the loader
    return ours


def _decoder_state_to_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A ``Decoder`` state dict (our names) under GPT2Model names."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith(
            (
                "q_proj.weight",
                "q_proj.bias",
                "k_proj.weight",
                "k_proj.bias",
                "v_proj.weight",
                "v_proj.bias",
            )
        ):
            continue  # written once, fused, below
        name = DECODER_MAP.to_theirs(key)
        if name is None:
            raise CheckpointError(f"no GPT-2 name for parameter {key}")
        transpose = _CONV1D_WEIGHTS.to_theirs(key) is not None
        out[name] = value.t() if transpose else value  # (in, out) for Conv1D
    for i in range(sum(1 for k in state if k.endswith("q_proj.weight"))):
        prefix = f"layers.{i}.self_attn"
        fused = FUSED_QKV.to_theirs(prefix)
        for param in ("weight", "bias"):
            parts = [state[f"{prefix}.{p}.{param}"] for p in ("q_proj", "k_proj", "v_proj")]
            cat = torch.cat(parts, dim=0)  # (3D, D) or (3D,)
            out[f"{fused}.{param}"] = cat.t() if param == "weight" else cat  # Conv1D (D, 3D)
    return out


def state_to_hf(model: nn.Module) -> dict[str, Tensor]:
    """Our model's weights under HF names; the causal LM gets the ``transformer.`` prefix.

    The tied ``lm_head.weight`` is not written (HF re-ties it to ``wte``); an
    untied head is.
    """
    if isinstance(model, Decoder):
        return _decoder_state_to_hf(model.state_dict())
    state = model.state_dict()
    decoder_state = {
        k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")
    }
    out = {"transformer." + k: v for k, v in _decoder_state_to_hf(decoder_state).items()}
    if _LM_HEAD in state:
        out[_LM_HEAD] = state[_LM_HEAD]
    return out


ARCHITECTURES = {
    Decoder: "GPT2Model",
    DecoderForCausalLM: "GPT2LMHeadModel",
}


def load_decoder_state(
    model: nn.Module,
    state: dict[str, Tensor],
    *,
    source: str,
    embeddings_name: str,
    other_heads: tuple[str, ...],
) -> LoadReport:
    """Load converted decoder weights (our names) into ``Decoder`` / ``DecoderForCausalLM``.

    Shared by the GPT-2 and Llama families. ``lm_head.weight`` is dropped for a
    ``Decoder``; a tied model accepts it only when it equals the token embeddings
    (``embeddings_name``: their name, for the error); an untied one requires it.

    Raises:
        CheckpointError: missing, unexpected or mis-shaped weights, or a head that
            differs from the embeddings of a tied model.
    """
    ignore: tuple[str, ...] = other_heads
    if not isinstance(model, DecoderForCausalLM):
        ignore = (*ignore, _LM_HEAD)
    elif model.config.tie_embeddings and _LM_HEAD in state:
        head = state.pop(_LM_HEAD)
        embeddings = state.get("decoder.token_embeddings.weight")
        if embeddings is not None and not torch.equal(head, embeddings):
            raise CheckpointError(
                f"{source}: {_LM_HEAD} differs from {embeddings_name} but the model ties them "
                "(config tie_word_embeddings=true)"
            )
    return load_state_strict(model, state, source=source, ignore=ignore)


def decoder_loader(
    convert: Callable[..., dict[str, Tensor]], *, embeddings_name: str, other_heads: tuple[str, ...]
) -> Callable[..., LoadReport]:
    """A family's ``load_into``: ``convert(hf_state, decoder_prefix=)`` then ``load_decoder_state``."""

    def load_into(model: nn.Module, hf_state: dict[str, Tensor], *, source: str) -> LoadReport:
        prefix = "decoder." if isinstance(model, DecoderForCausalLM) else ""
        state = convert(hf_state, decoder_prefix=prefix)
        return load_decoder_state(
            model,
            state,
            source=str(Path(source)),
            embeddings_name=embeddings_name,
            other_heads=other_heads,
        )

    return load_into


# Load HF GPT-2 weights into ``Decoder`` or ``DecoderForCausalLM``, strictly.
load_into = decoder_loader(
    state_from_hf, embeddings_name="transformer.wte.weight", other_heads=_OTHER_HEADS
)


def _family():
    from torchformer.checkpoints.registry import Family

    return Family(
        model_types=MODEL_TYPES,
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        tasks={"base": Decoder, "causal_lm": DecoderForCausalLM},
        architectures=ARCHITECTURES,
        load_into=load_into,
        state_to_hf=state_to_hf,
        accepts=lambda model: model.config.flavour == "gpt2",
    )


FAMILY = _family()
