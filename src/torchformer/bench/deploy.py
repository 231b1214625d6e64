"""Deployment benchmark: our PyTorch model, ``transformers``, ONNX fp32 and ONNX int8, in one run.

Every path gets exactly the same inputs: the texts are cleaned, truncated and
tokenized once (the run's ``torchformer.json`` settings), then

- latency: the first ``latency_texts`` texts one at a time (batch 1, no padding);
  p50/p95/p99 over all rounds;
- throughput: all texts sorted by token length and cut into batches of
  ``batch_size``, each padded to its longest text (the same batches, in the same
  order, for every path); texts/s of a whole pass, median over rounds.

Times cover the model call only (tokenization is shared by all paths and
reported once). Each path runs in its own process (``spawn``) with the same
fixed thread count (``torch.set_num_threads`` / onnxruntime ``intra_op_num_threads``),
so its peak resident memory is its own and the ONNX processes never import
torch. After a warm-up, paths are interleaved batch by batch (and text by text
for latency), the first path rotating, so that the load of a shared machine
hits every path alike; the speed-up of each path over ``transformers`` is also
reported per round (paired: same round, same minutes).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PATHS = ("torchformer", "transformers", "onnx-fp32", "onnx-int8")
REFERENCE = "transformers"
WORKER_TIMEOUT_S = 3600.0


@dataclass
class BenchSettings:
    """What to measure and how."""

    n_texts: int = 1000
    batch_size: int = 32
    latency_texts: int = 200
    threads: int | None = None  # None: all cores
    rounds: int = 3
    warmup_batches: int = 3
    seed: int = 0
    texts_file: str | None = None
    text_column: str = "text"
    label_column: str | None = "label"
    paths: tuple[str, ...] = PATHS


@dataclass
class FixedInputs:
    """Pre-tokenized inputs shared by every path (int64 numpy arrays)."""

    batches: list[tuple[np.ndarray, np.ndarray]]  # (B, T) ids and mask, length-sorted
    batch_indices: list[list[int]]  # sample positions of each batch's rows
    singles: list[tuple[np.ndarray, np.ndarray]]  # (1, T) each, sample order
    lengths: list[int]  # tokens per text, special tokens included
    tokenize_s: float = 0.0

    @property
    def padding_fraction(self) -> float:
        real = sum(self.lengths)
        padded = sum(ids.size for ids, _ in self.batches)
        return 1.0 - real / padded if padded else 0.0


@dataclass
class PathResult:
    """Measurements of one path."""

    name: str
    model_file: str
    size_mb: float
    load_s: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    throughput: float = 0.0  # texts/s, median over rounds
    throughput_rounds: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    accuracy: float | None = None
    agreement: float | None = None  # % same label as torchformer fp32
    max_logit_diff: float | None = None  # vs torchformer fp32
    speedup_vs_reference: float | None = None  # median throughput / transformers' median
    speedup_rounds: list[float] = field(default_factory=list)  # paired, round by round


def model_dir_of(run: str | os.PathLike) -> Path:
    """The HF-layout model directory of a run (``best/``) or the directory itself."""
    path = Path(run)
    return path / "best" if (path / "best" / "config.json").is_file() else path


def bench_texts(settings: BenchSettings) -> tuple[list[str], list | None, str]:
    """The benchmark sample: a user file (first N) or a balanced sample of IMDB test reviews."""
    if settings.texts_file:
        from torchformer.data.tabular import read_table

        table = read_table(
            settings.texts_file,
            text_column=settings.text_column,
            label_column=settings.label_column,
        )
        records = table.records[: settings.n_texts]
        source = f"{settings.texts_file} (first {len(records)} records)"
    else:
        from torchformer.data.imdb import balanced_sample, find_imdb, read_imdb

        path = find_imdb()
        records = balanced_sample(
            read_imdb(path, split="test"), settings.n_texts, seed=settings.seed
        )
        source = f"IMDB test reviews, balanced sample of {len(records)} (seed {settings.seed})"
    texts = [r.text for r in records]
    labels = [r.label for r in records] if all(r.label is not None for r in records) else None
    return texts, labels, source


def fixed_inputs(
    clf: Any, texts: Sequence[str], batch_size: int, latency_texts: int
) -> FixedInputs:
    """Tokenize once with the classifier's own ``encode`` and build the shared batches."""
    from torchformer.data.batching import pad_batch

    start = time.perf_counter()
    ids: list[list[int]] = []
    for s in range(0, len(texts), 64):
        input_ids, mask = clf.encode(list(texts[s : s + 64]))  # (B, T) each
        ids += [row[: int(m.sum())].tolist() for row, m in zip(input_ids, mask)]
    tokenize_s = time.perf_counter() - start
    pad_id = clf.tokenizer.pad_id or 0
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    batches, indices = [], []
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        input_ids, mask = pad_batch([ids[i] for i in idx], pad_id)  # (B, T) each
        batches.append((input_ids.numpy(), mask.numpy()))
        indices.append(idx)
    singles = [
        (np.asarray([ids[i]], dtype=np.int64), np.ones((1, len(ids[i])), dtype=np.int64))
        for i in range(min(latency_texts, len(ids)))
    ]
    return FixedInputs(batches, indices, singles, [len(x) for x in ids], tokenize_s)


