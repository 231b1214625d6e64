"""BigBird checkpoints (Zaheer et al. 2020) in Hugging Face layout, both ways.

``BigBirdModel`` is a BERT encoder whose self-attention is BigBird's ITC block-sparse
pattern — our ``Encoder`` with ``attention="block_sparse"``: blocks of ``block_size``
tokens, a window of three blocks (``window_blocks=1``), the first and last blocks global
(``global_blocks=(0, -1)``) and ``num_random_blocks`` random blocks per query block.
``attention_type: original_full`` loads as full attention.

Where the two differ, on purpose:

- Random blocks. transformers draws them with numpy while training, and outside
  training uses block 0 in their place (its random indices are then all zero, so a
  middle query block sees block 0 1 + r times). The loader sets
  ``attention_random_eval="first_block"``, which does exactly that, so that a loaded
  model in eval mode gives transformers' outputs; set it to "sampled" for the paper's
  pattern (our seeded random blocks, also outside training).
- Short inputs. transformers switches silently to full attention when the sequence
  has ≤ (5 + 2r)·block_size tokens; ours keeps the pattern at every length (a short
  sequence has few blocks, most of which every query block sees anyway).

The classification head (dropout, dense, the hidden activation, out_proj on [CLS]) is
our pooler with ``pooler_activation`` = the hidden activation (``classifier`` builds it
so), and our classifier; the encoder's own (tanh) pooler is unused by it and not loaded.
"""

from __future__ import annotations

from dataclasses import replace

from torchformer.checkpoints.bert import (
    HEAD_MAP,
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
    EncoderForSequenceClassification,
)

MODEL_TYPES = ("big_bird",)

LAYOUT = Layout(
    prefix="bert.",
    encoder=encoder_map(pooler="pooler"),
    heads=KeyMap(
        [
            ("encoder.pooler.weight", "classifier.dense.weight"),
            ("encoder.pooler.bias", "classifier.dense.bias"),
            ("classifier.weight", "classifier.out_proj.weight"),
            ("classifier.bias", "classifier.out_proj.bias"),
            *[pair for pair in HEAD_MAP.pairs if not pair[0].startswith("classifier.")],
        ]
    ),
    dropped=("embeddings.position_ids", "cls.predictions.decoder.", "cls.seq_relationship."),
    decoder_bias=("cls.predictions.bias", "cls.predictions.decoder.bias"),
    head_pooler=True,
)


def config_from_hf(hf: dict, *, source: str = "config.json") -> EncoderConfig:
    """An ``EncoderConfig`` from a BigBird ``config.json`` dict."""
    if hf.get("model_type") not in MODEL_TYPES:
        raise CheckpointError(f"{source}: model_type {hf.get('model_type')!r} is not big_bird")
    for name, supported in (("rescale_embeddings", False), ("use_bias", True)):
        if hf.get(name, supported) != supported:
            raise CheckpointError(f"{source}: field {name!r}: {hf[name]!r} is not supported")
    kind = hf.get("attention_type", "block_sparse")
    if kind not in ("block_sparse", "original_full"):
        raise CheckpointError(f"{source}: field 'attention_type': {kind!r} is not supported")
    return encoder_config(
        hf,
        activation=hf.get("hidden_act", "gelu_new"),
        attention="block_sparse" if kind == "block_sparse" else "full",
        attention_block_size=hf.get("block_size", 64),
        attention_window_blocks=1,
        attention_global_blocks=(0, -1),
        attention_random_blocks=hf.get("num_random_blocks", 3),
        attention_random_eval=hf.get("torchformer_attention_random_eval", "first_block"),
        attention_seed=hf.get("torchformer_attention_seed", 0),
        flavour="big_bird",
    )


def config_to_hf(config: EncoderConfig, *, architecture: str = "BigBirdModel") -> dict:
    """A ``config.json`` dict that ``transformers`` reads as the same model."""
    if config.attention not in ("full", "block_sparse"):
        raise CheckpointError(
            f"a BigBird checkpoint has full or block_sparse attention, not {config.attention!r}"
        )
    if config.attention == "block_sparse" and (
        config.attention_window_blocks != 1 or tuple(config.attention_global_blocks) != (0, -1)
    ):
        raise CheckpointError(
            "BigBird checkpoints hold the ITC pattern only: window_blocks=1, "
            f"global_blocks=(0, -1); got {config.attention_window_blocks}, "
            f"{config.attention_global_blocks}"
        )
    classifier = architecture.endswith("ForSequenceClassification")
    if classifier and config.pooler_activation != config.activation:
        raise CheckpointError(
            f"BigBird's classification head applies hidden_act ({config.activation!r}), "
            f"this model's pooler {config.pooler_activation!r}"
        )
    hf = encoder_config_to_hf(config, "big_bird", architecture)
    hf.update(
        attention_type="block_sparse" if config.attention == "block_sparse" else "original_full",
        block_size=config.attention_block_size,
        num_random_blocks=config.attention_random_blocks,
        use_bias=True,
        rescale_embeddings=False,
        torchformer_attention_random_eval=config.attention_random_eval,
        torchformer_attention_seed=config.attention_seed,
    )
    return hf


def classifier(config: EncoderConfig) -> EncoderForSequenceClassification:
    """Our classifier for a BigBird config: transformers' head applies the hidden
    activation (not tanh) to its dense layer, our pooler."""
    return EncoderForSequenceClassification(replace(config, pooler_activation=config.activation))


FAMILY = encoder_family(
    model_types=MODEL_TYPES,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    layout=LAYOUT,
    hf_name="BigBird",
    flavour="big_bird",
    classifier=classifier,
)
