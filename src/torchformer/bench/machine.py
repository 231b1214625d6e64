"""This CPU's measured matrix-multiply ceiling in fp32, bf16 and int8.

Every deployment-bench row states its fraction of the machine's ceiling, so the ceiling
is measured here, on the shapes that a transformer encoder's linear layers multiply,
rather than read off a datasheet. A call multiplies activations (M, K) by a weight
(K, N); M is the number of tokens in a batch (``rows``), and the default (K, N) are
all-MiniLM-L6-v2's (D = 384, F = 1536): (D, D) for the attention projections, (D, F) and
(F, D) for the feed-forward.

- fp32 and bf16: ``torch.matmul`` (MKL in PyTorch's wheels for fp32, oneDNN for bf16;
  bf16 is fast only where the CPU has AVX512-BF16 or AMX, and is measured and reported
  anyway). fp32 also: oneDNN's linear (``torchformer.nn.linear``, what our models run
  for fp32 inference on the CPU; MKL's fast paths are Intel-only) and onnxruntime's
  ``MatMul``; the fp32 peak is the fastest of the three.
- int8: onnxruntime's ``MatMulInteger`` (uint8 activations with a zero point × int8
  weights with per-column zero points → int32), the kernel our dynamically quantized
  ONNX models run, and ``torch._int_mm`` (int8 × int8 → int32). Each is first checked
  against numpy's int32 product on a small matrix; a kernel that computes something
  else is never timed. The int8 peak is the larger of the two.

Each (dtype, shape) is warmed up, then called until ``seconds`` elapse; throughput is
2·M·K·N over the median time per call. Per dtype: GFLOP/s (GOP/s for int8) per shape,
``peak`` (the best shape) and ``mean`` (all shapes' operations over all shapes' time: what
running each layer shape once in turn sustains).

    torchformer bench machine --threads 2 --out machine.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchformer.export.quantize import cpu_flags
from torchformer.io import atomic_write_text

DTYPES = ("fp32", "bf16", "int8")
# all-MiniLM-L6-v2's linear layers as (K, N): attention projections, FFN up, FFN down.
DEFAULT_SHAPES = ((384, 384), (384, 1536), (1536, 384))
RELEVANT_FLAGS = (
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "avx2",
    "avx512_bf16",
    "avx512_vnni",
    "avx512f",
    "avx_vnni",
)
# config.json fields that give the model width and the feed-forward width, by family
# (BERT and most HF encoders, DistilBERT, T5/BART, GPT-2), first match wins.
WIDTH_KEYS = ("hidden_size", "dim", "d_model", "n_embd")
FFN_KEYS = ("intermediate_size", "hidden_dim", "d_ff", "encoder_ffn_dim", "n_inner")
WARMUP_CALLS = 3
MIN_TIMED_CALLS = 3
CHECK_SHAPE = (24, 40, 56)  # (M, K, N) of the int8 correctness check

_clock = time.perf_counter  # a module attribute, so that tests can drive a fake clock

# An int8 backend: build(a, b, threads) with a (M, K) and b (K, N) int8 arrays returns a
# call that computes a @ b exactly, in int32.
Int8Build = Callable[[np.ndarray, np.ndarray, int], Callable[[], Any]]


class KernelCheckError(RuntimeError):
    """A kernel's result differs from the exact product: it must not be timed."""


def shapes_of_model_dir(path: str | Path) -> list[tuple[int, int]]:
    """The (K, N) shapes of a model's encoder linear layers, from its ``config.json``.

    Args:
        path: a model directory (with ``config.json``) or a run directory (whose model
            is in ``best/``).

    Returns:
        ``[(D, D), (D, F), (F, D)]``: the attention projections (q, k, v and out are
        separate matrices in our exported models), the FFN up and down projections.

    Raises:
        FileNotFoundError: neither ``config.json`` nor ``best/config.json`` exists.
        ValueError: the file is not JSON, or a width field is missing or not a
            positive integer (the message names the file and the field).
    """
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file() and (path / "best" / "config.json").is_file():
        config_path = path / "best" / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{path}: no config.json (a model directory) or best/config.json (a run directory)"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object of model settings")
    width = _size_field(config, WIDTH_KEYS, config_path)
    ffn = _size_field(config, FFN_KEYS, config_path)
    return [(width, width), (width, ffn), (ffn, width)]


