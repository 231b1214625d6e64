"""An onnxruntime session with this project's settings (imports neither torch nor the model code)."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["make_session"]


def make_session(path: str | os.PathLike, *, threads: int | None = None) -> Any:
    """An onnxruntime CPU session with all graph optimisations.

    Args:
        threads: intra-op threads (None: onnxruntime's default, one per core).
    """
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError(
            "running ONNX models needs onnxruntime: pip install 'torchformer[export]'"
        ) from e
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only; shape-inference warnings are noise here
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
