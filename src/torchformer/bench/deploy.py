"""Deployment benchmark: our PyTorch model, ``transformers``, ONNX fp32 and ONNX int8, in one run.

Paths (``PATHS`` by default, any of ``ALL_PATHS`` on request):

- ``torchformer``, ``transformers``: the PyTorch model, ours and Hugging Face's;
- ``torchformer-bf16``: ours under ``torch.autocast("cpu", dtype=torch.bfloat16)``,
  only on CPUs with bf16 dot products; ``torchformer-bf16-weights``: ours with every
  weight in bf16 (``model.to(torch.bfloat16)``: no weight casts per call, but layer
  norms and softmax in bf16 too — the accuracy columns say what that costs);
- ``torchformer-compile``: ours through ``torch.compile`` (inductor, frozen weights,
  dynamic shapes); its compilation is the warm-up, reported apart from the timings;
  ``torchformer-bf16-compile``: the same with bf16 weights (bf16 CPUs only);
- ``onnx-fp32``, ``onnx-int8``: the export and its dynamic int8 quantization;
- ``onnx-int8-static``: static int8 (QDQ) calibrated on texts that are not the
  benchmark's;
- ``onnx-fp32-fused``, ``onnx-int8-fused``: onnxruntime's transformer optimizer
  on the export (used only if it reproduces the unfused logits), and its int8;
- ``torchao-int8``, ``torchao-int8-weight-only``: ours with torchao's ``quantize_``
  (dynamic int8 activations and int8 weights, or int8 weights only), when torchao is
  installed.

A path that cannot run here (no bf16 instructions, compilation failing, a fused
graph refused by its parity check, no calibration texts) is skipped with the
reason, in the log and in the report. Every measured path is scored against
torchformer fp32 (label agreement, max logit difference) on the same texts.

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
for latency) in a fresh seeded order per item, with the machine left idle for
``settle_ms`` before each call, so that the load of a shared machine and the still
spinning threads of the previous call hit every path alike; the speed-up of each path over ``transformers`` is also
reported per round (paired: same round, same minutes).

With a machine file (``torchformer bench machine --out FILE.json``), each path
also gets its fraction of the CPU's ceiling: the model's FLOPs over the
throughput pass (``encoder_flops``, padding included) times passes per second,
over the measured peak of the arithmetic the path runs in (``COMPUTE_DTYPE``).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from torchformer.bench.deploy_inputs import (  # noqa: F401  (re-exported)
    ALL_PATHS,
    COMPUTE_DTYPE,
    EXTRA_PATHS,
    FUSED_INT8_NAME,
    FUSED_NAME,
    PATHS,
    REFERENCE,
    STATIC_INT8_NAME,
    BenchSettings,
    FixedInputs,
    PathResult,
    _config_int,
    add_fraction_of_ceiling,
    bench_texts,
    calibration_texts,
    encoder_flops,
    fixed_inputs,
    model_dir_of,
    read_machine,
)
from torchformer.bench.deploy_paths import (  # noqa: F401  (re-exported)
    PathUnavailableError,
    _fused_path,
    _prepare_fused,
    _prepare_plain,
    _prepare_static,
    _record,
    _recorded,
    _try,
    prepare_onnx,
    prepare_paths,
)
from torchformer.bench.deploy_worker import (  # noqa: F401  (re-exported)
    WorkerError,
    _Backend,
    _compiled_backend,
    _load_backend,
    _peak_rss_mb,
    _transformers_backend,
    _Worker,
    _worker,
)


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


def _reference_logits(clf: Any, inputs: FixedInputs) -> np.ndarray:
    """torchformer fp32's logits (N, C) in sample order, computed here when that path is
    not measured (untimed, before the workers start)."""
    import torch

    with torch.inference_mode():
        parts = [
            clf.model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
            .logits.float()
            .numpy()
            for ids, mask in inputs.batches
        ]
    return _in_sample_order(parts, inputs)


def _score(
    results: dict[str, PathResult],
    logits: dict[str, np.ndarray],
    reference: np.ndarray | None,
    gold: list | None,
    labels: list[str],
) -> None:
    """Accuracy, and agreement and max logit difference against torchformer fp32 (``reference``)."""
    from torchformer.export.quantize import accuracy

    for name, result in results.items():
        predicted = logits[name].argmax(-1).tolist()
        if gold is not None:
            result.accuracy = accuracy(predicted, gold, labels)
        if reference is not None:
            result.agreement = 100.0 * float(
                (logits[name].argmax(-1) == reference.argmax(-1)).mean()
            )
            result.max_logit_diff = float(np.abs(logits[name] - reference).max())


def call_order(paths: Sequence[str], seed: int, r: int, i: int) -> list[str]:
    """The order in which the paths run item ``i`` of round ``r``: a fresh seeded shuffle
    per item, so that every path follows every other one equally often.

    A rotation (the first path moving on by one each item) keeps the cyclic order, so each
    path always ran right after the same neighbour, and a neighbour whose threads were still
    spinning (onnxruntime's and OpenMP's worker threads busy-wait for a while after a call)
    slowed that one path only: our batch-1 p50 read 63 ms behind onnx-int8-static against
    41 ms for transformers, which always followed us (docs/results.md, issue 17).
    """
    order = list(paths)
    random.Random(f"{seed}:{r}:{i}").shuffle(order)
    return order


def _measure_round(workers, inputs, r, results, latencies, logits, settings) -> None:
    """One round, interleaved at the finest grain: every batch (then every single text) is
    run by each path in turn (``call_order``), so load changes on a shared machine hit all
    paths alike instead of whichever one ran that minute; before each call the machine is
    left idle for ``settle_ms`` (untimed), so no other path's threads still spin."""
    paths = list(workers)
    totals = dict.fromkeys(paths, 0.0)
    settle = settings.settle_ms / 1000
    for b in range(len(inputs.batches)):
        for p in call_order(paths, settings.seed, r, b):
            time.sleep(settle)
            seconds, out = workers[p].call("batch", (b, r == 0))
            totals[p] += seconds
            if out is not None:
                logits[p].append(out)
    for p in paths:
        results[p].throughput_rounds.append(len(inputs.lengths) / totals[p])
    for i in range(len(inputs.singles)):
        for p in call_order(paths, settings.seed, r, len(inputs.batches) + i):
            time.sleep(settle)
            latencies[p].append(workers[p].call("single", i))


