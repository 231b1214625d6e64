"""Vision Transformer: an image as a sequence of patch tokens, through the text blocks.

Implements ViT (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words: Transformers
for Image Recognition at Scale"). The image (B, C, H, W) is cut into non-overlapping
P×P patches; each patch, flattened to C·P·P numbers, is mapped linearly to a D-vector —
a "token". A learned [CLS] vector is put first, learned position embeddings are added,
and the sequence goes through the same pre-norm ``EncoderLayer`` stack the text models
use (``torchformer.nn``); nothing in the encoder knows it is looking at pixels. The
classifier reads the final [CLS] vector (or the mean of the patch vectors).

Patch embedding, two equivalent ways (``patch_embed``):

- ``"conv"``: a Conv2d with kernel P and stride P — each output position sees exactly
  one patch, so the convolution *is* a linear map per patch (what the paper's code and
  Hugging Face do);
- ``"linear"``: ``unfold`` the image into (B, N, C·P·P) patch vectors, then one
  matrix multiply with the same weight viewed as (D, C·P·P) — the equation as written.

Both read one parameter (``patch_embed.proj``, the Conv2d), so a checkpoint works with
either and the test suite checks they agree.

Positions: the table holds 1 + (H/P)·(W/P) learned vectors. At another image size the
patch-grid part is resized by bicubic interpolation (as the paper does for fine-tuning
at higher resolution; the same function as ``transformers``' ``interpolate_pos_encoding``).

Shape legend: B batch, C channels, H×W image, P patch size, N patches, T = N + 1
tokens, D d_model, L layers, K classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchformer.models.outputs import ModelOutput
from torchformer.nn import EncoderLayer, FeedForward, MultiHeadAttention
from torchformer.nn.linear import Linear, linear

__all__ = [
    "PRESETS",
    "PatchEmbedding",
    "ViTConfig",
    "ViTEmbeddings",
    "ViTForImageClassification",
    "ViTModel",
    "interpolate_positions",
    "preset",
    "resize_image_size",
]


@dataclass
class ViTConfig:
    """Size and behaviour of a Vision Transformer and its classification head.

    The defaults are ViT-B/16 at 224×224 (86M parameters). ``from_hf``/``to_hf`` in
    ``torchformer.checkpoints.vit`` translate to and from Hugging Face ``config.json``.

    Attributes:
        image_size / patch_size / num_channels: the input the position table is built for.
        patch_embed: "conv" (strided convolution) or "linear" (unfold + matmul); same weights.
        pooling: "cls" (the [CLS] vector, as ViT) or "mean" (mean of the patch vectors).
        qkv_bias: biases on the query/key/value projections (ViT: yes).
        head_dropout: dropout before the classifier.
    """

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072
    dropout: float = 0.0
    attn_dropout: float = 0.0
    head_dropout: float = 0.0
    activation: str = "gelu"
    norm_eps: float = 1e-12
    qkv_bias: bool = True
    initializer_range: float = 0.02
    attn_impl: Literal["reference", "sdpa"] = "sdpa"
    patch_embed: Literal["conv", "linear"] = "conv"
    pooling: Literal["cls", "mean"] = "cls"
    num_labels: int = 1000
    id2label: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}"
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


PRESETS: dict[str, ViTConfig] = {
    # The paper's models at 224×224 with 16×16 patches (Dosovitskiy et al. 2021, Table 1;
    # Ti and S from DeiT, Touvron et al. 2021).
    "vit-base-16": ViTConfig(),
    "vit-small-16": ViTConfig(d_model=384, n_layers=12, n_heads=6, d_ff=1536),
    "vit-tiny-16": ViTConfig(d_model=192, n_layers=12, n_heads=3, d_ff=768),
    # CIFAR-sized (32×32, 4×4 patches: 64 tokens + [CLS]) for two CPU cores.
    "vit-cifar-cpu": ViTConfig(
        image_size=32, patch_size=4, d_model=192, n_layers=6, n_heads=3, d_ff=384, num_labels=10
    ),
    # scikit-learn's 8×8 digits (one channel, 2×2 patches: 16 tokens).
    "vit-digits": ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_ff=128,
        num_labels=10,
    ),
    "vit-tiny-test": ViTConfig(
        image_size=16, patch_size=4, d_model=32, n_layers=2, n_heads=4, d_ff=64, num_labels=3
    ),
}


def preset(name: str, **overrides) -> ViTConfig:
    """A ``ViTConfig`` from a named preset, with fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown ViT preset {name!r}; expected one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


