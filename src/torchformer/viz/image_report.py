"""The image-classification parts of the run report: error rows with their images and
attention rollout over the most confidently wrong ones.

An error record names its image by ``thumbnail`` (a path inside its evaluation folder,
written by the image task); a record never makes the report read a file elsewhere.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

from torchformer.viz.plots import png_data_uri
from torchformer.viz.report_parts import CONF_KEYS, PRED_KEYS, TRUE_KEYS, first
from torchformer.viz.report_parts import fmt as _fmt
from torchformer.viz.report_parts import note as _note

__all__ = ["image_attention_examples", "image_errors_table", "stored_image", "thumbnail"]

logger = logging.getLogger(__name__)


def stored_image(e: Any, record: dict[str, Any]) -> Path | None:
    """The image file an error record names (``thumbnail``), only when it lies inside the
    evaluation folder: a record never makes the report read a file elsewhere."""
    name = record.get("thumbnail")
    if not name or e.directory is None:
        return None
    path = (e.directory / str(name)).resolve()
    if not path.is_relative_to(e.directory.resolve()) or not path.is_file():
        return None
    return path


def thumbnail(e: Any, record: dict[str, Any]) -> str:
    """An ``<img>`` of an image record's stored thumbnail (inlined), or ""."""
    path = stored_image(e, record)
    if path is None:
        return ""
    return (
        f"<img class='tf-thumb' alt='{html.escape(str(record.get('id', '')))}' "
        f"src='{png_data_uri(path.read_bytes())}'>"
    )


def image_errors_table(e: Any, rows: list[dict[str, Any]]) -> str:
    body = "".join(
        f"<tr><td class='num'>{i + 1}</td><td>{thumbnail(e, r)}</td>"
        f"<td>{_fmt(first(r, TRUE_KEYS, '?'))}</td><td>{_fmt(first(r, PRED_KEYS, '?'))}</td>"
        f"<td class='num'>{_fmt(float(first(r, CONF_KEYS, float('nan'))))}</td>"
        f"<td>{_fmt(r.get('id', ''))}</td></tr>"
        for i, r in enumerate(rows)
    )
    head = "".join(
        f"<th>{h}</th>" for h in ("#", "image", "true", "predicted", "confidence", "file")
    )
    return f"<table class='tf-table'><tr>{head}</tr>{body}</table>"


def image_attention_examples(model: Any, e: Any, n_examples: int) -> str:
    """Attention rollout over the stored thumbnails of the most confidently wrong images."""
    from torchformer.viz.rollout import image_attention, rollout_html

    parts = [
        _note(
            f"Attention rollout for the most confidently wrong images of eval/{e.split}/ "
            "(computed by best/ on the stored image); `torchformer explain RUN IMAGE` draws it "
            "for any image."
        )
    ]
    shown = 0
    for record in sorted(e.errors, key=lambda r: -float(first(r, CONF_KEYS, 0.0))):
        if shown >= n_examples:
            break
        path = stored_image(e, record)
        if path is None:
            continue
        try:
            attention = image_attention(model, path)
        except ValueError as error:  # not a readable image: named, and the report goes on
            logger.warning("no attention rollout for %s: %s", path, error)
            continue
        pred = attention.prediction
        parts.append(
            f"<div class='tf-example tf-wrong-example'><h3><span class='tf-wrong'>wrong</span>: "
            f"true <b>{_fmt(first(record, TRUE_KEYS, '?'))}</b>, predicted "
            f"<b>{_fmt(pred['label'])}</b> ({pred['confidence']:.4f}) — "
            f"{_fmt(record.get('id', ''))}</h3>{rollout_html(attention)}</div>"
        )
        shown += 1
    if not shown:
        parts.append(_note("No stored images (thumbnails) to explain."))
    return "".join(parts)
