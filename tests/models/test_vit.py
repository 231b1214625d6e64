"""The Vision Transformer (models/vit.py): patch embeddings, positions, pooling, heads,
learning, presets; and its Hugging Face config translation (checkpoints/vit.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchformer.checkpoints import CheckpointError
from torchformer.checkpoints.hf import check_parameter_count, estimate_parameters
from torchformer.checkpoints.vit import config_from_hf, config_to_hf, state_to_hf
from torchformer.models.vit import (
    PRESETS,
    PatchEmbedding,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
    interpolate_positions,
    preset,
)

B, C, S, P, D, K = 3, 3, 16, 4, 32, 3  # batch, channels, image side, patch, width, classes
T = (S // P) ** 2 + 1  # 16 patches + [CLS]


def tiny(**overrides) -> ViTConfig:
    return preset("vit-tiny-test", **overrides)


def build(cls=ViTForImageClassification, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return cls(tiny(**overrides)).eval()


def images(size: int | tuple[int, int] = S, channels: int = C, n: int = B) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(n, channels, h, w, generator=torch.Generator().manual_seed(1))


def test_shapes():
    model = build()
    out = model(images(), return_hidden_states=True, return_attentions=True)
    assert out.logits.shape == (B, K) and out.pooled.shape == (B, D)
    assert out.last_hidden_state.shape == (B, T, D)
    assert len(out.hidden_states) == 2 + 1  # embeddings + each layer, before the final norm
    assert all(h.shape == (B, T, D) for h in out.hidden_states)
    torch.testing.assert_close(out.last_hidden_state, model.vit.norm(out.hidden_states[-1]))
    assert len(out.attentions) == 2 and all(a.shape == (B, 4, T, T) for a in out.attentions)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(B, 4, T))
    plain = model(images())
    assert plain.hidden_states is None and plain.attentions is None and plain.loss is None


# --- patch embedding --------------------------------------------------------------------------
def test_conv_and_linear_patch_embeddings_agree():
    conv = PatchEmbedding(tiny(patch_embed="conv"))
    linear = PatchEmbedding(tiny(patch_embed="linear"))
    linear.load_state_dict(conv.state_dict())  # one parameter: the Conv2d
    x = images()
    a, b = conv(x), linear(x)
    assert a.shape == b.shape == (B, T - 1, D)
    assert (a - b).abs().max().item() <= 1e-6
    # Patch n is the n-th P×P block, row by row: patch 1 is rows 0..3, columns 4..7.
    block = x[:, :, :P, P : 2 * P].reshape(B, -1)  # (B, C·P·P)
    expected = block @ conv.proj.weight.flatten(1).T + conv.proj.bias  # (B, D)
    torch.testing.assert_close(a[:, 1], expected, atol=1e-5, rtol=1e-5)
    # Whole models with the same weights agree too.
    m_conv = build(patch_embed="conv")
    m_linear = build(patch_embed="linear")
    m_linear.load_state_dict(m_conv.state_dict())
    with torch.no_grad():
        diff = (m_conv(x).logits - m_linear(x).logits).abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_wrong_channel_count_raises(kind):
    model = build(patch_embed=kind)
    with pytest.raises(ValueError, match="expected 3 image channels, got 1"):
        model(images(channels=1))


def test_image_not_a_multiple_of_the_patch_raises():
    with pytest.raises(ValueError, match="not a multiple of the patch size 4"):
        build()(images(size=18), interpolate_positions=True)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        tiny(image_size=18)


# --- positions ------------------------------------------------------------------------------
def test_interpolate_positions_same_grid_is_identity():
    table = torch.randn(1, T, D)
    assert interpolate_positions(table, (4, 4)) is table


@pytest.mark.parametrize("grid", [(8, 8), (2, 2), (6, 3)])
def test_interpolate_positions_to_another_grid(grid):
    table = torch.randn(1, T, D)
    out = interpolate_positions(table, grid)
    assert out.shape == (1, 1 + grid[0] * grid[1], D)
    torch.testing.assert_close(out[:, :1], table[:, :1], atol=0, rtol=0)  # [CLS] kept
    # A constant table stays constant (bicubic weights sum to one).
    const = torch.full((1, T, D), 0.5)
    torch.testing.assert_close(interpolate_positions(const, grid), torch.full_like(out, 0.5))


def test_larger_images_need_interpolate_positions():
    model = build()
    x = images(size=2 * S)
    with pytest.raises(ValueError, match=r"32×32 differs from the model's 16×16"):
        model(x)
    out = model(x, interpolate_positions=True)
    assert out.logits.shape == (B, K) and out.last_hidden_state.shape == (B, 1 + 8 * 8, D)
    assert torch.isfinite(out.logits).all()
    # At the model's own size, interpolate_positions changes nothing.
    torch.testing.assert_close(
        model(images(), interpolate_positions=True).logits, model(images()).logits, atol=0, rtol=0
    )


# --- heads ------------------------------------------------------------------------------------
def test_mean_pooling_differs_from_cls():
    cls_model = build(pooling="cls")
    mean_model = build(pooling="mean")
    mean_model.load_state_dict(cls_model.state_dict())
    x = images()
    a, b = cls_model(x), mean_model(x)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=0, rtol=0)
    torch.testing.assert_close(a.pooled, a.last_hidden_state[:, 0])
    torch.testing.assert_close(b.pooled, b.last_hidden_state[:, 1:].mean(dim=1))
    assert (a.logits - b.logits).abs().max().item() > 1e-3


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_is_label_smoothed_cross_entropy(smoothing):
    model = build()
    labels = torch.tensor([0, 2, 1])
    out = model(images(), labels=labels, label_smoothing=smoothing)
    expected = F.cross_entropy(out.logits, labels, label_smoothing=smoothing)
    torch.testing.assert_close(out.loss, expected, atol=0, rtol=0)
    if smoothing:
        plain = F.cross_entropy(out.logits, labels)
        assert abs(out.loss.item() - plain.item()) > 1e-4


def test_tiny_model_overfits_eight_images():
    """A real learning check: 8 random images, 8 classes (one each), AdamW."""
    model = build(num_labels=8)
    x = images(n=8)
    y = torch.randperm(8, generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with torch.no_grad():
        loss0 = model(x, labels=y).loss.item()
    accuracy, loss = 0.0, loss0
    for _ in range(100):
        model.train()
        loss = model(x, labels=y).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss = loss.item()
        with torch.no_grad():
            accuracy = (model.eval()(x).logits.argmax(-1) == y).float().mean().item()
        if accuracy == 1.0 and loss < 0.05:
            break
    assert accuracy == 1.0
    assert loss < 0.05 < loss0 / 10


# --- presets ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_a_config(name):
    config = preset(name)
    assert isinstance(config, ViTConfig) and config is not PRESETS[name]
    assert config.image_size % config.patch_size == 0 and config.d_model % config.n_heads == 0
    assert config.num_patches == (config.image_size // config.patch_size) ** 2
    if estimate_parameters(config) > 2_000_000:  # vit-base & co.: the config is enough here
        return
    torch.manual_seed(0)
    model = ViTForImageClassification(config).eval()
    x = torch.randn(2, config.num_channels, config.image_size, config.image_size)
    assert model(x).logits.shape == (2, config.num_labels)


def test_preset_overrides_and_unknown_name():
    assert preset("vit-base-16", num_labels=5).num_labels == 5
    assert PRESETS["vit-base-16"].num_labels == 1000  # the table is not changed
    with pytest.raises(ValueError, match="unknown ViT preset 'vit-huge'"):
        preset("vit-huge")


# --- Hugging Face config.json (checkpoints/vit.py; no transformers needed) ------------------
def test_hf_config_round_trip():
    config = tiny(
        id2label={0: "cat", 1: "dog", 2: "fox"},
        pooling="mean",
        patch_embed="linear",
        qkv_bias=False,
    )
    hf = config_to_hf(config, architecture="ViTForImageClassification")
    assert hf["model_type"] == "vit" and hf["architectures"] == ["ViTForImageClassification"]
    assert hf["label2id"] == {"cat": 0, "dog": 1, "fox": 2}
    assert hf["torchformer_pooling"] == "mean" and hf["torchformer_patch_embed"] == "linear"
    assert config_from_hf(hf) == config
    base = config_to_hf(tiny(), architecture="ViTModel")
    assert "id2label" not in base and "torchformer_pooling" not in base


def test_hf_config_sizes_as_pairs():
    hf = config_to_hf(tiny())
    same = config_from_hf({**hf, "image_size": [16, 16], "patch_size": (4, 4)})
    assert (same.image_size, same.patch_size) == (16, 4)
    for field, value in [("image_size", [16, 32]), ("patch_size", [4, 2])]:
        with pytest.raises(CheckpointError, match=rf"my/config.json: field '{field}'.*not square"):
            config_from_hf({**hf, field: value}, source="my/config.json")
    for field, value in [("patch_size", 0), ("image_size", "16"), ("num_channels", True)]:
        with pytest.raises(CheckpointError, match=rf"field '{field}': expected a positive integer"):
            config_from_hf({**hf, field: value})


def test_hf_config_refusals():
    hf = config_to_hf(tiny())
    with pytest.raises(CheckpointError, match="'bert' is not a ViT model"):
        config_from_hf({**hf, "model_type": "bert"})
    with pytest.raises(CheckpointError, match="hidden_act 'swish7'"):
        config_from_hf({**hf, "hidden_act": "swish7"})
    with pytest.raises(CheckpointError, match="field 'torchformer_pooling': 'max'"):
        config_from_hf({**hf, "torchformer_pooling": "max"})


def test_parameter_count_check_covers_vit():
    hf = config_to_hf(tiny())
    check_parameter_count(config_from_hf(hf), hf, source="c.json")
    # 2**32 patches of 32 numbers: refused before any tensor exists, naming the sizes.
    huge = {**hf, "image_size": 2**16, "patch_size": 1}
    with pytest.raises(CheckpointError, match=r"c\.json: fields .*image_size=65536, patch_size=1"):
        check_parameter_count(config_from_hf(huge), huge, source="c.json")


def test_hf_weight_names():
    keys = set(state_to_hf(build()))
    assert {
        "vit.embeddings.cls_token",
        "vit.embeddings.position_embeddings",
        "vit.embeddings.patch_embeddings.projection.weight",
        "vit.encoder.layer.1.attention.attention.query.weight",
        "vit.encoder.layer.1.attention.output.dense.bias",
        "vit.encoder.layer.0.layernorm_before.weight",
        "vit.encoder.layer.0.layernorm_after.bias",
        "vit.encoder.layer.0.intermediate.dense.weight",
        "vit.encoder.layer.0.output.dense.weight",
        "vit.layernorm.weight",
        "classifier.weight",
    } <= keys
    assert len(keys) == len(build().state_dict())
    base = set(state_to_hf(build(ViTModel)))
    assert "embeddings.cls_token" in base and "layernorm.bias" in base
    assert not any(k.startswith("vit.") for k in base)
