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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from torchformer.config import config_to_dict, save_config
from torchformer.data.batching import TokenBudgetBatchSampler
from torchformer.evaluate.bleu import corpus_scores
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
    TranslationSettings,
    Translator,
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
from torchformer.train.guards import NonFiniteLossError, check_finite
from torchformer.train.logging import (
    MetricsLogger,
    fingerprint_records,
    progress_bar,
    write_manifest,
)
from torchformer.train.schedules import build_scheduler
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
    attn_impl: str = "sdpa"


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
    schedule: str = "noam"
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
    metric: str = "bleu"  # "bleu" (greedy, validation) or "loss"
    patience: int = 5
    checkpoint_every: int | None = None  # optimizer steps; None: at each evaluation
    keep_checkpoints: int = 2
    average_last: int = 0  # >= 2: also write averaged/ from the last N checkpoints
    seed: int = 42
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
    total, tokens = 0.0, 0
    sampler = TokenBudgetBatchSampler(pairs.lengths, max(max_tokens, max(pairs.lengths)), seed=0, shuffle=False)
    for indices in sampler:
        b = make_batch(pairs, indices, model.config.pad_id)
        out = model(b.src, b.tgt_in, src_mask=b.src_mask, tgt_mask=b.tgt_mask, labels=b.labels)
        n = b.num_target_tokens
        total, tokens = total + out.loss.item() * n, tokens + n
    model.train(was_training)
    return total / max(tokens, 1)


def translate_split(translator: Translator, pairs: EncodedPairs, *, beam_size: int, batch_size: int,
                    limit: int | None = None) -> tuple[list[str], dict]:  # fmt: skip
    """Decode a split's sources; returns the hypotheses and their sacreBLEU/chrF scores."""
    n = len(pairs) if limit is None else min(limit, len(pairs))
    was_training = translator.model.training
    translator.model.eval()
    hyps = translator.translate(pairs.src_texts[:n], beam_size=beam_size, batch_size=batch_size)
    translator.model.train(was_training)
    return hyps, corpus_scores(hyps, pairs.tgt_texts[:n])


@dataclass
class LoopState:
    """Counters saved in checkpoints (as ``training_state`` metadata)."""

    step: int = 0
    epoch: int = 0
    target_tokens: int = 0
    stopped_early: bool = False


