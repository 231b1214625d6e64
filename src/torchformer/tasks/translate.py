"""Train an encoder–decoder for translation (Multi30k de→en) or any text-to-text pairs.

The translation task of the one training loop (``train.loop``): token-budget batches
of similar lengths, teacher forcing, label-smoothed cross-entropy that ignores padding,
Adam (β 0.9/0.98, eps 1e-9) with the Noam or inverse-square-root warm-up schedule,
validation loss and greedy BLEU at each evaluation, the best model in ``best/``, and
optional averaging of the last N checkpoints. Steps, accumulation, clipping, early
stopping, checkpoints with exact resume and distribution are the loop's. At the end the best model is scored on the validation and
test sets with greedy decoding and beam search (sacreBLEU, cased, detokenized, 13a, and
chrF; signatures included; ROUGE with ``eval.rouge``) and the hypotheses are written into
the run directory.

The same task fine-tunes a pretrained encoder–decoder (``model.pretrained``: a T5 or BART
checkpoint in Hugging Face layout, with its own tokenizer) on any (source, target) pairs
with a task prefix (``data.source_prefix``, T5's text-to-text format): translation,
summarization, paraphrase, question → answer.

    config = load_config(TranslateConfig, "configs/multi30k-small.yaml")
    run_dir = train(config)
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from torchformer.checkpoints import load_pretrained
from torchformer.checkpoints.hf import resolve_model_dir
from torchformer.data.batching import TokenBudgetBatchSampler
from torchformer.evaluate.bleu import corpus_scores
from torchformer.evaluate.rouge import ROUGE_TYPES, rouge_scores
from torchformer.io import atomic_write_text, replace_dir
from torchformer.models.rnn_seq2seq import PRESETS as RNN_PRESETS
from torchformer.models.rnn_seq2seq import RNNSeq2Seq, rnn_preset
from torchformer.models.seq2seq import PRESETS as TRANSFORMER_PRESETS
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
    write_model_dir,
)
from torchformer.text.tokenizer import Tokenizer
from torchformer.train.checkpoint import load_checkpoint
from torchformer.train.distributed import World
from torchformer.train.fsdp import consolidate
from torchformer.train.logging import fingerprint_records
from torchformer.train.loop import LoopConfig, Run, fit
from torchformer.train.schedules import ScheduleName, Scheduler, build_scheduler

logger = logging.getLogger(__name__)


@dataclass
class ModelConfig:
    """Which encoder–decoder to train and what to change in it.

    ``preset``: a Transformer (``models.seq2seq.PRESETS``) or an RNN encoder–decoder with
    additive attention (``models.rnn_seq2seq.PRESETS``, e.g. ``rnn-small-cpu``: Bahdanau et
    al.'s model, the baseline of ``multi30k-rnn``). ``norm_first`` and ``attn_impl`` are the
    Transformer's; an RNN preset refuses ``norm_first``.

    Embedding sharing follows the vocabulary: a joint one shares the source/target tables
    and ties the output projection to them; separate ones tie only the output projection.

    ``pretrained``: fine-tune this checkpoint instead (a Hugging Face directory or hub name
    of a T5 or BART model, or a torchformer seq2seq model directory); its tokenizer is used
    for both sides, ``preset`` and the ``tokenizer`` section are then ignored.
    """

    preset: str = "transformer-small-cpu"
    pretrained: str | None = None
    dropout: float | None = None
    norm_first: bool | None = None
    attn_impl: Literal["sdpa", "reference"] = "sdpa"


@dataclass
class TrainConfig(LoopConfig):
    """The loop's settings (``train.loop.LoopConfig``) plus translation's batching and Adam.

    ``lr`` is the Noam ``scale`` (peak rate ``lr * (d_model * warmup_steps) ** -0.5``) or the
    peak rate of ``inverse_sqrt``. ``max_tokens`` is the global batch: under torchrun each
    of N processes trains on its share of every batch.
    """

    epochs: int = 20
    optimizer: Literal["adam", "adamw"] = "adam"  # adamw: decoupled weight decay
    schedule: ScheduleName = "noam"
    lr: float = 1.0
    weight_decay: float = 0.0
    # early stopping and best/ (greedy decoding of the validation set); rougeL needs eval.rouge
    metric: Literal["bleu", "chrf", "rougeL", "loss"] = "bleu"
    patience: int = 5
    max_tokens: int = 4096  # padded tokens (longer side) per micro-batch
    warmup_steps: int = 4000
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-9
    label_smoothing: float = 0.1
    eval_max_tokens: int = 8192
    bleu_samples: int | None = None  # validation sentences decoded for the per-evaluation BLEU
    average_last: int = 0  # >= 2: also write averaged/ from the last N checkpoints


@dataclass
class EvalConfig:
    """Decoding for the final evaluation (and the defaults saved with the model).

    ``rouge``: also report ROUGE-1/2/L/Lsum (``rouge-score``), for targets that are not
    translations (summaries, answers).
    """

    beam_size: int = 5
    rouge: bool = False
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


def load_pretrained_model(config: TranslateConfig) -> tuple[Seq2Seq, Tokenizer]:
    """``model.pretrained`` and its tokenizer, with the config's dropout/attention overrides.

    Raises:
        CheckpointError: not an encoder–decoder checkpoint.
        FileNotFoundError: no tokenizer in the model directory.
        ValueError: the tokenizer does not end a text with the model's end id.
    """
    m = config.model
    model_dir = resolve_model_dir(m.pretrained)  # type: ignore[arg-type]
    overrides: dict[str, Any] = {"attn_impl": m.attn_impl}
    if m.dropout is not None:
        overrides["dropout"] = m.dropout
    model, _ = load_pretrained(model_dir, task="seq2seq_lm", **overrides)
    if (model_dir / "source_tokenizer.json").is_file():  # a torchformer translation model
        tokenizer = Tokenizer.from_file(model_dir / "source_tokenizer.json")
    else:
        tokenizer = Tokenizer.from_pretrained_dir(model_dir)
    eos = model.config.eos_id
    if tokenizer.suffix_ids[-1:] != [eos]:
        raise ValueError(
            f"{model_dir}: the tokenizer ends a text with {tokenizer.suffix_ids}, but the "
            f"model's end id is {eos}; targets must end with it"
        )
    return model.train(), tokenizer


def build_model(
    config: TranslateConfig, src_tok: Tokenizer, tgt_tok: Tokenizer
) -> Seq2Seq | RNNSeq2Seq:
    """A freshly initialised encoder–decoder sized to the tokenizers (seeded by the caller).

    Raises:
        ValueError: an unknown preset, or ``norm_first`` given for an RNN preset.
    """
    m = config.model
    pad_id, start_id, eos_id = special_ids(tgt_tok)
    joint = config.tokenizer.joint
    if m.preset in RNN_PRESETS:
        if m.norm_first is not None:
            raise ValueError(f"model.norm_first: the RNN preset {m.preset!r} has no norms")
        rnn = rnn_preset(
            m.preset,
            vocab_size=tgt_tok.vocab_size,
            src_vocab_size=None if joint else src_tok.vocab_size,
            share_embeddings=joint,
            max_len=config.data.max_length,
            pad_id=pad_id,
            decoder_start_id=start_id,
            eos_id=eos_id,
            **({} if m.dropout is None else {"dropout": m.dropout}),
        )
        return RNNSeq2Seq(rnn)
    if m.preset not in TRANSFORMER_PRESETS:
        raise ValueError(
            f"model.preset: unknown {m.preset!r}; Transformer presets: "
            f"{', '.join(sorted(TRANSFORMER_PRESETS))}; RNN presets: {', '.join(sorted(RNN_PRESETS))}"
        )
    overrides = {"dropout": m.dropout, "norm_first": m.norm_first}
    cfg = preset(
        m.preset,
        vocab_size=tgt_tok.vocab_size,
        src_vocab_size=None if joint else src_tok.vocab_size,
        share_embeddings=joint,
        tie_output=True,
        max_len=config.data.max_length,
        pad_id=pad_id,
        decoder_start_id=start_id,
        eos_id=eos_id,
        attn_impl=m.attn_impl,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    return Seq2Seq(cfg)


def settings_of(config: TranslateConfig) -> TranslationSettings:
    e = config.eval
    return TranslationSettings(
        src_lang=config.data.src_lang,
        tgt_lang=config.data.tgt_lang,
        source_prefix=config.data.source_prefix,
        beam_size=e.beam_size,
        length_penalty=e.length_penalty,
        max_len_offset=e.max_len_offset,
    )


@torch.inference_mode()
def example_losses(
    model: Seq2Seq,
    pairs: EncodedPairs,
    indices: list[int],
    *,
    max_tokens: int,
    device: torch.device | str = "cpu",
) -> dict[int, tuple[float, int]]:
    """``{index: (summed token cross-entropy, target tokens)}`` (no label smoothing)."""
    if not indices:
        return {}
    pad_id = model.config.pad_id
    lengths = [pairs.lengths[i] for i in indices]
    out: dict[int, tuple[float, int]] = {}
    sampler = TokenBudgetBatchSampler(lengths, max(max_tokens, max(lengths)), seed=0, shuffle=False)
    for positions in sampler:
        idx = [indices[p] for p in positions]
        b = make_batch(pairs, idx, pad_id).to(device)
        logits = model(
            b.src, b.tgt_in, src_mask=b.src_mask, tgt_mask=b.tgt_mask
        ).logits  # (B, T, V)
        targets = b.labels.masked_fill(b.labels == pad_id, -100)  # (B, T)
        token_losses = torch.nn.functional.cross_entropy(
            logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="none"
        )  # (B, T)
        sums, counts = token_losses.sum(-1).tolist(), (targets != -100).sum(-1).tolist()
        out.update(zip(idx, zip(sums, counts)))
    return out


class TranslationTask:
    """Translation's side of the one training loop (``train.loop.Task``)."""

    units = "tgt_tokens"

    def __init__(self, config: TranslateConfig) -> None:
        if config.train.metric == "rougeL" and not config.eval.rouge:
            raise ValueError("train.metric 'rougeL' needs eval.rouge: true")
        self.config = config

    def prepare(self, run_dir: Path, *, resume: bool, main: bool) -> Seq2Seq:
        # Rank 0 trains the tokenizers and saves them in the run; the others load them.
        c = self.config
        pretrained, tokenizer, start_id = None, None, None
        if c.model.pretrained:
            pretrained, tokenizer = load_pretrained_model(c)
            start_id = pretrained.config.decoder_start_id
        data = prepare_data(
            c.data,
            c.tokenizer,
            run_dir,
            seed=c.train.seed,
            write=main,
            pretrained_tokenizer=tokenizer,
            start_id=start_id,
        )
        self.data, self.encoded = data, data.encoded
        model = pretrained or build_model(c, data.src_tok, data.tgt_tok)
        self.translator = Translator(model, data.src_tok, data.tgt_tok, settings_of(c))
        self._target_tokens = [len(t) - 1 for t in self.encoded["train"].tgt_ids]
        return model

    def manifest(self) -> dict[str, Any]:
        train_set, model = self.encoded["train"], self.translator.model
        return {
            "data_fingerprint": fingerprint_records(train_set.src_texts + train_set.tgt_texts),
            "extra": {
                "sizes": {k: len(v) for k, v in self.encoded.items()},
                "dropped_long": self.data.dropped,
                "parameters": sum(p.numel() for p in model.parameters()),
            },
        }

    def train_sampler(self, world: World) -> TokenBudgetBatchSampler:
        tc, lengths = self.config.train, self.encoded["train"].lengths
        return TokenBudgetBatchSampler(lengths, tc.max_tokens, seed=tc.seed, **world.sampler_args)

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        tc = self.config.train
        optimizer = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
        return optimizer(
            model.parameters(),
            lr=tc.lr,
            betas=tuple(tc.adam_betas),
            eps=tc.adam_eps,
            weight_decay=tc.weight_decay,
        )

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Scheduler:
        tc = self.config.train
        return build_scheduler(
            optimizer,
            tc.schedule,
            warmup_steps=tc.warmup_steps,
            total_steps=total_steps,
            d_model=self.translator.model.config.d_model,
            scale=tc.lr,
            plateau_mode="min" if tc.metric == "loss" else "max",
        )

    def checkpoints_to_keep(self) -> int:
        # Averaging takes the checkpoints up to the best one, which early stopping leaves
        # `patience` evaluations behind the newest: keep that many more.
        tc = self.config.train
        return max(
            tc.keep_checkpoints, tc.average_last + tc.patience if tc.average_last >= 2 else 0
        )

    def batch_units(self, indices: list[int]) -> float:
        """Target tokens the decoder predicts (what the token cross-entropy averages over)."""
        return float(sum(self._target_tokens[i] for i in indices))

    def batch_loss(
        self, model: torch.nn.Module, indices: list[int], device: torch.device
    ) -> torch.Tensor:
        """Teacher forcing, label-smoothed token cross-entropy, padding ignored."""
        pad_id = self.translator.model.config.pad_id
        b = make_batch(self.encoded["train"], indices, pad_id).to(device)
        out = model(b.src, b.tgt_in, src_mask=b.src_mask, tgt_mask=b.tgt_mask)  # logits (B, T, V)
        return sequence_loss(
            out.logits, b.labels, pad_id=pad_id, label_smoothing=self.config.train.label_smoothing
        )

    def split_size(self, split: str) -> int:
        return len(self.encoded[split]) if split in self.encoded else 0

    def evaluate(
        self, model, split: str, indices: list[int], device: torch.device
    ) -> dict[int, Any]:
        """Per pair: (loss sum, target tokens, greedy hypothesis or None past ``bleu_samples``)."""
        tc, pairs = self.config.train, self.encoded[split]
        losses = example_losses(model, pairs, indices, max_tokens=tc.eval_max_tokens, device=device)
        limit = len(pairs) if tc.bleu_samples is None else tc.bleu_samples
        decode = [i for i in indices if i < limit]
        hyps = self.translator.translate(
            [pairs.src_texts[i] for i in decode], beam_size=1, batch_size=64
        )
        found = dict(zip(decode, hyps))
        return {i: (*losses[i], found.get(i)) for i in indices}

    def summarize(self, split: str, outputs: dict[int, Any]) -> dict[str, float]:
        """Token cross-entropy and perplexity over the split, greedy BLEU and chrF."""
        order, pairs = sorted(outputs), self.encoded[split]
        total, tokens = sum(outputs[i][0] for i in order), sum(outputs[i][1] for i in order)
        loss = total / max(tokens, 1)
        decoded = [i for i in order if outputs[i][2] is not None]
        scores = corpus_scores(
            [outputs[i][2] for i in decoded], [pairs.tgt_texts[i] for i in decoded]
        )
        logger.info("%s greedy BLEU %.2f %s", split, scores["bleu"], scores["bleu_signature"])
        summary = {
            "loss": loss,
            "ppl": math.exp(min(loss, 50.0)),
            "bleu": scores["bleu"],
            "chrf": scores["chrf"],
        }
        if self.config.eval.rouge and decoded:
            rouge = rouge_scores(
                [outputs[i][2] for i in decoded], [pairs.tgt_texts[i] for i in decoded]
            )
            summary.update({k: v for k, v in rouge.items() if k != "rouge_signature"})
        return summary

    def save_best(self, model: torch.nn.Module, directory: Path) -> None:
        t = self.translator
        write_model_dir(directory, model, t.src_tokenizer, t.tgt_tokenizer, t.settings)

    def finish(self, run: Run) -> None:
        finish_run(run, self.config)


def train(config: TranslateConfig, **options: Any) -> Path:
    """Train, evaluate and save a translation model; returns the run directory.

    ``options``: ``resume``, ``overwrite``, ``stop_at_step`` (see ``train.loop.fit``).
    """
    return fit(TranslationTask(config), **options)


def load(path: str | os.PathLike, **overrides: Any) -> Translator:
    """A trained translator: a run directory (the model it selected) or a model directory."""
    return Translator.from_dir(path, **overrides)


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the model weights in ``paths`` (Vaswani et al. 2017, 6.1)."""
    states = [consolidate(p) if p.suffix == ".dcp" else load_checkpoint(p)["model"] for p in paths]
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
    n = run.config.average_last
    window = averaging_window(run.ckpts.steps(), n, run.stopper.best_step)
    if n < 2 or len(window) < 2:
        return None
    model = type(best.model)(best.model.config)
    model.load_state_dict(average_checkpoints([run.ckpts.path_for(s) for s in window]))
    with replace_dir(run.run_dir / "averaged") as tmp:
        write_model_dir(tmp, model, best.src_tokenizer, best.tgt_tokenizer, best.settings)
    logger.info("averaged checkpoints of steps %s", window)
    return Translator.from_dir(run.run_dir / "averaged")


def select_model(val_scores: dict[str, float]) -> str:
    """The model with the higher validation score; ties (and no scores) keep ``best``."""
    names = sorted(val_scores, key=lambda name: name != "best")  # best/ first: wins ties
    return max(names, key=val_scores.__getitem__) if names else "best"


def finish_run(run: Run, config: TranslateConfig) -> None:
    """Score the best and the averaged model on validation and test (greedy and beam);
    write ``eval/``; select the one with the better validation beam score
    (``selected_model.json``, what ``torchformer.load(run)`` and the CLI then use)."""
    e, state = config.eval, run.state
    metric = config.train.metric if config.train.metric in ("chrf", "rougeL") else "bleu"
    beam = f"beam{e.beam_size}"
    best = Translator.from_dir(run.run_dir / "best")
    models = {"best": best, "averaged": _averaged_model(run, best)}
    val_scores: dict[str, float] = {}
    encoded = run.task.encoded
    for model_name, translator in models.items():
        if translator is None:
            continue
        translator.model.to(run.device)
        for split in ("val", "test"):
            if split not in encoded:
                continue
            name = split if model_name == "best" else f"{model_name}_{split}"
            result = evaluate_translator(
                translator,
                encoded[split],
                run.run_dir / "eval" / name,
                beam_size=e.beam_size,
                batch_size=e.batch_size,
                rouge=e.rouge,
            )
            decodings = [k for k in result if k != "num_sentences"]
            names = ("bleu", "chrf", *(ROUGE_TYPES if e.rouge else ()))
            flat = {f"{k}_{m}": result[k][m] for k in decodings for m in names}
            run.log.log(flat, step=state.step, epoch=state.epoch, split=f"{model_name}_{split}")
            for k in decodings:
                logger.info(
                    "%s %s %s: BLEU %.2f %s, chrF %.2f%s",
                    model_name,
                    split,
                    k,
                    result[k]["bleu"],
                    result[k]["bleu_signature"],
                    result[k]["chrf"],
                    f", ROUGE-L {result[k]['rougeL']:.2f}" if e.rouge else "",
                )
            if split == "val":
                val_scores[model_name] = result[beam][metric]
    selected = select_model(val_scores)
    selection = {"model": selected, "by": f"validation {beam} {metric}", "validation": val_scores}
    atomic_write_text(run.run_dir / SELECTION_FILE, json.dumps(selection, indent=2) + "\n")
    logger.info("selected %s/ (%s)", selected, selection["by"])


CONFIG = TranslateConfig