def _start_workers(
    workers: dict[str, _Worker],
    targets: dict[str, Path],
    details: dict[str, dict[str, Any]],
    inputs: FixedInputs,
    settings: BenchSettings,
    skipped: dict[str, str],
    log: Callable[[str], None],
) -> dict[str, PathResult]:
    """Load and warm up each path's process (one at a time, so a compilation has the
    machine); a path whose process fails to load or warm up is closed, removed from
    ``workers`` and skipped with the error."""
    results: dict[str, PathResult] = {}
    for p, w in list(workers.items()):
        try:
            load_s = w.call("load")
            w.call("data", (inputs.batches, inputs.singles))
            warm = w.call("warmup", settings.warmup_batches)
        except (WorkerError, TimeoutError) as e:
            skipped[p] = getattr(e, "reason", str(e))
            log(f"skipping {p}: {skipped[p]}")
            w.close()
            del workers[p]
            continue
        result = PathResult(p, str(targets[p]), _size_mb(targets[p]), load_s=load_s)
        result.warmup_s, result.compute_dtype = warm.pop("seconds"), COMPUTE_DTYPE[p]
        result.details = dict(details.get(p, {}))
        if "graphs_compiled" in warm:
            result.details["compile_s"] = result.warmup_s
            result.details["graphs_compiled_in_warmup"] = warm["graphs_compiled"]
        results[p] = result
    return results


def _measure(
    workers: dict[str, _Worker],
    results: dict[str, PathResult],
    inputs: FixedInputs,
    settings: BenchSettings,
    log: Callable[[str], None],
) -> dict[str, list[np.ndarray]]:
    """The interleaved rounds; fills ``results``, returns each path's logits (batch order)."""
    paths = list(workers)
    latencies: dict[str, list[float]] = {p: [] for p in paths}
    logits: dict[str, list[np.ndarray]] = {p: [] for p in paths}
    for r in range(settings.rounds if paths else 0):
        _measure_round(workers, inputs, r, results, latencies, logits, settings)
        log(
            f"round {r + 1}/{settings.rounds}: "
            + ", ".join(f"{p} {results[p].throughput_rounds[-1]:.1f}" for p in paths)
            + " texts/s"
        )
    for p, w in workers.items():
        results[p].peak_rss_mb = w.call("peak_rss")
        results[p].latency_ms = _percentiles(latencies[p])
        results[p].throughput = statistics.median(results[p].throughput_rounds)
        compiled_in_warmup = results[p].details.get("graphs_compiled_in_warmup")
        if compiled_in_warmup is not None:  # a graph compiled inside the timed region
            compiled = w.call("details")["graphs_compiled"] - compiled_in_warmup
            results[p].details["recompilations_while_timed"] = compiled
    return logits


