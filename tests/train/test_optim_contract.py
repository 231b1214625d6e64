"""Contracts of train/optim.py: build_optimizer's defaults and options, and that only a
norm's own parameters (not those of modules inside it) skip weight decay."""

import pytest
import torch
from torch import nn

from torchformer.train.optim import build_optimizer, param_groups


class GatedNorm(nn.Module):  # a norm (by name) holding a projection of its own
    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(4, 4))
        self.proj = nn.Linear(4, 4, bias=False)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.norm = GatedNorm()
        self.out = nn.Linear(4, 2)


def group(optimizer_or_groups, name):
    groups = getattr(optimizer_or_groups, "param_groups", optimizer_or_groups)
    return next(g for g in groups if g["group_name"] == name)


def test_only_a_norms_own_parameters_skip_decay():
    groups = param_groups(Model(), 0.1)
    assert group(groups, "decay")["param_names"] == [
        "embed.weight",
        "norm.proj.weight",
        "out.weight",
    ]
    assert group(groups, "no_decay")["param_names"] == ["norm.gain", "out.bias"]


def test_build_optimizer_defaults():
    optimizer = build_optimizer(Model(), lr=3e-4)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay = group(optimizer, "decay")
    assert decay["weight_decay"] == 0.01 and "embed.weight" in decay["param_names"]
    assert group(optimizer, "no_decay")["weight_decay"] == 0.0
    for g in optimizer.param_groups:
        assert g["lr"] == 3e-4 and g["eps"] == 1e-8 and g["betas"] == (0.9, 0.999)


def test_build_optimizer_passes_its_options():
    optimizer = build_optimizer(Model(), lr=0.5, weight_decay=0.2, betas=(0.8, 0.9), eps=1e-6,
                                decay_embeddings=False)  # fmt: skip
    assert "embed.weight" in group(optimizer, "no_decay")["param_names"]
    assert group(optimizer, "decay")["weight_decay"] == 0.2
    assert all(g["lr"] == 0.5 and g["eps"] == 1e-6 for g in optimizer.param_groups)


def test_frozen_model_error_message():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match=r"^build_optimizer: the model has no trainable"):
        build_optimizer(model, lr=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_kernel_on_cuda():
    optimizer = build_optimizer(Model().cuda(), lr=1e-3)
    assert optimizer.defaults["fused"] is True
    assert build_optimizer(Model(), lr=1e-3).defaults["fused"] in (None, False)
