"""Run an exported classifier with onnxruntime behind the ``TextClassifier`` contract.

``OnnxClassifier`` is a ``TextClassifier`` whose logits come from an ONNX graph:
cleaning, truncation, tokenization and padding are the inherited ``encode``,
the output format is the inherited ``predict``; only the forward pass differs.
So ``serve`` and ``bench`` treat a PyTorch run and an export directory alike.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from torchformer.api import (
    ImageClassifier,
    ImageSettings,
    InferenceSettings,
    Normalization,
    TextClassifier,
)
from torchformer.export.session import make_session
from torchformer.text.tokenizer import Tokenizer

__all__ = ["OnnxClassifier", "OnnxImageClassifier", "make_session"]


class OnnxClassifier(TextClassifier):
    """A ``TextClassifier`` backed by an onnxruntime session instead of a PyTorch model.

    ``model`` is None; everything else (``tokenizer``, ``settings``, ``labels``,
    ``encode``, ``predict``) behaves as in ``TextClassifier``.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        session: Any,
        tokenizer: Tokenizer,
        settings: InferenceSettings,
        labels: list[str],
        *,
        path: Path | None = None,
    ) -> None:
        super().__init__(None, tokenizer, settings, labels=labels)
        self.session = session
        self.path = path

    @classmethod
    def from_dir(
        cls,
        path: str | os.PathLike,
        *,
        int8: bool = False,
        threads: int | None = None,
        allow_unchecked: bool = False,
    ) -> OnnxClassifier:
        """Load an export directory (``model.onnx`` or, with ``int8``, ``model.int8.onnx``).

        Raises:
            FileNotFoundError: a file of the export is missing.
            ValueError: the export failed its parity check or (int8) its accuracy gate,
                as recorded in ``export.json`` (``allow_unchecked`` skips this).
        """
        from torchformer.export.onnx import INT8_NAME, LABELS_NAME, ONNX_NAME, read_metadata

        directory = Path(path)
        metadata = read_metadata(directory)
        if not allow_unchecked:
            if not metadata.get("parity", {}).get("passed", False):
                raise ValueError(
                    f"{directory}: the ONNX export failed its parity check; re-export it"
                )
            if int8 and not metadata.get("int8", {}).get("gate", {}).get("passed", False):
                raise ValueError(f"{directory}: no int8 model that passed the accuracy gate")
        model_file = directory / (INT8_NAME if int8 else ONNX_NAME)
        if not model_file.is_file():
            raise FileNotFoundError(f"{model_file} is missing")
        labels = json.loads((directory / LABELS_NAME).read_text(encoding="utf-8"))
        tokenizer = Tokenizer.from_pretrained_dir(directory)
        settings = InferenceSettings.read(directory)
        return cls(
            make_session(model_file, threads=threads), tokenizer, settings, labels, path=model_file
        )

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Logits (B, C) for int64 ``input_ids`` and ``attention_mask`` (B, T)."""
        feed = {
            "input_ids": input_ids.astype(np.int64),
            "attention_mask": attention_mask.astype(np.int64),
        }
        return self.session.run(["logits"], feed)[0]

    def _logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The session's logits for one padded batch (see ``TextClassifier._logits``)."""
        return torch.from_numpy(self.logits(input_ids.numpy(), attention_mask.numpy()))  # (B, C)


class OnnxImageClassifier(ImageClassifier):
    """An ``ImageClassifier`` whose logits come from an exported graph (``export.image_onnx``):
    decoding, resizing, normalisation and ``predict`` are the inherited ones."""

    backend = "onnxruntime"

    def __init__(
        self,
        session: Any,
        normalization: Normalization,
        labels: list[str],
        channels: int,
        *,
        path: Path | None = None,
    ) -> None:
        super().__init__(None, normalization, labels=labels, channels=channels)
        self.session = session
        self.path = path

    @classmethod
    def from_dir(
        cls, path: str | os.PathLike, *, threads: int | None = None, allow_unchecked: bool = False
    ) -> OnnxImageClassifier:
        """Load an image export directory.

        Raises:
            FileNotFoundError: a file of the export is missing.
            ValueError: the export failed its parity check (``allow_unchecked`` skips this).
        """
        from torchformer.export.onnx import LABELS_NAME, ONNX_NAME, read_metadata

        directory = Path(path)
        metadata = read_metadata(directory)
        if not allow_unchecked and not metadata.get("parity", {}).get("passed", False):
            raise ValueError(f"{directory}: the ONNX export failed its parity check; re-export it")
        model_file = directory / ONNX_NAME
        if not model_file.is_file():
            raise FileNotFoundError(f"{model_file} is missing")
        labels = json.loads((directory / LABELS_NAME).read_text(encoding="utf-8"))
        size = int(metadata["input_shape"][-1])
        normalization = Normalization.read(directory, default_size=size)
        channels = ImageSettings.read(directory).channels
        session = make_session(model_file, threads=threads)
        return cls(session, normalization, labels, channels, path=model_file)

    def logits(self, pixels: Tensor) -> Tensor:
        """Logits (B, K) of a uint8 batch (B, C, S, S), from the session."""
        x = self.normalization.apply(pixels).numpy()
        return torch.from_numpy(self.session.run(["logits"], {"pixel_values": x})[0])
