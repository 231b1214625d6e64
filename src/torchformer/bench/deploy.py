"""Deployment benchmark: our PyTorch model, ``transformers``, ONNX fp32 and ONNX int8, in one run.

Paths (``PATHS`` by default, any of ``ALL_PATHS`` on request):

- ``torchformer``, ``transformers``: the PyTorch model, ours and Hugging Face's;
- ``torchformer-bf16``: ours under ``torch.autocast("cpu", dtype=torch.bfloat16)``,
  only on CPUs with bf16 dot products;
- ``torchformer-compile``: ours through ``torch.compile`` (inductor, frozen weights,
  dynamic shapes); its compilation is the warm-up, reported apart from the timings;
- ``onnx-fp32``, ``onnx-int8``: the export and its dynamic int8 quantization;
- ``onnx-int8-static``: static int8 (QDQ) calibrated on texts that are not the
  benchmark's;
- ``onnx-fp32-fused``, ``onnx-int8-fused``: onnxruntime's transformer optimizer
  on the export (used only if it reproduces the unfused logits), and its int8.

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
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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

PATHS = ("torchformer", "transformers", "onnx-fp32", "onnx-int8")  # the default set
EXTRA_PATHS = (
    "torchformer-bf16",
    "torchformer-compile",
    "onnx-fp32-fused",
    "onnx-int8-fused",
    "onnx-int8-static",
)
ALL_PATHS = PATHS + EXTRA_PATHS
# The arithmetic of each path's matmuls: which peak of the machine file bounds it. The
# int8 paths quantize the linear layers only (attention stays fp32): most of the FLOPs.
COMPUTE_DTYPE = {
    "torchformer": "fp32",
    "transformers": "fp32",
    "torchformer-compile": "fp32",
    "onnx-fp32": "fp32",
    "onnx-fp32-fused": "fp32",
    "torchformer-bf16": "bf16",
    "onnx-int8": "int8",
    "onnx-int8-static": "int8",
    "onnx-int8-fused": "int8",
}
STATIC_INT8_NAME = "model.int8-static.onnx"
FUSED_NAME = "model.fused.onnx"
FUSED_INT8_NAME = "model.fused.int8.onnx"
REFERENCE = "transformers"


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
    calibration_file: str | None = None  # onnx-int8-static; default: see calibration_texts()
    calibration_texts: int = 128
    settle_ms: float = 10.0  # idle before each timed call (other paths' threads stop spinning)


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
    warmup_s: float = 0.0  # untimed warm-up calls (torchformer-compile: the compilation)
    compute_dtype: str = "fp32"  # the peak it is compared with (COMPUTE_DTYPE)
    achieved_gflops: float | None = None  # model FLOPs (int8: ops) per second, throughput pass
    fraction_of_ceiling: float | None = None  # achieved_gflops / the machine's peak
    details: dict[str, Any] = field(default_factory=dict)  # what is particular to the path


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


def calibration_texts(settings: BenchSettings, bench: Sequence[str]) -> tuple[list[str], str]:
    """Texts to calibrate static int8 on, none of them one of the ``bench`` texts.

    The first ``settings.calibration_texts`` of ``calibration_file``; else the rows of
    ``texts_file`` after the benchmark's own; else a balanced sample of IMDB *training*
    reviews (the benchmark samples the test split).

    Raises:
        ValueError: no text is left once the benchmark's are removed.
    """
    n = settings.calibration_texts
    if settings.calibration_file or settings.texts_file:
        from torchformer.data.tabular import read_table

        file = settings.calibration_file or settings.texts_file
        records = read_table(file, text_column=settings.text_column, label_column=None).records
        if not settings.calibration_file:
            records = records[settings.n_texts :]
        where = (
            "" if settings.calibration_file else f" after the benchmark's first {settings.n_texts}"
        )
        source = f"{file}, rows{where}"
    else:
        from torchformer.data.imdb import balanced_sample, find_imdb, read_imdb

        records = balanced_sample(read_imdb(find_imdb(), split="train"), n, seed=settings.seed)
        source = f"IMDB train reviews, balanced sample (seed {settings.seed})"
    taken = set(bench)
    texts = [r.text for r in records if r.text not in taken][:n]
    if not texts:
        raise ValueError(
            f"no calibration texts in {source} once the benchmark's texts are left out; "
            "give some with --calibration-file"
        )
    return texts, f"{len(texts)} texts of {source}"


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


# --------------------------------------------------------------------------- the CPU's ceiling
def _config_int(config: dict[str, Any], *names: str) -> int:
    for name in names:
        if isinstance(config.get(name), int):
            return config[name]
    raise KeyError(
        f"config.json has none of {', '.join(names)} (an integer): not a BERT-style encoder"
    )


def encoder_flops(
    config: dict[str, Any], batches: Iterable[tuple[np.ndarray, np.ndarray]], *, head: bool = True
) -> float:
    """FLOPs (2 per multiply-add) of a BERT-style encoder classifier over padded batches.

    Per layer and batch (B, T), with width H and feed-forward width F: the linear
    layers 2·B·T·(4·H·H + 2·H·F) (q, k, v, out; FFN up and down), the attention
    scores and weighted sum 4·B·T²·H. With ``head``: the pooler 2·B·H·H (pooling
    "pooler") and the classifier 2·B·H·C. Embeddings, norms, softmax and
    activations, O(B·T·H) each, are left out.

    Args:
        config: the model's config.json (``hidden_size``, ``num_hidden_layers``,
            ``intermediate_size``; DistilBERT's ``dim``, ``n_layers``, ``hidden_dim``).
        batches: (input_ids, attention_mask) pairs, (B, T) each, as run: padding
            included, since the model computes on it.

    Raises:
        KeyError: a size field missing from ``config``.
    """
    d_model = _config_int(config, "hidden_size", "dim")
    n_layers = _config_int(config, "num_hidden_layers", "n_layers")
    d_ff = _config_int(config, "intermediate_size", "hidden_dim")
    n_classes = len(config.get("id2label") or {}) or int(config.get("num_labels", 2))
    pooler = config.get("torchformer_pooling", "pooler") == "pooler"
    total = 0
    for input_ids, _ in batches:
        B, T = input_ids.shape
        linear = 2 * B * T * (4 * d_model * d_model + 2 * d_model * d_ff)
        attention = 4 * B * T * T * d_model
        total += n_layers * (linear + attention)
        if head:
            total += 2 * B * d_model * d_model * pooler + 2 * B * d_model * n_classes
    return float(total)


def read_machine(path: str | os.PathLike) -> dict[str, Any]:
    """The peaks written by ``torchformer bench machine --out FILE.json``.

    Returns:
        {"file", "peaks": {"fp32": GFLOP/s, "bf16": GFLOP/s, "int8": GOP/s}, "threads"}.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or a field missing or not a positive number (named).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a JSON machine file ({e})") from e
    peaks = data.get("peaks") if isinstance(data, dict) else None
    if not isinstance(peaks, dict) or not peaks:
        raise ValueError(
            f"{path}: expected a 'peaks' object ({{\"fp32\": GFLOP/s, ...}}), "
            "as written by `torchformer bench machine --out`"
        )
    for dtype, value in peaks.items():
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 < value < math.inf
        ):
            raise ValueError(f"{path}: peaks.{dtype} must be a positive number, got {value!r}")
    threads = data.get("threads")
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"{path}: threads must be a positive integer, got {threads!r}")
    return {"file": str(path), "peaks": peaks, "threads": threads}


