"""Masked language modelling: (continued) pre-training of a BERT-family encoder.

BERT's objective (Devlin et al. 2019) as a task of the one training loop: the corpus
(the IMDB unlabeled reviews, Tiny Shakespeare, or your own text files; as in the
language-model task) is tokenized once with the encoder's WordPiece tokenizer into a
cached token file, documents separated by ``[SEP]``; training draws blocks of
``block_size - 2`` consecutive tokens, wraps them in ``[CLS] ... [SEP]``, corrupts them
with ``data.masking`` (15% chosen; 80% ``[MASK]`` / 10% random / 10% kept; optionally
whole words) with a random stream derived from the batch, so that a resumed run sees
the same masks, and scores the chosen positions only. Validation corrupts fixed
held-out blocks with a fixed seed and reports the masked-token loss and perplexity.

The main use is domain-adaptive pre-training (Gururangan et al. 2020, "Don't Stop
Pretraining"): continue MiniLM's pre-training on IMDB reviews, then fine-tune the
classifier from ``best/`` (``model.base: runs/<run>/best`` in a classification config).
``model.freeze_encoder: true`` trains the MLM head only — the baseline that tells how
well the unchanged encoder predicts masked reviews (the packaged MiniLM ships without
its MLM head, so its masked-LM perplexity needs a head trained on its features first).

    torchformer train imdb-minilm-mlm          # continued pre-training
    torchformer train imdb-minilm-mlm --model.freeze_encoder true --run_dir runs/mlm-head
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from torchformer.checkpoints import load_pretrained, save_pretrained
from torchformer.data.masking import MaskingConfig, continuation_table, mask_tokens
from torchformer.data.records import DataError
from torchformer.data.token_file import PackedBlockSampler, TokenFile, build_token_file
from torchformer.io import JsonSettings, atomic_write_text
from torchformer.models.encoder import EncoderForMaskedLM
from torchformer.models.encoder import preset as encoder_preset
from torchformer.tasks.classify import PACKAGED_MINILM, packaged_minilm_dir
from torchformer.tasks.language_model import (
    DataConfig,
    LanguageModelTask,
    TrainConfig,
    corpora,
    token_cache_dir,
    val_block_starts,
)
from torchformer.text.tokenizer import Tokenizer
from torchformer.train.distributed import World
from torchformer.train.loop import Run, fit
from torchformer.train.schedules import ScheduleName

logger = logging.getLogger(__name__)

SETTINGS_NAME = "masked_lm.json"
SCRATCH = "scratch"
# Tokenizer files of the base model copied into best/ (roles, casing, vocabulary).
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


@dataclass
class MLMModelConfig:
    """The encoder: ``base`` is "minilm" (the packaged all-MiniLM-L6-v2), a BERT directory,
    or "scratch": an encoder from ``preset`` (``models.encoder.PRESETS``) with a WordPiece
    tokenizer trained on the training split (``tokenizer``).

    ``dropout``: the encoder's dropout and attention dropout (None: the preset's or the
    base's). Short pre-training runs underfit, and drop it (Geiping & Goldstein 2022);
    the value is saved in ``best/config.json``, so set the fine-tuning run's own.
    """

    base: str = PACKAGED_MINILM
    preset: str = "bert-mini"
    dropout: float | None = None
    freeze_encoder: bool = False  # train the MLM head only (the unchanged encoder's baseline)


@dataclass
class MLMTokenizerConfig:
    """The WordPiece tokenizer trained for ``model.base: scratch`` (else the base's is used);
    ``path``: an existing ``tokenizer.json`` to use instead of training one."""

    path: str | None = None
    vocab_size: int = 16000
    min_frequency: int = 2
    lowercase: bool = True


@dataclass
class MLMTrainConfig(TrainConfig):
    """The causal LM's training settings (blocks, sampling, AdamW), with BERT-style
    fine-tuning defaults for continuing a pre-trained encoder."""

    lr: float = 1e-4
    schedule: ScheduleName = "linear"
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.98)


@dataclass
class MaskedLMConfig:
    """Everything a masked-LM run needs; saved as ``config.yaml`` in the run."""

    task: str = "masked_lm"
    run_dir: str = "runs/mlm"
    data: DataConfig = field(
        default_factory=lambda: DataConfig(source="imdb-unsup", block_size=128)
    )
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    model: MLMModelConfig = field(default_factory=MLMModelConfig)
    tokenizer: MLMTokenizerConfig = field(default_factory=MLMTokenizerConfig)
    train: MLMTrainConfig = field(default_factory=MLMTrainConfig)


@dataclass
class MLMSettings(JsonSettings):
    """How the model was pre-trained; ``masked_lm.json`` next to the weights."""

    FILE_NAME: ClassVar[str] = SETTINGS_NAME
    task: str = "masked_lm"
    block_size: int = 128
    base: str = PACKAGED_MINILM


class _SepSeparated:
    """The tokenizer as the token file sees it: documents separated by ``[SEP]``."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self.eos_id = tokenizer.sep_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def _base_dir(base: str) -> Path:
    return packaged_minilm_dir() if base == PACKAGED_MINILM else Path(base)


class MaskedLMTask(LanguageModelTask):
    """The masked LM's side of the one loop; block sampling and optimizer as the causal LM's."""

    units = "tokens"
    hf_task = "masked_lm"  # the ``load_pretrained`` task of best/
    count_name = "masked_tokens"  # what the held-out loss is averaged over

    def __init__(self, config: MaskedLMConfig) -> None:
        self.config = config

    @property
    def content_len(self) -> int:
        """Corpus tokens per block: ``block_size`` less [CLS] and [SEP]."""
        return self.config.data.block_size - 2

    def _tokenizer(self, run_dir: Path, parts: dict, *, resume: bool, main: bool) -> Tokenizer:
        """The base's tokenizer, or (scratch) the run's WordPiece: trained by rank 0 of a
        fresh run on the training split, reused by a resumed run and by the other ranks."""
        c = self.config
        if c.model.base != SCRATCH:
            return Tokenizer.from_pretrained_dir(_base_dir(c.model.base))
        saved = run_dir / "tokenizer.json"
        if (resume or not main) and saved.is_file():
            return Tokenizer.from_file(saved)
        t = c.tokenizer
        if t.path:
            tokenizer = Tokenizer.from_file(t.path)
            tokenizer.save(saved)
            return tokenizer
        tokenizer = Tokenizer.train_wordpiece(
            parts["train"].texts(),
            vocab_size=t.vocab_size,
            min_frequency=t.min_frequency,
            lowercase=t.lowercase,
        )
        tokenizer.save(saved)
        return tokenizer

    def _model(self) -> EncoderForMaskedLM:
        c = self.config
        drop = c.model.dropout
        overrides = {} if drop is None else {"dropout": drop, "attn_dropout": drop}
        if c.model.base == SCRATCH:
            t = self.tokenizer
            size = max(512, c.data.block_size)
            cfg = encoder_preset(
                c.model.preset, vocab_size=t.vocab_size, pad_id=t.pad_id, max_len=size, **overrides
            )
            return EncoderForMaskedLM(cfg)
        model, report = load_pretrained(_base_dir(c.model.base), task="masked_lm", **overrides)
        if report.new_keys:
            logger.info("new (freshly initialised) weights: %s", ", ".join(report.new_keys))
        return model

    def prepare(self, run_dir: Path, *, resume: bool, main: bool) -> EncoderForMaskedLM:
        c = self.config
        parts = corpora(c.data)
        self.tokenizer = self._tokenizer(run_dir, parts, resume=resume, main=main)
        t = self.tokenizer
        missing = [r for r in ("cls_id", "sep_id", "mask_id") if getattr(t, r) is None]
        if missing:
            given = c.model.base == SCRATCH and c.tokenizer.path
            raise DataError(
                f"the tokenizer has no {', '.join(missing)}",
                file=str(c.tokenizer.path if given else _base_dir(c.model.base)),
                field="tokenizer.path" if given else "model.base",
            )
        self.special_ids = sorted(
            {i for i in (t.cls_id, t.sep_id, t.pad_id, t.unk_id) if i is not None}
        )
        self.continuation = continuation_table(
            t.backend.get_vocab(with_added_tokens=True), t.vocab_size
        )
        cache = token_cache_dir(c.data.cache_dir)
        self.files: dict[str, TokenFile] = {
            name: build_token_file(corpus, _SepSeparated(t), cache_dir=cache)
            for name, corpus in parts.items()
        }
        for name, file in self.files.items():
            if len(file.tokens) < self.content_len + 1:
                raise DataError(
                    f"the {name} split has {len(file.tokens)} tokens, fewer than one block "
                    f"(data.block_size={c.data.block_size})",
                    file=c.data.source,
                    field="data.source",
                )
        self.val_starts = val_block_starts(
            len(self.files["val"].tokens), self.content_len, c.data.val_max_blocks
        )
        model = self._model()
        if c.model.freeze_encoder:  # the tied output embeddings stay frozen too
            model.encoder.requires_grad_(False)
        self.model = model.train()
        self.settings = MLMSettings(block_size=c.data.block_size, base=str(c.model.base))
        return self.model

    def train_sampler(self, world: World) -> PackedBlockSampler:
        tc = self.config.train
        return PackedBlockSampler(
            len(self.files["train"].tokens),
            self.content_len,
            tc.batch_size,
            seed=tc.seed,
            mode=tc.sampling,
            batches_per_epoch=tc.batches_per_epoch,
            **world.sampler_args,
        )

    def _blocks(self, split: str, starts: list[int]) -> torch.Tensor:
        """[CLS] + ``content_len`` corpus tokens + [SEP] at each start -> (B, block_size)."""
        tokens, n, t = self.files[split].tokens, self.content_len, self.tokenizer
        rows = [np.asarray(tokens[s : s + n], dtype=np.int64) for s in starts]
        body = torch.from_numpy(np.stack(rows))  # (B, n)
        cls = torch.full((len(starts), 1), t.cls_id, dtype=torch.long)
        sep = torch.full((len(starts), 1), t.sep_id, dtype=torch.long)
        return torch.cat([cls, body, sep], dim=1)  # (B, n + 2)

    def _corrupt(self, ids: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return mask_tokens(
            ids,
            config=self.config.masking,
            mask_id=self.tokenizer.mask_id,
            vocab_size=self.tokenizer.vocab_size,
            special_ids=self.special_ids,
            generator=generator,
            continuation=self.continuation,
        )

    def batch_units(self, indices: list[int]) -> float:
        return float(len(indices) * self.config.data.block_size)  # tokens encoded

    def batch_seed(self, indices: list[int], seed: int) -> int:
        """The corruption seed of a batch: its block starts and the configured seed only,
        so that a resumed run, which replays the sampler, corrupts every batch alike."""
        return (seed * 1_000_003 + sum((i + 1) * s for i, s in enumerate(indices))) % 2**62

    def batch_loss(self, model, indices: list[int], device: torch.device) -> torch.Tensor:
        seed = self.batch_seed(indices, self.config.masking.seed)
        inputs, labels = self._corrupt(self._blocks("train", indices), seed)
        out = model(inputs.to(device), labels=labels.to(device), only_labelled=True)
        return out.loss

    def evaluate(
        self, model, split: str, indices: list[int], device: torch.device
    ) -> dict[int, Any]:
        """Per held-out block: (summed loss, number) of its predicted tokens, fixed corruption."""
        out: dict[int, tuple[float, int]] = {}
        size = self.config.train.eval_batch_size
        for i in range(0, len(indices), size):
            chunk = indices[i : i + size]
            starts = [self.val_starts[j] for j in chunk]
            sums, counts = self.held_out_losses(model, starts, device)
            out.update(zip(chunk, zip(sums, counts, strict=True), strict=True))
        return out

    def held_out_losses(
        self, model, starts: list[int], device: torch.device
    ) -> tuple[list[float], list[int]]:
        """Summed loss and number of masked tokens of each held-out block (fixed masks)."""
        rows = [
            self._corrupt(self._blocks("val", [s]), self.config.masking.seed + 7919 * s)
            for s in starts
        ]
        inputs = torch.cat([r[0] for r in rows]).to(device)  # (B, T)
        labels = torch.cat([r[1] for r in rows]).to(device)  # (B, T)
        logits = model(inputs, labels=labels, only_labelled=True).logits.float()  # (N, V)
        losses = torch.nn.functional.cross_entropy(logits, labels[labels != -100], reduction="none")
        per_row = torch.zeros(len(starts), device=device).index_add_(
            0, (labels != -100).nonzero()[:, 0], losses
        )
        counts = (labels != -100).sum(1)
        return per_row.tolist(), counts.tolist()

    def summarize(self, split: str, outputs: dict[int, Any]) -> dict[str, float]:
        total = sum(loss for loss, _ in outputs.values())
        count = sum(n for _, n in outputs.values())
        loss = total / max(count, 1)
        return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), self.count_name: float(count)}

    def save_best(self, model: torch.nn.Module, directory: Path) -> None:
        """``best/``: a Hugging Face ``BertForMaskedLM`` directory with the base's tokenizer files."""
        if self.config.model.base == SCRATCH:
            save_pretrained(model, directory, tokenizer=self.tokenizer)
        else:
            save_pretrained(model, directory)
            base = _base_dir(self.config.model.base)
            for name in _TOKENIZER_FILES:
                if (base / name).is_file():
                    shutil.copyfile(base / name, directory / name)
        self.settings.write(directory)

    def finish(self, run: Run) -> None:
        """Score ``best/`` on the held-out blocks (``eval/val/metrics.json``)."""
        model, _ = load_pretrained(run.run_dir / "best", task=self.hf_task)
        model.to(run.device)
        with run.autocast(run.eval_precision), torch.inference_mode():
            outputs = self.evaluate(model, "val", list(range(len(self.val_starts))), run.device)
        result = self.summarize("val", outputs)
        atomic_write_text(
            run.run_dir / "eval" / "val" / "metrics.json",
            json.dumps(
                {**result, "blocks": len(outputs), "precision": run.eval_precision}, indent=2
            )
            + "\n",
        )
        run.log.log(result, step=run.state.step, epoch=run.state.epoch, split="best_val")
        logger.info("best/ val %s", {k: round(v, 4) for k, v in result.items()})


