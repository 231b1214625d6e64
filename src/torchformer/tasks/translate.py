"""Train an encoder–decoder Transformer from scratch for translation (Multi30k de→en).

One readable loop, top to bottom, built from the pieces in ``train/``: token-budget
batches of similar lengths, teacher forcing, label-smoothed cross-entropy that ignores
padding, Adam (β 0.9/0.98, eps 1e-9) with the Noam or inverse-square-root warm-up
schedule, gradient accumulation and clipping, validation loss and greedy BLEU after
every epoch with early stopping, the best model in ``best/``, optional averaging of the
last N checkpoints, and atomic checkpoints from which a resumed run ends with the same
weights as an unbroken one. At the end the best model is scored on the validation and
test sets with greedy decoding and beam search (sacreBLEU, cased, detokenized, 13a, and
chrF; signatures included) and the hypotheses are written into the run directory.

    config = load_config(TranslateConfig, "configs/multi30k-small.yaml")
    run_dir = train(config)
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from torchformer.config import config_to_dict, save_config
from torchformer.data.batching import TokenBudgetBatchSampler
from torchformer.io import atomic_write_text, replace_dir
from torchformer.models.seq2seq import Seq2Seq, preset, sequence_loss
from torchformer.tasks.translate_data import (
    DataConfig,
    EncodedPairs,
    TokenizerConfig,
    make_batch,
    prepare_data,
    special_ids,
)
from torchformer.tasks.translator import (
    SELECTION_FILE,
    TranslationSettings,
    Translator,
    evaluate_translator,
    translate_split,
    write_model_dir,
)
from torchformer.text.tokenizer import Tokenizer
from torchformer.train.accumulation import is_accumulation_boundary, optimizer_step
from torchformer.train.checkpoint import (
    CheckpointManager,
    load_checkpoint,
    restore_training_state,
    training_state,
)
from torchformer.train.early_stopping import EarlyStopping
from torchformer.train.guards import check_finite, stop_on_non_finite
from torchformer.train.logging import (
    MetricsLogger,
    fingerprint_records,
    progress_bar,
    write_manifest,
)
from torchformer.train.run_dir import claim_run_dir
from torchformer.train.schedules import ScheduleName, Scheduler, build_scheduler
from torchformer.train.seed import seed_everything

logger = logging.getLogger(__name__)


@dataclass
class ModelConfig:
    """Which encoder–decoder to train (``models.seq2seq.PRESETS``) and what to change in it.

    Embedding sharing follows the vocabulary: a joint one shares the source/target tables
    and ties the output projection to them; separate ones tie only the output projection.
    """

    preset: str = "transformer-small-cpu"
    dropout: float | None = None
    norm_first: bool | None = None
    attn_impl: Literal["sdpa", "reference"] = "sdpa"


@dataclass
class TrainConfig:
    """Optimisation, evaluation and checkpointing.

    ``lr`` is the Noam ``scale`` (peak rate ``lr * (d_model * warmup_steps) ** -0.5``) or the
    peak rate of ``inverse_sqrt``.
    """

    epochs: int = 20
    max_steps: int | None = None
    max_tokens: int = 4096  # padded tokens (longer side) per micro-batch
    grad_accum: int = 1
    schedule: ScheduleName = "noam"
    lr: float = 1.0
    warmup_steps: int = 4000
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-9
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    max_grad_norm: float = 1.0
    eval_every: int | None = None  # optimizer steps; None: once per epoch
    eval_max_tokens: int = 8192
    bleu_samples: int | None = None  # validation sentences decoded for the per-evaluation BLEU
    metric: Literal["bleu", "chrf", "loss"] = "bleu"  # early stopping, best/ (greedy, val)
    patience: int = 5
    checkpoint_every: int | None = None  # optimizer steps; None: at each evaluation
    keep_checkpoints: int = 2
    average_last: int = 0  # >= 2: also write averaged/ from the last N checkpoints
    seed: int = 42
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    threads: int | None = None
    progress: bool = True


@dataclass
class EvalConfig:
    """Decoding for the final evaluation (and the defaults saved with the model)."""

    beam_size: int = 5
    length_penalty: float = 1.0
    max_len_offset: int = 50
    batch_size: int = 32


@dataclass
class TranslateConfig:
    """Everything a translation run needs; saved as ``config.yaml`` in the run."""

    task: str = "translation"
    run_dir: str = "runs/translate"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def build_model(config: TranslateConfig, src_tok: Tokenizer, tgt_tok: Tokenizer) -> Seq2Seq:
    """A freshly initialised ``Seq2Seq`` sized to the tokenizers (seeded by the caller)."""
    m = config.model
    pad_id, start_id, eos_id = special_ids(tgt_tok)
    joint = config.tokenizer.joint
    overrides = {"dropout": m.dropout, "norm_first": m.norm_first}
    cfg = preset(m.preset, vocab_size=tgt_tok.vocab_size, src_vocab_size=None if joint else src_tok.vocab_size,
                 share_embeddings=joint, tie_output=True, max_len=config.data.max_length, pad_id=pad_id,
                 decoder_start_id=start_id, eos_id=eos_id, attn_impl=m.attn_impl,
                 **{k: v for k, v in overrides.items() if v is not None})  # fmt: skip
    return Seq2Seq(cfg)


def settings_of(config: TranslateConfig) -> TranslationSettings:
    e = config.eval
    return TranslationSettings(src_lang=config.data.src_lang, tgt_lang=config.data.tgt_lang, beam_size=e.beam_size,
                               length_penalty=e.length_penalty, max_len_offset=e.max_len_offset)  # fmt: skip


@torch.inference_mode()
def validation_loss(model: Seq2Seq, pairs: EncodedPairs, *, max_tokens: int) -> float:
    """Mean token cross-entropy (no label smoothing) over a split, padding ignored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    budget = max(max_tokens, max(pairs.lengths))
    for indices in TokenBudgetBatchSampler(pairs.lengths, budget, seed=0, shuffle=False):
        b = make_batch(pairs, indices, model.config.pad_id).to(device)
        out = model(b.src, b.tgt_in, src_mask=b.src_mask, tgt_mask=b.tgt_mask, labels=b.labels)
        total += out.loss.item() * b.num_target_tokens
        tokens += b.num_target_tokens
    model.train(was_training)
    return total / max(tokens, 1)


