"""``torchformer ensemble``: an ensemble directory over trained classifiers, or (``--average``)
a classifier whose weights are the mean of a run's last checkpoints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _weights(values: list[str] | None) -> list[float] | None:
    """``--weights 1 2`` or ``--weights 1,2`` as floats."""
    if values is None:
        return None
    try:
        return [float(v) for text in values for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--weights: expected numbers, got {' '.join(values)!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ensemble",
        help="combine trained classifiers: average their probabilities, or (--average) "
        "the weights of a run's last checkpoints",
        description="Write an ensemble directory (ensemble.json) over RUN_OR_MODEL ... whose "
        "probabilities are the (weighted) mean of its members'; `torchformer.load`, evaluate, "
        "predict, serve and export take it like a model directory. With --average RUN --last N: "
        "a normal classifier model directory whose weights are the mean of the run's last N "
        "checkpoints up to its best step.",
    )
    p.add_argument(
        "models", nargs="+", metavar="RUN_OR_MODEL", help="run directories (their best/) or models"
    )
    p.add_argument("--out", required=True, type=Path, help="directory to write")
    p.add_argument(
        "--weights", nargs="+", default=None, help="one positive weight per member (default equal)"
    )
    p.add_argument(
        "--average",
        action="store_true",
        help="average the checkpoints of one run (RUN_OR_MODEL is that run) instead",
    )
    p.add_argument("--last", type=int, default=None, help="with --average: how many checkpoints")
    p.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    p.set_defaults(func=ensemble_command)


def ensemble_command(args: argparse.Namespace) -> int:
    from torchformer.tasks.ensemble import average_run, write_ensemble

    if args.average:
        if len(args.models) != 1 or args.last is None or args.weights is not None:
            print("error: --average takes one RUN and --last N (no --weights)", file=sys.stderr)
            return 2
        out = average_run(args.models[0], args.out, last=args.last, overwrite=args.overwrite)
        print(f"averaged the last {args.last} checkpoints of {args.models[0]} into {out}")
        return 0
    if args.last is not None:
        print("error: --last goes with --average", file=sys.stderr)
        return 2
    ensemble = write_ensemble(
        args.out, args.models, weights=_weights(args.weights), overwrite=args.overwrite
    )
    weights = ", ".join(f"{w:.3g}" for w in ensemble.weights)
    print(
        f"ensemble of {len(ensemble.members)} classifiers (weights {weights}; labels "
        f"{ensemble.labels}) written to {args.out}"
    )
    return 0
