"""Weight-decay parameter groups and the AdamW builder."""

import pytest
import torch
from torch import nn

from torchformer.train.optim import build_optimizer, param_groups


class RMSNorm(nn.Module):  # a custom norm, recognised by its class name
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.scale = nn.Parameter(torch.ones(dim, 1))  # 2-D, but a norm parameter


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.norm = nn.LayerNorm(4)
        self.proj = nn.Linear(4, 4)
        self.rms = RMSNorm(4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied: must appear once
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def names(groups, group_name):
    return next(g["param_names"] for g in groups if g["group_name"] == group_name)


def test_groups_exclude_biases_and_norms_and_decay_embeddings():
    groups = param_groups(Tiny(), 0.1)
    assert {g["group_name"]: g["weight_decay"] for g in groups} == {"decay": 0.1, "no_decay": 0.0}
    assert sorted(names(groups, "decay")) == ["embed.weight", "proj.weight"]
    assert sorted(names(groups, "no_decay")) == [
        "norm.bias",
        "norm.weight",
        "proj.bias",
        "rms.scale",
        "rms.weight",
    ]
    # the frozen layer is left out, the tied weight counted once
    assert sum(len(g["params"]) for g in groups) == 7


def test_embeddings_can_be_excluded_from_decay():
    groups = param_groups(Tiny(), 0.1, decay_embeddings=False)
    assert names(groups, "decay") == ["proj.weight"]
    assert "embed.weight" in names(groups, "no_decay")


def test_build_optimizer_applies_decay_only_to_decay_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    optimizer = build_optimizer(model, lr=0.1, weight_decay=0.5, betas=(0.8, 0.9), eps=1e-6)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.9)
    assert optimizer.param_groups[0]["eps"] == 1e-6
    assert optimizer.defaults["fused"] is None  # CPU parameters: no fused kernel requested
    # zero gradients: only decoupled weight decay can move a parameter
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    after = list(model.parameters())
    assert not torch.equal(after[0], before[0])  # Linear weight decayed
    for b, a in zip(before[1:], after[1:]):  # bias, norm weight and norm bias untouched
        assert torch.equal(a, b)


def test_build_optimizer_rejects_fully_frozen_model():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, lr=1e-3)
