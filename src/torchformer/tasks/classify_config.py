"""The classification task's configuration: what ``config.yaml`` of a classification
run holds (``ClassifyConfig`` and its sections), and the checks that refuse settings
which cannot work together before a run starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torchformer.tasks.classify_data import DataConfig
from torchformer.train.loop import LoopConfig

PACKAGED_MINILM = "minilm"
MINILM_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"  # what the package holds
ADAPTER_DIR = "adapter"  # best/adapter/: LoRA adapters in PEFT's format


@dataclass
class ModelConfig:
    """Which network to fine-tune.

    Attributes:
        base: "minilm" (the packaged all-MiniLM-L6-v2), an HF-layout BERT, RoBERTa,
            DistilBERT, Longformer or BigBird directory or hub name, or "scratch" (an
            encoder from ``preset``).
        preset: encoder preset for "scratch" (see ``models.encoder.PRESETS``).
        pooling: "cls", "pooler" (what ``transformers`` uses) or "mean".
        freeze_encoder: train only the classification head.
        classifier_dropout: dropout before the head (None: the model's dropout).
        dropout: the encoder's dropout and attention dropout (None: the preset's or
            checkpoint's; 0 makes training deterministic across process counts).
        attn_impl: "sdpa" (fast), "reference" or "flex" (a sparse ``attention``'s
            FlexAttention block mask).
        long_document: how a text longer than one encoder pass is read (issue 13):
            "truncate" (one sequence of ``data.max_length`` tokens: head, tail or
            head+tail) or "chunks" (chunk-and-pool, ``models.long_document``: the text
            up to ``data.max_length`` tokens cut into overlapping chunks of
            ``chunk_length`` tokens every ``chunk_stride``, the chunk vectors pooled by
            ``chunk_pooling``: "mean", "max" or "attention").
        attention: the encoder's self-attention kind ("full", "sliding_window",
            "block_sparse", "lsh"; ``nn.sparse``), with ``attention_window`` (one-sided)
            for the sliding window; [CLS] (position 0) is global. None (default): the
            pretrained model's own (a Longformer or BigBird checkpoint keeps its
            pattern), full attention for a model from scratch.
        max_positions: extend the position table to this many positions by repeating
            the trained ones (Longformer's initialisation), to read whole documents with
            a sparse ``attention``.
        lora_r: LoRA (Hu et al., 2021; ``nn.lora``): train rank-``lora_r`` adapters on
            the ``lora_targets`` projections ("q", "k", "v", "out", "ffn_up",
            "ffn_down", "ffn") and the new head (the classifier, and the pooler with
            ``pooling: pooler``), the rest of the encoder frozen; ``lora_alpha``
            scales the update by alpha / r, ``lora_dropout`` drops the adapters'
            inputs. ``best/`` holds the merged
            weights (a plain model for ``predict``, export and serving) and
            ``best/adapter/`` the adapters in PEFT's format (``peft`` loads them onto the
            ``transformers`` model). None: full fine-tuning.
    """

    base: str = PACKAGED_MINILM
    preset: str = "bert-mini"
    pooling: Literal["cls", "pooler", "mean"] = "pooler"
    freeze_encoder: bool = False
    classifier_dropout: float | None = None
    dropout: float | None = None
    attn_impl: Literal["sdpa", "reference", "flex"] = "sdpa"
    long_document: Literal["truncate", "chunks"] = "truncate"
    chunk_length: int = 256
    chunk_stride: int = 192
    chunk_pooling: Literal["mean", "max", "attention"] = "mean"
    attention: Literal["full", "sliding_window", "block_sparse", "lsh"] | None = None
    attention_window: int | None = None
    max_positions: int | None = None
    lora_r: int | None = None
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("q", "v")


@dataclass
class TokenizerConfig:
    """The from-scratch WordPiece tokenizer (ignored for a pretrained base).

    Attributes:
        path: an existing ``tokenizer.json`` to use instead of training one.
    """

    path: str | None = None
    vocab_size: int = 16000
    min_frequency: int = 2
    lowercase: bool = True


@dataclass
class TrainConfig(LoopConfig):
    """The loop's settings (``train.loop.LoopConfig``) plus the classifier's batching and
    fine-tuning techniques (each off by default).

    ``batch_size`` is the global batch: under torchrun each of N processes trains on
    its share of every batch, so the same config trains the same model on any N.

    Attributes:
        max_tokens: batches of similar lengths whose padded size (examples × longest)
            stays within this many tokens, at most ``batch_size`` (``eval_batch_size``)
            examples — fairseq's ``--max-tokens``: whole long documents then come a few
            at a time instead of 32 at once (None: fixed ``batch_size``).
        warmup_ratio: the fraction of the steps the rate warms up over (not with
            ``schedule: stlr``, whose rise is its warm-up).
        stlr_cut_frac: ``schedule: stlr`` (ULMFiT's slanted triangular rates,
            ``train.schedules``): the fraction of the steps the rate rises for (0.1).
        stlr_ratio: ``schedule: stlr``: how much smaller the first and last rates are
            than the peak ``lr`` (32).
        layer_lr_decay: discriminative learning rates (``train.optim``): the head gets
            ``lr``, the top encoder layer ``lr * d``, the next ``lr * d**2``, ..., the
            embeddings ``lr * d**(L + 1)``; ULMFiT's ``eta^(l-1) = eta^l / 2.6`` is
            0.385; BEiT-style fine-tuning uses 0.65-0.8 (None: one rate).
        unfreeze: gradual unfreezing (``train.unfreeze``): "off", "epoch" (train the
            head alone for the first epoch, then one more layer group each epoch, from
            the top layer down to the embeddings) or a number N (one more every N
            optimizer steps). Not with ``model.freeze_encoder``. (In YAML write
            ``"off"`` quoted: a bare ``off`` reads as false.)
        adversarial: adversarial training on the embedding output (``train.adversarial``):
            "none", "fgm" (Miyato et al., 2017) or "pgd" (Madry et al., 2018); the loss
            is the clean loss plus ``adv_weight`` times the loss under a perturbation of
            radius ``adv_epsilon`` per example (padding not perturbed).
        adv_epsilon: the perturbation's L2 radius per example (1.0).
        adv_weight: the weight of the adversarial loss (1.0).
        pgd_steps: PGD's ascent steps K (3).
        pgd_alpha: PGD's step size (0.3).
        rdrop_alpha: R-Drop (Liang et al., 2021; ``train.rdrop``): two passes with
            different dropout, their mean cross-entropy plus this times the symmetric
            KL divergence between their predictions (0: off). Not with ``adversarial``.
    """

    batch_size: int = 32
    max_tokens: int | None = None
    warmup_ratio: float = 0.06
    eval_batch_size: int = 64
    metric: Literal["accuracy", "macro_f1", "loss"] = "accuracy"  # early stopping and best/
    stlr_cut_frac: float = 0.1
    stlr_ratio: float = 32.0
    layer_lr_decay: float | None = None
    unfreeze: Literal["off", "epoch"] | int = "off"
    adversarial: Literal["none", "fgm", "pgd"] = "none"
    adv_epsilon: float = 1.0
    adv_weight: float = 1.0
    pgd_steps: int = 3
    pgd_alpha: float = 0.3
    rdrop_alpha: float = 0.0


@dataclass
class ClassifyConfig:
    """Everything a classification run needs; saved as ``config.yaml`` in the run."""

    task: str = "classification"
    run_dir: str = "runs/classify"
    report: bool = True  # report.html after training (written by `torchformer train`)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def new_head(m: ModelConfig) -> tuple[str, ...]:
    """The modules LoRA leaves trainable: the classifier, the pooler when it is used
    (pooling "pooler") and chunk-and-pool's attention scorer."""
    head = ["classifier"]
    if m.pooling == "pooler":
        head.append("pooler")
    if m.long_document == "chunks" and m.chunk_pooling == "attention":
        head.append("chunk_scorer")
    return tuple(head)


