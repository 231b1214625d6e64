"""The ``torchformer`` command: one entry point, each subcommand a plain function.

The top floor of the package (DESIGN.md, "Layers"): the modules of this package
may import anything below them and nothing imports them. Each command module
exposes ``register(subparsers)`` which adds its subcommand(s) and sets ``func``
on the parser; modules are imported lazily so that ``torchformer --help`` stays
fast and optional extras stay optional.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that contribute subcommands, in help order.
COMMAND_MODULES = [
    "torchformer.cli.classify",
    "torchformer.cli.translate",
    "torchformer.cli.generate",
    "torchformer.cli.export",
    "torchformer.cli.bench",
    "torchformer.cli.serve",
    "torchformer.cli.viz",
    "torchformer.cli.ensemble",
    "torchformer.cli.ablate",
]


def build_parser() -> argparse.ArgumentParser:
    from torchformer import __version__

    parser = argparse.ArgumentParser(
        prog="torchformer",
        description="Transformers from the attention equation to a fine-tuned, explained, exported and served model.",
    )
    parser.add_argument("--version", action="version", version=f"torchformer {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that part of the toolkit is not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["bench", "attention"]:  # the attention-kind benchmark: its own options
        from torchformer.bench.attention import main as bench_attention

        return bench_attention(argv[2:])
    if argv[:2] == ["bench", "faithfulness"]:  # deletion curves of the attribution methods
        from torchformer.bench.faithfulness import main as bench_faithfulness

        return bench_faithfulness(argv[2:])
    if argv[:2] == ["bench", "seq2seq-throughput"]:  # RNN vs Transformer training tokens/s
        from torchformer.bench.seq2seq_throughput import main as bench_seq2seq

        bench_seq2seq(argv[2:])
        return 0
    if argv[:2] == ["bench", "serve"]:  # open-loop load on a server: throughput, p50/p99 latency
        from torchformer.bench.serve_load import main as bench_serve

        return bench_serve(argv[2:])
    if argv[:2] == ["bench", "machine"]:  # this CPU's measured fp32/bf16/int8 GEMM ceiling
        from torchformer.bench.machine import main as bench_machine

        return bench_machine(argv[2:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    from torchformer.checkpoints.hf import CheckpointError
    from torchformer.train.checkpoint import CheckpointWriteError

    try:
        return int(args.func(args) or 0)
    except (ValueError, CheckpointError, FileNotFoundError, FileExistsError) as e:
        # Bad input (ConfigError and DataError are ValueErrors): the message names the
        # file, record and field; a traceback would only hide it. -v shows one.
        if args.verbose:
            raise
        print(f"error: {e}\n(run with -v for the traceback)", file=sys.stderr)
        return 2
    except (FloatingPointError, CheckpointWriteError) as e:
        # A NaN/inf loss, or a checkpoint that could not be written (a full disk), stopped
        # training; the message names the checkpoint kept to resume from.
        if args.verbose:
            raise
        print(f"error: training stopped: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
