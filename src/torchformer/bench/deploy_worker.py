"""The deployment bench's worker processes: one path loaded in a spawned process that
answers timing commands over a pipe (``_Worker`` in the parent, ``_worker`` in the child),
so each path's memory is its own and the ONNX processes never import torch."""

from __future__ import annotations

import contextlib
import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

WORKER_TIMEOUT_S = 3600.0


def _peak_rss_mb() -> float:
    """This process's peak resident memory.

    Linux: ``VmHWM`` (reset by exec). ``ru_maxrss`` is not: a spawned child
    inherits the parent's peak through fork+exec, so it is only the fallback.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


@dataclass
class _Backend:
    """One path in its process: a forward function ids, mask (B, T) -> logits (B, C)."""

    forward: Callable[[np.ndarray, np.ndarray], np.ndarray]
    details: Callable[[], dict[str, Any]] = dict  # path-specific counters, asked after warm-up/end


def _load_backend(kind: str, target: str, threads: int) -> _Backend:
    """Load one path (``kind``) from ``target``, a model directory or an ONNX file."""
    if kind.startswith("onnx"):
        from torchformer.export.session import make_session

        session = make_session(target, threads=threads)
        return _Backend(
            lambda ids, mask: session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
        )
    import torch

    torch.set_num_threads(threads)
    if kind == "transformers":
        return _transformers_backend(target)
    from torchformer.api import load

    model = load(target).model.eval()
    if kind == "torchformer-compile":
        return _compiled_backend(model)
    if kind == "torchformer-bf16-compile":  # bf16 weights, elementwise ops fused by inductor
        return _compiled_backend(model.to(torch.bfloat16))
    if kind.startswith("torchao"):
        _torchao_quantize(model, kind)
    if kind == "torchformer-bf16-weights":  # no per-call weight casts, as autocast makes
        model = model.to(torch.bfloat16)
    # bf16: autocast runs the matmuls in bf16 and keeps fp32 weights, norms and softmax.
    precision = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if kind == "torchformer-bf16"
        else contextlib.nullcontext
    )

    def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), precision():
            logits = model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
        return logits.float().numpy()

    return _Backend(forward)


def _torchao_quantize(model: Any, kind: str) -> None:
    """torchao's ``quantize_`` on every linear layer, in place (its tensor subclasses keep
    ``F.linear``, which dispatches to torchao's kernels; ``nn.linear`` steps aside)."""
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        quantize_,
    )

    config = (
        Int8DynamicActivationInt8WeightConfig()
        if kind == "torchao-int8"
        else Int8WeightOnlyConfig()
    )
    quantize_(model, config)


def _transformers_backend(target: str) -> _Backend:
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForSequenceClassification.from_pretrained(target).eval()

    def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = model(
                input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)
            ).logits
        return logits.float().numpy()

    return _Backend(forward)


def _compiled_backend(model: Any) -> _Backend:
    """``torch.compile`` (inductor) with frozen weights and dynamic shapes: one graph serves
    every padded batch (batch-1 inputs get a second: dynamo specialises sizes 0 and 1), both
    compiled by the warm-up; ``details`` counts the graphs, so recompiling while timed shows."""
    import torch
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    inductor_config.freezing = True  # weights become constants: folded, prepacked for oneDNN

    class Logits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids, attention_mask=attention_mask).logits  # (B, C)

    compiled = torch.compile(Logits(model), dynamic=True)

    def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.no_grad():  # freezing applies under no_grad
            return compiled(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()

    return _Backend(forward, lambda: {"graphs_compiled": counters["stats"]["unique_graphs"]})


def _worker(conn: Any, kind: str, target: str, threads: int) -> None:
    """Child process: load one path, then answer timing commands until told to stop."""
    try:
        start = time.perf_counter()
        backend = _load_backend(kind, target, threads)
        forward = backend.forward
        conn.send(("ok", time.perf_counter() - start))
        batches, singles = [], []
        while True:
            command, arg = conn.recv()
            if command == "data":
                batches, singles = arg
                reply = None
            elif command == "warmup":
                t0 = time.perf_counter()
                for ids, mask in [*batches[-arg:], *singles[:arg]]:
                    forward(ids, mask)
                reply = {"seconds": time.perf_counter() - t0, **backend.details()}
            elif command == "batch":  # arg: (index, return the logits?)
                ids, mask = batches[arg[0]]
                t0 = time.perf_counter()
                logits = forward(ids, mask)
                reply = (time.perf_counter() - t0, logits if arg[1] else None)
            elif command == "single":  # arg: index
                t0 = time.perf_counter()
                forward(*singles[arg])
                reply = time.perf_counter() - t0
            elif command == "peak_rss":
                reply = _peak_rss_mb()
            elif command == "details":
                reply = backend.details()
            else:  # "stop"
                conn.send(("ok", None))
                return
            conn.send(("ok", reply))
    except BaseException:
        conn.send(("error", traceback.format_exc()))


class WorkerError(RuntimeError):
    """A path's process failed; ``reason`` is one line: the command and the exception."""

    def __init__(self, kind: str, command: str, trace: str) -> None:
        lines = [line for line in trace.strip().splitlines() if line.strip()]
        self.reason = f"failed on {command!r}: {lines[-1].strip() if lines else 'no traceback'}"[
            :500
        ]
        super().__init__(f"benchmark worker {kind!r} failed on {command!r}:\n{trace}")


class _Worker:
    """Parent-side handle of one path's process."""

    def __init__(self, ctx: Any, kind: str, target: str, threads: int) -> None:
        self.kind = kind
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, kind, target, threads), daemon=True)
        self.process.start()
        child.close()

    def call(self, command: str, arg: Any = None) -> Any:
        if command != "load":
            self.conn.send((command, arg))
        if not self.conn.poll(WORKER_TIMEOUT_S):
            raise TimeoutError(f"benchmark worker {self.kind!r} did not answer {command!r}")
        status, reply = self.conn.recv()
        if status != "ok":
            raise WorkerError(self.kind, command, reply)
        return reply

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("stop")
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
