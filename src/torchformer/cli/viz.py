"""``torchformer explain`` and ``torchformer report``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _explain(args: argparse.Namespace) -> int:
    from torchformer.viz.explain import write_explain

    image = args.text or args.file
    if image and Path(image).suffix.lower() in IMAGE_SUFFIXES:
        text = image  # an image model's input: the file itself
    elif args.file:
        text = Path(args.file).read_text(encoding="utf-8")
    elif args.text:
        text = args.text
    else:
        print("explain: give a TEXT or --file", file=sys.stderr)
        return 2
    out = write_explain(args.run, text, args.out, window=args.window)
    print(f"explain page written to {out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from torchformer.viz.report import render_report, write_report

    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_report(args.run, n_examples=args.examples), encoding="utf-8")
    else:
        out = write_report(Path(args.run), n_examples=args.examples)
    print(f"report written to {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``explain`` and ``report`` subcommands."""
    p = subparsers.add_parser(
        "explain",
        help="a prediction and its attention as an offline HTML page",
        description="Predict TEXT with the model of RUN (a run directory or model directory) and write "
        "an HTML page with the prediction, a token view, a layer × head grid and an interactive attention view.",
    )
    p.add_argument("run", help="run directory (or a model directory such as RUN/best)")
    p.add_argument(
        "text", nargs="?", help="the text to explain (an image file for an image classifier)"
    )
    p.add_argument("--file", help="read the text from this file instead")
    p.add_argument("--out", default="explain.html", help="output HTML file (default: explain.html)")
    p.add_argument(
        "--window", type=int, default=64, help="tokens per page of the matrix view (default 64)"
    )
    p.set_defaults(func=_explain)

    p = subparsers.add_parser(
        "report",
        help="write RUN/report.html: metrics, plots, errors, attention",
        description="Write a self-contained HTML report of a run directory (no network needed to view it).",
    )
    p.add_argument("run", help="run directory")
    p.add_argument(
        "--examples", type=int, default=4, help="examples with attention views (default 4)"
    )
    p.add_argument("--out", help="write here instead of RUN/report.html")
    p.set_defaults(func=_report)