def run_benchmark(
    run: str | os.PathLike,
    settings: BenchSettings,
    *,
    onnx_dir: str | os.PathLike | None = None,
    machine: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure every path of ``settings.paths`` on the same texts; returns the report dict.

    Args:
        run: a run directory (its ``best/`` is used) or an HF-layout model directory.
        onnx_dir: an export directory; default ``RUN/bench/onnx``, exported and
            quantized (per-channel dynamic int8) when missing; the static int8 and
            fused graphs are added to it when asked for and missing.
        machine: a ``torchformer bench machine --out`` file: adds each path's
            fraction of the CPU's peak (``read_machine``).
    """
    import multiprocessing

    from torchformer.api import load
    from torchformer.checkpoints.hf import read_config
    from torchformer.export.quantize import cpu_int8_support

    machine_info = read_machine(machine) if machine is not None else None  # fail before the work
    model_dir = model_dir_of(run)
    clf = load(model_dir)
    threads = settings.threads or os.cpu_count() or 1
    texts, gold, source = bench_texts(settings)
    inputs = fixed_inputs(clf, texts, settings.batch_size, settings.latency_texts)
    onnx_dir = Path(onnx_dir) if onnx_dir else Path(run) / "bench" / "onnx"
    targets, skipped, details = prepare_paths(
        clf, model_dir, onnx_dir, settings, inputs, texts, log
    )
    reference = None if "torchformer" in targets else _reference_logits(clf, inputs)
    log(
        f"{len(texts)} texts ({source}); paths {', '.join(targets)}; {threads} threads; {settings.rounds} rounds"
    )
    ctx = multiprocessing.get_context("spawn")
    workers = {p: _Worker(ctx, p, str(target), threads) for p, target in targets.items()}
    try:
        results = _start_workers(workers, targets, details, inputs, settings, skipped, log)
        logits = _measure(workers, results, inputs, settings, log)
    finally:
        for w in workers.values():
            w.close()
    ordered = {p: _in_sample_order(parts, inputs) for p, parts in logits.items()}
    if reference is None:
        reference = ordered.get("torchformer")
    _score(results, ordered, reference, gold, clf.labels)
    config = read_config(model_dir)
    report_ceiling = _ceiling(config, inputs, results, machine_info, threads, log)
    report = _report(run, model_dir, settings, threads, source, inputs, results, gold is not None)
    report["skipped"] = skipped
    # The scale the quantized paths' max logit difference is read against (it depends on
    # the model, and int8 error on the CPU's kernels: VNNI or plain AVX2).
    report["reference_logit_range"] = (
        float(reference.max() - reference.min()) if reference is not None else None
    )
    report |= report_ceiling
    report["cpu"] = asdict(cpu_int8_support())
    report["pooling"] = config.get("torchformer_pooling", "pooler")
    return report


def _ceiling(
    config: dict[str, Any],
    inputs: FixedInputs,
    results: dict[str, PathResult],
    machine: dict[str, Any] | None,
    threads: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The report's "flops" and "machine" entries; sets each result's achieved GFLOP/s and
    fraction of the machine's peak."""
    if machine is not None:
        machine = dict(machine, warning=None)
        if machine["threads"] is not None and machine["threads"] != threads:
            machine["warning"] = (
                f"the machine's peaks were measured on {machine['threads']} threads, the "
                f"benchmark ran on {threads}: the fractions compare unlike things"
            )
            log(f"WARNING: {machine['warning']}")
    try:
        per_pass = encoder_flops(config, inputs.batches)
    except KeyError as e:
        log(f"no FLOP count: {e.args[0]}")
        return {"flops": None, "machine": machine}
    add_fraction_of_ceiling(
        results, per_pass, len(inputs.lengths), machine["peaks"] if machine else {}
    )
    flops = {
        "per_pass": per_pass,
        "per_text": per_pass / len(inputs.lengths),
        "formula": "per layer 2·B·T·(4·H² + 2·H·F) + 4·B·T²·H, plus pooler and classifier, "
        "over the padded throughput batches",
    }
    return {"flops": flops, "machine": machine}


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
    best = max(results.values(), key=lambda r: r.throughput, default=None)
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
            "(text by text for latency) in a fresh seeded order per item, "
            f"{settings.settle_ms:g} ms idle before each call; agreement and max logit "
            "difference against torchformer fp32 on the throughput pass"
        ),
        "results": {name: asdict(r) for name, r in results.items()},
        "best": best.name if best else None,
        "best_vs_reference": best.speedup_vs_reference if best else None,
    }


