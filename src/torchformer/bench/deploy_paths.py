"""Preparing each deployment path's model: the ONNX export, dynamic and static int8, the
fused graph (parity-gated); a path that cannot run here is skipped with its reason."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torchformer.bench.deploy_inputs import (
    FUSED_INT8_NAME,
    FUSED_NAME,
    STATIC_INT8_NAME,
    BenchSettings,
    FixedInputs,
    _config_int,
    calibration_texts,
    fixed_inputs,
)


# --------------------------------------------------------------------------- preparation
class PathUnavailableError(Exception):
    """A path that cannot run on this machine or with these inputs; the message says why."""


def prepare_onnx(
    clf: Any, model_dir: Path, onnx_dir: Path, log: Callable[[str], None], *, int8: bool = True
) -> Path:
    """Export (with its parity check) and quantize into ``onnx_dir`` unless already there."""
    from torchformer.export.onnx import INT8_NAME, ONNX_NAME, export_classifier
    from torchformer.export.quantize import quantize_onnx

    if not (onnx_dir / ONNX_NAME).is_file():
        log(f"exporting {model_dir} to {onnx_dir} ...")
        result = export_classifier(clf, onnx_dir, source=str(model_dir))
        log(f"parity {result.parity.summary()}")
    if int8 and not (onnx_dir / INT8_NAME).is_file():
        log(
            f"quantizing to int8 (dynamic, per-channel QInt8{_bits()}; accuracy measured below, "
            "no gate) ..."
        )
        quantize_onnx(onnx_dir / ONNX_NAME, onnx_dir / INT8_NAME)
    return onnx_dir


def prepare_paths(
    clf: Any,
    model_dir: Path,
    onnx_dir: Path,
    settings: BenchSettings,
    inputs: FixedInputs,
    bench: Sequence[str],
    log: Callable[[str], None],
) -> tuple[dict[str, Path], dict[str, str], dict[str, dict[str, Any]]]:
    """Each wanted path's model (a directory or an ONNX file, made when missing).

    Returns:
        (targets, skipped: path -> why it cannot run, details: path -> what was made).
    """
    if any(p.startswith("onnx") for p in settings.paths):
        prepare_onnx(clf, model_dir, onnx_dir, log, int8="onnx-int8" in settings.paths)
    targets: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    details: dict[str, dict[str, Any]] = {}
    fused: tuple[Path, dict[str, Any]] | PathUnavailableError | None = None
    for path in settings.paths:
        try:
            if path.endswith("-fused"):
                if fused is None:  # made and checked once for both fused paths
                    try:
                        fused = _try(_prepare_fused, model_dir, onnx_dir, inputs, log)
                    except PathUnavailableError as e:
                        fused = e
                targets[path], details[path] = _fused_path(path, fused, onnx_dir, log)
            elif path == "onnx-int8-static":
                targets[path], details[path] = _try(
                    _prepare_static, clf, onnx_dir, settings, bench, log
                )
            else:
                targets[path], details[path] = _prepare_plain(path, model_dir, onnx_dir)
        except PathUnavailableError as e:
            skipped[path] = str(e)
            log(f"skipping {path}: {e}")
    return targets, skipped, details


def _try(prepare: Callable[..., Any], *args: Any) -> Any:
    """``prepare(*args)``; any failure becomes ``PathUnavailableError`` with its message
    (an optional path must not stop the benchmark of the others)."""
    try:
        return prepare(*args)
    except PathUnavailableError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise PathUnavailableError(f"{type(e).__name__}: {first[:400]}") from e


def _prepare_plain(path: str, model_dir: Path, onnx_dir: Path) -> tuple[Path, dict[str, Any]]:
    from torchformer.export.onnx import INT8_NAME, ONNX_NAME
    from torchformer.export.quantize import bf16_unsupported

    if path in ("torchformer-bf16", "torchformer-bf16-weights", "torchformer-bf16-compile"):
        reason = bf16_unsupported()
        if reason:
            raise PathUnavailableError(reason)
        if path == "torchformer-bf16-weights":
            return model_dir, {"weights": "bfloat16 (every tensor, norms and softmax too)"}
        if path == "torchformer-bf16-compile":
            return model_dir, {"weights": "bfloat16, torch.compile (inductor, frozen weights)"}
        return model_dir, {"autocast": "bfloat16 matmuls, fp32 weights"}
    if path in ("torchformer", "transformers", "torchformer-compile"):
        return model_dir, {}
    if path.startswith("torchao"):
        return model_dir, _torchao_details(path)
    if path == "onnx-int8":
        return onnx_dir / INT8_NAME, {
            "quantization": f"dynamic, per-channel QInt8 weights{_bits()}"
        }
    return onnx_dir / ONNX_NAME, {}


def _prepare_static(
    clf: Any,
    onnx_dir: Path,
    settings: BenchSettings,
    bench: Sequence[str],
    log: Callable[[str], None],
) -> tuple[Path, dict[str, Any]]:
    """``model.int8-static.onnx``, calibrated on texts that are not the benchmark's (made once;
    how it was calibrated is kept in ``export.json``)."""
    from torchformer.export.onnx import ONNX_NAME
    from torchformer.export.quantize import quantize_onnx_static

    target = onnx_dir / STATIC_INT8_NAME
    if target.is_file():
        recorded = _recorded(onnx_dir, "int8_static")
        return target, recorded or {"calibration": f"unknown ({target.name} was already there)"}
    texts, source = calibration_texts(settings, bench)
    info = {
        "quantization": f"static QDQ, per-channel QInt8 weights{_bits()}, QInt8 activations, MinMax",
        "calibration": source,
    }
    log(f"quantizing to static int8 (calibration: {source}) ...")
    feeds = fixed_inputs(clf, texts, settings.batch_size, 0).batches
    quantize_onnx_static(onnx_dir / ONNX_NAME, target, feeds)
    _record(onnx_dir, "int8_static", info)
    return target, info


def _prepare_fused(
    model_dir: Path, onnx_dir: Path, inputs: FixedInputs, log: Callable[[str], None]
) -> tuple[Path, dict[str, Any]]:
    """``model.fused.onnx`` (made when missing), parity-checked against ``model.onnx`` on a
    few of the benchmark's own batches before every use."""
    from torchformer.checkpoints.hf import read_config
    from torchformer.export.onnx import ONNX_NAME
    from torchformer.export.quantize import fuse_onnx

    config = read_config(model_dir)
    heads = _config_int(config, "num_attention_heads", "n_heads")
    width = _config_int(config, "hidden_size", "dim")
    picks = sorted({0, len(inputs.batches) // 2, len(inputs.batches) - 1})
    feeds = [inputs.batches[i] for i in picks] + inputs.singles[:1]
    log(
        f"fusing {onnx_dir / ONNX_NAME} (onnxruntime transformer optimizer) and checking parity ..."
    )
    result = fuse_onnx(
        onnx_dir / ONNX_NAME, onnx_dir / FUSED_NAME, num_heads=heads, hidden_size=width, feeds=feeds
    )
    log(f"fused graph parity {result.parity.summary()}; fused ops {result.ops_after}")
    return result.path, result.to_dict()


def _fused_path(
    path: str,
    fused: tuple[Path, dict[str, Any]] | PathUnavailableError,
    onnx_dir: Path,
    log: Callable[[str], None],
) -> tuple[Path, dict[str, Any]]:
    if isinstance(fused, PathUnavailableError):
        raise PathUnavailableError(
            fused if path == "onnx-fp32-fused" else f"needs the fused graph: {fused}"
        )
    fused_file, info = fused
    if path == "onnx-fp32-fused":
        return fused_file, info
    target = onnx_dir / FUSED_INT8_NAME
    if not target.is_file():
        from torchformer.export.quantize import quantize_onnx

        log(f"quantizing the fused graph to int8 (dynamic, per-channel QInt8{_bits()}) ...")
        _try(quantize_onnx, fused_file, target)
    return target, {
        "quantization": f"dynamic, per-channel QInt8 weights{_bits()}, of the fused graph"
    }


def _torchao_details(path: str) -> dict[str, Any]:
    """What a torchao path runs; unavailable when torchao is not installed."""
    try:
        import torchao
    except ImportError as e:
        raise PathUnavailableError(f"torchao is not installed (pip install torchao): {e}") from e
    config = (
        "Int8DynamicActivationInt8WeightConfig (per-token int8 activations, per-channel int8 weights)"
        if path == "torchao-int8"
        else "Int8WeightOnlyConfig (per-channel int8 weights, fp32 arithmetic)"
    )
    return {"quantization": f"torchao {torchao.__version__} quantize_ {config}, linear layers"}


def _bits() -> str:
    """What the quantizer does to the weights on this CPU (``default_reduce_range``)."""
    from torchformer.export.quantize import default_reduce_range

    return " (7-bit: reduce_range, no VNNI/AMX here)" if default_reduce_range() else ""


def _recorded(onnx_dir: Path, key: str) -> dict[str, Any] | None:
    from torchformer.export.onnx import read_metadata

    try:
        return read_metadata(onnx_dir).get(key)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _record(onnx_dir: Path, key: str, value: dict[str, Any]) -> None:
    """Add ``key`` to the export's ``export.json`` (when it has one)."""
    from torchformer.export.onnx import read_metadata, write_metadata

    try:
        metadata = read_metadata(onnx_dir)
    except (FileNotFoundError, json.JSONDecodeError):
        return
    write_metadata(onnx_dir, metadata | {key: value})
