"""Contracts of train/seed.py: NumPy's seed range, the deterministic switch (and that it
stays off unless asked), CUDA entries, and restoring from a plain-list state."""

import os
import random

import numpy as np
import pytest
import torch

from torchformer.train.seed import capture_rng_state, restore_rng_state, seed_everything


@pytest.fixture
def torch_determinism():
    """Restore torch's global determinism switches after the test."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark


def numpy_draws(seed: int) -> list[float]:
    np.random.seed(seed)
    return np.random.standard_normal(4).tolist()


def test_numpy_gets_the_seed_modulo_2_32():
    for seed, numpy_seed in ((2**32 + 7, 7), (-1, 2**32 - 1), (2**40 + 3, 3), (123, 123)):
        seed_everything(seed)
        got = np.random.standard_normal(4).tolist()
        assert got == numpy_draws(numpy_seed), seed


def test_large_seeds_still_seed_python_and_torch_fully():
    seed_everything(2**32 + 7)
    a = (random.random(), torch.rand(2).tolist())
    seed_everything(7)
    b = (random.random(), torch.rand(2).tolist())
    assert a != b  # only NumPy's seed is reduced


def test_deterministic_is_off_by_default(torch_determinism):
    torch.use_deterministic_algorithms(False)
    seed_everything(0)
    assert torch.are_deterministic_algorithms_enabled() is False


def test_deterministic_mode_switches(torch_determinism, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled() is True
    assert torch.is_deterministic_algorithms_warn_only_enabled() is True  # warn, not raise
    assert torch.backends.cudnn.benchmark is False
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_deterministic_mode_keeps_a_user_cublas_setting(torch_determinism, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    seed_everything(0, deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_cuda_entry_has_one_state_per_device():
    state = capture_rng_state()
    if torch.cuda.is_available():
        assert len(state["cuda"]) == torch.cuda.device_count()
    else:
        assert state["cuda"] == []


def test_restore_accepts_a_state_stored_as_plain_lists():
    # e.g. a state written to JSON: tensors became lists of ints
    seed_everything(3)
    state = capture_rng_state()
    plain = {
        "python": state["python"],
        "numpy": {**state["numpy"], "keys": state["numpy"]["keys"].tolist()},
        "torch": state["torch"].tolist(),
        "cuda": [s.tolist() for s in state["cuda"]],
    }
    expected = (random.random(), float(np.random.standard_normal()), torch.rand(3).tolist())
    seed_everything(4)
    restore_rng_state(plain)
    assert (random.random(), float(np.random.standard_normal()), torch.rand(3).tolist()) == (
        expected
    )


def test_restore_without_cuda_entry_restores_the_rest():
    seed_everything(8)
    state = capture_rng_state()
    del state["cuda"]
    expected = torch.rand(3).tolist()
    seed_everything(9)
    restore_rng_state(state)
    assert torch.rand(3).tolist() == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generators_are_restored():
    seed_everything(11)
    state = capture_rng_state()
    expected = [torch.rand(3, device=f"cuda:{i}").tolist() for i in range(len(state["cuda"]))]
    seed_everything(12)
    restore_rng_state(state)
    got = [torch.rand(3, device=f"cuda:{i}").tolist() for i in range(len(state["cuda"]))]
    assert got == expected
    # a state saved on a machine with more GPUs: the extra entries are ignored
    seed_everything(12)
    more = {**state, "cuda": [*state["cuda"], state["cuda"][0].clone()]}
    restore_rng_state(more)
    assert [torch.rand(3, device=f"cuda:{i}").tolist() for i in range(len(expected))] == expected
    # and from plain lists
    seed_everything(12)
    restore_rng_state({**state, "cuda": [s.tolist() for s in state["cuda"]]})
    assert torch.rand(3, device="cuda:0").tolist() == expected[0]


def test_cuda_generators_are_captured_and_restored_for_the_devices_both_sides_have(monkeypatch):
    # No GPU needed: torch.cuda's generator functions are stood in for, so the CUDA branch
    # is tested on every machine (the test above runs it for real where CUDA exists).
    saved = [torch.tensor([d, d], dtype=torch.uint8) for d in (1, 2, 3)]
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved)
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda s, device: calls.append((s.tolist(), device))
    )
    state = capture_rng_state()
    assert state["cuda"] is saved  # every device's generator
    restore_rng_state(state)  # three saved, two here: the first two
    assert calls == [([1, 1], 0), ([2, 2], 1)]
    calls.clear()
    restore_rng_state({**state, "cuda": []})  # a CPU run resumed on a GPU machine
    restore_rng_state({k: v for k, v in state.items() if k != "cuda"})  # an older checkpoint
    assert calls == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert capture_rng_state()["cuda"] == []
    restore_rng_state(state)  # a GPU run resumed on a CPU machine: everything else restored
    assert calls == []
    before = np.random.get_state()[1].copy()
    restore_rng_state(state)
    assert (
        np.random.get_state()[1].dtype == np.uint32 and (before == np.random.get_state()[1]).all()
    )
