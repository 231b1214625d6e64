"""Language-model training throughput: our GPT-2 decoder vs ``transformers``' GPT2LMHeadModel,
the same sizes trained by the same loop, in one run.

Both train ``--steps`` optimizer steps of the shipped ``shakespeare-char`` config (or
``--config``), alternating which goes first over ``--repeats`` rounds; throughput is the
loop's own clock (``train_tokens_per_s`` of each run's summary: tokens over the time in
forward/backward/optimizer steps). Only the model differs (``model.implementation``).

    python -m torchformer.bench.lm_throughput --steps 300 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from torchformer.api import task_config, train


def _run(config_name: Path, implementation: str, args, workdir: Path, round_: int) -> float:
    run_dir = workdir / f"{implementation}-{round_}"
    config = task_config(
        "language_model",
        config_name,
        {
            "run_dir": str(run_dir),
            "model.implementation": implementation,
            "train.max_steps": args.steps,
            "train.warmup_steps": min(100, args.steps // 4),
            "train.eval_every": 10**6,
            "train.progress": False,
            "train.threads": args.threads,
            "data.val_max_blocks": 50,
            "samples.max_new_tokens": 10,
        },
    )
    train(config)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in rows if r["split"] == "summary")["train_tokens_per_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="shakespeare-char")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    config = Path(args.config)
    if not config.is_file():  # a shipped config's name
        import torchformer

        config = Path(torchformer.__file__).parent / "configs" / f"{args.config}.yaml"
    speeds: dict[str, list[float]] = {"torchformer": [], "transformers": []}
    with tempfile.TemporaryDirectory(prefix="tf-lm-bench-") as tmp:
        for r in range(args.repeats):
            order = ["torchformer", "transformers"][:: 1 if r % 2 == 0 else -1]
            for implementation in order:
                speeds[implementation].append(_run(config, implementation, args, Path(tmp), r))
    ours, theirs = (statistics.median(speeds[k]) for k in ("torchformer", "transformers"))
    paired = [a / b for a, b in zip(speeds["torchformer"], speeds["transformers"])]
    for name, values in speeds.items():
        print(
            f"{name:>13}: {statistics.median(values):9.0f} tokens/s  (runs: "
            f"{', '.join(f'{v:.0f}' for v in values)})"
        )
    print(
        f"ratio torchformer / transformers: {ours / theirs:.2f}x (paired: "
        f"{', '.join(f'{p:.2f}' for p in paired)})"
    )
    if args.json:
        result = {
            "tokens_per_s": speeds,
            "ratio": ours / theirs,
            "paired": paired,
            "settings": {k: str(v) for k, v in vars(args).items()},
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