# --------------------------------------------------------------------------- worker processes
def _peak_rss_mb() -> float:
    """This process's peak resident memory.

    Linux: ``VmHWM`` (reset by exec). ``ru_maxrss`` is not: a spawned child
    inherits the parent's peak through fork+exec, so it is only the fallback.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _load_backend(
    kind: str, target: str, threads: int
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A forward function ids, mask (B, T) -> logits (B, C) for one path."""
    if kind in ("torchformer", "transformers"):
        import torch

        torch.set_num_threads(threads)
        if kind == "torchformer":
            from torchformer.api import load

            model = load(target).model.eval()

            def call(ids, mask):
                return model(ids, attention_mask=mask).logits
        else:
            from transformers import AutoModelForSequenceClassification
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            model = AutoModelForSequenceClassification.from_pretrained(target).eval()

            def call(ids, mask):
                return model(input_ids=ids, attention_mask=mask).logits

        def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return call(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()

        return forward
    from torchformer.export.session import make_session

    session = make_session(target, threads=threads)
    return lambda ids, mask: session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]


def _worker(conn: Any, kind: str, target: str, threads: int) -> None:
    """Child process: load one path, then answer timing commands until told to stop."""
    try:
        start = time.perf_counter()
        forward = _load_backend(kind, target, threads)
        conn.send(("ok", time.perf_counter() - start))
        batches, singles = [], []
        while True:
            command, arg = conn.recv()
            if command == "data":
                batches, singles = arg
                reply = None
            elif command == "warmup":
                for ids, mask in [*batches[-arg:], *singles[:arg]]:
                    forward(ids, mask)
                reply = None
            elif command == "batch":  # arg: (index, return the logits?)
                ids, mask = batches[arg[0]]
                t0 = time.perf_counter()
                logits = forward(ids, mask)
                reply = (time.perf_counter() - t0, logits if arg[1] else None)
            elif command == "single":  # arg: index
                t0 = time.perf_counter()
                forward(*singles[arg])
                reply = time.perf_counter() - t0
            elif command == "peak_rss":
                reply = _peak_rss_mb()
            else:  # "stop"
                conn.send(("ok", None))
                return
            conn.send(("ok", reply))
    except BaseException:
        conn.send(("error", traceback.format_exc()))


class _Worker:
    """Parent-side handle of one path's process."""

    def __init__(self, ctx: Any, kind: str, target: str, threads: int) -> None:
        self.kind = kind
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, kind, target, threads), daemon=True)
        self.process.start()
        child.close()

    def call(self, command: str, arg: Any = None) -> Any:
        if command != "load":
            self.conn.send((command, arg))
        if not self.conn.poll(WORKER_TIMEOUT_S):
            raise TimeoutError(f"benchmark worker {self.kind!r} did not answer {command!r}")
        status, reply = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"benchmark worker {self.kind!r} failed on {command!r}:\n{reply}")
        return reply

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("stop")
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()


# --------------------------------------------------------------------------- orchestration
def _targets(model_dir: Path, onnx_dir: Path | None) -> dict[str, Path]:
    from torchformer.export.onnx import INT8_NAME, ONNX_NAME

    targets = {"torchformer": model_dir, "transformers": model_dir}
    if onnx_dir is not None:
        targets["onnx-fp32"] = onnx_dir / ONNX_NAME
        targets["onnx-int8"] = onnx_dir / INT8_NAME
    return targets


def prepare_onnx(clf: Any, model_dir: Path, onnx_dir: Path, log: Callable[[str], None]) -> Path:
    """Export (with its parity check) and quantize into ``onnx_dir`` unless already there."""
    from torchformer.export.onnx import INT8_NAME, ONNX_NAME, export_classifier
    from torchformer.export.quantize import quantize_onnx

    if not (onnx_dir / ONNX_NAME).is_file():
        log(f"exporting {model_dir} to {onnx_dir} ...")
        result = export_classifier(clf, onnx_dir, source=str(model_dir))
        log(f"parity {result.parity.summary()}")
    if not (onnx_dir / INT8_NAME).is_file():
        log("quantizing to int8 (dynamic, per-channel QInt8; accuracy measured below, no gate) ...")
        quantize_onnx(onnx_dir / ONNX_NAME, onnx_dir / INT8_NAME)
    return onnx_dir


