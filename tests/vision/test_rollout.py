"""Attention rollout (Abnar & Zuidema 2020) against hand-computed cases."""

from __future__ import annotations

import torch

from torchformer.viz.rollout import attention_rollout


def test_attention_to_oneself_only_rolls_out_to_the_identity():
    eye = torch.eye(5).expand(1, 2, 5, 5)
    assert torch.allclose(attention_rollout([eye, eye, eye]), torch.eye(5)[None])


def test_one_uniform_layer_is_half_identity_half_uniform_and_layers_multiply():
    T = 4
    uniform = torch.full((1, 3, T, T), 1 / T)
    one = attention_rollout([uniform])[0]
    assert torch.allclose(one, 0.5 * torch.eye(T) + 0.5 / T)
    probs = torch.softmax(
        torch.randn(2, 3, 2, T, T, generator=torch.Generator().manual_seed(0)), -1
    )
    layers = [probs[0], probs[1]]
    a = [0.5 * torch.eye(T) + 0.5 * p.mean(1) for p in layers]  # rows already sum to 1
    assert torch.allclose(attention_rollout(layers), a[1] @ a[0], atol=1e-6)
    assert torch.allclose(attention_rollout(layers).sum(-1), torch.ones(3, T))  # B = 3