def train(config: MaskedLMConfig, **options: Any) -> Path:
    """(Continue to) pre-train an encoder with masked LM; returns the run directory."""
    return fit(MaskedLMTask(config), **options)


class MaskedLanguageModel:
    """A masked LM with its tokenizer: ``fill_mask`` (the top tokens at each [MASK])."""

    def __init__(self, model: EncoderForMaskedLM, tokenizer: Tokenizer) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer

    @torch.inference_mode()
    def fill_mask(self, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """For each ``[MASK]`` in ``text``: the ``top_k`` (token, probability) pairs."""
        enc = self.tokenizer.backend.encode(text)
        ids = torch.tensor([enc.ids])
        where = (ids[0] == self.tokenizer.mask_id).nonzero()[:, 0]
        if not len(where):
            raise ValueError(
                f"no {self.tokenizer.id_to_token(self.tokenizer.mask_id)} in {text[:60]!r}"
            )
        probs = self.model(ids).logits[0, where].softmax(-1)  # (M, V)
        top = probs.topk(top_k, dim=-1)
        return [
            [(self.tokenizer.id_to_token(int(i)), float(p)) for p, i in zip(ps, ix, strict=True)]
            for ps, ix in zip(top.values, top.indices, strict=True)
        ]


def load(path: str | os.PathLike, **overrides: Any) -> MaskedLanguageModel:
    """A masked LM: a run directory (its ``best/``) or a model directory;
    ``overrides`` change fields of the model's config (e.g. ``attn_impl``)."""
    path = Path(path)
    model_dir = path / "best" if (path / "best" / "config.json").is_file() else path
    model, _ = load_pretrained(model_dir, task="masked_lm", **overrides)
    return MaskedLanguageModel(model, Tokenizer.from_pretrained_dir(model_dir))


CONFIG = MaskedLMConfig
