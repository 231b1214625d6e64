"""``torchformer ablate``: a config's baseline and variants over several seeds, in one table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from torchformer.cli.classify import resolve_config

    p = sub.add_parser(
        "ablate",
        help="train a config as is and with each variant's overrides over several seeds; "
        "one table of mean ± std test accuracy and macro F1",
        description="One run per (variant, seed), the baseline (no overrides) included, on the "
        "same data and budget; the seed goes in through train.seed. Finished runs are skipped "
        "on a rerun, an interrupted one resumes. Writes OUT/ablation.json and OUT/ablation.md. "
        "Further --dotted.key value overrides apply to every run.",
    )
    p.add_argument("config", type=resolve_config, help="YAML config, or a shipped config name")
    p.add_argument(
        "--variants",
        nargs="+",
        required=True,
        metavar='NAME="--key value ..."',
        help='e.g. frozen="--model.freeze_encoder true" lr3="--train.lr 3e-4"',
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    p.add_argument(
        "--out", type=Path, default=None, help="output directory (default runs/ablation-CONFIG)"
    )
    p.add_argument(
        "--ensemble",
        nargs="+",
        default=[],
        metavar="NAME",
        help="also combine these variants' seed runs (baseline allowed) into an ensemble, "
        "scored on each seed's test sample: the row NAME-ensemble",
    )
    p.set_defaults(func=ablate_command, accepts_overrides=True)


def _run_as_torchformer() -> bool:
    """Whether ``sys.argv`` is this command's (not a test runner calling ``main``)."""
    return Path(sys.argv[0]).name in ("torchformer", "__main__.py")


def ablate_command(args: argparse.Namespace) -> int:
    from torchformer.bench.ablate import format_markdown, parse_variant, run_ablation

    variants = [parse_variant(text) for text in args.variants]
    report = run_ablation(
        args.config,
        variants,
        seeds=args.seeds,
        out_dir=args.out,
        common=args.overrides,
        ensembles=args.ensemble,
        log=lambda m: print(m, flush=True),
        command=["torchformer", *sys.argv[1:]] if _run_as_torchformer() else None,
    )
    print()
    print(format_markdown(report))
    out = args.out or Path("runs") / f"ablation-{Path(args.config).stem}"
    print(f"wrote {out / 'ablation.json'} and {out / 'ablation.md'}")
    return 0
