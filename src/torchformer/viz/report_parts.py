"""Small pieces of the report's HTML shared by its sections (``report``, ``image_report``):
the record field names, value formatting and notes."""

from __future__ import annotations

import html
import math
from typing import Any

# Field names accepted for the per-example records (errors.jsonl and friends).
TEXT_KEYS = ("text", "text_excerpt", "excerpt")
TRUE_KEYS = ("label", "true", "true_label", "gold", "target")
PRED_KEYS = ("predicted", "pred", "prediction", "predicted_label")
CONF_KEYS = ("confidence", "prob", "probability")


def first(record: dict[str, Any], keys: tuple[str, ...], default: Any = None) -> Any:
    """The value of the first of ``keys`` present in ``record``."""
    for key in keys:
        if record.get(key) is not None:
            return record[key]
    return default


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return html.escape(str(value))


def note(text: str) -> str:
    return f"<p class='tf-note'>{html.escape(text)}</p>"