def _size_mb(target: Path) -> float:
    from torchformer.checkpoints.hf import WEIGHTS_NAME

    file = target / WEIGHTS_NAME if target.is_dir() else target
    return file.stat().st_size / 2**20


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
    }


def _in_sample_order(logits: list[np.ndarray], inputs: FixedInputs) -> np.ndarray:
    rows = np.concatenate(logits)  # (N, C) in batch order
    out = np.empty_like(rows)
    out[[i for idx in inputs.batch_indices for i in idx]] = rows
    return out


def _score(
    results: dict[str, PathResult],
    logits: dict[str, np.ndarray],
    gold: list | None,
    labels: list[str],
) -> None:
    from torchformer.export.quantize import accuracy

    ours = logits.get("torchformer")
    for name, result in results.items():
        predicted = logits[name].argmax(-1).tolist()
        if gold is not None:
            result.accuracy = accuracy(predicted, gold, labels)
        if ours is not None:
            result.agreement = 100.0 * float((logits[name].argmax(-1) == ours.argmax(-1)).mean())
            result.max_logit_diff = float(np.abs(logits[name] - ours).max())


def _rotated(items: list[str], k: int) -> list[str]:
    k %= len(items)
    return items[k:] + items[:k]


def _measure_round(workers, inputs, r, results, latencies, logits) -> None:
    """One round, interleaved at the finest grain: every batch (then every single text)
    is run by each path in turn, the starting path rotating, so load changes on a
    shared machine hit all paths alike instead of whichever one ran that minute."""
    paths = list(workers)
    totals = dict.fromkeys(paths, 0.0)
    for b in range(len(inputs.batches)):
        for p in _rotated(paths, r + b):
            seconds, out = workers[p].call("batch", (b, r == 0))
            totals[p] += seconds
            if out is not None:
                logits[p].append(out)
    for p in paths:
        results[p].throughput_rounds.append(len(inputs.lengths) / totals[p])
    for i in range(len(inputs.singles)):
        for p in _rotated(paths, r + i):
            latencies[p].append(workers[p].call("single", i))


