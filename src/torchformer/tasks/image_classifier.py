"""A trained image classifier ready for use: ``predict(images)`` on paths, PIL images,
arrays or tensors, with the normalisation training used.

A model directory holds the ViT in Hugging Face layout (``config.json``,
``model.safetensors``), Hugging Face's ``preprocessor_config.json`` (a
``ViTImageProcessor``: size, rescale 1/255, per-channel mean and std — the statistics of
the training images), so that ``transformers`` pipelines read it too, and
``image_classification.json`` (the task and the number of channels).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from torchformer.checkpoints import load_pretrained, save_pretrained
from torchformer.checkpoints.hf import resolve_model_dir
from torchformer.data.images import ImageDataError, decode_image, to_array
from torchformer.io import JsonSettings, atomic_write_text
from torchformer.models.vit import ViTForImageClassification

__all__ = ["ImageClassifier", "ImageSettings", "Normalization"]

PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclass
class ImageSettings(JsonSettings):
    """The task's sidecar: what ``torchformer.load()`` dispatches on."""

    FILE_NAME = "image_classification.json"
    task: str = "image_classification"
    channels: int = 3


@dataclass
class Normalization:
    """Input size and per-channel statistics: pixels/255, then (x − mean) / std."""

    size: int
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])

    @classmethod
    def from_pixels(cls, pixels: Tensor, size: int, chunk: int = 4096) -> Normalization:
        """The per-channel statistics of uint8 images (N, C, H, W) (the training split),
        accumulated in float64 over chunks (no float copy of the whole split)."""
        C = pixels.size(1)
        total = torch.zeros(C, dtype=torch.float64)
        squares = torch.zeros(C, dtype=torch.float64)
        for start in range(0, len(pixels), chunk):
            x = pixels[start : start + chunk].double().div_(255.0)
            total += x.sum(dim=(0, 2, 3))
            squares += x.square().sum(dim=(0, 2, 3))
        count = pixels.numel() // C
        mean = total / count
        std = (squares / count - mean.square()).clamp(min=0).sqrt().clamp(min=1e-3)
        return cls(size=size, mean=mean.tolist(), std=std.tolist())

    def apply(self, pixels: Tensor) -> Tensor:
        """uint8 (B, C, H, W) -> normalised float32 (B, C, H, W)."""
        mean = torch.tensor(self.mean, device=pixels.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=pixels.device).view(1, -1, 1, 1)
        return (pixels.float() / 255.0 - mean) / std

    def write(self, model_dir: str | os.PathLike) -> Path:
        """Hugging Face's ``preprocessor_config.json`` (a ``ViTImageProcessor``)."""
        data = {
            "image_processor_type": "ViTImageProcessor",
            "do_resize": True,
            "size": {"height": self.size, "width": self.size},
            "resample": 2,  # PIL bilinear, as decode_image resizes
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": self.mean,
            "image_std": self.std,
        }
        return atomic_write_text(Path(model_dir) / PREPROCESSOR_FILE, json.dumps(data, indent=2))

    @classmethod
    def read(
        cls, model_dir: str | os.PathLike, *, default_size: int, channels: int = 3
    ) -> Normalization:
        """From ``preprocessor_config.json``; ViT's 0.5/0.5 per channel when it is absent."""
        path = Path(model_dir) / PREPROCESSOR_FILE
        if not path.is_file():
            return cls(size=default_size, mean=[0.5] * channels, std=[0.5] * channels)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            size = data.get("size", {})
            size = size.get("height", default_size) if isinstance(size, dict) else int(size)
            return cls(size=int(size), mean=list(data["image_mean"]), std=list(data["image_std"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: not a valid image processor config ({e!r})") from None


ImageInput = Any  # str | os.PathLike | bytes | PIL.Image.Image | np.ndarray | Tensor


class ImageClassifier:
    """A ViT classifier with its normalisation.

    Args:
        model: a ``ViTForImageClassification``.
        normalization: the input size and statistics training used.
    """

    def __init__(
        self,
        model: ViTForImageClassification | None,
        normalization: Normalization,
        *,
        labels: list[str] | None = None,
        channels: int | None = None,
    ) -> None:
        """``model`` may be None for a subclass that overrides ``logits`` (ONNX); ``labels``
        and ``channels`` then describe it."""
        self.model = model.eval() if model is not None else None
        self.normalization = normalization
        if model is not None:
            cfg = model.config
            channels = cfg.num_channels
            labels = [cfg.id2label.get(i, str(i)) for i in range(cfg.num_labels)]
        self.channels = channels or 3
        self.labels = list(labels or [])

    @classmethod
    def from_dir(cls, path: str | os.PathLike, **overrides: Any) -> ImageClassifier:
        """Load a run's ``best/`` or any Hugging Face ViT classification directory."""
        model_dir = resolve_model_dir(path)
        model, _ = load_pretrained(model_dir, task="classification", **overrides)
        cfg = model.config
        normalization = Normalization.read(
            model_dir, default_size=cfg.image_size, channels=cfg.num_channels
        )
        return cls(model, normalization)

    def save(self, out_dir: str | os.PathLike) -> Path:
        out = save_pretrained(self.model, out_dir)
        self.normalization.write(out)
        ImageSettings(channels=self.channels).write(out)
        return out

    def to_pixels(self, images: Sequence[ImageInput] | ImageInput) -> Tensor:
        """Decode, convert and resize inputs to a uint8 batch (B, C, S, S).

        Accepts file paths, encoded bytes, PIL images, (H, W[, C]) uint8 arrays and
        (C, H, W) uint8 tensors (one, or a list). Errors name the input's index.
        """
        if not isinstance(images, list | tuple):
            images = [images]
        if not images:
            raise ValueError("images is empty")
        size, out = self.normalization.size, []
        for i, image in enumerate(images):
            out.append(torch.from_numpy(self._decode(image, size, f"images[{i}]")))
        return torch.stack(out)

    def _decode(self, image: ImageInput, size: int, where: str) -> np.ndarray:
        from PIL import Image

        if isinstance(image, str | os.PathLike):
            path = Path(image)
            try:
                data = path.read_bytes()
            except OSError as e:
                raise ImageDataError(f"{where}: {path}: cannot read ({e.strerror})") from None
            return decode_image(data, channels=self.channels, size=size, name=f"{where}: {path}")
        if isinstance(image, bytes | bytearray):
            return decode_image(bytes(image), channels=self.channels, size=size, name=where)
        if isinstance(image, Image.Image):
            try:
                return to_array(image, channels=self.channels, size=size)
            except Exception as e:  # e.g. a mode Pillow cannot convert
                raise ImageDataError(
                    f"{where}: cannot convert the {image.mode} image ({e})"
                ) from None
        if isinstance(image, Tensor):
            expected = (self.channels, size, size)
            if image.dtype == torch.uint8 and tuple(image.shape) == expected:
                return image.detach().cpu().numpy()  # already decoded (e.g. by the server)
            image = image.detach().cpu().numpy()
            if image.ndim == 3 and image.shape[0] in (1, 3):
                image = image.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise ImageDataError(
                    f"{where}: expected a uint8 (H, W) or (H, W, C) array, got "
                    f"{image.dtype} {image.shape}"
                )
            if image.ndim == 3 and image.shape[-1] == 1:
                image = image[..., 0]
            if image.ndim == 3 and image.shape[-1] not in (3, 4):
                raise ImageDataError(
                    f"{where}: expected (H, W), (H, W, 3) or (H, W, 4) pixels, or a (C, H, W) "
                    f"tensor, got shape {image.shape}"
                )
            return self._decode(Image.fromarray(image), size, where)
        raise TypeError(
            f"{where}: expected a path, bytes, a PIL image, an array or a tensor, "
            f"got {type(image).__name__}"
        )

    def logits(self, pixels: Tensor) -> Tensor:
        """Logits (B, K) of a uint8 batch (B, C, S, S)."""
        device = next(self.model.parameters()).device
        return self.model(self.normalization.apply(pixels.to(device))).logits

    @torch.inference_mode()
    def predict_proba(self, images: Sequence[ImageInput] | ImageInput, *, batch_size: int = 64):
        """Class probabilities (N, K), in input order."""
        pixels = self.to_pixels(images)
        return torch.cat(
            [
                self.logits(pixels[i : i + batch_size]).float().softmax(-1).cpu()
                for i in range(0, len(pixels), batch_size)
            ]
        )

    def predict(
        self, images: Sequence[ImageInput] | ImageInput, *, batch_size: int = 64
    ) -> list[dict]:
        """For each image: ``{"label", "confidence", "probabilities": {label: p}}``."""
        out = []
        for row in self.predict_proba(images, batch_size=batch_size).tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append(
                {
                    "label": self.labels[best],
                    "confidence": row[best],
                    "probabilities": dict(zip(self.labels, row)),
                }
            )
        return out
