"""``torchformer bench faithfulness``: which token attribution explains a classifier better.

For each text of a sample (default: 200 IMDB test reviews, balanced, seeded), the token
scores of attention, attention rollout and integrated gradients
(``viz.attribution``), and each one's deletion curve: the predicted class's probability
as 0%, 10%, …, 100% of the tokens are removed, highest-scored first (special tokens
stay). Reported: the mean area under each curve (lower: the method found the tokens the
prediction depends on), its standard deviation, the share of texts on which each method
is the most faithful, the mean curves, and the same for random orders (the floor).

    torchformer bench faithfulness runs/imdb-demo --texts 200
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from torchformer.bench.deploy import BenchSettings, bench_texts, model_dir_of
from torchformer.viz.attribution import METHODS, faithfulness


def format_table(report: dict) -> str:
    lines = [
        "| method | deletion AUC (mean ± sd) | most faithful on |",
        "|---|---|---|",
    ]
    for method, auc in sorted(report["auc"].items(), key=lambda kv: kv[1]):
        wins = report["wins"].get(method)
        share = "—" if wins is None else f"{100 * wins:.1f}% of texts"
        lines.append(
            f"| {method.replace('_', ' ')} | {auc:.4f} ± {report['auc_std'][method]:.4f} | {share} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    d = BenchSettings()
    p = argparse.ArgumentParser(
        prog="torchformer bench faithfulness", description=__doc__.splitlines()[0]
    )
    p.add_argument("run", help="run directory (or an HF-layout model directory)")
    p.add_argument("--texts", type=int, default=200, help="texts in the sample (default 200)")
    p.add_argument("--texts-file", help="CSV/TSV/JSONL of texts (default: IMDB test reviews)")
    p.add_argument("--text-column", default=d.text_column)
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the IMDB sample")
    p.add_argument("--steps", type=int, default=50, help="integrated gradients' path points")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--random-orders", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", help="output directory (default: RUN/bench)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from torchformer.api import load

    settings = BenchSettings(
        n_texts=args.texts,
        seed=args.seed,
        texts_file=args.texts_file,
        text_column=args.text_column,
        label_column=None,
    )
    texts, _, source = bench_texts(settings)
    classifier = load(args.run)
    start = time.perf_counter()
    report = faithfulness(
        classifier,
        texts,
        methods=args.methods,
        steps=args.steps,
        random_orders=args.random_orders,
        log=lambda m: print(m, flush=True),
    )
    report.update(
        run=str(args.run),
        model_dir=str(model_dir_of(args.run)),
        source=source,
        steps=args.steps,
        seconds=round(time.perf_counter() - start, 1),
        threads=torch.get_num_threads(),
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=platform.processor() or platform.machine(),
    )
    out = Path(args.out) if args.out else model_dir_of(args.run).parent / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "faithfulness.json").write_text(json.dumps(report, indent=2))
    table = format_table(report)
    (out / "faithfulness.md").write_text(f"# Deletion curves: {source}\n\n{table}\n")
    print(table)
    print(f"wrote {out / 'faithfulness.json'} and {out / 'faithfulness.md'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
