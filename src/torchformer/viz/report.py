"""The run report: one self-contained ``report.html`` written from a run directory alone.

``write_report(run_dir)`` (and ``torchformer report RUN``) reads only what a
run wrote (see DESIGN.md) and renders, with images and scripts inlined:

- summary: model, final metrics per evaluated split, classification report;
- training: learning curves (train/validation loss, validation metrics,
  learning rate) and BLEU per epoch for translation runs;
- evaluation: confusion matrix, confidence histogram + reliability diagram,
  accuracy by input length;
- error analysis: the most confidently wrong examples;
- attention views for a few wrong and correct examples (the model is loaded
  from ``best/`` through ``torchformer.load``);
- the resolved config and the manifest.

A section whose files are missing (an interrupted run, a translation run)
says so instead of failing the whole report; a malformed file is an error
that names it.
"""

from __future__ import annotations

import html
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from torchformer.evaluate.classification import expected_calibration_error
from torchformer.train.logging import read_metrics
from torchformer.viz.attention import attention_for_text
from torchformer.viz.attribution import token_attributions
from torchformer.viz.explain import attention_html, attribution_html
from torchformer.viz.image_report import (
    image_attention_examples,
    image_errors_table,
    thumbnail,
)
from torchformer.viz.plots import (
    plot_accuracy_by_length,
    plot_bleu,
    plot_calibration,
    plot_confusion_matrix,
    plot_learning_curves,
    png_data_uri,
)
from torchformer.viz.report_parts import (
    CONF_KEYS,
    PRED_KEYS,
    TEXT_KEYS,
    TRUE_KEYS,
    first,
)
from torchformer.viz.report_parts import fmt as _fmt
from torchformer.viz.report_parts import note as _note
from torchformer.viz.templates import page

__all__ = ["EvalFiles", "read_evaluation", "render_report", "write_report"]

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
REPORT_MAX_VALUES = 120_000  # numbers per example for the matrix view (≈ 0.8 MB of JSON)
ERROR_ROWS = 50
EXCERPT_CHARS = 400


@dataclass
class EvalFiles:
    """What ``eval/<split>/`` holds; fields stay empty when a file is absent."""

    split: str
    directory: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    report_text: str = ""
    labels: list[str] = field(default_factory=list)
    confusion: list[list[int]] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    correct: list[dict[str, Any]] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    is_correct: list[bool] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    # Split on "\n" only: str.splitlines() also breaks at U+0085 / U+2028, which JSON leaves
    # unescaped inside strings (IMDB reviews contain them).
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON record: {e}") from e
    return records


def _columns(data: Any) -> dict[str, list] | None:
    """Per-example columns from ``{"confidence": [...], ...}`` or a list of records."""
    if isinstance(data, dict) and isinstance(data.get("confidence"), list):
        return data
    if isinstance(data, list) and data and isinstance(data[0], dict) and "confidence" in data[0]:
        keys = set().union(*(r.keys() for r in data))
        return {k: [r.get(k) for r in data] for k in keys}
    return None


def _load_columns(path: Path) -> dict[str, list] | None:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            return (
                {k: arrays[k].tolist() for k in arrays.files}
                if "confidence" in arrays.files
                else None
            )
    return _columns(_read_jsonl(path) if path.suffix == ".jsonl" else _read_json(path))


def _use_columns(files: EvalFiles, columns: dict[str, list]) -> None:
    files.confidence = [float(c) for c in columns["confidence"]]
    if "correct" in columns:
        files.is_correct = [bool(c) for c in columns["correct"]]
    else:  # true and predicted labels instead
        true, pred = first(columns, TRUE_KEYS, []), first(columns, PRED_KEYS, [])
        files.is_correct = [t == p for t, p in zip(true, pred)]
    files.lengths = [int(n) for n in first(columns, ("length", "lengths", "n_tokens"), [])]
    if first(columns, TEXT_KEYS) and not files.correct:  # texts stored too: correct examples
        rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
        files.correct = [r for r, ok in zip(rows, files.is_correct) if ok and first(r, TEXT_KEYS)]


