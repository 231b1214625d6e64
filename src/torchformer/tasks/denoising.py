"""Denoising pre-training of an encoder–decoder: BART's text infilling.

The masked-LM task's data path (a corpus tokenized once into a cached token file,
blocks of consecutive tokens, batch-derived corruption for exact resume, fixed
held-out corruption) with BART's objective (Lewis et al. 2020): spans with Poisson(3)
lengths covering 30% of a block are each replaced by one mask token
(``data.masking.infill_spans``); the encoder reads the corrupted block, the decoder
writes the original back, and the loss is the cross-entropy of every target token.

``model.base: scratch`` builds a BART-flavour ``Seq2Seq`` from ``model.preset``
(``models.seq2seq.PRESETS``: "bart-tiny", "bart-small", "bart-base") with a WordPiece
vocabulary trained on the corpus ([CLS] begins a source, [SEP] ends a sequence and
starts the decoder, [MASK] marks a span); ``best/`` is a Hugging Face BART directory.

    torchformer train imdb-bart-denoise
    torchformer.load("runs/imdb-bart-denoise").reconstruct("the film was [MASK] and the actors [MASK].")
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from torchformer.checkpoints import load_pretrained
from torchformer.data.masking import InfillingConfig, infill_spans
from torchformer.generate import generate
from torchformer.models.seq2seq import Seq2Seq, shift_right
from torchformer.models.seq2seq import preset as seq2seq_preset
from torchformer.tasks.language_model import DataConfig
from torchformer.tasks.masked_lm import (
    SCRATCH,
    MaskedLMTask,
    MLMModelConfig,
    MLMSettings,
    MLMTokenizerConfig,
    MLMTrainConfig,
    _base_dir,
)
from torchformer.text.tokenizer import Tokenizer
from torchformer.train.loop import fit

SETTINGS_NAME = "denoising.json"


@dataclass
class DenoisingConfig:
    """Everything a denoising run needs; saved as ``config.yaml`` in the run."""

    task: str = "denoising"
    run_dir: str = "runs/denoise"
    data: DataConfig = field(
        default_factory=lambda: DataConfig(source="imdb-unsup", block_size=128)
    )
    masking: InfillingConfig = field(default_factory=InfillingConfig)
    model: MLMModelConfig = field(
        default_factory=lambda: MLMModelConfig(base=SCRATCH, preset="bart-small")
    )
    tokenizer: MLMTokenizerConfig = field(default_factory=MLMTokenizerConfig)
    train: MLMTrainConfig = field(default_factory=MLMTrainConfig)


@dataclass
class DenoisingSettings(MLMSettings):
    """How the model was pre-trained; ``denoising.json`` next to the weights."""

    FILE_NAME: ClassVar[str] = SETTINGS_NAME
    task: str = "denoising"
    base: str = SCRATCH


class DenoisingTask(MaskedLMTask):
    """Text infilling on the masked-LM task's data path (see the module docstring)."""

    hf_task = "seq2seq_lm"
    count_name = "target_tokens"

    def _model(self) -> Seq2Seq:
        c, t = self.config, self.tokenizer
        if c.model.base != SCRATCH:
            return load_pretrained(_base_dir(c.model.base), task="seq2seq_lm")[0]
        cfg = seq2seq_preset(
            c.model.preset,
            vocab_size=t.vocab_size,
            pad_id=t.pad_id,
            eos_id=t.sep_id,
            decoder_start_id=t.sep_id,
            max_len=max(c.data.block_size, seq2seq_preset(c.model.preset).max_len),
        )
        if cfg.flavour != "bart":
            raise ValueError(f"model.preset {c.model.preset!r} is not a BART preset")
        return Seq2Seq(cfg)

    def prepare(self, run_dir: Path, *, resume: bool, main: bool) -> Seq2Seq:
        model = super().prepare(run_dir, resume=resume, main=main)
        self.settings = DenoisingSettings(
            block_size=self.config.data.block_size, base=str(self.config.model.base)
        )
        return model

    def _pairs(self, split: str, starts: list[int], seeds: list[int]):
        """(source ids (B, S), source mask (B, S), decoder inputs (B, T), labels (B, T))."""
        t = self.tokenizer
        blocks = self._blocks(split, starts)[:, 1:-1].tolist()  # the corpus tokens only
        sources = [
            [
                t.cls_id,
                *infill_spans(
                    block,
                    config=self.config.masking,
                    mask_id=t.mask_id,
                    generator=torch.Generator().manual_seed(seed),
                ),
                t.sep_id,
            ]
            for block, seed in zip(blocks, seeds, strict=True)
        ]
        width = max(len(s) for s in sources)
        src = torch.full((len(sources), width), t.pad_id, dtype=torch.long)
        for row, ids in enumerate(sources):
            src[row, : len(ids)] = torch.tensor(ids)
        labels = torch.cat([torch.tensor(blocks), torch.full((len(blocks), 1), t.sep_id)], dim=1)
        tgt_in = shift_right(labels, start_id=t.sep_id, pad_id=t.pad_id)
        return src, (src != t.pad_id).long(), tgt_in, labels

    def batch_loss(self, model, indices: list[int], device: torch.device) -> torch.Tensor:
        seed = self.batch_seed(indices, self.config.masking.seed)
        src, mask, tgt_in, labels = self._pairs(
            "train", indices, [seed + i for i in range(len(indices))]
        )
        out = model(
            src.to(device), tgt_in.to(device), src_mask=mask.to(device), labels=labels.to(device)
        )
        return out.loss

    def held_out_losses(
        self, model, starts: list[int], device: torch.device
    ) -> tuple[list[float], list[int]]:
        seeds = [self.config.masking.seed + 7919 * s for s in starts]
        src, mask, tgt_in, labels = (x.to(device) for x in self._pairs("val", starts, seeds))
        logits = model(src, tgt_in, src_mask=mask).logits.float()  # (B, T, V)
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        return losses.sum(1).tolist(), [labels.size(1)] * len(starts)


def train(config: DenoisingConfig, **options: Any) -> Path:
    """Pre-train an encoder–decoder by text infilling; returns the run directory."""
    return fit(DenoisingTask(config), **options)


class Denoiser:
    """A denoising-pre-trained BART with its tokenizer: ``reconstruct`` fills [MASK] spans."""

    def __init__(self, model: Seq2Seq, tokenizer: Tokenizer) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer

    def reconstruct(self, text: str, *, max_new_tokens: int = 64, num_beams: int = 4) -> str:
        """The model's reconstruction of ``text`` (its mask token marks missing spans)."""
        t = self.tokenizer
        ids = [t.cls_id, *t.backend.encode(text, add_special_tokens=False).ids, t.sep_id]
        out = generate(
            self.model, torch.tensor([ids]), max_new_tokens=max_new_tokens, num_beams=num_beams
        )
        new = [i for i in out[0, 1:].tolist() if i not in (t.sep_id, t.pad_id)]
        return t.decode(new)


def load(path: str | os.PathLike, **overrides: Any) -> Denoiser:
    """A denoiser: a run directory (its ``best/``) or a model directory;
    ``overrides`` change fields of the model's config (e.g. ``attn_impl``)."""
    path = Path(path)
    model_dir = path / "best" if (path / "best" / "config.json").is_file() else path
    model, _ = load_pretrained(model_dir, task="seq2seq_lm", **overrides)
    return Denoiser(model, Tokenizer.from_pretrained_dir(model_dir))


CONFIG = DenoisingConfig