def _size_field(config: dict, keys: Sequence[str], config_path: Path) -> int:
    for key in keys:
        if key in config:
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"{config_path}: field {key!r} must be a positive integer, got {value!r}"
                )
            return value
    raise ValueError(f"{config_path}: no width field; expected one of {', '.join(keys)}")


# ----------------------------------------------------------------------------- timing


def _median_seconds(run: Callable[[], Any], seconds: float) -> float:
    """Median wall time of one ``run()`` after warm-up, calling it until ``seconds`` pass."""
    for _ in range(WARMUP_CALLS):
        run()
    times = []
    start = last = _clock()
    while True:
        run()
        now = _clock()
        times.append(now - last)
        last = now
        if now - start >= seconds and len(times) >= MIN_TIMED_CALLS:
            return statistics.median(times)


def _giga_ops(m: int, k: int, n: int, seconds_per_call: float) -> float:
    return 2 * m * k * n / seconds_per_call / 1e9


def _summarize(rows: int, shapes: Sequence[tuple[int, int]], median_s: Sequence[float]) -> dict:
    """Per-shape G(FL)OP/s, the peak over shapes and the all-shapes ``mean``."""
    per_shape = {
        f"{k}x{n}": _giga_ops(rows, k, n, t) for (k, n), t in zip(shapes, median_s, strict=True)
    }
    total_ops = sum(2 * rows * k * n for k, n in shapes)
    return {
        "per_shape": per_shape,
        "peak": max(per_shape.values()),
        "mean": total_ops / sum(median_s) / 1e9,
    }


# ---------------------------------------------------------------------------- kernels


def _torch_matmul_call(rows: int, k: int, n: int, dtype: torch.dtype) -> Callable[[], Any]:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, k, generator=generator).to(dtype)  # (M, K) activations
    b = torch.randn(k, n, generator=generator).to(dtype)  # (K, N) weight
    return lambda: torch.matmul(a, b)  # (M, N)


def _onednn_linear_call(rows: int, k: int, n: int) -> Callable[[], Any]:
    """oneDNN's fp32 linear as ``torchformer.nn.linear.linear`` calls it for inference."""
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError("PyTorch was built without oneDNN")
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, k, generator=generator)  # (M, K) activations
    w = torch.randn(n, k, generator=generator)  # (N, K): nn.Linear's layout

    def call() -> Any:
        with torch.inference_mode():
            return torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")  # (M, N)

    return call


def _onnxruntime_matmul_integer(a: np.ndarray, b: np.ndarray, threads: int) -> Callable[[], Any]:
    """``MatMulInteger`` as dynamic quantization emits it, in a one-node graph.

    The activations go in as uint8 with zero point 128 (``a + 128``, so the product is
    still ``a @ b``); the weight is a constant int8 initializer with one zero point per
    output column, as ``quantize_onnx``'s per-channel weights have, which lets
    onnxruntime pre-pack it as it does in a deployed model.
    """
    try:
        import onnxruntime  # noqa: F401  (checked here: the error says what to install)
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:
        raise ImportError(
            "the int8 ceiling runs onnxruntime's MatMulInteger: pip install 'torchformer[export]'"
        ) from e
    k, n = b.shape
    node = helper.make_node("MatMulInteger", ["A", "B", "a_zero_point", "b_zero_point"], ["Y"])
    graph = helper.make_graph(
        [node],
        "matmul_integer",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, ["M", n])],
        initializer=[
            numpy_helper.from_array(np.ascontiguousarray(b, dtype=np.int8), "B"),
            numpy_helper.from_array(np.array(128, dtype=np.uint8), "a_zero_point"),
            numpy_helper.from_array(np.zeros(n, dtype=np.int8), "b_zero_point"),
        ],
    )
    session = _one_node_session(graph, threads)
    feed = {"A": (a.astype(np.int16) + 128).astype(np.uint8)}  # (M, K)
    return lambda: session.run(None, feed)[0]  # (M, N) int32