def _per_example(eval_dir: Path, files: EvalFiles) -> None:
    """Confidence / correctness / length arrays, from whichever file of the split holds them.

    ``metrics.json`` under ``"examples"``, or any other ``*.json``
    (``{"confidence": [...], "correct": [...], "length": [...]}``), ``*.jsonl`` (one
    such record per example) or ``*.npz`` with a ``confidence`` array.
    """
    columns = _columns(files.metrics.get("examples"))
    if columns:
        _use_columns(files, columns)
        return
    known = {"metrics.json", "confusion_matrix.json", "errors.jsonl", "correct.jsonl"}
    for path in sorted(eval_dir.iterdir()):
        if path.suffix not in (".json", ".jsonl", ".npz") or path.name in known:
            continue
        columns = _load_columns(path)
        if columns:
            _use_columns(files, columns)
            return


def read_evaluation(eval_dir: str | os.PathLike) -> EvalFiles:
    """Read ``eval/<split>/`` as written by ``torchformer.evaluate.classification``.

    Raises:
        ValueError: a malformed file (named in the message).
    """
    eval_dir = Path(eval_dir)
    files = EvalFiles(split=eval_dir.name, directory=eval_dir)
    if (eval_dir / "metrics.json").is_file():
        files.metrics = _read_json(eval_dir / "metrics.json")
    if (eval_dir / "classification_report.txt").is_file():
        files.report_text = (eval_dir / "classification_report.txt").read_text(encoding="utf-8")
    if (eval_dir / "confusion_matrix.json").is_file():
        data = _read_json(eval_dir / "confusion_matrix.json")
        if isinstance(data, dict):
            files.labels = [str(x) for x in data.get("labels", [])]
            files.confusion = data.get("matrix") or data.get("confusion_matrix")
        else:
            files.confusion = data
    if not files.labels:
        files.labels = [str(x) for x in files.metrics.get("labels", [])]
    if files.confusion is not None and len(files.labels) != len(files.confusion):
        files.labels = [str(i) for i in range(len(files.confusion))]
    if (eval_dir / "errors.jsonl").is_file():
        files.errors = _read_jsonl(eval_dir / "errors.jsonl")
    for name in ("correct.jsonl", "correct_examples.jsonl"):
        if (eval_dir / name).is_file():
            files.correct = _read_jsonl(eval_dir / name)
    for key in ("correct", "correct_examples"):  # or kept in metrics.json
        if not files.correct and isinstance(files.metrics.get(key), list):
            files.correct = files.metrics[key]
    _per_example(eval_dir, files)
    return files


# --------------------------------------------------------------------------- HTML pieces