def add_fraction_of_ceiling(
    results: dict[str, PathResult],
    flops_per_pass: float,
    n_texts: int,
    peaks: dict[str, float | None],
) -> None:
    """Each path's achieved GFLOP/s (model FLOPs of one throughput pass × passes/s) and,
    where ``peaks`` has its compute dtype, the fraction of that peak."""
    for result in results.values():
        passes_per_s = result.throughput / n_texts
        result.achieved_gflops = flops_per_pass * passes_per_s / 1e9
        peak = peaks.get(result.compute_dtype)
        result.fraction_of_ceiling = result.achieved_gflops / peak if peak else None


# --------------------------------------------------------------------------- preparation
class PathUnavailableError(Exception):
    """A path that cannot run on this machine or with these inputs; the message says why."""


def prepare_onnx(
    clf: Any, model_dir: Path, onnx_dir: Path, log: Callable[[str], None], *, int8: bool = True
) -> Path:
    """Export (with its parity check) and quantize into ``onnx_dir`` unless already there."""
    from torchformer.export.onnx import INT8_NAME, ONNX_NAME, export_classifier
    from torchformer.export.quantize import quantize_onnx

    if not (onnx_dir / ONNX_NAME).is_file():
        log(f"exporting {model_dir} to {onnx_dir} ...")
        result = export_classifier(clf, onnx_dir, source=str(model_dir))
        log(f"parity {result.parity.summary()}")
    if int8 and not (onnx_dir / INT8_NAME).is_file():
        log("quantizing to int8 (dynamic, per-channel QInt8; accuracy measured below, no gate) ...")
        quantize_onnx(onnx_dir / ONNX_NAME, onnx_dir / INT8_NAME)
    return onnx_dir


