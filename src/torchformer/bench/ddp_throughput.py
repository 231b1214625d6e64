"""Training throughput on N torchrun processes vs one process, in one run.

The same classification config (packaged MiniLM on a balanced IMDB sample, global
batch ``--batch-size``) trains ``--steps`` optimizer steps twice: once in one process
with all ``--threads`` threads, once under ``torchrun --nproc_per_node N`` (gloo on CPU)
with ``threads / N`` threads per process, so both use the same cores. Throughput is the
loop's own clock (``train_samples_per_s`` of the run's summary: global samples over the
time in forward/backward/optimizer steps, evaluation excluded).

On one CPU machine this proves the distributed path runs and what it costs; it is not
where DDP pays off (the cores are already shared by one process's threads, and every
step adds an all-reduce of the gradients). Expect <= 1.0x.

    python -m torchformer.bench.ddp_throughput --nproc 2 --steps 30 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from torchformer.api import task_config
from torchformer.config import config_to_dict


def _config(args, run_dir: Path) -> dict:
    config = task_config(
        "classification",
        None,
        {
            "run_dir": str(run_dir),
            "report": False,
            "data.source": "imdb",
            "data.train_samples": args.samples,
            "data.val_samples": 64,
            "data.test_samples": 64,
            "data.max_length": args.max_length,
            "model.base": "minilm",
            "model.pooling": "mean",
            "train.max_steps": args.steps,
            "train.epochs": 100,
            "train.batch_size": args.batch_size,
            "train.lr": 1e-4,
            "train.eval_every": 10**6,
            "train.progress": False,
            "train.precision": args.precision,
            "train.seed": args.seed,
        },
    )
    return config_to_dict(config)


def _run(args, workdir: Path, nproc: int) -> dict:
    run_dir = workdir / f"nproc{nproc}"
    config = _config(args, run_dir)
    config["train"]["threads"] = max(1, args.threads // nproc)
    path = workdir / f"nproc{nproc}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    entry = ["-m", "torchformer", "train", str(path)]
    if nproc == 1:
        cmd = [sys.executable, *entry]
    else:
        torchrun = str(Path(sys.executable).parent / "torchrun")
        cmd = [torchrun, "--standalone", "--nproc_per_node", str(nproc), *entry]
    env = dict(os.environ, OMP_NUM_THREADS=str(config["train"]["threads"]))
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = next(r for r in rows if r["split"] == "summary")
    return {
        "processes": nproc,
        "threads_per_process": config["train"]["threads"],
        "world_size": summary["world_size"],
        "samples": summary["samples"],
        "train_seconds": summary["train_seconds"],
        "samples_per_s": summary["train_samples_per_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 2, help="cores to use in all"
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch")
    parser.add_argument("--samples", type=int, default=800)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tf-ddp-bench-") as tmp:
        single = _run(args, Path(tmp), 1)
        multi = _run(args, Path(tmp), args.nproc)
    ratio = multi["samples_per_s"] / single["samples_per_s"]
    result = {
        "single": single,
        "distributed": multi,
        "ratio_distributed_vs_single": ratio,
        "settings": vars(args) | {"json": str(args.json) if args.json else None},
    }
    for row in (single, multi):
        print(
            f"{row['processes']} process(es) x {row['threads_per_process']} thread(s): "
            f"{row['samples_per_s']:.2f} samples/s ({row['samples']} samples in "
            f"{row['train_seconds']:.1f} s)"
        )
    print(f"{args.nproc} processes / 1 process: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