def peft_mismatch(model: Any, m: ModelConfig) -> str | None:
    """Why a LoRA classifier's adapters would not reproduce it on ``transformers``'
    ``BertForSequenceClassification`` under ``peft`` (None: they would)."""
    if getattr(model.config, "flavour", None) != "bert":
        return f"PEFT-format adapters are written for BERT models ({m.base} is not one)"
    if m.pooling != "pooler":
        return f"transformers' BERT classifier reads the pooler; this one pools by {m.pooling!r}"
    if m.long_document != "truncate" or m.max_positions is not None:
        return "transformers' BERT classifier reads one truncated sequence"
    if m.attention not in (None, "full"):
        return f"transformers' BERT has full attention, not {m.attention!r}"
    return None


def check_finetuning(config: ClassifyConfig) -> None:
    """Refuse settings of the fine-tuning techniques that cannot work, before a run starts.

    Raises:
        ValueError: naming the ``train.`` key at fault.
    """
    tc = config.train
    problems = []
    if tc.unfreeze != "off" and config.model.freeze_encoder:
        problems.append("train.unfreeze needs model.freeze_encoder: false")
    if isinstance(tc.unfreeze, int) and tc.unfreeze < 1:
        problems.append(f"train.unfreeze must be 'off', 'epoch' or >= 1, got {tc.unfreeze}")
    if tc.layer_lr_decay is not None and not 0 < tc.layer_lr_decay <= 1:
        problems.append(f"train.layer_lr_decay must be in (0, 1], got {tc.layer_lr_decay}")
    if tc.rdrop_alpha < 0:
        problems.append(f"train.rdrop_alpha must be >= 0, got {tc.rdrop_alpha}")
    m = config.model
    if m.lora_r is not None:
        if m.lora_r < 1:
            problems.append(f"model.lora_r must be >= 1, got {m.lora_r}")
        if m.freeze_encoder or tc.unfreeze != "off":
            problems.append(
                "model.lora_r cannot be combined with model.freeze_encoder or train.unfreeze"
            )
        if m.base == "scratch":
            problems.append("model.lora_r adapts a pretrained model; model.base is 'scratch'")
        if m.max_positions is not None:
            problems.append(
                "model.lora_r cannot be combined with model.max_positions (the new position "
                "rows would stay untrained)"
            )
        if not 0 <= m.lora_dropout < 1:
            problems.append(f"model.lora_dropout must be in [0, 1), got {m.lora_dropout}")
    if tc.rdrop_alpha > 0 and config.data.class_weights:
        problems.append("train.rdrop_alpha cannot be combined with data.class_weights")
    if tc.adv_weight < 0:
        problems.append(f"train.adv_weight must be >= 0, got {tc.adv_weight}")
    if tc.schedule == "stlr" and not (0 < tc.stlr_cut_frac < 1 and tc.stlr_ratio >= 1):
        problems.append(
            f"train.stlr_cut_frac must be in (0, 1) and train.stlr_ratio >= 1, got "
            f"{tc.stlr_cut_frac} and {tc.stlr_ratio}"
        )
    if tc.rdrop_alpha > 0 and tc.adversarial != "none":
        problems.append("train.rdrop_alpha and train.adversarial cannot be combined")
    if tc.adversarial != "none" and min(tc.adv_epsilon, tc.pgd_alpha, tc.pgd_steps) <= 0:
        problems.append("train.adv_epsilon, train.pgd_alpha and train.pgd_steps must be > 0")
    if problems:
        raise ValueError("; ".join(problems))


check_config = check_finetuning  # what ``torchformer.api.check_config`` calls