def train(config: TranslateConfig, *, resume: bool = False, stop_at_step: int | None = None) -> Path:
    """Train, evaluate and save a translation model; returns the run directory.

    Args:
        config: the resolved run config.
        resume: continue from the newest loadable checkpoint in ``run_dir``.
        stop_at_step: stop right after the checkpoint of this optimizer step, as if the
            process had been interrupted (used to test exact resume).
    """
    tc = config.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(tc.seed)
    data = prepare_data(config.data, config.tokenizer, run_dir, seed=tc.seed)
    model = build_model(config, data.src_tok, data.tgt_tok)
    train_set, val_set = data.encoded["train"], data.encoded["val"]
    save_config(config, run_dir / "config.yaml")
    write_manifest(run_dir, config=config_to_dict(config), seed=tc.seed,
                   data_fingerprint=fingerprint_records(train_set.src_texts + train_set.tgt_texts),
                   extra={"sizes": {k: len(v) for k, v in data.encoded.items()}, "dropped_long": data.dropped,
                          "parameters": sum(p.numel() for p in model.parameters())})  # fmt: skip

    sampler = TokenBudgetBatchSampler(train_set.lengths, tc.max_tokens, seed=tc.seed, shuffle=True)
    total_steps = tc.max_steps or math.ceil(len(sampler) / tc.grad_accum) * tc.epochs
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=tuple(tc.adam_betas), eps=tc.adam_eps,
                                 weight_decay=tc.weight_decay)  # fmt: skip
    scheduler = build_scheduler(optimizer, tc.schedule, warmup_steps=tc.warmup_steps, total_steps=total_steps,
                                d_model=model.config.d_model, scale=tc.lr)  # fmt: skip
    stopper = EarlyStopping(tc.metric, mode="min" if tc.metric == "loss" else "max", patience=tc.patience)
    ckpts = CheckpointManager(run_dir / "checkpoints", keep_last=max(tc.keep_checkpoints, tc.average_last))
    translator = Translator(model, data.src_tok, data.tgt_tok, settings_of(config))
    model.train()  # Translator switched it to eval mode

    state = LoopState()
    if resume and (ckpt := ckpts.latest()) is not None:
        restore_training_state(ckpt.state, model=model, optimizer=optimizer, scheduler=scheduler, sampler=sampler,
                               early_stopping=stopper)  # fmt: skip
        state = LoopState(**ckpt.state["metadata"])
        logger.info("resumed from %s (step %d, epoch %d)", ckpt.path, state.step, state.epoch)
    elif resume:
        logger.warning("no checkpoint in %s; starting from scratch", ckpts.directory)

    def checkpoint() -> None:
        ckpts.save(state.step, training_state(step=state.step, epoch=state.epoch, model=model, optimizer=optimizer,
                                              scheduler=scheduler, sampler=sampler, early_stopping=stopper,
                                              metadata=vars(state)))  # fmt: skip

    log = MetricsLogger(run_dir)
    bar = progress_bar(total_steps, "train", disable=not tc.progress, initial=state.step)
    pad_id = model.config.pad_id
    interrupted = False
    while state.epoch < tc.epochs and state.step < total_steps and not state.stopped_early:
        if sampler.epoch != state.epoch:  # equal on a fresh start and when resuming mid-epoch
            sampler.set_epoch(state.epoch)
        micro, remaining = 0, len(sampler) - sampler.state_dict()["batches_yielded"]
        t0, window_tokens, window_steps = time.perf_counter(), 0, 0
        for indices in sampler:
            micro += 1
            b = make_batch(train_set, indices, pad_id)
            out = model(b.src, b.tgt_in, src_mask=b.src_mask, tgt_mask=b.tgt_mask)
            loss = sequence_loss(out.logits, b.labels, pad_id=pad_id, label_smoothing=tc.label_smoothing)
            try:
                check_finite(loss, state.step + 1)
            except NonFiniteLossError as e:  # stop before the bad gradient touches the weights
                log.log({"error": f"{e}; the last good checkpoint is in {ckpts.directory}"}, step=state.step,
                        epoch=state.epoch, split="train")  # fmt: skip
                raise
            (loss / tc.grad_accum).backward()
            window_tokens += b.num_target_tokens
            state.target_tokens += b.num_target_tokens
            if not is_accumulation_boundary(micro, tc.grad_accum, last=micro == remaining):
                continue
            grad_norm = optimizer_step(model, optimizer, scheduler, max_grad_norm=tc.max_grad_norm)
            state.step += 1
            window_steps += 1
            bar.update(1)
            if state.step % 10 == 0 or state.step == 1:
                elapsed = time.perf_counter() - t0
                log.log({"loss": loss.item(), "lr": scheduler.lr, "grad_norm": float(grad_norm),
                         "tgt_tokens_per_s": window_tokens / max(elapsed, 1e-9),
                         "s_per_step": elapsed / window_steps}, step=state.step, epoch=state.epoch, split="train")  # fmt: skip
                bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{window_tokens / max(elapsed, 1e-9):.0f}")
                t0, window_tokens, window_steps = time.perf_counter(), 0, 0
            end_of_epoch = micro == remaining
            if end_of_epoch:
                state.epoch += 1
            evaluate_now = (tc.eval_every and state.step % tc.eval_every == 0) or (end_of_epoch and not tc.eval_every)
            if evaluate_now:
                _evaluate_and_keep_best(translator, val_set, stopper, state, log, run_dir, tc)
                t0, window_tokens, window_steps = time.perf_counter(), 0, 0  # throughput excludes evaluation
            if evaluate_now or end_of_epoch or (tc.checkpoint_every and state.step % tc.checkpoint_every == 0):
                checkpoint()
            if stop_at_step is not None and state.step >= stop_at_step:
                interrupted = True
                break
            if state.stopped_early or state.step >= total_steps:
                break
        if interrupted:
            break
    bar.close()
    if not interrupted:
        if not (run_dir / "best" / "config.json").is_file():  # never evaluated (max_steps hit first)
            _evaluate_and_keep_best(translator, val_set, stopper, state, log, run_dir, tc)
        finish_run(config, data.encoded, log, state)
    log.close()
    return run_dir


