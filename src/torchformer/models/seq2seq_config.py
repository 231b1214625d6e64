"""Configuration and named sizes of the encoder–decoder models (``models.seq2seq``).

``Seq2SeqConfig`` fixes a model's flavour (Transformer, T5 or BART) and sizes;
``PRESETS`` names the sizes used in this project and in the papers' checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Flavour = Literal["transformer", "t5", "bart"]


@dataclass
class Seq2SeqConfig:
    """Size and behaviour of an encoder–decoder model.

    The defaults are the paper's Transformer-base. ``flavour`` fixes the
    architecture-defining choices (norm kind, biases, positions, scales);
    the other fields are sizes and options. ``checkpoints.t5`` translates T5
    configs to and from Hugging Face ``config.json``.
    """

    flavour: Flavour = "transformer"
    vocab_size: int = 37000  # target vocabulary (the joint one when share_embeddings)
    src_vocab_size: int | None = None  # None: same as vocab_size
    d_model: int = 512
    n_heads: int = 8
    head_dim: int | None = None  # T5's d_kv; None: d_model // n_heads
    d_ff: int = 2048
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    max_len: int = 100  # transformer: rows of the sinusoid table; T5 has no length limit
    dropout: float = 0.1  # residual, embedding, attention-probability and FFN-hidden dropout
    activation: str = "relu"  # FFN activation ("gelu_new" for T5 v1.1's gated-gelu)
    gated_ffn: bool = False  # T5 v1.1 / Flan: act(W_gate x) * (W_up x)
    norm_first: bool | None = None  # None: the flavour's own (transformer post-norm, T5 pre-norm)
    norm_eps: float = 1e-5  # T5: 1e-6
    share_embeddings: bool = True  # source and target use one table (needs a joint vocabulary)
    tie_output: bool = True  # output projection = target embeddings (HF T5: tie_word_embeddings)
    relative_attention_num_buckets: int = 32  # T5 only
    relative_attention_max_distance: int = 128  # T5 only
    pad_id: int = 0
    decoder_start_id: int = 1  # first decoder input (bos); T5 starts with pad
    eos_id: int = 2
    attn_impl: Literal["reference", "sdpa"] = "sdpa"
    scale_embedding: bool | None = None  # embeddings * sqrt(D); None: the flavour's (transformer)

    def __post_init__(self) -> None:
        if self.flavour not in ("transformer", "t5", "bart"):
            raise ValueError(f"flavour must be 'transformer', 't5' or 'bart', got {self.flavour!r}")
        if self.scale_embedding is None:
            self.scale_embedding = self.flavour == "transformer"
        if self.norm_first is None:
            self.norm_first = self.flavour == "t5"
        if self.flavour == "t5" and not self.norm_first:
            raise ValueError("flavour 't5' is pre-norm; norm_first=False is not supported")
        if self.share_embeddings and self.src_vocab_size not in (None, self.vocab_size):
            raise ValueError(
                f"share_embeddings needs one joint vocabulary, but src_vocab_size={self.src_vocab_size} "
                f"!= vocab_size={self.vocab_size}"
            )


_T5 = dict(flavour="t5", norm_eps=1e-6, pad_id=0, decoder_start_id=0, eos_id=1)
_BART = dict(flavour="bart", activation="gelu", pad_id=1, decoder_start_id=2, eos_id=2)


def _layers(n: int) -> dict[str, int]:
    return {"n_encoder_layers": n, "n_decoder_layers": n}


PRESETS: dict[str, Seq2SeqConfig] = {
    # The paper's base model (Table 3): 65M parameters with a 37k joint BPE vocabulary.
    "transformer-base": Seq2SeqConfig(),
    # Multi30k (29k pairs, ~13 tokens a side) on 2 CPU cores, < 3 h: half the width and
    # layers of base (7.6M parameters with an 8k joint vocabulary, 5.5M outside the
    # embeddings), the size of the well-known Multi30k tutorials (bentrevett/pytorch-seq2seq:
    # 256 wide, 3+3 layers), with head_dim 64 as in the paper. Training costs ~6 FLOPs per
    # parameter per token: ~1.7e13 FLOPs an epoch, 10-15 min at the 20-30 GFLOP/s two cores
    # sustain on these small matrices, so ~10 epochs fit.
    "transformer-small-cpu": Seq2SeqConfig(
        vocab_size=8000, d_model=256, n_heads=4, d_ff=1024, **_layers(3)
    ),
    "tiny": Seq2SeqConfig(
        vocab_size=1000, d_model=32, n_heads=4, d_ff=64, **_layers(2), max_len=128
    ),
    # T5 v1.0 small (60.5M parameters, as google-t5/t5-small).
    "t5-small": Seq2SeqConfig(
        vocab_size=32128, d_model=512, n_heads=8, head_dim=64, **_layers(6), **_T5
    ),
    # T5 (v1.0: ReLU FFN, pre-norm RMSNorm, relative position buckets) at the size of
    # transformer-small-cpu, to train on 2 CPU cores (text-to-text with a task prefix).
    "t5-small-cpu": Seq2SeqConfig(
        vocab_size=8000, d_model=256, n_heads=4, head_dim=64, d_ff=1024, **_layers(3), **_T5
    ),
    "t5-tiny": Seq2SeqConfig(
        vocab_size=1000,
        d_model=32,
        n_heads=4,
        head_dim=8,
        d_ff=64,
        **_layers(2),
        **_T5,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
    ),
    # BART base (140M parameters, as facebook/bart-base).
    "bart-base": Seq2SeqConfig(
        vocab_size=50265, d_model=768, n_heads=12, d_ff=3072, **_layers(6), max_len=1024, **_BART
    ),
    "bart-tiny": Seq2SeqConfig(
        vocab_size=1000, d_model=32, n_heads=4, d_ff=64, **_layers(2), max_len=128, **_BART
    ),
    # Denoising pre-training on 2 CPU cores: the width and depth of transformer-small-cpu.
    "bart-small": Seq2SeqConfig(
        vocab_size=16000, d_model=256, n_heads=4, d_ff=1024, **_layers(3), max_len=512, **_BART
    ),
}


def preset(name: str, **overrides) -> Seq2SeqConfig:
    """A ``Seq2SeqConfig`` from a named preset, with fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown seq2seq preset {name!r}; expected one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