# --------------------------------------------------------------------------- output
def format_table(report: dict[str, Any]) -> str:
    """Markdown table of a report (also readable on a terminal); with a machine file, two
    more columns: achieved G(FL)OP/s and the fraction of the peak of the path's dtype."""
    ceiling = bool(report.get("machine"))
    head = (
        "| path | p50 ms | p95 ms | p99 ms | texts/s (batch {b}) | × transformers | size MiB "
        "| peak RSS MiB | accuracy % | agree % | max Δ logit |"
    ).format(b=report["settings"]["batch_size"])
    if ceiling:
        head += " G(FL)OP/s | % of ceiling |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in report["results"].items():
        lo, hi = min(r["throughput_rounds"]), max(r["throughput_rounds"])
        speedup = r["speedup_vs_reference"]
        diff = r.get("max_logit_diff")
        row = (
            f"| {name} | {r['latency_ms']['p50']:.1f} | {r['latency_ms']['p95']:.1f} | "
            f"{r['latency_ms']['p99']:.1f} | {r['throughput']:.1f} ({lo:.1f}–{hi:.1f}) | "
            f"{'—' if speedup is None else f'{speedup:.2f}×'} | {r['size_mb']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {_fmt(r['accuracy'])} | {_fmt(r['agreement'])} | "
            f"{'—' if diff is None else f'{diff:.2g}'} |"
        )
        if ceiling:
            fraction, dtype = r.get("fraction_of_ceiling"), r.get("compute_dtype")
            share = "—" if fraction is None else f"{100 * fraction:.1f} ({dtype})"
            row += f" {_fmt(r.get('achieved_gflops'))} | {share} |"
        rows.append(row)
    return "\n".join(rows)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _fmt_detail(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt_detail(v)}" for k, v in value.items()) or "none"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def summary_lines(report: dict[str, Any]) -> list[str]:
    t = report["texts"]
    lines = [
        f"texts: {t['source']}; {t['n']} texts, mean {t['mean_tokens']:.0f} tokens (max {t['max_tokens']}), "
        f"padding {100 * t['padding_fraction']:.1f}% of batch slots; tokenization {t['tokenize_texts_per_s']:.0f} texts/s",
        f"threads: {report['settings']['threads']}; rounds: {report['settings']['rounds']}; {report['method']}",
        f"CPU: {' '.join(report['cpu']['flags'])}",
    ]
    for name, r in report["results"].items():
        if r.get("details"):
            what = "; ".join(
                f"{k.replace('_', ' ')}: {_fmt_detail(v)}" for k, v in r["details"].items()
            )
            lines.append(f"{name}: {what}")
    for name, reason in (report.get("skipped") or {}).items():
        lines.append(f"skipped {name}: {reason}")
    lines += _ceiling_lines(report)
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


def _ceiling_lines(report: dict[str, Any]) -> list[str]:
    flops, machine = report.get("flops"), report.get("machine")
    lines = []
    if flops:
        lines.append(
            f"model FLOPs: {flops['per_pass'] / 1e9:.3g} G per throughput pass "
            f"({flops['per_text'] / 1e9:.3g} G per text; {flops['formula']})"
        )
    if machine:
        peaks = ", ".join(f"{k} {_fmt_detail(v)}" for k, v in machine["peaks"].items())
        lines.append(
            f"ceiling: {machine['file']} (peaks G(FL)OP/s: {peaks}; measured on "
            f"{machine['threads'] or '?'} threads); int8 paths quantize the linear layers only"
        )
        if machine.get("warning"):
            lines.append(f"WARNING: {machine['warning']}")
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
