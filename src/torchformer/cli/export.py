"""``torchformer export`` and ``torchformer quantize``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torchformer.export.onnx import (
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    GRID_BATCHES,
    INT8_NAME,
    ONNX_NAME,
    ParityError,
)
from torchformer.export.quantize import DEFAULT_THRESHOLD

REJECTED_INT8_NAME = "model.int8.rejected.onnx"


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a classifier to ONNX, checked against PyTorch over a grid of shapes",
        description="Export RUN (a run directory, its best/ or any BERT-family HF directory) to "
        "ONNX with dynamic batch and sequence axes; fails (exit 1) when any grid cell's logits "
        "differ from PyTorch's by more than the tolerance.",
    )
    p.add_argument("run", help="run directory, its best/ directory, or an HF model directory")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", required=True, help="export directory to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument(
        "--tolerance", type=float, default=DEFAULT_TOLERANCE, help="max |logit diff| (default 1e-4)"
    )
    p.add_argument(
        "--attn-impl",
        choices=["auto", "sdpa", "reference"],
        default="auto",
        help="attention path: sdpa (one ONNX Attention node per layer, opset >= 23) or the "
        "reference equation; auto picks sdpa from opset 23 on",
    )
    p.add_argument(
        "--batches", type=_int_list, default=GRID_BATCHES, help="grid batch sizes (default 1,3,8)"
    )
    p.add_argument(
        "--lengths",
        type=_int_list,
        default=None,
        help="grid lengths (default 1,7,64,<run max_length>,<model max_len>)",
    )
    p.set_defaults(func=export_command)

    q = subparsers.add_parser(
        "quantize",
        help="int8 ONNX model or bf16 weights, behind an accuracy gate",
        description="--dtype int8 (default): dynamic int8 quantization (onnxruntime, QInt8 "
        "MatMul/Gemm weights). SRC is an export directory or anything `export` accepts "
        "(exported first, with its parity check). --dtype bf16: a PyTorch classifier (run or "
        "model directory) evaluated with bf16 weights; the verdict is written to "
        "<model dir>/bf16_gate.json, which `serve --precision auto` follows. "
        "Refuses (exit 1, both accuracies printed) when the accuracy drops more than "
        "--threshold points below fp32 on the validation slice.",
    )
    q.add_argument("src", help="export directory, run directory or model directory")
    q.add_argument(
        "--dtype",
        choices=["int8", "bf16"],
        default="int8",
        help="int8 ONNX model (default) or bf16 weights of a PyTorch classifier",
    )
    q.add_argument("--out", help="int8: export directory to write model.int8.onnx into (required)")
    q.add_argument("--val-file", help="labelled CSV/TSV/JSONL file (default: IMDB test reviews)")
    q.add_argument("--text-column", default="text")
    q.add_argument("--label-column", default="label")
    q.add_argument(
        "--val-size", type=int, default=1000, help="texts in the validation slice (default 1000)"
    )
    q.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="largest accepted accuracy drop in points (default 1.0)",
    )
    q.add_argument(
        "--no-per-channel",
        dest="per_channel",
        action="store_false",
        help="int8: one weight scale per tensor instead of per output channel",
    )
    q.add_argument(
        "--reduce-range",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="int8: 7-bit weights (default: on for x86 CPUs with AVX2/AVX-512 but no VNNI/AMX, "
        "whose 16-bit multiply-adds saturate; off elsewhere)",
    )
    q.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    q.add_argument("--seed", type=int, default=0, help="seed of the IMDB sample")
    q.set_defaults(func=quantize_command)


def export_command(args: argparse.Namespace) -> int:
    from torchformer.api import load
    from torchformer.export.onnx import export_classifier

    clf = load(args.run)
    if hasattr(clf, "to_pixels"):  # an image classifier
        from torchformer.export.image_onnx import export_image_classifier

        try:
            result = export_image_classifier(
                clf,
                args.out,
                opset=args.opset,
                tolerance=args.tolerance,
                batches=tuple(args.batches),
                source=str(args.run),
            )
        except ParityError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"wrote {result.onnx_path} (opset {args.opset}); parity {result.parity.summary()}")
        return 0
    try:
        result = export_classifier(
            clf,
            args.out,
            attn_impl=args.attn_impl,
            opset=args.opset,
            tolerance=args.tolerance,
            batches=tuple(args.batches),
            lengths=args.lengths,
            source=str(args.run),
        )
    except ParityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {result.onnx_path} (opset {args.opset}); parity {result.parity.summary()}")
    return 0


def _ensure_export(src: Path, out: Path) -> None:
    """Make ``out`` an export directory: copy ``src``'s export, or export ``src`` into it."""
    from torchformer.export.quantize import copy_export

    if (src / ONNX_NAME).is_file():
        if src.resolve() != out.resolve():
            copy_export(src, out)
        return
    from torchformer.api import load
    from torchformer.export.onnx import export_classifier

    result = export_classifier(load(src), out, source=str(src))
    print(f"exported {result.onnx_path}; parity {result.parity.summary()}")


