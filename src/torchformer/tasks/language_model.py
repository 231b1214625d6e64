"""Causal language modelling: pre-train a GPT-family decoder on unlabeled text.

The language-model task of the one training loop (``train.loop``): a corpus (Tiny
Shakespeare with nanoGPT's 90/10 character split, the IMDB unlabeled reviews, or your
own text files) is tokenized once into cached memory-mapped token files, training draws
contiguous blocks of ``block_size + 1`` tokens (nanoGPT's random offsets, or every
block once per epoch), the loss is next-token cross-entropy, validation scores fixed
consecutive blocks of the held-out split (loss, perplexity, bits per character for a
character model), samples are written into the run at every evaluation, and ``best/``
is a Hugging Face GPT-2 directory with its tokenizer.

    config = load_config(LanguageModelConfig, "configs/shakespeare-char.yaml")
    run_dir = train(config)
    torchformer.load(run_dir).generate("ROMEO:", max_new_tokens=200)
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from torchformer.checkpoints import save_pretrained
from torchformer.data.corpus import (
    Corpus,
    imdb_unsup_corpus,
    shakespeare_char_corpora,
    text_corpus,
)
from torchformer.data.paths import data_dir
from torchformer.data.records import DataError
from torchformer.data.token_file import PackedBlockSampler, TokenFile, build_token_file, read_blocks
from torchformer.io import atomic_write_text
from torchformer.models.decoder import DecoderForCausalLM, preset
from torchformer.models.transformer_xl import (
    TransformerXLConfig,
    TransformerXLForCausalLM,
    segment_losses,
)
from torchformer.nn.cache import SegmentMemory
from torchformer.tasks.lm_generator import LanguageModel, LMSettings, SampleConfig
from torchformer.text.cleaning import TextCleaner
from torchformer.text.lm_tokenizers import train_byte_level_bpe, train_char_tokenizer
from torchformer.text.tokenizer import Tokenizer
from torchformer.train.distributed import World
from torchformer.train.loop import LoopConfig, Run, fit
from torchformer.train.optim import build_optimizer
from torchformer.train.schedules import ScheduleName, Scheduler, build_scheduler

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"


@dataclass
class DataConfig:
    """The corpus and its blocks.

    Attributes:
        source: "tinyshakespeare" (nanoGPT's shakespeare_char split: first 90% of the
            characters for training, last 10% held out), "imdb-unsup" (the 50,000
            unlabeled IMDB reviews, HTML line breaks removed), or a path: a text file,
            a folder of .txt files, a .gz file or a .tar.gz archive.
        split: for a path: one document per "file", "line" or blank-line "paragraph".
        val_every: for sources without a fixed split: every N-th document is held out.
        block_size: tokens of context (the model's ``max_len``).
        val_max_blocks: evaluate at most this many held-out blocks, evenly spread
            (None: every block of the held-out split).
        cache_dir: where token files are cached (None: ``<data dir>/cache/tokens``, or
            ``~/.cache/torchformer/tokens`` when the data directory is read-only).
        val_streams: Transformer-XL: the held-out split is read as this many ordered
            streams, segment after segment with the memory carried (every token once).
    """

    source: str = "tinyshakespeare"
    split: Literal["file", "line", "paragraph"] = "file"
    val_every: int = 10
    block_size: int = 64
    val_max_blocks: int | None = None
    cache_dir: str | None = None
    val_streams: int = 16


@dataclass
class TokenizerConfig:
    """``char`` (nanoGPT's shakespeare_char) or byte-level ``bpe`` (GPT-2 style)."""

    kind: Literal["char", "bpe"] = "char"
    vocab_size: int = 8192  # bpe
    min_frequency: int = 2  # bpe


@dataclass
class ModelConfig:
    """A decoder: a preset (``models.decoder.PRESETS``: GPT-2 or Llama family) with sizes
    changed, or (``architecture: transformer_xl``) a Transformer-XL of these sizes whose
    segments are ``data.block_size`` tokens and whose layers remember ``mem_len``
    positions of the previous segments (``models.transformer_xl``; 0: no memory)."""

    preset: str = "tiny"
    d_model: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None  # llama presets: grouped-query attention
    d_ff: int | None = None  # None: 4 * d_model (GPT-2), ~8/3 * d_model (Llama's SwiGLU)
    dropout: float = 0.0
    attn_impl: Literal["sdpa", "reference"] = "sdpa"
    # "transformers": the same network as Hugging Face's GPT2LMHeadModel (a reference for
    # speed benchmarks: trained by this loop, saved in the same layout, loaded as ours).
    implementation: Literal["torchformer", "transformers"] = "torchformer"
    architecture: Literal["decoder", "transformer_xl"] = "decoder"
    sliding_window: int | None = None  # decoder: Mistral's window (a token sees W slots)
    mem_len: int = 0  # transformer_xl
    eval_mem_len: int | None = None  # transformer_xl: None: mem_len


@dataclass
class TrainConfig(LoopConfig):
    """The loop's settings plus block sampling and AdamW (nanoGPT's defaults).

    ``batch_size`` is the global number of blocks per optimizer step (micro-batch).
    ``sampling``: "random" (nanoGPT: ``batches_per_epoch`` batches of uniformly drawn
    offsets), "epoch" (every block of the file once per epoch, shuffled) or "streams"
    (``batch_size`` ordered streams, segment after segment: Transformer-XL's reading,
    required by a memory).
    """

    batch_size: int = 12
    sampling: Literal["random", "epoch", "streams"] = "random"
    batches_per_epoch: int = 1000
    lr: float = 1e-3
    schedule: ScheduleName = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    adam_betas: tuple[float, float] = (0.9, 0.99)
    eval_batch_size: int = 64
    metric: Literal["loss"] = "loss"


@dataclass
class LanguageModelConfig:
    """Everything a language-model run needs; saved as ``config.yaml`` in the run."""

    task: str = "language_model"
    run_dir: str = "runs/lm"
    samples: SampleConfig = field(default_factory=SampleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        m = self.model
        if m.architecture == "transformer_xl":
            if m.mem_len > 0 and self.train.sampling != "streams":
                raise ValueError(
                    f"model.mem_len={m.mem_len} needs train.sampling: streams (a memory of the "
                    f"previous segment means nothing between {self.train.sampling!r} blocks)"
                )
            if m.implementation != "torchformer":
                raise ValueError("model.architecture: transformer_xl has no transformers twin")
            if m.sliding_window is not None:
                raise ValueError(
                    "model.sliding_window is a decoder setting (Transformer-XL: mem_len)"
                )
        elif m.mem_len or m.eval_mem_len is not None:
            raise ValueError("model.mem_len and eval_mem_len are transformer_xl settings")


def corpora(data: DataConfig) -> dict[str, Corpus]:
    """``{"train": ..., "val": ...}`` corpora of the configured source."""
    if data.source == "tinyshakespeare":
        return shakespeare_char_corpora()
    if data.source == "imdb-unsup":
        base = imdb_unsup_corpus(clean=TextCleaner(["strip_html", "normalize_whitespace"]))
    else:
        base = text_corpus(data.source, split=data.split)

    def part(held_out: bool) -> Corpus:
        def read():
            for i, document in enumerate(base):
                if (i % data.val_every == 0) == held_out:
                    yield document

        name = f"{base.name}-{'val' if held_out else 'train'}"
        settings = {**base.settings, "val_every": data.val_every, "held_out": held_out}
        return Corpus(name, read, files=base.files, settings=settings)

    return {"train": part(False), "val": part(True)}


def token_cache_dir(configured: str | None) -> Path:
    """The token-file cache: the configured one, else under the data directory when it
    is writable (the shared copy of the data may not be), else the user's cache."""
    if configured:
        return Path(configured)
    preferred = Path(data_dir()) / "cache" / "tokens"
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        if os.access(preferred, os.W_OK):
            return preferred
    except OSError:
        pass
    fallback = Path.home() / ".cache" / "torchformer" / "tokens"
    logger.info("data directory not writable; caching token files in %s", fallback)
    return fallback


def build_tokenizer(config: LanguageModelConfig, parts: dict[str, Corpus]) -> Tokenizer:
    t = config.tokenizer
    if t.kind == "char":  # the alphabet of the whole text, as nanoGPT's prepare.py
        return train_char_tokenizer(text for c in parts.values() for text in c.texts())
    return train_byte_level_bpe(
        parts["train"].texts(), vocab_size=t.vocab_size, min_frequency=t.min_frequency
    )


def build_model(
    config: LanguageModelConfig, tokenizer: Tokenizer
) -> DecoderForCausalLM | TransformerXLForCausalLM:
    m = config.model
    if m.architecture == "transformer_xl":
        return _transformer_xl(config, tokenizer)
    sizes = {
        k: v
        for k, v in (("d_model", m.d_model), ("n_layers", m.n_layers), ("n_heads", m.n_heads))
        if v is not None
    }
    base = preset(m.preset)
    d_model = sizes.get("d_model", base.d_model)
    if m.n_kv_heads is not None:
        sizes["n_kv_heads"] = m.n_kv_heads
    # GPT-2's FFN is 4 d wide; a SwiGLU FFN has three matrices, so Llama uses ~8/3 d
    # (rounded up to a multiple of 64) for the same parameters.
    default_ff = 4 * d_model if base.flavour == "gpt2" else 64 * math.ceil(8 * d_model / 3 / 64)
    if m.implementation == "transformers" and base.flavour != "gpt2":
        raise ValueError("model.implementation: transformers is available for GPT-2 presets only")
    cfg = preset(
        m.preset,
        **sizes,
        d_ff=m.d_ff or default_ff,
        vocab_size=tokenizer.vocab_size,
        max_len=config.data.block_size,
        dropout=m.dropout,
        attn_dropout=m.dropout,
        embd_dropout=m.dropout,
        attn_impl=m.attn_impl,
        bos_id=tokenizer.eos_id,
        eos_id=tokenizer.eos_id,
        pad_id=None,
        sliding_window=m.sliding_window,
    )
    if m.implementation == "transformers":
        return _hf_gpt2(cfg)
    return DecoderForCausalLM(cfg)


def _transformer_xl(config: LanguageModelConfig, tokenizer: Tokenizer) -> TransformerXLForCausalLM:
    m, base = config.model, TransformerXLConfig()
    d_model = m.d_model or base.d_model
    cfg = TransformerXLConfig(
        vocab_size=tokenizer.vocab_size,
        d_model=d_model,
        n_layers=m.n_layers or base.n_layers,
        n_heads=m.n_heads or base.n_heads,
        d_ff=m.d_ff or 4 * d_model,
        segment_len=config.data.block_size,
        mem_len=m.mem_len,
        eval_mem_len=m.eval_mem_len,
        dropout=m.dropout,
        attn_dropout=m.dropout,
        embd_dropout=m.dropout,
        attn_impl=m.attn_impl,
        bos_id=tokenizer.eos_id,
        eos_id=tokenizer.eos_id,
    )
    return TransformerXLForCausalLM(cfg)


def _hf_gpt2(cfg) -> torch.nn.Module:
    """``transformers.GPT2LMHeadModel`` of the same sizes (benchmark reference)."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as e:
        raise ImportError(
            "model.implementation: transformers needs `pip install transformers`"
        ) from e
    hf = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.max_len,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.d_ff,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.embd_dropout,
        attn_pdrop=cfg.attn_dropout,
        activation_function=cfg.activation,
        layer_norm_epsilon=cfg.norm_eps,
        bos_token_id=cfg.bos_id,
        eos_token_id=cfg.eos_id,
    )
    hf._attn_implementation = "sdpa" if cfg.attn_impl == "sdpa" else "eager"
    return GPT2LMHeadModel(hf)


def val_block_starts(num_tokens: int, block_size: int, limit: int | None) -> list[int]:
    """Consecutive blocks of the held-out tokens (at most ``limit``, evenly spread)."""
    starts = list(range(0, num_tokens - block_size, block_size))
    if limit is not None and len(starts) > limit:
        picks = np.linspace(0, len(starts) - 1, limit).round().astype(int)
        starts = [starts[i] for i in picks]
    return starts


class LanguageModelTask:
    """The language model's side of the one training loop (``train.loop.Task``)."""

    units = "tokens"
    xl = False  # a Transformer-XL: segments in order, with a memory (set by ``prepare``)
    memory: SegmentMemory | None = None
    next_starts: list[int] | None = None

    def __init__(self, config: LanguageModelConfig) -> None:
        self.config = config
        self.saved = 0  # best/ writes so far: numbers the samples

    def prepare(self, run_dir: Path, *, resume: bool, main: bool) -> DecoderForCausalLM:
        c = self.config
        parts = corpora(c.data)
        saved = run_dir / TOKENIZER_FILE
        if (resume or not main) and saved.is_file():  # rank 0 trained it; keep its vocabulary
            self.tokenizer = Tokenizer.from_file(saved)
        else:
            self.tokenizer = build_tokenizer(c, parts)
            self.tokenizer.save(saved)
        cache = token_cache_dir(c.data.cache_dir)
        try:
            self.files: dict[str, TokenFile] = {
                name: build_token_file(corpus, self.tokenizer, cache_dir=cache)
                for name, corpus in parts.items()
            }
        except DataError as e:  # e.g. a split with no document at all
            raise DataError(
                f"{e} ({self._split_settings()})", file=c.data.source, field="data.source"
            ) from e
        self._check_sizes()
        self.val_starts = val_block_starts(
            len(self.files["val"].tokens), c.data.block_size, c.data.val_max_blocks
        )
        self.xl = c.model.architecture == "transformer_xl"
        if self.xl:  # the held-out text as ordered streams, read with the memory carried
            n = len(self.files["val"].tokens)
            streams = max(1, min(c.data.val_streams, (n - 1) // c.data.block_size))
            self.val_stream_len = (n - 1) // streams
            self.val_starts = [i * self.val_stream_len for i in range(streams)]
        self.memory = None  # Transformer-XL, training: the previous segments
        self.next_starts = None  # where the memory's rows continue
        self.saved = len(list((run_dir / "samples").glob("best-*.txt")))  # resumed: go on
        self.model = build_model(c, self.tokenizer)
        self.settings = LMSettings(
            tokenizer_kind=c.tokenizer.kind,
            block_size=c.data.block_size,
            **vars(c.samples),
        )
        return self.model

    def _check_sizes(self) -> None:
        """Both splits hold at least one block (else training or validation means nothing)."""
        d = self.config.data
        for name, file in self.files.items():
            if len(file.tokens) < d.block_size + 1:
                raise DataError(
                    f"the {name} split has {len(file.tokens)} tokens, fewer than one block of "
                    f"data.block_size + 1 = {d.block_size + 1} ({self._split_settings()})",
                    file=d.source,
                    field="data.source",
                )

    def _split_settings(self) -> str:
        d = self.config.data
        return (
            f"one document per data.split={d.split!r}; every data.val_every={d.val_every}-th "
            "document is held out"
        )

    def manifest(self) -> dict[str, Any]:
        return {
            "data_fingerprint": self.files["train"].key,
            "extra": {
                "tokens": {k: len(f.tokens) for k, f in self.files.items()},
                "vocab_size": self.tokenizer.vocab_size,
                "parameters": sum(p.numel() for p in self.model.parameters()),
            },
        }

    def train_sampler(self, world: World) -> PackedBlockSampler:
        tc = self.config.train
        return PackedBlockSampler(
            len(self.files["train"].tokens),
            self.config.data.block_size,
            tc.batch_size,
            seed=tc.seed,
            mode=tc.sampling,
            batches_per_epoch=tc.batches_per_epoch,
            **world.sampler_args,
        )

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        tc = self.config.train
        return build_optimizer(model, lr=tc.lr, weight_decay=tc.weight_decay, betas=tc.adam_betas)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Scheduler:
        tc = self.config.train
        return build_scheduler(
            optimizer,
            tc.schedule,
            warmup_steps=tc.warmup_steps,
            total_steps=total_steps,
            min_lr_ratio=tc.min_lr_ratio,
        )

    def checkpoints_to_keep(self) -> int:
        return self.config.train.keep_checkpoints

    def batch_units(self, indices: list[int]) -> float:
        return float(len(indices) * self.config.data.block_size)  # every position predicts

    def batch_loss(self, model, indices: list[int], device: torch.device) -> torch.Tensor:
        block = self.config.data.block_size
        inputs, targets = read_blocks(self.files["train"].tokens, indices, block)
        if self.xl:  # the memory continues only where these rows continue the last ones
            if self.memory is None or self.next_starts != list(indices):
                self.memory = self.model.new_memory()
            logits = model(inputs.to(device), memory=self.memory).logits  # (B, T, V)
            self.next_starts = [i + block for i in indices]
        else:
            logits = model(inputs.to(device)).logits  # (B, T, V)
        return torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), targets.to(device).flatten()
        )

    def train_state(self) -> dict[str, Any]:
        """Transformer-XL's memory and where its rows continue (checkpointed for an
        exact resume; empty for a decoder)."""
        if self.memory is None:
            return {}
        return {"memory": self.memory.state_dict(), "next_starts": self.next_starts}

    def load_train_state(self, state: dict[str, Any]) -> None:
        if not state or not self.xl:
            return
        device = next(self.model.parameters()).device
        self.memory = self.model.new_memory()
        self.memory.load_state_dict({k: v.to(device) for k, v in state["memory"].items()})
        self.next_starts = list(state["next_starts"])

    def split_size(self, split: str) -> int:
        return len(self.val_starts) if split == "val" else 0

    def evaluate(
        self, model, split: str, indices: list[int], device: torch.device
    ) -> dict[int, Any]:
        """Per held-out block: the summed next-token loss of its ``block_size`` positions
        (Transformer-XL: per stream, read segment by segment with the memory)."""
        out: dict[int, float] = {}
        size, block = self.config.train.eval_batch_size, self.config.data.block_size
        if self.xl:
            tokens, length = self.files["val"].tokens, self.val_stream_len
            for i in range(0, len(indices), size):
                chunk = indices[i : i + size]
                rows = np.stack(
                    [tokens[s : s + length + 1] for s in map(self.val_starts.__getitem__, chunk)]
                )
                losses = segment_losses(model, torch.from_numpy(rows.astype(np.int64)).to(device))
                out.update(zip(chunk, losses.tolist()))
            return out
        for i in range(0, len(indices), size):
            chunk = indices[i : i + size]
            starts = [self.val_starts[j] for j in chunk]
            inputs, targets = read_blocks(self.files["val"].tokens, starts, block)
            logits = model(inputs.to(device)).logits.float()  # (B, T, V)
            losses = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), targets.to(device), reduction="none"
            )  # (B, T)
            out.update(zip(chunk, losses.sum(-1).tolist()))
        return out

    def summarize(self, split: str, outputs: dict[int, Any]) -> dict[str, float]:
        per_item = self.val_stream_len if self.xl else self.config.data.block_size
        tokens = len(outputs) * per_item
        loss = sum(outputs.values()) / max(tokens, 1)
        metrics = {"loss": loss, "ppl": math.exp(min(loss, 50.0))}
        if self.config.tokenizer.kind == "char":
            metrics["bpc"] = loss / math.log(2)  # bits per character
        return metrics

    def save_best(self, model: torch.nn.Module, directory: Path) -> None:
        """``best/`` (GPT-2 layout + tokenizer + settings) and, in the run, a sample of it."""
        ours = isinstance(model, DecoderForCausalLM | TransformerXLForCausalLM)
        if ours:
            save_pretrained(model, directory, tokenizer=self.tokenizer)
        else:  # transformers' GPT-2: its own writer, the same layout
            model.save_pretrained(directory, safe_serialization=True)
            self.tokenizer.save(directory / TOKENIZER_FILE)
        self.settings.write(directory)
        self.saved += 1  # (the model directory is written next to its final place)
        sample = directory.parent / "samples" / f"best-{self.saved:03d}.txt"
        self.write_sample(model if ours else LanguageModel.from_dir(directory).model, sample)

    def write_sample(self, model: torch.nn.Module, path: Path) -> str:
        """Generate from the configured prompt with ``model`` and write it to ``path``."""
        was_training = model.training
        lm = LanguageModel(model.eval(), self.tokenizer, self.settings)
        try:
            text = lm.generate()
        except ValueError as e:  # a prompt the vocabulary cannot spell: start from nothing
            logger.warning("samples.prompt: %s; sampling without a prompt", e)
            text = lm.generate("")
        model.train(was_training)
        atomic_write_text(path, text)
        return text

    def finish(self, run: Run) -> None:
        """Score ``best/`` on the held-out split and write its sample."""
        best = LanguageModel.from_dir(run.run_dir / "best")
        best.model.to(run.device)
        with run.autocast(run.eval_precision), torch.inference_mode():
            outputs = self.evaluate(
                best.model, "val", list(range(len(self.val_starts))), run.device
            )
        result = self.summarize("val", outputs)
        atomic_write_text(
            run.run_dir / "eval" / "val" / "metrics.json",
            _json({**result, "blocks": len(outputs), "precision": run.eval_precision}),
        )
        run.log.log(result, step=run.state.step, epoch=run.state.epoch, split="best_val")
        sample = self.write_sample(best.model, run.run_dir / "samples" / "best.txt")
        logger.info(
            "best/ val %s; sample:\n%s", {k: round(v, 4) for k, v in result.items()}, sample
        )


def _json(value: dict) -> str:
    import json

    return json.dumps(value, indent=2) + "\n"


def train(config: LanguageModelConfig, **options: Any) -> Path:
    """Pre-train a language model; returns the run directory.

    ``options``: ``resume``, ``overwrite``, ``stop_at_step`` (see ``train.loop.fit``).
    """
    return fit(LanguageModelTask(config), **options)


def load(path: str | os.PathLike, **overrides: Any) -> LanguageModel:
    """A trained language model: a run directory (its ``best/``) or a model directory;
    ``overrides`` change fields of the model's config (e.g. ``attn_impl``)."""
    path = Path(path)
    return LanguageModel.from_dir(
        path / "best" if (path / "best" / "config.json").is_file() else path, **overrides
    )


CONFIG = LanguageModelConfig