def _one_node_session(graph: Any, threads: int) -> Any:
    """An onnxruntime session of a one-node graph, set up as ``make_session`` sets up a
    deployed model (all graph optimizations, ``threads`` intra-op threads)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)  # readable by older onnxruntime builds
    onnx.checker.check_model(model)
    options = ort.SessionOptions()  # as export.session.make_session sets it up
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _onnxruntime_matmul_fp32(rows: int, k: int, n: int, threads: int) -> Callable[[], Any]:
    """fp32 ``MatMul`` with a constant weight (pre-packed by onnxruntime's MLAS, as in an
    exported model): the fp32 kernel the ONNX paths run, which on some CPUs is faster than
    ``torch.matmul``'s, so the fp32 ceiling is the faster of the two."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((k, n), dtype=np.float32)  # (K, N)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["Y"])],
        "matmul_fp32",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        initializer=[numpy_helper.from_array(weight, "B")],
    )
    session = _one_node_session(graph, threads)
    feed = {"A": rng.standard_normal((rows, k), dtype=np.float32)}  # (M, K)
    got = session.run(None, feed)[0]
    want = feed["A"].astype(np.float64) @ weight.astype(np.float64)
    if not np.allclose(got, want, rtol=1e-3, atol=1e-3 * np.sqrt(k)):
        raise KernelCheckError(
            f"onnxruntime MatMul: max |error| {np.abs(got - want).max():.3g} against numpy's "
            f"product for ({rows}, {k}) @ ({k}, {n}); not timed"
        )
    return lambda: session.run(None, feed)[0]  # (M, N)


def _torch_int_mm(a: np.ndarray, b: np.ndarray, threads: int) -> Callable[[], Any]:
    a_t, b_t = torch.from_numpy(a.copy()), torch.from_numpy(b.copy())  # (M, K), (K, N)
    return lambda: torch._int_mm(a_t, b_t)  # (M, N) int32


INT8_BACKENDS: dict[str, Int8Build] = {
    "onnxruntime MatMulInteger": _onnxruntime_matmul_integer,
    "torch._int_mm": _torch_int_mm,
}


def _int8_operands(m: int, k: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, size=(m, k), dtype=np.int8)  # activations, full range
    b = rng.integers(-127, 128, size=(k, n), dtype=np.int8)  # symmetric weights
    return a, b


def check_int8_kernel(name: str, build: Int8Build, *, threads: int = 1) -> None:
    """Run an int8 backend once on a small matrix and compare with numpy's int32 product.

    Args:
        name: the backend's name, for the message.
        build: ``build(a, b, threads)`` returns a call computing ``a @ b`` in int32.
        threads: threads the backend runs with.

    Raises:
        KernelCheckError: the result has another shape or differs anywhere from the
            exact product; the message names the backend and the first wrong entry.
    """
    m, k, n = CHECK_SHAPE
    a, b = _int8_operands(m, k, n, seed=1)
    got = build(a, b, threads)()
    got = got.numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    want = a.astype(np.int32) @ b.astype(np.int32)  # (M, N)
    where = f"int8 kernel {name!r} on a ({m}, {k}) @ ({k}, {n}) check"
    if got.shape != want.shape:
        raise KernelCheckError(
            f"{where}: result shape {got.shape}, expected {want.shape}; not timed"
        )
    wrong = np.argwhere(got != want)
    if len(wrong):
        i, j = (int(x) for x in wrong[0])
        raise KernelCheckError(
            f"{where}: {len(wrong)} of {want.size} entries differ from numpy's int32 product "
            f"(first at [{i}, {j}]: got {got[i, j]}, expected {want[i, j]}); not timed"
        )


# ------------------------------------------------------------------------ measurement


