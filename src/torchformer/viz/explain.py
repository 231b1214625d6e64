"""The explain page: a prediction and the attention behind it, as one offline HTML file.

``torchformer explain RUN "text" --out explain.html`` loads the model with
``torchformer.load`` and writes:

- the prediction (label, confidence, probability per label);
- a token view: each token shaded by the attention it receives from [CLS]
  (last layer, mean of heads by default; any layer / head or their means);
- a layer × head grid of attention heatmaps (one PNG, long inputs pooled);
- an interactive matrix view (pick layer, head and window of at most
  ``window`` tokens; hover a token to see its attention to the others);
- attributions beyond attention (``viz.attribution``): integrated gradients and
  attention rollout next to the attention score per token, and their deletion curves —
  which of them explains this prediction better.

For translation models the page shows the cross-attention alignment between
source and output tokens instead (:func:`alignment_html`, from plain tensors).
The HTML pieces here are reused by the run report.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from torchformer.viz.attention import (
    TextAttention,
    as_layer_stack,
    attention_for_text,
    attention_for_translation,
    cross_attention_payload,
    self_attention_payload,
)
from torchformer.viz.attribution import (
    FRACTIONS,
    TokenAttributions,
    deletion_auc,
    token_attributions,
)
from torchformer.viz.plots import (
    plot_alignment,
    plot_attention_grid,
    plot_deletion_curves,
    png_data_uri,
)
from torchformer.viz.templates import json_block, page

__all__ = [
    "alignment_html",
    "attention_html",
    "attribution_html",
    "explain_html",
    "prediction_html",
    "translation_explain_html",
    "write_explain",
]

WINDOW = 64
EXPLAIN_MAX_VALUES = 2_000_000  # numbers stored for the matrix view (≈ 8 MB of JSON at most)


def prediction_html(prediction: dict[str, Any]) -> str:
    """Predicted label, confidence and a bar per label."""
    rows = "".join(
        f"<tr><td>{html.escape(str(label))}</td><td class='num'>{p:.4f}</td>"
        f"<td><span class='tf-bar' style='width:{max(1, round(200 * p))}px'></span></td></tr>"
        for label, p in prediction["probabilities"].items()
    )
    return (
        f"<p class='tf-pred'>Prediction: <b>{html.escape(str(prediction['label']))}</b> "
        f"(confidence {prediction['confidence']:.4f})</p>"
        f"<table class='tf-table tf-probs'><tr><th>label</th><th>probability</th><th></th></tr>{rows}</table>"
    )


def attention_html(
    attention: TextAttention,
    *,
    key: str,
    window: int = WINDOW,
    max_values: int = EXPLAIN_MAX_VALUES,
    heading: str = "h3",
) -> str:
    """Token view, layer × head grid and interactive view for one text.

    Args:
        attention: from :func:`~torchformer.viz.attention.attention_for_text`.
        key: unique within the page (names the embedded JSON block).
        window: tokens per page of the matrix view.
        max_values: budget of numbers stored for the matrix view.
    """
    data_id = f"tf-data-{key}"
    payload = self_attention_payload(
        attention.tokens,
        attention.attentions,
        special=attention.special,
        window=window,
        max_values=max_values,
    )
    L, H, T, _ = attention.attentions.shape
    grid = png_data_uri(plot_attention_grid(attention.attentions))
    h = heading
    return (
        f"<{h}>Token view</{h}>"
        "<p class='tf-note'>Each token is shaded by the attention it receives from [CLS] "
        "(position 0); the colour scale ignores special tokens. Hover a token for its value.</p>"
        f"<div class='tf-attn tf-token-view' data-src='{data_id}'></div>"
        f"<{h}>Attention heads ({L} layers × {H} heads, {T} tokens)</{h}>"
        f"<img class='tf-plot tf-grid' alt='layer by head attention grid' src='{grid}'>"
        f"<{h}>Interactive view</{h}>"
        f"<div class='tf-attn tf-matrix-view' data-src='{data_id}'></div>"
        f"{json_block(data_id, payload)}"
    )


METHOD_NAMES = {
    "attention": "Attention (last layer, [CLS] row, mean of heads)",
    "rollout": "Attention rollout (all layers, residual included)",
    "integrated_gradients": "Integrated gradients (red: for the prediction, blue: against)",
}


def _token_spans(tokens: Sequence[str], special: Sequence[bool], scores: Sequence[float]) -> str:
    """Tokens shaded by score (red positive, blue negative), scaled to the largest |score|
    of the non-special tokens; ``data-v`` holds the exact value."""
    ranked = [abs(v) for v, s in zip(scores, special) if not s] or [0.0]
    top = max(ranked) or 1.0
    spans = []
    for token, is_special, v in zip(tokens, special, scores):
        alpha = 0.0 if is_special else min(1.0, abs(v) / top)
        rgb = "220,50,47" if v >= 0 else "38,139,210"
        cls = "tf-tok special" if is_special else "tf-tok"
        spans.append(
            f"<span class='{cls}' data-v='{v:.6g}' title='{v:.4f}' "
            f"style='background: rgba({rgb},{alpha:.3f})'>{html.escape(token)}</span>"
        )
    return " ".join(spans)


def attribution_html(att: TokenAttributions, *, heading: str = "h3") -> str:
    """Each method's token scores, and (when computed) the deletion curves with their areas.

    Args:
        att: from :func:`~torchformer.viz.attribution.token_attributions`.
    """
    h = heading
    parts = [
        "<p class='tf-note'>Attention shows where the model looked; integrated gradients "
        "what the prediction depends on (attributions to the token embeddings, baseline: "
        "every token [PAD]); rollout follows attention through all layers. The deletion "
        "curves below check them: remove each method's top tokens and watch the "
        "probability fall.</p>"
    ]
    for method, scores in att.scores.items():
        parts.append(
            f"<div class='tf-attribution' data-method='{method}'><{h}>"
            f"{html.escape(METHOD_NAMES.get(method, method))}</{h}>"
            f"<div class='tf-tokens'>{_token_spans(att.tokens, att.special, scores)}</div></div>"
        )
    if att.ig_delta is not None:
        parts.append(
            "<p class='tf-note'>Integrated gradients attributes the predicted class's "
            "log-odds; its completeness gap |Σ attributions − (log-odds(text) − "
            f"log-odds(baseline))| = {att.ig_delta:.2e}.</p>"
        )
    if att.deletion:
        aucs = {m: deletion_auc(c) for m, c in att.deletion.items()}
        best = min((m for m in aucs if m != "random"), key=aucs.__getitem__)
        rows = "".join(
            f"<tr><td>{html.escape(m.replace('_', ' '))}</td><td class='num'>{a:.4f}</td></tr>"
            for m, a in aucs.items()
        )
        plot = png_data_uri(plot_deletion_curves(att.deletion, FRACTIONS))
        parts.append(
            f"<{h}>Deletion curves</{h}>"
            f"<img class='tf-plot tf-deletion' alt='deletion curves' src='{plot}'>"
            "<table class='tf-table tf-deletion-auc'><tr><th>method</th>"
            f"<th>area under the curve (lower: more faithful)</th></tr>{rows}</table>"
            f"<p class='tf-note'>For this text, <b>{html.escape(best.replace('_', ' '))}</b> "
            "explains the model best (random: the mean of three random orders).</p>"
        )
    return "".join(parts)


def alignment_html(
    cross_attentions: Sequence[Tensor] | Tensor,
    source_tokens: Sequence[str],
    target_tokens: Sequence[str],
    *,
    key: str = "align",
    window: int = WINDOW,
) -> str:
    """Cross-attention alignment between source and output tokens.

    Args:
        cross_attentions: per-layer (B, H, T, S) tensors from a seq2seq model's
            ``decode(..., return_attentions=True)`` (batch row 0 is shown), or (L, H, T, S).
        source_tokens: the S source tokens; target_tokens: the T output tokens.

    Returns:
        HTML: a PNG of the last layer's head-averaged alignment and an interactive
        layer / head view of the same numbers.
    """
    stack = as_layer_stack(cross_attentions)  # (L, H, T, S)
    payload = cross_attention_payload(stack, source_tokens, target_tokens, window=window)
    image = plot_alignment(
        stack[-1].mean(0),
        source_tokens,
        target_tokens,
        title="cross-attention, last layer, mean of heads",
    )
    data_id = f"tf-data-{key}"
    return (
        f"<img class='tf-plot tf-alignment' alt='alignment matrix' src='{png_data_uri(image)}'>"
        "<h3>Interactive alignment</h3>"
        f"<div class='tf-attn tf-matrix-view tf-cross' data-src='{data_id}'></div>"
        f"{json_block(data_id, payload)}"
    )


def explain_html(
    classifier: Any,
    text: str,
    *,
    window: int = WINDOW,
    max_values: int = EXPLAIN_MAX_VALUES,
    title: str = "torchformer explain",
) -> str:
    """The whole explain page for a ``TextClassifier`` and one text."""
    attention = attention_for_text(classifier, text)
    n_tokens = len(attention.tokens)
    attributions = token_attributions(classifier, text, deletion=True)
    body = (
        f"<section id='prediction'><h2>Prediction</h2>{prediction_html(attention.prediction)}</section>"
        f"<section id='input'><h2>Input</h2><pre class='tf-text'>{html.escape(text)}</pre>"
        f"<p class='tf-note'>{n_tokens} tokens after the model's cleaning and truncation "
        f"(max length {classifier.settings.max_length}, {classifier.settings.truncation}).</p></section>"
        f"<section id='attention'><h2>Attention</h2>"
        f"{attention_html(attention, key='explain', window=window, max_values=max_values)}</section>"
        f"<section id='attributions'><h2>Attributions</h2>{attribution_html(attributions)}</section>"
    )
    nav = [
        ("prediction", "Prediction"),
        ("input", "Input"),
        ("attention", "Attention"),
        ("attributions", "Attributions"),
    ]
    subtitle = f"{attention.prediction['label']} ({attention.prediction['confidence']:.3f})"
    return page(title, body, subtitle=subtitle, nav=nav)


def translation_explain_html(
    translator: Any, text: str, *, beam_size: int | None = None, title: str = "torchformer explain"
) -> str:
    """The explain page for a ``Translator``: its output and the cross-attention alignment."""
    att = attention_for_translation(translator, text, beam_size=beam_size)
    body = (
        f"<section id='translation'><h2>Translation</h2><pre class='tf-text'>{html.escape(text)}</pre>"
        f"<p class='tf-pred'>→ <b>{html.escape(att.translation)}</b></p></section>"
        f"<section id='alignment'><h2>Cross-attention alignment</h2>"
        f"{alignment_html(att.cross_attentions, att.source_tokens, att.target_tokens)}</section>"
    )
    nav = [("translation", "Translation"), ("alignment", "Alignment")]
    return page(title, body, subtitle=att.translation, nav=nav)


def write_explain(
    model_path: str | os.PathLike,
    text: str,
    out: str | os.PathLike,
    *,
    window: int = WINDOW,
    max_values: int = EXPLAIN_MAX_VALUES,
) -> Path:
    """Load a run (or model directory) with ``torchformer.load`` and write its explain page for ``text``."""
    from torchformer.api import load

    model = load(model_path)
    if hasattr(model, "to_pixels"):  # an image classifier: ``text`` is the image's path
        from torchformer.viz.rollout import image_explain_html

        document = image_explain_html(model, text, name=str(text))
    elif hasattr(model, "predict"):
        document = explain_html(model, text, window=window, max_values=max_values)
    else:
        document = translation_explain_html(model, text)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(document, encoding="utf-8")
    return out
