"""Longformer checkpoints (Beltagy et al. 2020) in Hugging Face layout, both ways.

A Longformer is a RoBERTa encoder whose self-attention is a sliding window plus global
positions — our ``Encoder`` with ``attention="sliding_window"``:

- ``attention_window`` (HF: the two-sided width, even, one per layer) is our one-sided
  ``attention_window`` = width / 2; every layer must have the same one.
- Global positions attend to every key through their own projections
  (``query_global``, ``key_global``, ``value_global``): ``global_projections=True``.
  Which positions are global is ours to say (``global_tokens``, fixed positions); HF
  takes a per-batch ``global_attention_mask`` and its classifier makes [CLS]
  (position 0) global, the default here too. ``LongformerModel`` without a mask has no
  global positions; load with ``global_tokens=()`` for that.
- Positions start at pad_token_id + 1 (RoBERTa): ``position_offset``.
- The classification head (dense + tanh + out_proj on <s>) is our pooler + classifier;
  the MLM head (``lm_head``) our ``mlm_head`` (RoBERTa's heads, ``checkpoints.roberta``).

HF pads the sequence to a multiple of the window; our kernel needs no padding, and
dense attention takes over below twice the window (same result).
"""

from __future__ import annotations

from torchformer.checkpoints.bert import (
    LAYER_PAIRS,
    Layout,
    encoder_config,
    encoder_config_to_hf,
    encoder_family,
    encoder_map,
)
from torchformer.checkpoints.hf import CheckpointError
from torchformer.checkpoints.roberta import HEADS
from torchformer.models.encoder import (
    EncoderConfig,
)

MODEL_TYPES = ("longformer",)

LAYOUT = Layout(
    prefix="longformer.",
    encoder=encoder_map(
        [
            *LAYER_PAIRS,
            ("self_attn.q_global", "attention.self.query_global"),
            ("self_attn.k_global", "attention.self.key_global"),
            ("self_attn.v_global", "attention.self.value_global"),
        ]
    ),
    heads=HEADS,
    dropped=("embeddings.position_ids", "lm_head.decoder."),
    decoder_bias=("lm_head.bias", "lm_head.decoder.bias"),
    head_pooler=True,
    mlm_pooler=False,
)


def config_from_hf(hf: dict, *, source: str = "config.json") -> EncoderConfig:
    """An ``EncoderConfig`` from a Longformer ``config.json`` dict."""
    if hf.get("model_type") not in MODEL_TYPES:
        raise CheckpointError(f"{source}: model_type {hf.get('model_type')!r} is not longformer")
    windows = hf.get("attention_window", 512)
    windows = [windows] * hf["num_hidden_layers"] if isinstance(windows, int) else windows
    if len(set(windows)) != 1:
        raise CheckpointError(
            f"{source}: field 'attention_window': one window per layer {windows} is not "
            "supported (every layer must have the same)"
        )
    if windows[0] < 2 or windows[0] % 2:
        raise CheckpointError(
            f"{source}: field 'attention_window': {windows[0]} must be even and ≥ 2"
        )
    pad_id = hf.get("pad_token_id", 1)
    return encoder_config(
        hf,
        type_vocab_size=hf.get("type_vocab_size", 1),
        norm_eps=hf.get("layer_norm_eps", 1e-5),
        pad_id=pad_id,
        attention="sliding_window",
        attention_window=windows[0] // 2,
        global_tokens=tuple(hf.get("torchformer_global_tokens", (0,))),
        global_projections=True,
        position_offset=pad_id + 1,
        flavour="longformer",
    )


def config_to_hf(config: EncoderConfig, *, architecture: str = "LongformerModel") -> dict:
    """A ``config.json`` dict that ``transformers`` reads as the same model."""
    if config.attention != "sliding_window" or not config.global_projections:
        raise CheckpointError(
            "a Longformer checkpoint needs attention='sliding_window' and global_projections"
        )
    if config.attention_dilation != 1:
        raise CheckpointError("Longformer checkpoints have no dilation (attention_dilation=1)")
    if config.position_offset != config.pad_id + 1:
        raise CheckpointError(
            f"Longformer positions start at pad_id + 1 = {config.pad_id + 1}, "
            f"got position_offset={config.position_offset}"
        )
    hf = encoder_config_to_hf(config, "longformer", architecture)
    hf["attention_window"] = [2 * config.attention_window] * config.n_layers
    hf["torchformer_global_tokens"] = list(config.global_tokens)
    hf.update(bos_token_id=0, eos_token_id=2, sep_token_id=2)
    return hf


FAMILY = encoder_family(
    model_types=MODEL_TYPES,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    layout=LAYOUT,
    hf_name="Longformer",
    flavour="longformer",
)
