"""The deployment bench's settings, paths, shared inputs and the model's FLOPs against
the CPU's ceiling (``torchformer bench machine``); see ``bench.deploy``."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PATHS = ("torchformer", "transformers", "onnx-fp32", "onnx-int8")  # the default set
EXTRA_PATHS = (
    "torchformer-bf16",
    "torchformer-bf16-weights",
    "torchformer-compile",
    "torchformer-bf16-compile",
    "onnx-fp32-fused",
    "onnx-int8-fused",
    "onnx-int8-static",
    "torchao-int8",
    "torchao-int8-weight-only",
)
ALL_PATHS = PATHS + EXTRA_PATHS
# The arithmetic of each path's matmuls: which peak of the machine file bounds it. The
# int8 paths quantize the linear layers only (attention stays fp32): most of the FLOPs.
COMPUTE_DTYPE = {
    "torchformer": "fp32",
    "transformers": "fp32",
    "torchformer-compile": "fp32",
    "torchformer-bf16-compile": "bf16",
    "onnx-fp32": "fp32",
    "onnx-fp32-fused": "fp32",
    "torchformer-bf16": "bf16",
    "torchformer-bf16-weights": "bf16",
    "onnx-int8": "int8",
    "onnx-int8-static": "int8",
    "onnx-int8-fused": "int8",
    "torchao-int8": "int8",
    "torchao-int8-weight-only": "fp32",  # int8 storage, fp32 arithmetic
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