def quantize_command(args: argparse.Namespace) -> int:
    from torchformer.export.onnx import read_metadata, write_metadata
    from torchformer.export.quantize import (
        accuracy_gate,
        cpu_int8_support,
        default_reduce_range,
        quantize_onnx,
    )
    from torchformer.export.runtime import OnnxClassifier

    if args.dtype == "bf16":
        return _gate_bf16_command(args)
    if args.out is None:
        print("error: --out is required with --dtype int8", file=sys.stderr)
        return 2
    support = cpu_int8_support()
    print(support.summary())
    src, out = Path(args.src), Path(args.out)
    try:
        _ensure_export(src, out)
        fp32 = OnnxClassifier.from_dir(out, threads=args.threads)  # refuses a failed parity check
        texts, gold, source = _validation_slice(args)
        if args.reduce_range is None:
            args.reduce_range = default_reduce_range()
        int8_path = quantize_onnx(
            out / ONNX_NAME,
            out / INT8_NAME,
            per_channel=args.per_channel,
            reduce_range=args.reduce_range,
        )
        int8 = OnnxClassifier.from_dir(out, int8=True, threads=args.threads, allow_unchecked=True)
        gate = accuracy_gate(fp32, int8, texts, gold, threshold=args.threshold)
    except (ParityError, FileNotFoundError, ValueError) as e:  # DataError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    kept = int8_path if gate.passed else int8_path.replace(out / REJECTED_INT8_NAME)
    metadata = read_metadata(out)
    metadata["int8"] = _int8_metadata(kept, args, gate, source, support)
    write_metadata(out, metadata)
    print(gate.message())
    if not gate.passed:
        print(f"error: int8 model refused; kept for inspection as {kept}", file=sys.stderr)
        return 1
    fp32_mb, int8_mb = (out / ONNX_NAME).stat().st_size / 2**20, kept.stat().st_size / 2**20
    print(f"wrote {kept} ({int8_mb:.1f} MiB, fp32 {fp32_mb:.1f} MiB)")
    return 0


def _validation_slice(args: argparse.Namespace) -> tuple[list, list, str]:
    """The gate's labelled texts from the command line (``--val-file`` or IMDB test)."""
    from torchformer.export.quantize import validation_slice

    return validation_slice(
        args.val_size,
        file=args.val_file,
        text_column=args.text_column,
        label_column=args.label_column,
        seed=args.seed,
    )


def _gate_bf16_command(args: argparse.Namespace) -> int:
    """``quantize --dtype bf16``: the bf16 accuracy gate of a PyTorch classifier."""
    import torch

    from torchformer.export.bf16 import BF16_GATE_NAME, classifier_dir, gate_bf16
    from torchformer.export.quantize import bf16_unsupported

    if args.out is not None:
        print("error: --out is for int8; bf16's verdict goes next to the weights", file=sys.stderr)
        return 2
    unsupported = bf16_unsupported()
    if unsupported is not None:
        print(f"error: {unsupported}", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        texts, gold, source = _validation_slice(args)
        gate = gate_bf16(args.src, texts, gold, source=source, threshold=args.threshold)
    except (OSError, ValueError) as e:  # DataError is a ValueError; an unwritable directory
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(gate.message())
    print(f"wrote {classifier_dir(args.src) / BF16_GATE_NAME}")
    if not gate.passed:
        print("error: bf16 weights refused; `serve` keeps fp32", file=sys.stderr)
        return 1
    return 0


def _int8_metadata(path: Path, args: argparse.Namespace, gate, source: str, support) -> dict:
    """The ``int8`` entry of ``export.json``: file, how it was made, the gate, the CPU."""
    from torchformer.export.onnx import sha256_of

    return {
        "file": path.name,
        "bytes": path.stat().st_size,
        "sha256": sha256_of(path),
        "quantization": {
            "method": "onnxruntime quantize_dynamic",
            "weight_type": "QInt8",
            "op_types": ["MatMul", "Gemm"],
            "per_channel": args.per_channel,
            "reduce_range": args.reduce_range,
        },
        "gate": {**gate.to_dict(), "source": source},
        "cpu": {"flags": support.flags, "int8_dot_product": support.int8_dot_product},
    }
