"""The vision tests' made-up image-folder data set and the tiny ViT config that learns it.

Three classes a tiny ViT tells apart in a few dozen steps — a bright horizontal bar, a
bright vertical bar and a bright square, at random places on dark noise — written as
PNG/JPEG files in the image-folder layout (``root/<split>/<label>/<n>.png``).
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from torchformer.config import load_config

CLASSES = ("hbar", "square", "vbar")
SIZE = 16


def draw(label: str, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """One (size, size, 3) uint8 image of ``label``."""
    image = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    y, x = rng.integers(2, size - 6, 2)
    colour = rng.integers(180, 256, 3).astype(np.uint8)
    if label == "hbar":
        image[y : y + 2, 1 : size - 1] = colour
    elif label == "vbar":
        image[1 : size - 1, x : x + 2] = colour
    else:
        image[y : y + 5, x : x + 5] = colour
    return image


def make_image_folder(
    root: Path,
    *,
    per_class: dict[str, int] | None = None,
    seed: int = 0,
    suffix: str = ".png",
    mislabelled: int = 0,
) -> Path:
    """``root/<split>/<label>/<n><suffix>``; returns ``root``. ``mislabelled``: that many
    vertical bars filed under ``test/hbar/`` (``wrong-<n>``), errors a good model makes."""
    per_class = per_class or {"train": 40, "test": 10}
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for label in CLASSES:
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(draw(label, rng)).save(folder / f"{i:03d}{suffix}")
    for i in range(mislabelled):
        Image.fromarray(draw("vbar", rng)).save(root / "test" / "hbar" / f"wrong-{i}{suffix}")
    return root


def make_archive(folder: Path, archive: Path, arcname: str = "shapes") -> Path:
    """A ``.tar.gz`` holding ``folder`` under ``arcname/`` (as CIFAR-10's archive does)."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return archive


def vit_config(tmp_path: Path, source: Path | str, **overrides):
    """A tiny ViT on the shapes: 16×16 images, 4×4 patches, 2 layers of width 32."""
    from torchformer.tasks.image_classify import ImageClassifyConfig

    values = {
        "run_dir": str(tmp_path / "run"),
        "data.source": str(source),
        "data.val_fraction": 0.2,
        "model.preset": "vit-tiny-test",
        "train.epochs": 60,
        "train.patience": 100,
        "train.batch_size": 16,
        "train.eval_batch_size": 64,
        "train.lr": 3e-3,
        "train.warmup_ratio": 0.1,
        "train.precision": "fp32",
        "train.progress": False,
        "train.threads": 1,
        "report": True,
    }
    values.update(overrides)
    return load_config(ImageClassifyConfig, None, values)