def prepare_paths(
    clf: Any,
    model_dir: Path,
    onnx_dir: Path,
    settings: BenchSettings,
    inputs: FixedInputs,
    bench: Sequence[str],
    log: Callable[[str], None],
) -> tuple[dict[str, Path], dict[str, str], dict[str, dict[str, Any]]]:
    """Each wanted path's model (a directory or an ONNX file, made when missing).

    Returns:
        (targets, skipped: path -> why it cannot run, details: path -> what was made).
    """
    if any(p.startswith("onnx") for p in settings.paths):
        prepare_onnx(clf, model_dir, onnx_dir, log, int8="onnx-int8" in settings.paths)
    targets: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    details: dict[str, dict[str, Any]] = {}
    fused: tuple[Path, dict[str, Any]] | PathUnavailableError | None = None
    for path in settings.paths:
        try:
            if path.endswith("-fused"):
                if fused is None:  # made and checked once for both fused paths
                    try:
                        fused = _try(_prepare_fused, model_dir, onnx_dir, inputs, log)
                    except PathUnavailableError as e:
                        fused = e
                targets[path], details[path] = _fused_path(path, fused, onnx_dir, log)
            elif path == "onnx-int8-static":
                targets[path], details[path] = _try(
                    _prepare_static, clf, onnx_dir, settings, bench, log
                )
            else:
                targets[path], details[path] = _prepare_plain(path, model_dir, onnx_dir)
        except PathUnavailableError as e:
            skipped[path] = str(e)
            log(f"skipping {path}: {e}")
    return targets, skipped, details


def _try(prepare: Callable[..., Any], *args: Any) -> Any:
    """``prepare(*args)``; any failure becomes ``PathUnavailableError`` with its message
    (an optional path must not stop the benchmark of the others)."""
    try:
        return prepare(*args)
    except PathUnavailableError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise PathUnavailableError(f"{type(e).__name__}: {first[:400]}") from e


def _prepare_plain(path: str, model_dir: Path, onnx_dir: Path) -> tuple[Path, dict[str, Any]]:
    from torchformer.export.onnx import INT8_NAME, ONNX_NAME
    from torchformer.export.quantize import bf16_unsupported

    if path == "torchformer-bf16":
        reason = bf16_unsupported()
        if reason:
            raise PathUnavailableError(reason)
        return model_dir, {"autocast": "bfloat16 matmuls, fp32 weights"}
    if path in ("torchformer", "transformers", "torchformer-compile"):
        return model_dir, {}
    if path == "onnx-int8":
        return onnx_dir / INT8_NAME, {"quantization": "dynamic, per-channel QInt8 weights"}
    return onnx_dir / ONNX_NAME, {}