class PatchEmbedding(nn.Module):
    """(B, C, H, W) images -> (B, N, D) patch tokens, N = (H/P)·(W/P), row by row."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.kind = config.patch_embed
        P = config.patch_size
        self.proj = nn.Conv2d(config.num_channels, config.d_model, kernel_size=P, stride=P)

    def forward(self, pixels: Tensor) -> Tensor:
        _, C, H, W = pixels.shape
        P = self.patch_size
        if C != self.num_channels:
            raise ValueError(f"expected {self.num_channels} image channels, got {C}")
        if H % P or W % P:
            raise ValueError(f"image size {H}×{W} is not a multiple of the patch size {P}")
        if self.kind == "conv":
            return self.proj(pixels).flatten(2).transpose(1, 2)  # (B, D, H/P, W/P) -> (B, N, D)
        patches = F.unfold(pixels, kernel_size=P, stride=P).transpose(1, 2)  # (B, N, C·P·P)
        weight = self.proj.weight.flatten(1)  # (D, C·P·P): the conv kernel as a matrix
        return linear(patches, weight, self.proj.bias)  # (B, N, D)


def interpolate_positions(table: Tensor, grid: tuple[int, int]) -> Tensor:
    """Resize a (1, 1 + n·n, D) position table to a (gh, gw) patch grid (bicubic).

    The [CLS] row is kept; the n×n patch rows are treated as a D-channel image.
    """
    n = math.isqrt(table.size(1) - 1)
    if (n, n) == grid:
        return table
    cls, patches = table[:, :1], table[:, 1:]  # (1, 1, D), (1, n·n, D)
    D = table.size(-1)
    image = patches.reshape(1, n, n, D).permute(0, 3, 1, 2)  # (1, D, n, n)
    image = F.interpolate(image.float(), size=grid, mode="bicubic", align_corners=False)
    patches = image.to(table.dtype).permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], D)
    return torch.cat([cls, patches], dim=1)  # (1, 1 + gh·gw, D)


class ViTEmbeddings(nn.Module):
    """Patch tokens, the [CLS] token first, plus learned positions; then dropout."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.d_model))
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, config.num_patches + 1, config.d_model)
        )
        self.patch_embed = PatchEmbedding(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, pixels: Tensor, *, interpolate: bool = False) -> Tensor:
        B, _, H, W = pixels.shape
        P, size = self.config.patch_size, self.config.image_size
        if (H, W) != (size, size) and not interpolate:
            raise ValueError(
                f"image size {H}×{W} differs from the model's {size}×{size}; resize the "
                "images, or pass interpolate_positions=True to resize the position table"
            )
        x = self.patch_embed(pixels)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, T, D)
        x = x + interpolate_positions(self.position_embeddings, (H // P, W // P))
        return self.dropout(x)


def _encoder_layer(config: ViTConfig) -> EncoderLayer:
    """One ViT layer: pre-norm, biases everywhere, GELU feed-forward."""
    return EncoderLayer(
        MultiHeadAttention(
            config.d_model,
            config.n_heads,
            bias=config.qkv_bias,
            out_bias=True,
            dropout=config.attn_dropout,
            attn_impl=config.attn_impl,
        ),
        FeedForward(config.d_model, config.d_ff, activation=config.activation),
        nn.LayerNorm(config.d_model, eps=config.norm_eps),
        nn.LayerNorm(config.d_model, eps=config.norm_eps),
        dropout=config.dropout,
        norm_first=True,
    )


def init_weights(module: nn.Module, std: float) -> None:
    """ViT's initialisation (as ``transformers``): truncated N(0, std) weights, zero biases."""
    if isinstance(module, nn.Linear | nn.Conv2d):
        nn.init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, ViTEmbeddings):
        nn.init.trunc_normal_(module.position_embeddings, std=std)
        nn.init.trunc_normal_(module.cls_token, std=std)


class ViTModel(nn.Module):
    """Embeddings, L pre-norm encoder layers, a final LayerNorm."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = ViTEmbeddings(config)
        self.layers = nn.ModuleList(_encoder_layer(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.apply(lambda m: init_weights(m, config.initializer_range))

    def forward(
        self,
        pixels: Tensor,
        *,
        interpolate_positions: bool = False,
        return_attentions: bool = False,
        return_hidden_states: bool = False,
    ) -> ModelOutput:
        """Encode images (B, C, H, W), already normalised, into (B, T, D)."""
        x = self.embeddings(pixels, interpolate=interpolate_positions)  # (B, T, D)
        hidden, attentions = [x], []
        for layer in self.layers:
            x, probs = layer(x, return_attentions=return_attentions)  # no padding: no mask
            hidden.append(x)
            attentions.append(probs)
        return ModelOutput(
            last_hidden_state=self.norm(x),
            hidden_states=tuple(hidden) if return_hidden_states else None,
            attentions=tuple(attentions) if return_attentions else None,
        )


class ViTForImageClassification(nn.Module):
    """ViT + linear classifier on the pooled vector ([CLS] or the patch mean)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.vit = ViTModel(config)
        self.dropout = nn.Dropout(config.head_dropout)
        self.classifier = Linear(config.d_model, config.num_labels)
        init_weights(self.classifier, config.initializer_range)

    def forward(
        self,
        pixels: Tensor,
        *,
        labels: Tensor | None = None,
        label_smoothing: float = 0.0,
        interpolate_positions: bool = False,
        return_attentions: bool = False,
        return_hidden_states: bool = False,
    ) -> ModelOutput:
        """Logits (B, K); with ``labels`` (B,) also the (label-smoothed) cross-entropy."""
        out = self.vit(
            pixels,
            interpolate_positions=interpolate_positions,
            return_attentions=return_attentions,
            return_hidden_states=return_hidden_states,
        )
        h = out.last_hidden_state  # (B, T, D)
        pooled = h[:, 0] if self.config.pooling == "cls" else h[:, 1:].mean(dim=1)  # (B, D)
        out.pooled = pooled
        out.logits = self.classifier(self.dropout(pooled))  # (B, K)
        if labels is not None:
            out.loss = F.cross_entropy(out.logits, labels, label_smoothing=label_smoothing)
        return out


def resize_image_size(model: ViTModel | ViTForImageClassification, image_size: int) -> None:
    """Make ``model`` take ``image_size`` images for good: its position table is resized
    (bicubic, as ``interpolate_positions``) and its config updated — how a ViT pre-trained
    at one resolution is fine-tuned at another (Dosovitskiy et al. 2021, section 3.2)."""
    vit = model.vit if isinstance(model, ViTForImageClassification) else model
    config = replace(model.config, image_size=image_size)  # checks the patch size divides it
    grid = image_size // config.patch_size
    table = vit.embeddings.position_embeddings
    with torch.no_grad():
        resized = interpolate_positions(table.data, (grid, grid))
    vit.embeddings.position_embeddings = nn.Parameter(resized.clone())
    for module in (model, vit, vit.embeddings):
        module.config = config
