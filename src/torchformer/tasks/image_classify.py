"""Train a Vision Transformer image classifier: a task of the one training loop.

What is the image classifier's own lives here: its config, the data (an image folder or
archive, or scikit-learn's digits) decoded once into uint8 tensors, the training
augmentation, normalisation by the training images' statistics, the label-smoothed
cross-entropy, classification metrics with the file names of the worst errors, and
``best/`` in Hugging Face ViT layout. Steps, schedules, precision, evaluation cadence,
early stopping, checkpoints with exact resume and distribution are ``train.loop``'s.

    config = load_config(ImageClassifyConfig, "configs/cifar10-vit.yaml")
    run_dir = train(config)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from torchformer.checkpoints import load_pretrained, save_pretrained
from torchformer.data.augment import AugmentConfig, augment_batch, example_generators
from torchformer.data.batching import LengthBucketBatchSampler
from torchformer.data.images import ImageSplit, load_digits_splits, read_image_folder
from torchformer.evaluate.classification import StreamingClassificationMetrics, write_evaluation
from torchformer.io import recover_dir
from torchformer.models.vit import ViTForImageClassification, preset, resize_image_size
from torchformer.tasks.image_classifier import ImageClassifier, ImageSettings, Normalization
from torchformer.train.distributed import World
from torchformer.train.loop import LoopConfig, Run, fit
from torchformer.train.optim import build_optimizer
from torchformer.train.schedules import ScheduleName, Scheduler, build_scheduler
from torchformer.train.seed import seed_everything

logger = logging.getLogger(__name__)


@dataclass
class ImageDataConfig:
    """Where the labelled images come from.

    Attributes:
        source: "cifar10" (found under the data directory), "digits" (scikit-learn's
            8×8 digits), or the path of an image folder / ``.tar.gz`` archive in the
            layout ``<split>/<label>/<file>``.
        train_split / val_split / test_split: split folder names. Without a validation
            folder, a stratified ``val_fraction`` of the training images is held out.
        image_size: resize every image to this size (None: the model's image size).
        channels: 3 (RGB) or 1 (grey; digits are grey).
        skip_bad_images: skip (and count) unreadable images instead of failing.
        train_samples / test_samples: seeded, class-balanced samples (None: all).
        cache_dir: keep the decoded images there for the next run (None: decode again).
    """

    source: str = "cifar10"
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    val_fraction: float = 0.1
    image_size: int | None = None
    channels: int = 3
    skip_bad_images: bool = False
    train_samples: int | None = None
    test_samples: int | None = None
    cache_dir: str | None = None


@dataclass
class ImageModelConfig:
    """Which ViT to train.

    Attributes:
        base: "scratch" (a ``preset``), or a Hugging Face ViT directory / hub name to
            fine-tune (its head is replaced for this data's classes).
        preset: ViT preset for "scratch" (``models.vit.PRESETS``).
        d_model / n_layers / n_heads / d_ff / patch_size: override the preset's sizes.
        dropout / attn_dropout / head_dropout: regularisation (None: the preset's).
        pooling: "cls" or "mean" (None: the preset's / checkpoint's).
        patch_embed: "conv" or "linear" (the same weights either way).
    """

    base: str = "scratch"
    preset: str = "vit-cifar-cpu"
    d_model: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    d_ff: int | None = None
    patch_size: int | None = None
    dropout: float | None = None
    attn_dropout: float | None = None
    head_dropout: float | None = None
    pooling: Literal["cls", "mean"] | None = None
    patch_embed: Literal["conv", "linear"] = "conv"
    attn_impl: Literal["sdpa", "reference"] = "sdpa"


@dataclass
class TrainConfig(LoopConfig):
    """The loop's settings plus batching and the loss's label smoothing."""

    batch_size: int = 128
    eval_batch_size: int = 256
    warmup_ratio: float = 0.05
    schedule: ScheduleName = "cosine"
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    metric: Literal["accuracy", "macro_f1", "loss"] = "accuracy"


@dataclass
class ImageClassifyConfig:
    """Everything an image-classification run needs; saved as ``config.yaml``."""

    task: str = "image_classification"
    run_dir: str = "runs/image-classify"
    report: bool = True
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    model: ImageModelConfig = field(default_factory=ImageModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _balanced_sample(split: ImageSplit, n: int | None, seed: int) -> ImageSplit:
    """A seeded sample with (nearly) the same number of images per class."""
    if n is None or n >= len(split):
        return split
    rng = np.random.default_rng(seed)
    labels = split.labels.numpy()
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    picked: list[int] = []
    for i in range(max(len(p) for p in per_class)):  # round robin over the classes
        picked.extend(int(p[i]) for p in per_class if i < len(p))
        if len(picked) >= n:
            break
    return split.subset(sorted(picked[:n]))


def _hold_out(split: ImageSplit, fraction: float, seed: int) -> tuple[ImageSplit, ImageSplit]:
    """(train, val): a stratified, seeded ``fraction`` of ``split`` held out."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng([seed, 1])
    labels = split.labels.numpy()
    val: list[int] = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        val.extend(members[: max(1, round(fraction * len(members)))].tolist())
    keep = sorted(set(range(len(split))) - set(val))
    return split.subset(keep), split.subset(sorted(val), skipped=False)  # counted once, in train


def load_image_splits(
    config: ImageClassifyConfig, size: int
) -> tuple[dict[str, ImageSplit], list[str]]:
    """train / val / test splits (uint8) and the class names."""
    d, seed = config.data, config.train.seed
    if d.source == "digits":
        if d.channels != 1:
            raise ValueError(f"data.channels: the digits are grey (1 channel), not {d.channels}")
        splits, classes = load_digits_splits(seed=seed)
        if size != 8:
            raise ValueError(f"data.image_size: the digits are 8×8, not {size}×{size}")
    else:
        names = (d.train_split, d.val_split, d.test_split)
        splits, classes = read_image_folder(
            d.source,
            splits=names,
            channels=d.channels,
            size=size,
            skip_bad_images=d.skip_bad_images,
            cache_dir=d.cache_dir,
        )
        if d.train_split not in splits:
            raise ValueError(f"{d.source}: no {d.train_split!r} split folder with images")
        splits = {
            role: splits[name]
            for role, name in zip(("train", "val", "test"), names)
            if name in splits
        }
    if "val" not in splits:
        splits["train"], splits["val"] = _hold_out(splits["train"], d.val_fraction, seed)
    splits["train"] = _balanced_sample(splits["train"], d.train_samples, seed)
    if "test" in splits:
        splits["test"] = _balanced_sample(splits["test"], d.test_samples, seed)
    return splits, classes


def build_model(config: ImageClassifyConfig, classes: list[str]) -> ViTForImageClassification:
    """A ViT from a preset (sizes overridden) or a pretrained checkpoint with a new head."""
    m = config.model
    overrides: dict[str, Any] = {
        "num_labels": len(classes),
        "id2label": dict(enumerate(classes)),
        "patch_embed": m.patch_embed,
        "attn_impl": m.attn_impl,
    }
    for name in ("dropout", "attn_dropout", "head_dropout", "pooling"):
        if getattr(m, name) is not None:
            overrides[name] = getattr(m, name)
    if m.base != "scratch":
        model, report = load_pretrained(m.base, task="classification", **overrides)
        logger.info("loaded %s: %s", m.base, report)
        size = config.data.image_size
        if size is not None and size != model.config.image_size:
            resize_image_size(model, size)  # fine-tune at another resolution
        return model.train()
    for name in ("d_model", "n_layers", "n_heads", "d_ff", "patch_size"):
        if getattr(m, name) is not None:
            overrides[name] = getattr(m, name)
    overrides["num_channels"] = config.data.channels
    if config.data.image_size is not None:
        overrides["image_size"] = config.data.image_size
    return ViTForImageClassification(preset(m.preset, **overrides))


class ImageClassificationTask:
    """The image classifier's side of the one training loop (``train.loop.Task``)."""

    units = "samples"

    def __init__(self, config: ImageClassifyConfig) -> None:
        self.config = config

    def prepare(self, run_dir: Path, *, resume: bool, main: bool) -> ViTForImageClassification:
        seed_everything(self.config.train.seed)
        if self.config.model.base == "scratch":
            size = self.config.data.image_size or preset(self.config.model.preset).image_size
        else:  # the checkpoint's own size: read before the data are decoded at it
            size = self.config.data.image_size or _checkpoint_image_size(self.config.model.base)
        self.splits, self.classes = load_image_splits(self.config, size)
        self.model = build_model(self.config, self.classes)
        if self.model.config.num_channels != self.config.data.channels:
            raise ValueError(
                f"data.channels={self.config.data.channels} but the model takes "
                f"{self.model.config.num_channels} channels"
            )
        self.normalization = Normalization.from_pixels(self.splits["train"].pixels, size)
        return self.model

    def manifest(self) -> dict[str, Any]:
        train = self.splits["train"]
        digest = torch.tensor(
            [int(train.pixels.sum()), int(train.labels.sum()), len(train)], dtype=torch.int64
        )
        return {
            "data_fingerprint": f"{len(train)}-{digest.tolist()}",
            "extra": {
                "sizes": {k: len(v) for k, v in self.splits.items()},
                "labels": self.classes,
                "skipped_images": {k: v.skipped for k, v in self.splits.items() if v.skipped},
                "normalization": vars(self.normalization),
            },
        }

    def train_sampler(self, world: World) -> LengthBucketBatchSampler:
        tc = self.config.train
        self.sampler = LengthBucketBatchSampler(
            [1] * len(self.splits["train"]),  # one size: a plain seeded shuffle
            tc.batch_size,
            seed=tc.seed,
            drop_last=len(self.splits["train"]) > tc.batch_size,
            **world.sampler_args,
        )
        return self.sampler

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        tc = self.config.train
        return build_optimizer(model, lr=tc.lr, weight_decay=tc.weight_decay)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Scheduler:
        tc = self.config.train
        return build_scheduler(
            optimizer,
            tc.schedule,
            warmup_steps=int(tc.warmup_ratio * total_steps),
            total_steps=total_steps,
            plateau_mode="min" if tc.metric == "loss" else "max",
        )

    def checkpoints_to_keep(self) -> int:
        return self.config.train.keep_checkpoints

    def batch_units(self, indices: list[int]) -> float:
        return float(len(indices))

    def batch_loss(
        self, model: torch.nn.Module, indices: list[int], device: torch.device
    ) -> torch.Tensor:
        split = self.splits["train"]
        idx = torch.tensor(indices)
        # Each example's augmentation is seeded by (seed, epoch, its index): the same on any
        # number of processes and after a resume (the sampler's epoch is checkpointed).
        rngs = example_generators(self.config.train.seed, self.sampler.epoch, indices)
        pixels = augment_batch(split.pixels[idx], self.config.augment, rngs)
        x = self.normalization.apply(pixels.to(device))
        labels = split.labels[idx].to(device)
        return model(x, labels=labels, label_smoothing=self.config.train.label_smoothing).loss

    def split_size(self, split: str) -> int:
        return len(self.splits[split]) if split in self.splits else 0

    def evaluate(
        self, model, split: str, indices: list[int], device: torch.device
    ) -> dict[int, Any]:
        return evaluate_examples(
            model,
            self.normalization,
            self.splits[split],
            indices,
            batch_size=self.config.train.eval_batch_size,
            device=device,
        )

    def summarize(self, split: str, outputs: dict[int, Any]) -> dict[str, float]:
        result = summarize_examples(self.splits[split], outputs, self.classes)
        return {k: result[k] for k in ("loss", "accuracy", "macro_f1")}

    def save_best(self, model: torch.nn.Module, directory: Path) -> None:
        save_pretrained(model, directory)
        self.normalization.write(directory)
        ImageSettings(channels=self.config.data.channels).write(directory)

    def finish(self, run: Run) -> None:
        """Evaluate ``best/`` on validation and test; write the evaluation files and the
        thumbnails of the most confidently wrong test images (for the report)."""
        best = ImageClassifier.from_dir(run.run_dir / "best")
        best.model.to(run.device)
        for name in ("val", "test"):
            if name not in self.splits:
                continue
            split = self.splits[name]
            with run.autocast(run.eval_precision):
                outputs = evaluate_examples(
                    best.model,
                    best.normalization,
                    split,
                    list(range(len(split))),
                    batch_size=self.config.train.eval_batch_size,
                    device=run.device,
                )
            result = summarize_examples(split, outputs, self.classes)
            result["precision"] = run.eval_precision
            out = run.run_dir / "eval" / name
            write_thumbnails(out / "thumbnails", split, result["errors"])  # adds their paths
            write_evaluation(out, result)
            run.log.log(
                {k: result[k] for k in ("loss", "accuracy", "macro_f1", "precision")},
                step=run.state.step,
                epoch=run.state.epoch,
                split=f"best_{name}",
            )


def _checkpoint_image_size(base: str) -> int:
    from torchformer.checkpoints.hf import read_config, resolve_model_dir

    size = read_config(resolve_model_dir(base)).get("image_size", 224)
    return int(size[0] if isinstance(size, list | tuple) else size)


@torch.inference_mode()
def evaluate_examples(
    model: ViTForImageClassification,
    normalization: Normalization,
    split: ImageSplit,
    indices: list[int],
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> dict[int, tuple[torch.Tensor, float]]:
    """``{index: (logits (K,), loss)}`` of these images."""
    outputs: dict[int, tuple[torch.Tensor, float]] = {}
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        t = torch.tensor(idx)
        logits = model(normalization.apply(split.pixels[t].to(device))).logits.float().cpu()
        losses = torch.nn.functional.cross_entropy(logits, split.labels[t], reduction="none")
        outputs.update(zip(idx, zip(logits, losses.tolist())))
    return outputs


def summarize_examples(
    split: ImageSplit, outputs: dict[int, tuple[torch.Tensor, float]], classes: list[str]
) -> dict:
    """Accuracy, per-class P/R/F1, confusion matrix and the worst errors (by file name)."""
    metrics = StreamingClassificationMetrics(classes)
    order = sorted(outputs)
    for start in range(0, len(order), 1024):
        idx = order[start : start + 1024]
        metrics.update(
            torch.stack([outputs[i][0] for i in idx]),
            split.labels[torch.tensor(idx)],
            ids=[split.names[i] for i in idx],
            loss=torch.tensor([outputs[i][1] for i in idx]),
        )
    return metrics.compute()


def write_thumbnails(out_dir: Path, split: ImageSplit, errors: list[dict]) -> None:
    """The images of these error records as PNG files (``<n>.png``, at the size the model
    saw them: reports enlarge them, ``explain`` and rollout read them back)."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    where = {name: i for i, name in enumerate(split.names)}
    for n, record in enumerate(errors):
        i = where.get(record["id"])
        if i is None:
            continue
        array = split.pixels[i].numpy().transpose(1, 2, 0)  # (H, W, C)
        image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        image.save(out_dir / f"{n}.png")
        record["thumbnail"] = f"thumbnails/{n}.png"


def train(config: ImageClassifyConfig, **options: Any) -> Path:
    """Train, evaluate and save an image classifier; returns the run directory.

    ``options``: ``resume``, ``overwrite``, ``stop_at_step`` (see ``train.loop.fit``).
    """
    return fit(ImageClassificationTask(config), **options)


def load(path: str | os.PathLike, **overrides: Any) -> ImageClassifier:
    """A trained image classifier: a run directory (its ``best/``) or a model directory."""
    path = Path(path)
    recover_dir(path / "best")
    model_dir = path / "best" if (path / "best" / "config.json").is_file() else path
    return ImageClassifier.from_dir(model_dir, **overrides)


CONFIG = ImageClassifyConfig
