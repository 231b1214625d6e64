"""``torchformer bench attention``: time and peak memory of each attention kind against
dense SDPA as the sequence grows, with the fitted growth exponents and the crossover.

One cell = one kind at one length T: the attention of one layer (B = 1, H heads of
width Dh, the inputs' projections excluded) forward, or forward + backward, timed as
the median of ``repeats`` runs after a warm-up. Peak memory is measured in a fresh
process per cell: Linux's resident-set high-water mark (``VmHWM``) is reset just before
the cell's first call (``/proc/self/clear_refs``) and read after, minus the resident set
before, so neither imports nor another cell's allocations count.

The growth exponent of a kind is the slope of log(time) (or log(memory)) against
log(T), fitted by least squares over the lengths from ``fit_from`` on: ~1 means linear,
~2 quadratic. The crossover is the shortest measured T from which the kind is faster
than dense at every longer measured T.

    python -m torchformer.bench.attention --lengths 512 1024 2048 4096 8192 16384
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from torchformer.nn import AttentionPattern, sliding_window_attention
from torchformer.nn.block_sparse import block_sparse_attention
from torchformer.nn.lsh import lsh_attention

KINDS = ("dense_sdpa", "sliding_window", "block_sparse", "lsh")


@dataclass
class AttentionBenchSettings:
    lengths: tuple[int, ...] = (512, 1024, 2048, 4096, 8192, 16384)
    kinds: tuple[str, ...] = KINDS
    heads: int = 4
    head_dim: int = 64
    window: int = 256  # one-sided: Longformer's attention_window 512
    block_size: int = 64  # block_sparse: BigBird-base's 64, 3 random blocks, ITC globals
    random_blocks: int = 3
    chunk_size: int = 64  # lsh: chunks of 64 and 2·T/64 buckets (the Reformer docs' advice),
    hash_rounds: int = 2  # 2 hash rounds
    backward: bool = True
    repeats: int = 3
    threads: int | None = None
    fit_from: int = 2048
    max_seconds: float = 120.0  # a kind stops growing T after a cell this slow


@dataclass
class Cell:
    kind: str
    length: int
    seconds: float | None = None
    peak_mib: float | None = None
    error: str | None = None


@dataclass
class AttentionBench:
    settings: AttentionBenchSettings
    cells: list[Cell] = field(default_factory=list)
    machine: dict = field(default_factory=dict)

    def series(self, kind: str, what: str) -> tuple[list[int], list[float]]:
        rows = [c for c in self.cells if c.kind == kind and getattr(c, what) is not None]
        return [c.length for c in rows], [getattr(c, what) for c in rows]

    def exponent(self, kind: str, what: str = "seconds") -> float | None:
        """Least-squares slope of log(value) on log(T) over T ≥ fit_from."""
        lengths, values = self.series(kind, what)
        points = [
            (math.log(t), math.log(v))
            for t, v in zip(lengths, values)
            if t >= self.settings.fit_from and v > 0
        ]
        if len(points) < 2:
            return None
        mx = statistics.fmean(x for x, _ in points)
        my = statistics.fmean(y for _, y in points)
        sxx = sum((x - mx) ** 2 for x, _ in points)
        return sum((x - mx) * (y - my) for x, y in points) / sxx

    def crossover(self, kind: str) -> int | None:
        """Shortest measured T from which ``kind`` beats dense SDPA at every longer measured
        T (a length dense could not run — out of time or memory — counts as a win). When it
        wins from the shortest length on, the crossover is at or below that length."""
        dense = dict(zip(*self.series("dense_sdpa", "seconds")))
        mine = dict(zip(*self.series(kind, "seconds")))
        best = None
        for t in sorted(mine, reverse=True):
            if t not in dense or mine[t] < dense[t]:
                best = t
            else:
                break
        return best


def _inputs(length: int, s: AttentionBenchSettings, grad: bool):
    g = torch.Generator().manual_seed(length)
    shape = (1, s.heads, length, s.head_dim)
    return [torch.randn(shape, generator=g).requires_grad_(grad) for _ in range(3)]


def _run(kind: str, q, k, v, s: AttentionBenchSettings) -> torch.Tensor:
    if kind == "dense_sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if kind == "sliding_window":
        return sliding_window_attention(
            q, k, v, AttentionPattern("sliding_window", window=s.window)
        )
    if kind == "block_sparse":
        pattern = AttentionPattern(
            "block_sparse", block_size=s.block_size, random_blocks=s.random_blocks
        )
        return block_sparse_attention(q, k, v, pattern)
    if kind == "lsh":
        buckets = max(2, 2 * (q.size(2) // s.chunk_size))  # even; mean bucket: half a chunk
        pattern = AttentionPattern(
            "lsh", buckets=buckets, hash_rounds=s.hash_rounds, chunk_size=s.chunk_size
        )
        return lsh_attention(q, v, pattern)
    raise ValueError(f"unknown attention kind {kind!r}; choose from {', '.join(KINDS)}")


def measure_cell(kind: str, length: int, s: AttentionBenchSettings) -> Cell:
    """Time and peak memory of one cell, in this process (call it in a fresh one)."""
    if s.threads:
        torch.set_num_threads(s.threads)
    q, k, v = _inputs(length, s, s.backward)
    before = _reset_peak_kib()
    times = []
    for i in range(s.repeats + 1):  # the first run warms up (and sets the memory peak)
        start = time.perf_counter()
        out = _run(kind, q, k, v, s)
        if s.backward:
            out.sum().backward()
            q.grad = k.grad = v.grad = None
        if i:
            times.append(time.perf_counter() - start)
        del out
    peak = _peak_kib() - before
    return Cell(kind, length, statistics.median(times), max(peak, 0) / 1024)


def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_kib() -> int:
    """Reset the peak resident set to the current one; returns the current (KiB)."""
    with contextlib.suppress(OSError):  # else VmHWM (or ru_maxrss) may hold an earlier peak
        Path("/proc/self/clear_refs").write_text("5")
    current = _status_kib("VmRSS")
    return current if current is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_kib() -> int:
    peak = _status_kib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _cell_in_subprocess(kind: str, length: int, s: AttentionBenchSettings, timeout: float) -> Cell:
    command = [
        sys.executable,
        "-m",
        "torchformer.bench.attention",
        "--cell",
        kind,
        str(length),
        "--settings",
        json.dumps(asdict(s)),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Cell(kind, length, error=f"over {timeout:.0f} s")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return Cell(kind, length, error=f"exit {done.returncode}: {last[:200]}")
    return Cell(**json.loads(done.stdout.strip().splitlines()[-1]))


def _machine() -> dict:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1]
                break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return {
        "processor": platform.processor() or platform.machine(),
        "cpu_flags": [f for f in wanted if f in flags.split()],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run_attention_bench(s: AttentionBenchSettings, log=print) -> AttentionBench:
    bench = AttentionBench(s, machine=_machine())
    for kind in s.kinds:
        for length in s.lengths:
            cell = _cell_in_subprocess(
                kind, length, s, timeout=s.max_seconds * (s.repeats + 2) + 60
            )
            bench.cells.append(cell)
            what = cell.error or f"{cell.seconds * 1000:.1f} ms, peak +{cell.peak_mib:.0f} MiB"
            log(f"{kind:>15} T={length:>6}: {what}")
            if cell.error or (cell.seconds or 0) > s.max_seconds:
                break  # longer sequences would only be slower
    return bench


def format_table(bench: AttentionBench) -> str:
    s = bench.settings
    pass_ = "forward + backward" if s.backward else "forward"
    lines = [f"| kind | T | {pass_} ms | peak MiB |", "| --- | ---: | ---: | ---: |"]
    for c in bench.cells:
        if c.error:
            lines.append(f"| {c.kind} | {c.length} | {c.error} | |")
        else:
            lines.append(f"| {c.kind} | {c.length} | {c.seconds * 1000:.1f} | {c.peak_mib:.0f} |")
    lines.append("")
    for kind in s.kinds:
        t, m = bench.exponent(kind, "seconds"), bench.exponent(kind, "peak_mib")
        fmt = lambda x: "n/a" if x is None else f"{x:.2f}"  # noqa: E731
        extra = ""
        if kind != "dense_sdpa":
            extra = (
                f"; faster than dense SDPA from T = {bench.crossover(kind) or 'never (measured)'}"
            )
        lines.append(f"- {kind}: time ∝ T^{fmt(t)}, memory ∝ T^{fmt(m)} (T ≥ {s.fit_from}){extra}")
    return "\n".join(lines)


def plot(bench: AttentionBench, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for kind in bench.settings.kinds:
        for ax, what, label in (
            (axes[0], "seconds", "time (s)"),
            (axes[1], "peak_mib", "peak MiB"),
        ):
            x, y = bench.series(kind, what)
            ax.loglog(x, y, marker="o", label=kind)
            ax.set_xlabel("sequence length T")
            ax.set_ylabel(label)
    axes[0].legend()
    s = bench.settings
    fig.suptitle(
        f"one attention layer, H={s.heads}, Dh={s.head_dim}; window ±{s.window}; "
        f"blocks of {s.block_size} + {s.random_blocks} random; LSH chunks of {s.chunk_size}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(bench: AttentionBench, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "settings": asdict(bench.settings),
        "machine": bench.machine,
        "cells": [asdict(c) for c in bench.cells],
        "exponents": {
            k: {"time": bench.exponent(k), "memory": bench.exponent(k, "peak_mib")}
            for k in bench.settings.kinds
        },
        "crossover_tokens": {
            k: bench.crossover(k) for k in bench.settings.kinds if k != "dense_sdpa"
        },
    }
    json_path = out_dir / "attention.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    png = plot(bench, out_dir / "attention.png")
    return json_path, png


def main(argv: list[str] | None = None) -> int:
    d = AttentionBenchSettings()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=list(d.lengths))
    p.add_argument("--kinds", nargs="+", default=list(d.kinds), choices=KINDS)
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--head-dim", type=int, default=d.head_dim)
    p.add_argument("--window", type=int, default=d.window)
    p.add_argument("--block-size", type=int, default=d.block_size)
    p.add_argument("--random-blocks", type=int, default=d.random_blocks)
    p.add_argument("--chunk-size", type=int, default=d.chunk_size)
    p.add_argument("--hash-rounds", type=int, default=d.hash_rounds)
    p.add_argument("--forward-only", action="store_true")
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--fit-from", type=int, default=d.fit_from)
    p.add_argument("--out", default="runs/bench-attention")
    p.add_argument("--cell", nargs=2, metavar=("KIND", "T"), help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.cell:  # a child process: one cell, printed as JSON
        s = AttentionBenchSettings(
            **{
                k: tuple(v) if isinstance(v, list) else v
                for k, v in json.loads(args.settings).items()
            }
        )
        print(json.dumps(asdict(measure_cell(args.cell[0], int(args.cell[1]), s))))
        return 0
    s = AttentionBenchSettings(
        lengths=tuple(args.lengths),
        kinds=tuple(args.kinds),
        heads=args.heads,
        head_dim=args.head_dim,
        window=args.window,
        block_size=args.block_size,
        random_blocks=args.random_blocks,
        chunk_size=args.chunk_size,
        hash_rounds=args.hash_rounds,
        backward=not args.forward_only,
        repeats=args.repeats,
        threads=args.threads,
        fit_from=args.fit_from,
    )
    bench = run_attention_bench(s, log=lambda m: print(m, flush=True))
    json_path, png = write_report(bench, Path(args.out))
    print()
    print(format_table(bench))
    print(f"\nwrote {json_path} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