def _table(header: list[str], rows: list[list[Any]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='num'>{_fmt(v)}</td>"
            if i >= numeric_from and isinstance(v, (int, float))
            else f"<td>{_fmt(v)}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table class='tf-table'><tr>{head}</tr>{body}</table>"


def _img(png: bytes | None, alt: str, cls: str) -> str:
    return (
        f"<img class='tf-plot {cls}' alt='{html.escape(alt)}' src='{png_data_uri(png)}'>"
        if png
        else ""
    )


def _section(section_id: str, title: str, body: str) -> str:
    return f"<section id='{section_id}'><h2>{html.escape(title)}</h2>{body}</section>"


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _model_summary(run_dir: Path) -> str:
    config_path, settings_path = (
        run_dir / "best" / "config.json",
        run_dir / "best" / "torchformer.json",
    )
    if not config_path.is_file():
        return _note("No best/ model directory in this run.")
    config = _read_json(config_path)
    keys = (
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
        "torchformer_pooling",
        "image_size",
        "patch_size",
        "num_channels",
        "d_model",
        "num_layers",
        "num_heads",
    )
    rows = [[k, config[k]] for k in keys if k in config]
    if "id2label" in config:
        rows.append(
            [
                "labels",
                ", ".join(
                    str(v) for _, v in sorted(config["id2label"].items(), key=lambda kv: int(kv[0]))
                ),
            ]
        )
    if settings_path.is_file():
        rows += [[f"inference.{k}", v] for k, v in _read_json(settings_path).items()]
    return "<h3>Model</h3>" + _table(["setting", "value"], rows, numeric_from=99)


def _summary(run_dir: Path, evals: list[EvalFiles], records: list[dict]) -> str:
    rows = [[e.split, _scalar_metrics(e.metrics)] for e in evals if e.metrics]
    if not rows:  # no eval files: the last logged evaluation lines
        last: dict[str, dict] = {}
        for r in records:
            if r.get("split") != "train":
                last[r["split"]] = {k: v for k, v in r.items() if k not in ("split", "time")}
        rows = [[split, _scalar_metrics(m)] for split, m in last.items()]
    if rows:
        names = sorted(
            {k for _, m in rows for k in m}, key=lambda k: (k not in ("accuracy", "macro_f1"), k)
        )
        metrics = "<h3>Final metrics</h3>" + _table(
            ["split", *names], [[s, *(m.get(k, "") for k in names)] for s, m in rows]
        )
    else:
        metrics = _note("No evaluation results in this run yet.")
    reports = "".join(
        f"<div><h3>Classification report ({html.escape(e.split)})</h3>"
        f"<pre class='tf-classification-report'>{html.escape(e.report_text)}</pre></div>"
        for e in evals
        if e.report_text
    )
    return (
        f"<div class='tf-row'><div>{_model_summary(run_dir)}</div>"
        f"<div>{metrics}<div class='tf-row'>{reports}</div></div></div>"
    )


def _training(records: list[dict]) -> str:
    if not records:
        return _note("metrics.jsonl is missing or empty.")
    curves = _img(plot_learning_curves(records), "learning curves", "tf-curves")
    bleu = _img(plot_bleu(records), "BLEU per epoch", "tf-bleu")
    return (
        f"<div class='tf-plots'>{curves}{bleu}</div>"
        if curves or bleu
        else _note("Nothing to plot yet.")
    )


def _evaluation_plots(e: EvalFiles) -> str:
    parts = []
    if e.confusion is not None:
        parts.append(
            _img(plot_confusion_matrix(e.confusion, e.labels), "confusion matrix", "tf-confusion")
        )
    if e.confidence and e.is_correct:
        parts.append(
            _img(plot_calibration(e.confidence, e.is_correct), "calibration", "tf-calibration")
        )
    if e.lengths and e.is_correct and any(e.lengths):  # images have no length
        parts.append(
            _img(
                plot_accuracy_by_length(e.lengths, e.is_correct), "accuracy by length", "tf-length"
            )
        )
    if not parts:
        return _note(f"No evaluation files under eval/{e.split}/.")
    if e.confidence and e.is_correct:
        ece = expected_calibration_error(np.asarray(e.confidence), np.asarray(e.is_correct))
        note = f"{len(e.confidence)} {e.split} examples; expected calibration error {ece:.4f}."
    else:
        note = (
            f"No per-example confidence/length arrays under eval/{e.split}/: "
            "no calibration or length plots."
        )
    return f"{_note(note)}<div class='tf-plots'>{''.join(parts)}</div>"


def _evaluation(evals: list[EvalFiles]) -> str:
    """The first split's plots open; the others folded."""
    if not evals:
        return _note("No eval/ directory.")
    parts = [f"<h3>Split: {html.escape(evals[0].split)}</h3>{_evaluation_plots(evals[0])}"]
    parts += [
        f"<details><summary>Split: {html.escape(e.split)}</summary>{_evaluation_plots(e)}</details>"
        for e in evals[1:]
    ]
    return "".join(parts)


def _excerpt(text: str, n: int = EXCERPT_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _errors_table(e: EvalFiles) -> str:
    if not e.errors:
        return _note(f"No errors.jsonl under eval/{e.split}/ (or no errors).")
    rows = sorted(e.errors, key=lambda r: -float(first(r, CONF_KEYS, 0.0)))[:ERROR_ROWS]
    if any(r.get("thumbnail") for r in rows):
        shown = sum(bool(thumbnail(e, r)) for r in rows)
        return _note(
            f"The {len(rows)} most confidently wrong of {len(e.errors)} stored errors ({e.split}); "
            f"{shown} with their image (enlarged, pixels kept sharp)."
        ) + image_errors_table(e, rows)
    table = _table(
        ["#", "true", "predicted", "confidence", "text"],
        [
            [
                i + 1,
                first(r, TRUE_KEYS, "?"),
                first(r, PRED_KEYS, "?"),
                float(first(r, CONF_KEYS, float("nan"))),
                _excerpt(first(r, TEXT_KEYS, "")),
            ]
            for i, r in enumerate(rows)
        ],
        numeric_from=3,
    )
    return (
        _note(
            f"The {len(rows)} most confidently wrong of {len(e.errors)} stored errors ({e.split})."
        )
        + table
    )


def _pick_examples(e: EvalFiles, n_examples: int) -> list[tuple[str, dict]]:
    """About half wrong (most confident first), the rest correct; fills from either side."""
    by_conf = lambda rs: sorted(rs, key=lambda r: -float(first(r, CONF_KEYS, 0.0)))  # noqa: E731
    wrong = [r for r in by_conf(e.errors) if first(r, TEXT_KEYS)]
    correct = [r for r in by_conf(e.correct) if first(r, TEXT_KEYS)]
    n_wrong = min(len(wrong), max(n_examples - len(correct), (n_examples + 1) // 2))
    chosen = [("wrong", r) for r in wrong[:n_wrong]] + [
        ("correct", r) for r in correct[: n_examples - n_wrong]
    ]
    return chosen


def _attention_examples(run_dir: Path, e: EvalFiles | None, n_examples: int) -> str:
    if n_examples <= 0:
        return _note("Attention views switched off (n_examples=0).")
    if e is None or not (e.errors or e.correct):
        return _note("No stored examples (errors.jsonl) to explain.")
    if not (run_dir / "best" / "config.json").is_file():
        return _note("No best/ model to compute attention with.")
    from torchformer.api import load

    model = load(run_dir)
    if hasattr(model, "to_pixels"):
        return image_attention_examples(model, e, n_examples)
    if not hasattr(model, "predict"):
        return _note("Attention views are shown for classification runs.")
    chosen = _pick_examples(e, n_examples)
    if not any(kind == "correct" for kind, _ in chosen):
        chosen_note = _note(
            "No correct examples are stored in the evaluation files; showing errors only."
        )
    else:
        chosen_note = ""
    parts = [
        _note(
            f"Examples from eval/{e.split}/ (errors.jsonl keeps the start of each text). Attention is "
            "computed by the model in best/ on the text as stored; run `torchformer explain RUN TEXT` "
            "for any other text."
        ),
        chosen_note,
    ]
    for i, (kind, record) in enumerate(chosen):
        text = str(first(record, TEXT_KEYS))
        attributions = token_attributions(model, text, deletion=True)
        parts.append(_example_html(i, kind, record, attention_for_text(model, text), attributions))
    return "".join(parts)


def _example_html(
    i: int, kind: str, record: dict[str, Any], attention: Any, attributions: Any = None
) -> str:
    """One example: the stored outcome, the prediction on the stored text, the attention
    views and the attributions (integrated gradients, rollout, deletion curves)."""
    pred = attention.prediction
    stored_pred, stored_conf = first(record, PRED_KEYS), first(record, CONF_KEYS)
    status = "tf-wrong" if kind == "wrong" else "tf-ok"
    outcome = f"true <b>{html.escape(str(first(record, TRUE_KEYS, '?')))}</b>"
    if stored_pred is not None:
        conf = f" ({float(stored_conf):.4f})" if stored_conf is not None else ""
        outcome += f", predicted <b>{html.escape(str(stored_pred))}</b>{conf}"
    now = f"{html.escape(str(pred['label']))} ({pred['confidence']:.4f})"
    text = attention.text
    return (
        f"<div class='tf-example {status}-example'>"
        f"<h3><span class='{status}'>{kind}</span>: {outcome}</h3>"
        f"<p class='tf-note'>On the text below the model predicts {now}.</p>"
        f"<details><summary>text ({len(text)} characters, {len(attention.tokens)} tokens)</summary>"
        f"<pre class='tf-text'>{html.escape(text)}</pre></details>"
        f"{attention_html(attention, key=f'ex{i}', max_values=REPORT_MAX_VALUES, heading='h4')}"
        + (
            ""
            if attributions is None
            else "<details class='tf-attributions'><summary>attributions: integrated gradients, "
            f"rollout, deletion curves</summary>{attribution_html(attributions, heading='h4')}"
            "</details>"
        )
        + "</div>"
    )


def _manifest(run_dir: Path) -> str:
    path = run_dir / "manifest.json"
    if not path.is_file():
        return _note("No manifest.json.")
    manifest = _read_json(path)
    git = manifest.get("git") or {}
    rows = [
        ["created", manifest.get("created")],
        ["seed", manifest.get("seed")],
        ["git commit", f"{git.get('commit', 'n/a')}{' (dirty)' if git.get('dirty') else ''}"],
        ["data fingerprint", manifest.get("data_fingerprint")],
        ["command", " ".join(manifest.get("command") or [])],
        *[[f"version: {k}", v] for k, v in (manifest.get("versions") or {}).items()],
    ]
    full = html.escape(json.dumps(manifest, indent=2, default=str))
    return (
        _table(["field", "value"], [r for r in rows if r[1] is not None], numeric_from=99)
        + f"<details><summary>manifest.json</summary><pre class='tf-manifest'>{full}</pre></details>"
    )


def _config(run_dir: Path) -> str:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return _note("No config.yaml.")
    return f"<pre class='tf-config'>{html.escape(path.read_text(encoding='utf-8'))}</pre>"


def render_report(run_dir: str | os.PathLike, *, n_examples: int = 4) -> str:
    """The report of ``run_dir`` as an HTML string (see :func:`write_report`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    metrics_path = run_dir / "metrics.jsonl"
    records = read_metrics(metrics_path) if metrics_path.is_file() else []
    eval_root = run_dir / "eval"
    splits = sorted(p.name for p in eval_root.iterdir() if p.is_dir()) if eval_root.is_dir() else []
    splits.sort(key=lambda s: {"test": 0, "val": 1}.get(s, 2))  # test first
    evals = [read_evaluation(eval_root / s) for s in splits]
    main = evals[0] if evals else None
    sections = [
        ("summary", "Summary", _summary(run_dir, evals, records)),
        ("training", "Training", _training(records)),
        ("evaluation", "Evaluation", _evaluation(evals)),
        ("errors", "Error analysis", _errors_table(main) if main else _note("No eval/ directory.")),
        ("attention", "Attention", _attention_examples(run_dir, main, n_examples)),
        ("config", "Config", _config(run_dir)),
        ("manifest", "Manifest", _manifest(run_dir)),
    ]
    body = "".join(_section(i, t, b) for i, t, b in sections)
    return page(
        f"torchformer report: {run_dir.resolve().name}",
        body,
        subtitle=str(run_dir.resolve()),
        nav=[(i, t) for i, t, _ in sections],
    )


def write_report(run_dir: Path, *, n_examples: int = 4) -> Path:
    """Write ``run_dir/report.html``: a self-contained report of the run.

    Args:
        run_dir: the run directory (config.yaml, manifest.json, metrics.jsonl, best/, eval/).
        n_examples: how many examples (about half wrong, half correct) get attention views.

    Returns:
        The path of the report.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist.
        ValueError: a malformed run file (named in the message).
    """
    run_dir = Path(run_dir)
    document = render_report(run_dir, n_examples=n_examples)
    out = run_dir / REPORT_NAME
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(document, encoding="utf-8")
    tmp.replace(out)  # atomic: a reader never sees half a report
    logger.info("report written to %s", out)
    return out