def _prepare_static(
    clf: Any,
    onnx_dir: Path,
    settings: BenchSettings,
    bench: Sequence[str],
    log: Callable[[str], None],
) -> tuple[Path, dict[str, Any]]:
    """``model.int8-static.onnx``, calibrated on texts that are not the benchmark's (made once;
    how it was calibrated is kept in ``export.json``)."""
    from torchformer.export.onnx import ONNX_NAME
    from torchformer.export.quantize import quantize_onnx_static

    target = onnx_dir / STATIC_INT8_NAME
    if target.is_file():
        recorded = _recorded(onnx_dir, "int8_static")
        return target, recorded or {"calibration": f"unknown ({target.name} was already there)"}
    texts, source = calibration_texts(settings, bench)
    info = {
        "quantization": "static QDQ, per-channel QInt8 weights, QInt8 activations, MinMax",
        "calibration": source,
    }
    log(f"quantizing to static int8 (calibration: {source}) ...")
    feeds = fixed_inputs(clf, texts, settings.batch_size, 0).batches
    quantize_onnx_static(onnx_dir / ONNX_NAME, target, feeds)
    _record(onnx_dir, "int8_static", info)
    return target, info


def _prepare_fused(
    model_dir: Path, onnx_dir: Path, inputs: FixedInputs, log: Callable[[str], None]
) -> tuple[Path, dict[str, Any]]:
    """``model.fused.onnx`` (made when missing), parity-checked against ``model.onnx`` on a
    few of the benchmark's own batches before every use."""
    from torchformer.checkpoints.hf import read_config
    from torchformer.export.onnx import ONNX_NAME
    from torchformer.export.quantize import fuse_onnx

    config = read_config(model_dir)
    heads = _config_int(config, "num_attention_heads", "n_heads")
    width = _config_int(config, "hidden_size", "dim")
    picks = sorted({0, len(inputs.batches) // 2, len(inputs.batches) - 1})
    feeds = [inputs.batches[i] for i in picks] + inputs.singles[:1]
    log(
        f"fusing {onnx_dir / ONNX_NAME} (onnxruntime transformer optimizer) and checking parity ..."
    )
    result = fuse_onnx(
        onnx_dir / ONNX_NAME, onnx_dir / FUSED_NAME, num_heads=heads, hidden_size=width, feeds=feeds
    )
    log(f"fused graph parity {result.parity.summary()}; fused ops {result.ops_after}")
    return result.path, result.to_dict()


def _fused_path(
    path: str,
    fused: tuple[Path, dict[str, Any]] | PathUnavailableError,
    onnx_dir: Path,
    log: Callable[[str], None],
) -> tuple[Path, dict[str, Any]]:
    if isinstance(fused, PathUnavailableError):
        raise PathUnavailableError(
            fused if path == "onnx-fp32-fused" else f"needs the fused graph: {fused}"
        )
    fused_file, info = fused
    if path == "onnx-fp32-fused":
        return fused_file, info
    target = onnx_dir / FUSED_INT8_NAME
    if not target.is_file():
        from torchformer.export.quantize import quantize_onnx

        log("quantizing the fused graph to int8 (dynamic, per-channel QInt8) ...")
        _try(quantize_onnx, fused_file, target)
    return target, {"quantization": "dynamic, per-channel QInt8 weights, of the fused graph"}


def _recorded(onnx_dir: Path, key: str) -> dict[str, Any] | None:
    from torchformer.export.onnx import read_metadata

    try:
        return read_metadata(onnx_dir).get(key)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _record(onnx_dir: Path, key: str, value: dict[str, Any]) -> None:
    """Add ``key`` to the export's ``export.json`` (when it has one)."""
    from torchformer.export.onnx import read_metadata, write_metadata

    try:
        metadata = read_metadata(onnx_dir)
    except (FileNotFoundError, json.JSONDecodeError):
        return
    write_metadata(onnx_dir, metadata | {key: value})


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
