"""Attention rollout for Vision Transformers: where in the image the prediction looked.

One layer's attention says which tokens a token mixes in, but after the first layer a
"token" is already a mix of many patches. Attention rollout (Abnar & Zuidema 2020,
"Quantifying Attention Flow in Transformers") follows the mixing through every layer:

    Â_l = ½ (mean over heads of A_l) + ½ I        (the residual connection keeps half)
    Â_l ← Â_l / row sums                           (each row a distribution again)
    R   = Â_L · … · Â_2 · Â_1

Row 0 of R ([CLS]) over the patch columns is how much each patch contributed to the
vector the classifier reads; reshaped to the patch grid and upsampled, it is drawn over
the image. (For ``pooling="mean"`` models the mean of the patch rows is used instead.)
Rollout shows what information reached the output, not what the output depends on —
gradients answer that — and it is the standard first look at a ViT.
"""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchformer.viz.attention import attention_rollout
from torchformer.viz.explain import prediction_html
from torchformer.viz.templates import page

__all__ = ["ImageAttention", "attention_rollout", "image_attention", "image_explain_html"]


@dataclass
class ImageAttention:
    """One image's prediction and where its attention flowed.

    Attributes:
        image: (H, W, C) uint8, as the model saw it (resized).
        prediction: ``{"label", "confidence", "probabilities"}``.
        rollout: (gh, gw) patch grid, summing to 1.
        last_layer: (gh, gw) [CLS] attention of the last layer (mean of heads).
    """

    image: np.ndarray
    prediction: dict[str, Any]
    rollout: np.ndarray
    last_layer: np.ndarray


@torch.inference_mode()
def image_attention(classifier: Any, image: Any) -> ImageAttention:
    """Predict one image with an ``ImageClassifier`` and compute its attention rollout."""
    pixels = classifier.to_pixels([image])  # (1, C, S, S) uint8
    model = classifier.model
    device = next(model.parameters()).device
    out = model(classifier.normalization.apply(pixels.to(device)), return_attentions=True)
    probs = out.logits.float().softmax(-1)[0].cpu()
    best = int(probs.argmax())
    prediction = {
        "label": classifier.labels[best],
        "confidence": float(probs[best]),
        "probabilities": dict(zip(classifier.labels, probs.tolist())),
    }
    rollout = attention_rollout(out.attentions)[0].cpu()  # (T, T)
    cfg = model.config
    side = pixels.size(-1) // cfg.patch_size
    if cfg.pooling == "cls":
        flow = rollout[0, 1:]
        last = out.attentions[-1][0].float().mean(0)[0, 1:].cpu()
    else:
        flow = rollout[1:, 1:].mean(0)
        last = out.attentions[-1][0].float().mean(0)[1:, 1:].mean(0).cpu()
    grid = (flow / flow.sum()).reshape(side, side).numpy()
    last = (last / last.sum()).reshape(side, side).numpy()
    array = pixels[0].numpy().transpose(1, 2, 0)
    return ImageAttention(array, prediction, grid, last)


def overlay_png(
    image: np.ndarray, grid: np.ndarray, *, title: str = "", size: float = 2.6
) -> bytes:
    """The image, and the image with ``grid`` upsampled over it as a heat map (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    shown = image[..., 0] if image.shape[-1] == 1 else image
    cmap = "gray" if image.shape[-1] == 1 else None
    H, W = image.shape[:2]
    for ax in axes:
        ax.imshow(shown, cmap=cmap, interpolation="nearest")
        ax.set_axis_off()
    heat = axes[1].imshow(
        grid / max(float(grid.max()), 1e-12),
        cmap="inferno",
        alpha=0.6,
        extent=(-0.5, W - 0.5, H - 0.5, -0.5),
        interpolation="bilinear",
    )
    axes[0].set_title("image", fontsize=9)
    axes[1].set_title(title or "attention rollout", fontsize=9)
    fig.colorbar(heat, ax=axes[1], fraction=0.046, pad=0.04)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _img_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<img class='tf-plot' alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def rollout_html(attention: ImageAttention) -> str:
    """The rollout and last-layer views of one image, as HTML."""
    return (
        _img_tag(overlay_png(attention.image, attention.rollout), "attention rollout")
        + _img_tag(
            overlay_png(attention.image, attention.last_layer, title="last layer [CLS] attention"),
            "last-layer attention",
        )
        + "<p class='tf-note'>Attention rollout (Abnar &amp; Zuidema 2020): the share of each "
        "patch in the vector the classifier reads, through every layer (residual weight ½). "
        "The second view is the last layer's attention alone.</p>"
    )


def image_explain_html(classifier: Any, image: Any, *, name: str = "image") -> str:
    """The explain page of one image: prediction and attention rollout."""
    attention = image_attention(classifier, image)
    body = (
        f"<section id='prediction'><h2>Prediction</h2>{prediction_html(attention.prediction)}"
        f"<p class='tf-note'>{html.escape(name)}</p></section>"
        f"<section id='attention'><h2>Attention rollout</h2>{rollout_html(attention)}</section>"
    )
    nav = [("prediction", "Prediction"), ("attention", "Attention rollout")]
    pred = attention.prediction
    return page(
        "torchformer explain", body, subtitle=f"{pred['label']} ({pred['confidence']:.3f})", nav=nav
    )


def write_image_explain(classifier: Any, image: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the explain page of an image file."""
    document = image_explain_html(classifier, image, name=str(image))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(document, encoding="utf-8")
    return out