def _evaluate_and_keep_best(translator: Translator, val_set: EncodedPairs, stopper: EarlyStopping, state: LoopState,
                            log: MetricsLogger, run_dir: Path, tc: TrainConfig) -> None:  # fmt: skip
    model = translator.model
    start = time.perf_counter()
    loss = validation_loss(model, val_set, max_tokens=tc.eval_max_tokens)
    _, scores = translate_split(translator, val_set, beam_size=1, batch_size=64, limit=tc.bleu_samples)
    values = {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "bleu": scores["bleu"], "chrf": scores["chrf"],
              "eval_s": time.perf_counter() - start}  # fmt: skip
    log.log(values, step=state.step, epoch=state.epoch, split="val")
    logger.info("step %d val loss %.4f, greedy BLEU %.2f (%s)", state.step, loss, scores["bleu"], scores["bleu_signature"])
    if stopper.update(values[tc.metric], step=state.step):
        write_model_dir(run_dir / "best", model, translator.src_tokenizer, translator.tgt_tokenizer, translator.settings)
    state.stopped_early = stopper.should_stop


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the model weights in ``paths`` (Vaswani et al. 2017, 6.1)."""
    states = [load_checkpoint(p)["model"] for p in paths]
    return {k: sum(s[k].double() for s in states).div(len(states)).to(v.dtype) for k, v in states[0].items()}


def evaluate_translator(translator: Translator, pairs: EncodedPairs, out_dir: Path, *, beam_size: int,
                        batch_size: int) -> dict:  # fmt: skip
    """Greedy and beam-search BLEU/chrF of one split; writes ``scores.json`` and the hypotheses."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"num_sentences": len(pairs)}
    for name, beam in (("greedy", 1), (f"beam{beam_size}", beam_size)):
        start = time.perf_counter()
        hyps, scores = translate_split(translator, pairs, beam_size=beam, batch_size=batch_size)
        scores["decode_s"] = time.perf_counter() - start
        (out_dir / f"hypotheses.{name}.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
        result[name] = scores
    (out_dir / "scores.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def finish_run(config: TranslateConfig, encoded: dict[str, EncodedPairs], log: MetricsLogger, state: LoopState) -> None:
    """Score the best (and the averaged) model on validation and test; write ``eval/``."""
    run_dir, tc, e = Path(config.run_dir), config.train, config.eval
    models = {"best": Translator.from_dir(run_dir / "best")}
    paths = CheckpointManager(run_dir / "checkpoints", keep_last=max(tc.keep_checkpoints, tc.average_last)).steps()
    if tc.average_last >= 2 and len(paths) >= 2:
        best = models["best"]
        chosen = [run_dir / "checkpoints" / f"step-{s:06d}.pt" for s in paths[-tc.average_last :]]
        averaged = Seq2Seq(best.model.config)
        averaged.load_state_dict(average_checkpoints(chosen))
        write_model_dir(run_dir / "averaged", averaged, best.src_tokenizer, best.tgt_tokenizer, best.settings)
        models["averaged"] = Translator.from_dir(run_dir / "averaged")
    for model_name, translator in models.items():
        for split in ("val", "test"):
            if split not in encoded:
                continue
            prefix = "" if model_name == "best" else f"{model_name}_"
            result = evaluate_translator(translator, encoded[split], run_dir / "eval" / f"{prefix}{split}",
                                         beam_size=e.beam_size, batch_size=e.batch_size)  # fmt: skip
            flat = {f"{k}_{m}": result[k][m] for k in result if k != "num_sentences" for m in ("bleu", "chrf")}
            log.log(flat, step=state.step, epoch=state.epoch, split=f"{model_name}_{split}")
            for k in result:
                if k != "num_sentences":
                    logger.info("%s %s %s: BLEU %.2f (%s), chrF %.2f", model_name, split, k, result[k]["bleu"],
                                result[k]["bleu_signature"], result[k]["chrf"])  # fmt: skip
