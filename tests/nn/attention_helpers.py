"""Shared by the sparse-attention tests (imported by name: test folders are not packages)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def qkv(t: int, seed: int = 0, b: int = 2, h: int = 3, dh: int = 8) -> list[torch.Tensor]:
    """Seeded queries, keys and values (B, H, T, Dh)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, t, dh, generator=g) for _ in range(3)]


def largest_product(monkeypatch, op: str, run: Callable[[], object]) -> int:
    """The most elements any ``torch.<op>`` (matmul, einsum) call returned during ``run``:
    a kernel that never builds the (T, T) scores keeps this far below T²."""
    sizes: list[int] = []
    original = getattr(torch, op)

    def spy(*args):
        out = original(*args)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(torch, op, spy)
    run()
    monkeypatch.setattr(torch, op, original)
    assert sizes, f"torch.{op} was never called"
    return max(sizes)
