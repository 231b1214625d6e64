"""``torchformer bench``: the side-by-side deployment benchmark."""

from __future__ import annotations

import argparse
from pathlib import Path

from torchformer.bench.deploy import ALL_PATHS, PATHS, BenchSettings


def _paths(text: str) -> tuple[str, ...]:
    if text.strip() == "all":
        return ALL_PATHS
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = sorted(set(names) - set(ALL_PATHS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown path(s) {unknown}; choose from {', '.join(ALL_PATHS)}, or 'all'"
        )
    return tuple(dict.fromkeys(names))  # each once, in the order given


def register(subparsers: argparse._SubParsersAction) -> None:
    d = BenchSettings()
    p = subparsers.add_parser(
        "bench",
        help="benchmark PyTorch (fp32, bf16, compiled), transformers and ONNX (fp32, fused, "
        "int8 dynamic and static) on the same texts",
        description="Latency (batch 1), throughput (length-sorted batches), size, peak memory, "
        "accuracy and agreement with torchformer fp32 of each deployment path, measured in one "
        "run on the same pre-tokenized texts (with --machine, also the fraction of the CPU's "
        "peak). "
        "Writes RUN/bench/deploy.json and deploy.md. `torchformer bench attention --help`: "
        "time and memory of each attention kind against dense SDPA as T grows. "
        "`torchformer bench faithfulness --help`: deletion curves of attention, rollout and "
        "integrated gradients. `torchformer bench seq2seq-throughput --help`: training "
        "target tokens/s of the RNN baseline vs the Transformer on the same Multi30k batches.",
    )
    p.add_argument("run", help="run directory (or an HF-layout model directory)")
    p.add_argument(
        "--texts", type=int, default=d.n_texts, help="texts in the sample (default 1000)"
    )
    p.add_argument("--texts-file", help="CSV/TSV/JSONL of texts (default: IMDB test reviews)")
    p.add_argument("--text-column", default=d.text_column)
    p.add_argument("--label-column", default=d.label_column, help="'' for unlabelled texts")
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="throughput batch size (default 32)"
    )
    p.add_argument(
        "--latency-texts", type=int, default=d.latency_texts, help="texts timed at batch 1"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="threads for every path (default: all cores)"
    )
    p.add_argument(
        "--rounds", type=int, default=d.rounds, help="interleaved repetitions (default 3)"
    )
    p.add_argument(
        "--settle-ms",
        type=float,
        default=d.settle_ms,
        help="idle time before each timed call, so the previous path's threads stop spinning "
        f"(default {d.settle_ms:g})",
    )
    p.add_argument(
        "--onnx-dir", help="export directory to use (default: RUN/bench/onnx, made if absent)"
    )
    p.add_argument(
        "--paths",
        type=_paths,
        default=d.paths,
        help=f"comma-separated, from {','.join(ALL_PATHS)}, or 'all' (default {','.join(PATHS)}); "
        "a path that cannot run here is skipped with the reason",
    )
    p.add_argument(
        "--machine",
        help="JSON of `torchformer bench machine --out`: adds each path's fraction of the CPU's "
        "peak for its arithmetic (fp32, bf16, int8)",
    )
    p.add_argument(
        "--calibration-file",
        help="CSV/TSV/JSONL of texts to calibrate onnx-int8-static on (default: the rows of "
        "--texts-file after the sample, or IMDB training reviews)",
    )
    p.add_argument(
        "--calibration-texts",
        type=int,
        default=d.calibration_texts,
        help="calibration texts for onnx-int8-static (default 128)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the IMDB sample")
    p.add_argument("--out", help="output directory (default: RUN/bench)")
    p.set_defaults(func=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    from torchformer.bench.deploy import format_table, run_benchmark, summary_lines, write_report

    settings = BenchSettings(
        n_texts=args.texts,
        batch_size=args.batch_size,
        latency_texts=args.latency_texts,
        threads=args.threads,
        rounds=args.rounds,
        settle_ms=args.settle_ms,
        seed=args.seed,
        texts_file=args.texts_file,
        text_column=args.text_column,
        label_column=args.label_column or None,
        paths=args.paths,
        calibration_file=args.calibration_file,
        calibration_texts=args.calibration_texts,
    )
    report = run_benchmark(
        args.run,
        settings,
        onnx_dir=args.onnx_dir,
        machine=args.machine,
        log=lambda m: print(m, flush=True),
    )
    json_path, md_path = write_report(report, args.out or Path(args.run) / "bench")
    print()
    print(format_table(report))
    print()
    for line in summary_lines(report):
        print(line)
    print(f"wrote {json_path} and {md_path}")
    return 0