@dataclass
class LoopState:
    """Counters saved in checkpoints (as ``training_state`` metadata)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs completed
    target_tokens: int = 0  # tokens the decoder was trained to predict
    train_seconds: float = 0.0  # time in forward/backward/optimizer steps only
    train_cpu_seconds: float = 0.0  # CPU time of those (all threads): speed on a shared machine
    stopped_early: bool = False


@dataclass
class Run:
    """Everything a training run holds; ``checkpoint()`` writes what ``restore()`` reads."""

    config: TranslateConfig
    run_dir: Path
    translator: Translator  # the model being trained, with its tokenizers
    encoded: dict[str, EncodedPairs]
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    sampler: TokenBudgetBatchSampler
    stopper: EarlyStopping
    ckpts: CheckpointManager
    log: MetricsLogger
    total_steps: int
    state: LoopState = field(default_factory=LoopState)

    @property
    def model(self) -> Seq2Seq:
        return self.translator.model

    def checkpoint(self) -> None:
        state = training_state(
            step=self.state.step, epoch=self.state.epoch, model=self.model,
            optimizer=self.optimizer, scheduler=self.scheduler, sampler=self.sampler,
            early_stopping=self.stopper, metadata=asdict(self.state),
        )  # fmt: skip
        self.ckpts.save(self.state.step, state)

    def restore(self, ckpt: dict) -> None:
        restore_training_state(
            ckpt, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
            sampler=self.sampler, early_stopping=self.stopper,
        )  # fmt: skip
        self.state = LoopState(**ckpt["metadata"])

    def evaluate_and_keep_best(self) -> None:
        """Validation loss and greedy BLEU; ``best/`` on improvement; early stopping."""
        tc, start = self.config.train, time.perf_counter()
        val = self.encoded["val"]
        loss = validation_loss(self.model, val, max_tokens=tc.eval_max_tokens)
        _, scores = translate_split(self.translator, val, beam_size=1, limit=tc.bleu_samples)
        values = {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "bleu": scores["bleu"],
                  "chrf": scores["chrf"], "eval_s": time.perf_counter() - start}  # fmt: skip
        self.log.log(values, step=self.state.step, epoch=self.state.epoch, split="val")
        logger.info("step %d val loss %.4f, greedy BLEU %.2f %s", self.state.step, loss,
                    scores["bleu"], scores["bleu_signature"])  # fmt: skip
        if self.stopper.update(values[tc.metric], step=self.state.step):
            t = self.translator
            with replace_dir(self.run_dir / "best") as tmp:  # a crash keeps the previous best/
                write_model_dir(tmp, self.model, t.src_tokenizer, t.tgt_tokenizer, t.settings)
        self.state.stopped_early = self.stopper.should_stop


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def setup_run(config: TranslateConfig, *, resume: bool, overwrite: bool = False) -> Run:
    """Build (or restore) a run: data, tokenizers, model, Adam + warm-up, sampler, checkpoints."""
    tc = config.train
    if tc.metric not in ("bleu", "chrf", "loss"):
        raise ValueError(f"train.metric must be 'bleu', 'chrf' or 'loss', got {tc.metric!r}")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    run_dir = claim_run_dir(config.run_dir, resume=resume, overwrite=overwrite, config=config)
    seed_everything(tc.seed)
    data = prepare_data(config.data, config.tokenizer, run_dir, seed=tc.seed)
    device = _device(tc.device)
    model = build_model(config, data.src_tok, data.tgt_tok).to(device)  # before the optimizer
    train_set = data.encoded["train"]
    save_config(config, run_dir / "config.yaml")
    write_manifest(
        run_dir, config=config_to_dict(config), seed=tc.seed,
        data_fingerprint=fingerprint_records(train_set.src_texts + train_set.tgt_texts),
        extra={"sizes": {k: len(v) for k, v in data.encoded.items()}, "dropped_long": data.dropped,
               "parameters": sum(p.numel() for p in model.parameters())},
    )  # fmt: skip
    sampler = TokenBudgetBatchSampler(train_set.lengths, tc.max_tokens, seed=tc.seed)
    total_steps = tc.max_steps or math.ceil(len(sampler) / tc.grad_accum) * tc.epochs
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=tuple(tc.adam_betas),
                                 eps=tc.adam_eps, weight_decay=tc.weight_decay)  # fmt: skip
    run = Run(
        config=config, run_dir=run_dir, encoded=data.encoded, device=device,
        translator=Translator(model, data.src_tok, data.tgt_tok, settings_of(config)),
        optimizer=optimizer, sampler=sampler, total_steps=total_steps,
        scheduler=build_scheduler(optimizer, tc.schedule, warmup_steps=tc.warmup_steps,
                                  total_steps=total_steps, d_model=model.config.d_model, scale=tc.lr),
        stopper=EarlyStopping(tc.metric, mode="min" if tc.metric == "loss" else "max",
                              patience=tc.patience),
        # Averaging takes the checkpoints up to the best one, which early stopping leaves
        # `patience` evaluations behind the newest: keep that many more.
        ckpts=CheckpointManager(run_dir / "checkpoints", keep_last=max(
            tc.keep_checkpoints, tc.average_last + tc.patience if tc.average_last >= 2 else 0)),
        log=MetricsLogger(run_dir),
    )  # fmt: skip
    if resume and (ckpt := run.ckpts.latest()) is not None:
        run.restore(ckpt.state)
        run.log.drop_after(run.state.step)  # the steps after the checkpoint are redone
        logger.info("resumed from %s (step %d)", ckpt.path, run.state.step)
    elif resume:
        logger.warning("no checkpoint in %s; starting from scratch", run.ckpts.directory)
    return run


def _forward_backward(run: Run, indices: list[int]) -> tuple[torch.Tensor, int]:
    """One micro-batch: teacher forcing, label-smoothed loss, finite check, scaled backward.

    Returns the loss (detached) and the number of target tokens predicted.
    """
    tc, model = run.config.train, run.model
    b = make_batch(run.encoded["train"], indices, model.config.pad_id).to(run.device)
    out = model(b.src, b.tgt_in, src_mask=b.src_mask, tgt_mask=b.tgt_mask)  # logits (B, T, V)
    loss = sequence_loss(out.logits, b.labels, pad_id=model.config.pad_id,
                         label_smoothing=tc.label_smoothing)  # fmt: skip
    with _stop_on_non_finite(run):  # before the bad gradient touches the weights
        check_finite(loss, run.state.step + 1)
    (loss / tc.grad_accum).backward()
    return loss.detach(), b.num_target_tokens


def _stop_on_non_finite(run: Run):
    return stop_on_non_finite(
        run.log, step=run.state.step, epoch=run.state.epoch, note=run.ckpts.kept_note
    )


def run_epoch(run: Run, bar, stop_at_step: int | None) -> bool:
    """Train to the end of the current epoch (or a stop); True when stopped by ``stop_at_step``."""
    tc, state, sampler = run.config.train, run.state, run.sampler
    if sampler.epoch != state.epoch:  # equal on a fresh start and when resuming mid-epoch
        sampler.set_epoch(state.epoch)
    remaining = len(sampler) - sampler.state_dict()["batches_yielded"]
    micro, window_tokens, t0, cpu0 = 0, 0, time.perf_counter(), time.process_time()
    for indices in sampler:
        micro += 1
        loss, n_tokens = _forward_backward(run, indices)
        window_tokens += n_tokens
        end_of_epoch = micro == remaining
        if not is_accumulation_boundary(micro, tc.grad_accum, last=end_of_epoch):
            continue
        # The gradient norm is checked too: an overflow never reaches the weights.
        with _stop_on_non_finite(run):
            grad_norm = optimizer_step(run.model, run.optimizer, run.scheduler,
                                       max_grad_norm=tc.max_grad_norm, check_step=state.step + 1)  # fmt: skip
        elapsed = time.perf_counter() - t0
        state.step += 1
        state.target_tokens += window_tokens
        state.train_seconds += elapsed
        state.train_cpu_seconds += time.process_time() - cpu0
        bar.update(1)
        if state.step % 10 == 0 or state.step in (1, run.total_steps):
            speed = window_tokens / max(elapsed, 1e-9)
            run.log.log({"loss": loss.item(), "lr": run.scheduler.lr, "grad_norm": float(grad_norm),
                         "tgt_tokens_per_s": speed},
                        step=state.step, epoch=state.epoch, split="train")  # fmt: skip
            bar.set_postfix(loss=f"{loss.item():.3f}", tgt_tok_s=f"{speed:.0f}", refresh=False)
        state.epoch += end_of_epoch
        every, last_step = tc.eval_every, state.step >= run.total_steps
        # The last step is always evaluated: it may be the best.
        evaluate_now = (
            (every and state.step % every == 0) or (end_of_epoch and not every) or last_step
        )
        if evaluate_now:
            run.evaluate_and_keep_best()
        save_now = tc.checkpoint_every and state.step % tc.checkpoint_every == 0
        if evaluate_now or end_of_epoch or save_now:
            run.checkpoint()
        if stop_at_step is not None and state.step >= stop_at_step:
            return True
        if state.stopped_early or state.step >= run.total_steps:
            return False
        window_tokens, t0, cpu0 = 0, time.perf_counter(), time.process_time()
    return False


def train(
    config: TranslateConfig, *, resume: bool = False, overwrite: bool = False,
    stop_at_step: int | None = None,
) -> Path:  # fmt: skip
    """Train, evaluate and save a translation model; returns the run directory.

    Args:
        config: the resolved run config.
        resume: continue from the newest loadable checkpoint in ``run_dir``.
        overwrite: a fresh run may replace a run already in ``run_dir`` (else it refuses).
        stop_at_step: stop right after this optimizer step, as if the process had been
            interrupted (tests of exact resume use it with a checkpoint there).
    """
    run = setup_run(config, resume=resume, overwrite=overwrite)
    tc, state = config.train, run.state
    bar = progress_bar(run.total_steps, "train", disable=not tc.progress, initial=state.step)
    run.model.train()  # the Translator switched it to eval mode
    try:
        while state.epoch < tc.epochs and state.step < run.total_steps and not state.stopped_early:
            if run_epoch(run, bar, stop_at_step):
                return run.run_dir
        bar.close()
        if not (run.run_dir / "best" / "config.json").is_file():  # max_steps came first
            run.evaluate_and_keep_best()
        tokens, seconds, cpu = state.target_tokens, state.train_seconds, state.train_cpu_seconds
        run.log.log({"target_tokens": tokens, "train_seconds": seconds, "train_cpu_seconds": cpu,
                     "train_tgt_tokens_per_s": tokens / max(seconds, 1e-9),
                     "train_tgt_tokens_per_cpu_s": tokens / max(cpu, 1e-9)},
                    step=state.step, epoch=state.epoch, split="summary")  # fmt: skip
        finish_run(run)
    finally:
        bar.close()
        run.log.close()
    return run.run_dir


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the model weights in ``paths`` (Vaswani et al. 2017, 6.1)."""
    states = [load_checkpoint(p)["model"] for p in paths]
    return {
        k: sum(s[k].double() for s in states).div(len(states)).to(v.dtype)
        for k, v in states[0].items()
    }


