"""Seeding and exact random-number-generator state for reproducible, resumable runs.

``capture_rng_state`` returns only tensors, lists, ints, floats and ``None`` so the
state can live inside a checkpoint loaded with ``torch.load(..., weights_only=True)``
(a raw ``numpy.random.get_state()`` tuple would need unpickling a numpy array).
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state", "seed_everything"]


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python ``random``, NumPy's global generator and torch (CPU and all CUDA devices).

    Args:
        seed: any integer; NumPy needs ``0 <= seed < 2**32`` so it gets ``seed % 2**32``.
        deterministic: also ask torch for deterministic kernels
            (``torch.use_deterministic_algorithms(True, warn_only=True)``, cuDNN
            benchmarking off). Slower on GPU; unnecessary on CPU.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        # cuBLAS needs this to be deterministic; it must be set before the first CUDA call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def capture_rng_state() -> dict[str, Any]:
    """Return the state of every global generator, in a ``weights_only``-loadable form.

    Returns:
        ``{"python": {...}, "numpy": {...}, "torch": ByteTensor, "cuda": [ByteTensor, ...]}``;
        ``"cuda"`` is an empty list when CUDA is not available.
    """
    version, mt_state, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": {"version": version, "state": list(mt_state), "gauss_next": gauss_next},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),  # uint32 fits in int64
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore generators from :func:`capture_rng_state` output.

    CUDA states are restored for as many devices as both the saved state and this
    machine have; resuming a GPU run on CPU restores everything else.
    """
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npst = state["numpy"]
    keys = torch.as_tensor(npst["keys"]).numpy().astype(np.uint32)
    np.random.set_state(
        (npst["kind"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        n = min(len(cuda_states), torch.cuda.device_count())
        for device, cuda_state in enumerate(cuda_states[:n]):
            torch.cuda.set_rng_state(torch.as_tensor(cuda_state, dtype=torch.uint8), device)
