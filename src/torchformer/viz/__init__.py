"""Interpretation and reports: attention views, plots and the self-contained HTML run report.

    from torchformer.viz import write_report, write_explain
    write_report("runs/imdb-demo")                        # -> runs/imdb-demo/report.html
    write_explain("runs/imdb-demo", "A moving film.", "explain.html")

Everything here consumes the public inference API (``torchformer.load``) and the
files of a run directory. Plots need matplotlib (``pip install 'torchformer[viz]'``).
Names are imported lazily so that the CLI (which imports ``torchformer.viz.cli``)
starts without loading torch or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "attention_for_text",
    "attention_for_translation",
    "explain_html",
    "render_report",
    "write_explain",
    "write_report",
]

_WHERE = {
    "attention_for_text": "torchformer.viz.attention",
    "attention_for_translation": "torchformer.viz.attention",
    "explain_html": "torchformer.viz.explain",
    "write_explain": "torchformer.viz.explain",
    "render_report": "torchformer.viz.report",
    "write_report": "torchformer.viz.report",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'torchformer.viz' has no attribute {name!r}")