def averaging_window(steps: list[int], n: int, best_step: int | None) -> list[int]:
    """The checkpoint steps to average: the last ``n`` up to and including ``best_step``
    (after early stopping, the newest checkpoints are the evaluations that did not improve)."""
    upto = [s for s in steps if best_step is None or s <= best_step]
    return upto[-n:]


def _averaged_model(run: Run, best: Translator) -> Translator | None:
    """``averaged/``: the mean of the ``average_last`` checkpoints ending at the best one
    (None when off or fewer than two are there)."""
    n = run.config.train.average_last
    window = averaging_window(run.ckpts.steps(), n, run.stopper.best_step)
    if n < 2 or len(window) < 2:
        return None
    model = Seq2Seq(best.model.config)
    model.load_state_dict(average_checkpoints([run.ckpts.path_for(s) for s in window]))
    with replace_dir(run.run_dir / "averaged") as tmp:
        write_model_dir(tmp, model, best.src_tokenizer, best.tgt_tokenizer, best.settings)
    logger.info("averaged checkpoints of steps %s", window)
    return Translator.from_dir(run.run_dir / "averaged")


def select_model(val_scores: dict[str, float]) -> str:
    """The model with the higher validation score; ties (and no scores) keep ``best``."""
    names = sorted(val_scores, key=lambda name: name != "best")  # best/ first: wins ties
    return max(names, key=val_scores.__getitem__) if names else "best"


