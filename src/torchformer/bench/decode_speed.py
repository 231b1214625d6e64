"""Translation decoding speed with and without the KV cache, in one run.

Loads a translation model (a run directory or its ``best/``), takes the first N
source sentences of a Multi30k split (or of a file), and decodes them with beam
search (default beam 5) twice per repeat: with the KV cache (each step runs the
decoder on the newest token only, reusing cached keys/values and the cross-attention
keys/values of the source) and without it (each step re-runs the decoder on the whole
prefix). The two are timed alternately, swapping which goes first on every repeat, so
that drift and other processes' load hit both alike; the claim is the ratio
uncached time / cached time (> 1: the cache is faster), as a ratio of medians and as
the median of the per-repeat paired ratios. Both must produce the same translations.

    python -m torchformer.bench.decode_speed runs/multi30k-small --sentences 100 --beam-size 5

Prints a JSON summary; ``--out FILE`` also writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from torchformer.bench.encoder_speed import machine


def _sources(args: argparse.Namespace) -> list[str]:
    if args.src:
        lines = Path(args.src).read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip()][: args.sentences]
    from torchformer.data.parallel import read_multi30k

    return [p.src for p in read_multi30k(args.data_dir, args.split, "de", "en")][: args.sentences]


def _timed(translator, texts: list[str], args: argparse.Namespace, use_cache: bool):
    start = time.perf_counter()
    out = translator.translate(
        texts,
        beam_size=args.beam_size,
        batch_size=args.batch_size,
        max_len=args.max_len,
        use_cache=use_cache,
    )
    return time.perf_counter() - start, out


def run(args: argparse.Namespace) -> dict:
    """Time cached vs uncached decoding; returns the summary dict."""
    from torchformer.api import load

    torch.set_num_threads(args.threads)
    translator = load(args.run)
    texts = _sources(args)
    _timed(translator, texts[: min(4, len(texts))], args, True)  # warm-up
    times: dict[str, list[float]] = {"cached": [], "uncached": []}
    outputs = {}
    for repeat in range(args.repeats):
        order = ("cached", "uncached") if repeat % 2 == 0 else ("uncached", "cached")
        for name in order:
            seconds, outputs[name] = _timed(translator, texts, args, name == "cached")
            times[name].append(seconds)
    ratios = [u / c for u, c in zip(times["uncached"], times["cached"])]
    same = sum(a == b for a, b in zip(outputs["cached"], outputs["uncached"]))
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_dir": str(args.run),
        "sentences": len(texts),
        "beam_size": args.beam_size,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "cpu": machine(),
        "load_average": list(os.getloadavg()),
        "seconds": times,
        "sentences_per_s": {k: len(texts) / statistics.median(v) for k, v in times.items()},
        "speedup_ratio_of_medians": statistics.median(times["uncached"])
        / statistics.median(times["cached"]),
        "speedup_median_paired": statistics.median(ratios),
        "identical_translations": f"{same}/{len(texts)}",
        "output_tokens": sum(len(t.split()) for t in outputs["cached"]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run directory or translation model directory")
    p.add_argument("--sentences", type=int, default=100)
    p.add_argument("--split", default="val", help="Multi30k split for the sources")
    p.add_argument("--data-dir", default=None, help="Multi30k folder (default: TORCHFORMER_DATA)")
    p.add_argument("--src", help="a file of source sentences instead of Multi30k")
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="also write the JSON summary here")
    args = p.parse_args(argv)
    summary = run(args)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
