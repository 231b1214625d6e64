"""Image augmentation for small data sets, on whole uint8 batches (B, C, H, W).

A ViT has none of a CNN's built-in assumptions (locality, translation equivariance), so
on a small data set it has to be shown them: the training images are randomly shifted
and mirrored every epoch (the CIFAR recipe of He et al. 2016 — pad by 4, take a random
32×32 crop, flip left–right with probability ½), optionally with random erasing
(Zhong et al. 2020: a random rectangle filled with noise, which keeps the model from
relying on one part of the object). Heavier policies (RandAugment, Mixup) help over
hundreds of epochs; over the tens an hour on a CPU allows, they mostly slow learning
(Steiner et al. 2022, "How to train your ViT?", find augmentation pays off with more
compute) — so they are left out rather than switched on by default.

Randomness: each image draws its crop, flip and erasure from its own generator. Training
seeds it with (run seed, epoch, the example's index in the data set), so an example's
augmentation depends on nothing else — not on the batch it lands in, not on how many
processes share the batch, not on whether the run was interrupted and resumed. Without
seeds, the generators are seeded from the global torch generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "augment_batch", "example_generators"]


@dataclass
class AugmentConfig:
    """The training-time augmentation (evaluation and prediction never augment).

    Attributes:
        crop_padding: pad each side by this many pixels (zeros) and take a random crop
            of the original size (0: no shift).
        hflip: mirror left–right with probability ½ (off for digits and text images,
            whose meaning changes when mirrored).
        erase_prob: probability of random erasing per image (0: off).
        erase_area: (min, max) share of the image area one erased rectangle covers.
    """

    crop_padding: int = 4
    hflip: bool = True
    erase_prob: float = 0.0
    erase_area: tuple[float, float] = (0.02, 0.25)

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise ValueError(f"augment.crop_padding must be ≥ 0, got {self.crop_padding}")
        if not 0.0 <= self.erase_prob <= 1.0:
            raise ValueError(f"augment.erase_prob must be in [0, 1], got {self.erase_prob}")
        lo, hi = self.erase_area
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"augment.erase_area must be 0 < min ≤ max ≤ 1, got {self.erase_area}")


def example_generators(seed: int, epoch: int, indices: list[int]) -> list[np.random.Generator]:
    """One generator per example, seeded by (seed, epoch, example index)."""
    return [np.random.default_rng([seed, epoch, i]) for i in indices]


def augment_batch(
    pixels: torch.Tensor,
    config: AugmentConfig,
    generators: list[np.random.Generator] | None = None,
) -> torch.Tensor:
    """Augmented copies of uint8 images (B, C, H, W), same shape and dtype.

    ``generators``: one per image (``example_generators``); None draws their seeds from
    the global torch generator.
    """
    if pixels.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(pixels.shape)}")
    B, _, H, W = pixels.shape
    if generators is None:
        base = int(torch.randint(0, 2**62, ()))
        generators = [np.random.default_rng([base, i]) for i in range(B)]
    if len(generators) != B:
        raise ValueError(f"{len(generators)} generators for a batch of {B} images")
    p = config.crop_padding
    padded = F.pad(pixels, (p, p, p, p)) if p else pixels  # (B, C, H+2p, W+2p), zeros
    out = []
    for image, rng in zip(padded, generators):
        if p:
            y, x = rng.integers(0, 2 * p + 1, 2)
            image = image[:, y : y + H, x : x + W]
        if config.hflip and rng.random() < 0.5:
            image = image.flip(-1)
        if config.erase_prob and rng.random() < config.erase_prob:
            image = _erase(image, rng, config.erase_area)
        out.append(image)
    return torch.stack(out)


def _erase(
    image: torch.Tensor, rng: np.random.Generator, area: tuple[float, float]
) -> torch.Tensor:
    """A copy of ``image`` (C, H, W) with one random rectangle filled with uniform noise."""
    C, H, W = image.shape
    share = rng.uniform(*area)
    aspect = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
    h = max(1, min(H, round((share * H * W * aspect) ** 0.5)))
    w = max(1, min(W, round((share * H * W / aspect) ** 0.5)))
    y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    image = image.clone()
    image[:, y : y + h, x : x + w] = torch.from_numpy(
        rng.integers(0, 256, (C, h, w), dtype=np.uint8)
    )
    return image