def run_benchmark(
    run: str | os.PathLike,
    settings: BenchSettings,
    *,
    onnx_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure every path of ``settings.paths`` on the same texts; returns the report dict.

    Args:
        run: a run directory (its ``best/`` is used) or an HF-layout model directory.
        onnx_dir: an export directory; default ``RUN/bench/onnx``, exported and
            quantized (per-channel dynamic int8) when missing.
    """
    import multiprocessing

    from torchformer.api import load
    from torchformer.checkpoints.hf import read_config
    from torchformer.export.quantize import cpu_int8_support

    model_dir = model_dir_of(run)
    clf = load(model_dir)
    threads = settings.threads or os.cpu_count() or 1
    texts, gold, source = bench_texts(settings)
    inputs = fixed_inputs(clf, texts, settings.batch_size, settings.latency_texts)
    wants_onnx = any(p.startswith("onnx") for p in settings.paths)
    if wants_onnx:
        onnx_dir = Path(onnx_dir) if onnx_dir else Path(run) / "bench" / "onnx"
        prepare_onnx(clf, model_dir, onnx_dir, log)
    targets = _targets(model_dir, Path(onnx_dir) if wants_onnx else None)
    paths = [p for p in settings.paths if p in targets and Path(targets[p]).exists()]
    log(
        f"{len(texts)} texts ({source}); paths {', '.join(paths)}; {threads} threads; {settings.rounds} rounds"
    )
    ctx = multiprocessing.get_context("spawn")
    workers = {p: _Worker(ctx, p, str(targets[p]), threads) for p in paths}
    try:
        results = {
            p: PathResult(p, str(targets[p]), _size_mb(Path(targets[p])), load_s=w.call("load"))
            for p, w in workers.items()
        }
        for w in workers.values():
            w.call("data", (inputs.batches, inputs.singles))
            w.call("warmup", settings.warmup_batches)
        latencies: dict[str, list[float]] = {p: [] for p in paths}
        logits: dict[str, list[np.ndarray]] = {p: [] for p in paths}
        for r in range(settings.rounds):
            _measure_round(workers, inputs, r, results, latencies, logits)
            log(
                f"round {r + 1}/{settings.rounds}: "
                + ", ".join(f"{p} {results[p].throughput_rounds[-1]:.1f}" for p in paths)
                + " texts/s"
            )
        for p, w in workers.items():
            results[p].peak_rss_mb = w.call("peak_rss")
            results[p].latency_ms = _percentiles(latencies[p])
            results[p].throughput = statistics.median(results[p].throughput_rounds)
    finally:
        for w in workers.values():
            w.close()
    ordered = {p: _in_sample_order(parts, inputs) for p, parts in logits.items()}
    _score(results, ordered, gold, clf.labels)
    report = _report(run, model_dir, settings, threads, source, inputs, results, gold is not None)
    report["cpu"] = asdict(cpu_int8_support())
    report["pooling"] = read_config(model_dir).get("torchformer_pooling", "pooler")
    return report


def _report(run, model_dir, settings, threads, source, inputs, results, labelled) -> dict[str, Any]:
    import torchformer

    reference = results.get(REFERENCE)
    for result in results.values():
        if reference is not None and reference.throughput > 0:
            result.speedup_vs_reference = result.throughput / reference.throughput
            result.speedup_rounds = [
                mine / ref
                for mine, ref in zip(result.throughput_rounds, reference.throughput_rounds)
            ]
    best = max(results.values(), key=lambda r: r.throughput)
    return {
        "run": str(run),
        "model_dir": str(model_dir),
        "torchformer_version": torchformer.__version__,
        "settings": asdict(settings) | {"threads": threads},
        "texts": {
            "source": source,
            "n": len(inputs.lengths),
            "labelled": labelled,
            "mean_tokens": float(np.mean(inputs.lengths)),
            "max_tokens": int(max(inputs.lengths)),
            "padding_fraction": inputs.padding_fraction,
            "tokenize_texts_per_s": len(inputs.lengths) / max(inputs.tokenize_s, 1e-9),
        },
        "method": (
            "model call only, on identical pre-tokenized inputs; latency: batch 1, one text per call, "
            f"first {len(inputs.singles)} texts, pooled over rounds; throughput: texts sorted by token "
            f"length, batches of {settings.batch_size} padded to their longest, one pass per round, "
            "median over rounds; each path in its own process; paths interleaved batch by batch "
            "(text by text for latency), first path rotating"
        ),
        "results": {name: asdict(r) for name, r in results.items()},
        "best": best.name,
        "best_vs_reference": best.speedup_vs_reference,
    }


# --------------------------------------------------------------------------- output
def format_table(report: dict[str, Any]) -> str:
    """Markdown table of a report (also readable on a terminal)."""
    head = (
        "| path | p50 ms | p95 ms | p99 ms | texts/s (batch {b}) | × transformers | size MiB "
        "| peak RSS MiB | accuracy % | agree % |"
    ).format(b=report["settings"]["batch_size"])
    rows = [head, "|" + "---|" * 10]
    for name, r in report["results"].items():
        lo, hi = min(r["throughput_rounds"]), max(r["throughput_rounds"])
        speedup = r["speedup_vs_reference"]
        rows.append(
            f"| {name} | {r['latency_ms']['p50']:.1f} | {r['latency_ms']['p95']:.1f} | "
            f"{r['latency_ms']['p99']:.1f} | {r['throughput']:.1f} ({lo:.1f}–{hi:.1f}) | "
            f"{'—' if speedup is None else f'{speedup:.2f}×'} | {r['size_mb']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {_fmt(r['accuracy'])} | {_fmt(r['agreement'])} |"
        )
    return "\n".join(rows)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def summary_lines(report: dict[str, Any]) -> list[str]:
    t = report["texts"]
    lines = [
        f"texts: {t['source']}; {t['n']} texts, mean {t['mean_tokens']:.0f} tokens (max {t['max_tokens']}), "
        f"padding {100 * t['padding_fraction']:.1f}% of batch slots; tokenization {t['tokenize_texts_per_s']:.0f} texts/s",
        f"threads: {report['settings']['threads']}; rounds: {report['settings']['rounds']}; {report['method']}",
        f"CPU: {' '.join(report['cpu']['flags'])}",
    ]
    if report["best_vs_reference"] is not None:
        best = report["best"]
        rounds = report["results"][best].get("speedup_rounds") or []
        paired = (
            f" (paired, round by round: {', '.join(f'{x:.2f}×' for x in rounds)})" if rounds else ""
        )
        lines.append(
            f"best path: {best} at {report['best_vs_reference']:.2f}× the throughput of "
            f"transformers{paired}"
        )
    if report["pooling"] != "pooler":
        lines.append(
            f"note: this model pools with {report['pooling']!r}; transformers' BertForSequenceClassification "
            "always uses the pooler, so its logits and accuracy differ — its speed is still the reference"
        )
    return lines


def write_report(report: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``deploy.json`` and ``deploy.md`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "deploy.json", out / "deploy.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md = [
        "# Deployment benchmark",
        "",
        *[f"- {line}" for line in summary_lines(report)],
        "",
        format_table(report),
        "",
    ]
    md_path.write_text("\n".join(md), encoding="utf-8")
    return json_path, md_path