def finish_run(run: Run) -> None:
    """Score the best and the averaged model on validation and test (greedy and beam);
    write ``eval/``; select the one with the better validation beam score
    (``selected_model.json``, what ``torchformer.load(run)`` and the CLI then use)."""
    e, state = run.config.eval, run.state
    metric = "chrf" if run.config.train.metric == "chrf" else "bleu"
    beam = f"beam{e.beam_size}"
    best = Translator.from_dir(run.run_dir / "best")
    models = {"best": best, "averaged": _averaged_model(run, best)}
    val_scores: dict[str, float] = {}
    for model_name, translator in models.items():
        if translator is None:
            continue
        translator.model.to(run.device)
        for split in ("val", "test"):
            if split not in run.encoded:
                continue
            name = split if model_name == "best" else f"{model_name}_{split}"
            result = evaluate_translator(translator, run.encoded[split], run.run_dir / "eval" / name,
                                         beam_size=e.beam_size, batch_size=e.batch_size)  # fmt: skip
            decodings = [k for k in result if k != "num_sentences"]
            flat = {f"{k}_{m}": result[k][m] for k in decodings for m in ("bleu", "chrf")}
            run.log.log(flat, step=state.step, epoch=state.epoch, split=f"{model_name}_{split}")
            for k in decodings:
                logger.info("%s %s %s: BLEU %.2f %s, chrF %.2f", model_name, split, k,
                            result[k]["bleu"], result[k]["bleu_signature"], result[k]["chrf"])  # fmt: skip
            if split == "val":
                val_scores[model_name] = result[beam][metric]
    selected = select_model(val_scores)
    selection = {"model": selected, "by": f"validation {beam} {metric}", "validation": val_scores}
    atomic_write_text(run.run_dir / SELECTION_FILE, json.dumps(selection, indent=2) + "\n")
    logger.info("selected %s/ (%s)", selected, selection["by"])