def _measure_int8(rows, shapes, seconds, threads) -> dict[str, dict]:
    """Check, then time, every int8 backend: backend → summary, or ``{"error": why}``
    for a backend that cannot run here (no CPU kernel in this build, say)."""
    detail = {}
    for name, build in INT8_BACKENDS.items():
        try:
            check_int8_kernel(name, build, threads=threads)
        except KernelCheckError:
            raise
        except (RuntimeError, NotImplementedError) as e:
            detail[name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
            continue
        times = []
        for k, n in shapes:
            a, b = _int8_operands(rows, k, n)
            times.append(_median_seconds(build(a, b, threads), seconds))
        detail[name] = _summarize(rows, shapes, times)
    if all("error" in d for d in detail.values()):
        raise RuntimeError(f"no int8 backend could run: {detail}")
    return detail


def _measure_fp32(rows, shapes, seconds, threads) -> dict[str, dict]:
    """fp32 throughput of ``torch.matmul``, oneDNN's linear and onnxruntime's ``MatMul``
    (``{"error": why}`` for one that is missing or fails)."""
    builds = {
        "torch.matmul": lambda k, n: _torch_matmul_call(rows, k, n, torch.float32),
        "oneDNN linear": lambda k, n: _onednn_linear_call(rows, k, n),
        "onnxruntime MatMul": lambda k, n: _onnxruntime_matmul_fp32(rows, k, n, threads),
    }
    detail: dict[str, dict] = {}
    for name, build in builds.items():
        try:
            times = [_median_seconds(build(k, n), seconds) for k, n in shapes]
        except (ImportError, RuntimeError) as e:
            detail[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
            continue
        detail[name] = _summarize(rows, shapes, times)
    return detail


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def _check_settings(shapes, rows: int, seconds: float, dtypes: Iterable[str]) -> None:
    if rows <= 0 or not seconds > 0:
        raise ValueError(f"rows and seconds must be positive, got rows={rows}, seconds={seconds}")
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise ValueError(f"unknown dtype(s) {unknown}; expected some of {list(DTYPES)}")
    if not shapes or any(len(s) != 2 or min(s) <= 0 for s in shapes):
        raise ValueError(f"shapes must be (K, N) pairs of positive sizes, got {shapes}")


def measure_ceiling(
    *,
    threads: int | None = None,
    shapes: Sequence[tuple[int, int]] | None = None,
    rows: int = 2048,
    seconds: float = 1.0,
    dtypes: Sequence[str] = DTYPES,
) -> dict:
    """Sustained matrix-multiply throughput of this CPU on a transformer's layer shapes.

    Args:
        threads: threads for torch and onnxruntime (None: torch's current number).
        shapes: (K, N) weight shapes (None: all-MiniLM-L6-v2's, ``DEFAULT_SHAPES``).
        rows: M, the tokens per call.
        seconds: time spent calling each (dtype, shape) after warm-up.
        dtypes: some of ``"fp32"``, ``"bf16"``, ``"int8"``.

    Returns:
        A JSON-able dict: ``threads``, ``cpu``, ``flags``, ``torch``, ``onnxruntime``,
        ``rows``, ``shapes``, ``per_shape`` (dtype → ``"KxN"`` → GFLOP/s, GOP/s for
        int8, from the faster int8 backend), ``peaks`` and ``means`` (dtype → value),
        ``int8_backends`` (backend → peak, None when it could not run), ``int8_detail``
        (backend → its ``per_shape``, ``peak`` and ``mean``, or ``error``: why it could
        not run) and ``seconds``.

    Raises:
        ValueError: a setting is out of range or a dtype is unknown.
        KernelCheckError: an int8 backend computed a wrong product.
        RuntimeError: no int8 backend could run at all (the reasons are in the message).
        ImportError: int8 was asked for without onnxruntime (the ``export`` extra).
    """
    shapes = [tuple(s) for s in (DEFAULT_SHAPES if shapes is None else shapes)]
    _check_settings(shapes, rows, seconds, dtypes)
    previous_threads = torch.get_num_threads()
    threads = threads or previous_threads
    flags = cpu_flags()
    result: dict[str, Any] = {
        "threads": threads,
        "cpu": _cpu_name(),
        "flags": sorted(f for f in RELEVANT_FLAGS if f in flags),
        "torch": torch.__version__,
        "onnxruntime": _onnxruntime_version(),
        "rows": rows,
        "shapes": [list(s) for s in shapes],
        "per_shape": {},
        "peaks": {},
        "means": {},
        "seconds": seconds,
    }
    torch.set_num_threads(threads)
    try:
        for dtype in dtypes:
            if dtype == "int8":
                detail = _measure_int8(rows, shapes, seconds, threads)
                peaks = {name: d.get("peak") for name, d in detail.items()}
                summary = detail[max((n for n in peaks if peaks[n] is not None), key=peaks.get)]
                result["int8_backends"], result["int8_detail"] = peaks, detail
            elif dtype == "fp32":
                detail = _measure_fp32(rows, shapes, seconds, threads)
                peaks = {name: d.get("peak") for name, d in detail.items()}
                summary = detail[max((n for n in peaks if peaks[n] is not None), key=peaks.get)]
                result["fp32_backends"], result["fp32_detail"] = peaks, detail
            else:
                times = [
                    _median_seconds(_torch_matmul_call(rows, k, n, torch.bfloat16), seconds)
                    for k, n in shapes
                ]
                summary = _summarize(rows, shapes, times)
            result["per_shape"][dtype] = summary["per_shape"]
            result["peaks"][dtype] = summary["peak"]
            result["means"][dtype] = summary["mean"]
    finally:
        torch.set_num_threads(previous_threads)
    return result


# ----------------------------------------------------------------------- report, CLI


def _cell(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:,.1f}"


def format_ceiling(result: dict) -> str:
    """A markdown table of :func:`measure_ceiling`'s result: a row per dtype (and per
    int8 backend) with each shape's throughput, the peak and the mean; then the CPU,
    its flags and the versions."""
    keys = [f"{k}x{n}" for k, n in result["shapes"]]
    header = ["dtype", *(f"{key} (M={result['rows']})" for key in keys), "peak", "mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for dtype in result["per_shape"]:
        if dtype in ("int8", "fp32") and f"{dtype}_detail" in result:
            continue  # one row per backend, below
        per = result["per_shape"][dtype]
        cells = [per[k] for k in keys] + [result["peaks"][dtype], result["means"][dtype]]
        lines.append(f"| {dtype} GFLOP/s | " + " | ".join(_cell(c) for c in cells) + " |")
    for dtype, unit in (("fp32", "GFLOP/s"), ("int8", "GOP/s")):
        for name, detail in result.get(f"{dtype}_detail", {}).items():
            if "error" in detail:
                cells = ["n/a"] * len(keys) + ["n/a", detail["error"]]
            else:
                cells = [_cell(detail["per_shape"][k]) for k in keys]
                best = detail["peak"] == result["peaks"][dtype]
                cells += [
                    _cell(detail["peak"]) + (f" ({dtype} peak)" if best else ""),
                    _cell(detail["mean"]),
                ]
            lines.append(f"| {dtype} {unit}, {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"CPU: {result['cpu']}; {result['threads']} thread(s); torch {result['torch']}, "
        f"onnxruntime {result['onnxruntime']}; {result['seconds']} s per cell",
        f"flags: {' '.join(result['flags']) or 'none of ' + ', '.join(RELEVANT_FLAGS)}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``torchformer bench machine``: print the ceiling table, optionally write JSON."""
    parser = argparse.ArgumentParser(
        prog="torchformer bench machine", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    parser.add_argument("--seconds", type=float, default=1.0, help="per dtype and shape")
    parser.add_argument("--rows", type=int, default=2048, help="M, tokens per call")
    parser.add_argument(
        "--model", type=Path, default=None, help="a run or model directory: its layer shapes"
    )
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    args = parser.parse_args(argv)
    try:
        shapes = None if args.model is None else shapes_of_model_dir(args.model)
        result = measure_ceiling(
            threads=args.threads,
            shapes=shapes,
            rows=args.rows,
            seconds=args.seconds,
            dtypes=args.dtypes,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_ceiling(result))
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
