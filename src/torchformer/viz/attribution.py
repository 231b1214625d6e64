"""Token attributions beyond attention, and a check of which explains the model better.

Attention weights say where a layer looked, not what the prediction depends on (Jain &
Wallace 2019, "Attention is not Explanation"). Three token scores for a text classifier:

- **attention**: the [CLS] row of the last layer, mean of heads (the token view's number);
- **rollout** (Abnar & Zuidema 2020): attention followed through every layer with the
  residual's share, ``viz.attention.attention_rollout``; the [CLS] row (mean of the rows for
  a mean-pooling model);
- **integrated gradients** (Sundararajan et al. 2017), computed with Captum's
  ``LayerIntegratedGradients`` on the embedding block's output (token + position + segment,
  normalised — as Captum's BERT tutorials do): the path integral of the gradient of the
  predicted class's log-odds, log p − log(1 − p), from a baseline — every token replaced
  by [PAD], the special tokens and the positions kept — to the text. Signed (evidence for
  or against the predicted class); the attributions sum to the log-odds' change from the
  baseline up to the integral's error (reported as ``delta``). Log-odds, not the
  probability: a confident classifier's probability is flat along most of the path and
  changes in a narrow stretch the integral's points can miss; its log-odds change
  smoothly (on a toy model the completeness gap at 128 points fell from 0.02 to 0.002).

The **deletion curve** (Samek et al. 2017; Petsiuk et al. 2018, "RISE") checks them: remove the
top-scored tokens (10%, 20%, … of the text; special tokens stay) and watch the predicted
class's probability; the area under that curve (mean over the 11 points) is lower when the
method found the tokens the prediction depends on. ``random`` orders give the floor any
method must beat.

A chunk-and-pool classifier reads a text as several chunks; its attention and rollout are
shown for the first chunk (as the attention view), and integrated gradients is not offered.
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from torchformer.viz.attention import attention_for_text, attention_rollout, cls_attention

__all__ = [
    "FRACTIONS",
    "METHODS",
    "TokenAttributions",
    "deletion_auc",
    "deletion_curves",
    "faithfulness",
    "integrated_gradients",
    "rollout_scores",
    "token_attributions",
]

METHODS = ("attention", "rollout", "integrated_gradients")
FRACTIONS = tuple(i / 10 for i in range(11))  # share of the (non-special) tokens removed


@dataclass
class TokenAttributions:
    """One text's token scores by each method.

    Attributes:
        tokens: the tokens the model read (after cleaning and truncation).
        special: whether each token is a special token ([CLS], [SEP], ...).
        scores: method -> one score per token (special tokens included; not ranked).
        prediction: ``{"label", "confidence", "probabilities"}``.
        target: index of the predicted class (what the scores explain).
        ig_delta: integrated gradients' completeness gap: |Σ attributions − (log-odds(text)
            − log-odds(baseline))| (None without integrated gradients).
        input_ids: (T,) the ids the scores refer to.
    """

    tokens: list[str]
    special: list[bool]
    scores: dict[str, list[float]]
    prediction: dict[str, Any]
    target: int
    input_ids: Tensor
    ig_delta: float | None = None
    deletion: dict[str, list[float]] = field(default_factory=dict)


def _chunked(classifier: Any) -> bool:
    return getattr(classifier.model.config, "long_document", "truncate") == "chunks"


def rollout_scores(attentions: Tensor, *, pooling: str = "cls") -> Tensor:
    """Rollout of (L, H, T, T) attention -> (T,): the [CLS] row, or the mean of the rows
    for a mean-pooling model (the vector its classifier reads)."""
    rollout = attention_rollout([a[None] for a in attentions])[0]  # (T, T)
    return rollout.mean(0) if pooling == "mean" else rollout[0]


def _log_odds(model: Any, target: int):
    """log p(target) − log(1 − p(target)): the target's logit against the others' logsumexp."""

    def forward(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        logits = model(input_ids, attention_mask=attention_mask).logits.float()  # (B, C)
        others = torch.cat([logits[:, :target], logits[:, target + 1 :]], dim=-1)
        return logits[:, target] - others.logsumexp(-1)  # (B,)

    return forward


def integrated_gradients(
    classifier: Any,
    input_ids: Tensor,
    special: Sequence[bool],
    target: int,
    *,
    steps: int = 50,
    internal_batch_size: int = 16,
) -> tuple[Tensor, float]:
    """Integrated gradients of the target class's log-odds over the embedding output.

    Args:
        classifier: a ``TextClassifier`` (truncating, not chunk-and-pool).
        input_ids: (T,) one text's ids; special: whether each is a special token (kept in
            the baseline, where every other token is [PAD]).
        steps: points of the path integral (Gauss–Legendre, Captum's default rule).

    Returns:
        (scores (T,): attribution per token, summed over the embedding; completeness gap).
    """
    try:
        from captum.attr import LayerIntegratedGradients
    except ImportError as e:  # pragma: no cover - captum is in the viz extra
        raise ImportError(
            "integrated gradients needs Captum: pip install 'torchformer[viz]'"
        ) from e
    if _chunked(classifier):
        raise ValueError(
            "integrated gradients is not offered for a chunk-and-pool classifier (its "
            "chunks re-read the tokens); use attention or rollout"
        )
    model = classifier.model
    device = next(model.parameters()).device
    ids = input_ids[None].to(device)  # (1, T)
    keep = torch.tensor(list(special), device=device)[None]
    baseline = torch.where(keep, ids, torch.full_like(ids, classifier.tokenizer.pad_id))
    mask = torch.ones_like(ids)
    layer = model.encoder.embeddings  # (token + position + segment, normalised)
    ig = LayerIntegratedGradients(_log_odds(model, target), layer)
    was_training = model.training
    model.eval()
    try:
        attributions, delta = ig.attribute(
            ids,
            baselines=baseline,
            additional_forward_args=(mask,),
            n_steps=steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
    finally:
        model.train(was_training)
    return attributions[0].sum(-1).detach().cpu().float(), float(delta.abs().max())


def token_attributions(
    classifier: Any,
    text: str,
    *,
    methods: Sequence[str] = METHODS,
    steps: int = 50,
    deletion: bool = False,
) -> TokenAttributions:
    """Score each token of ``text`` by ``methods`` (see the module docstring).

    ``deletion``: also compute each method's deletion curve (and a random order's).
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown attribution method(s) {unknown}; choose from {METHODS}")
    view = attention_for_text(classifier, text)
    target = classifier.labels.index(view.prediction["label"])
    ids, _ = classifier.encode([text])  # (1, T) the ids the model read
    if _chunked(classifier):  # the view's first chunk
        methods = [m for m in methods if m != "integrated_gradients"]
    n = len(view.tokens)
    input_ids = ids[0, :n] if not _chunked(classifier) else _first_chunk(classifier, ids)
    scores: dict[str, Tensor] = {}
    if "attention" in methods:
        scores["attention"] = cls_attention(view.attentions)  # (T,)
    if "rollout" in methods:
        pooling = classifier.model.config.pooling
        scores["rollout"] = rollout_scores(view.attentions, pooling=pooling)
    delta = None
    if "integrated_gradients" in methods:
        scores["integrated_gradients"], delta = integrated_gradients(
            classifier, input_ids, view.special, target, steps=steps
        )
    out = TokenAttributions(
        tokens=view.tokens,
        special=view.special,
        scores={k: [float(x) for x in v.tolist()] for k, v in scores.items()},
        prediction=view.prediction,
        target=target,
        input_ids=input_ids,
        ig_delta=delta,
    )
    if deletion:
        out.deletion = deletion_curves(classifier, out)
    return out


def _first_chunk(classifier: Any, ids: Tensor) -> Tensor:
    from torchformer.models.long_document import chunks_of

    chunk_ids, chunk_mask, _ = chunks_of(classifier.model.config, ids, torch.ones_like(ids))
    return chunk_ids[0][chunk_mask[0].bool()]


def _order(scores: Sequence[float], special: Sequence[bool]) -> list[int]:
    """Positions of the non-special tokens, highest score first (ties: earlier first)."""
    ranked = [i for i in range(len(scores)) if not special[i]]
    return sorted(ranked, key=lambda i: -scores[i])


@torch.inference_mode()
def _deletion_probabilities(
    classifier: Any, input_ids: Tensor, order: list[int], target: int, fractions
) -> list[float]:
    """The target class's probability with the first round(f·n) of ``order`` removed, per f."""
    model = classifier.model
    device = next(model.parameters()).device
    n = len(order)
    rows = []
    for f in fractions:
        gone = set(order[: round(f * n)])
        rows.append(torch.tensor([t for i, t in enumerate(input_ids.tolist()) if i not in gone]))
    width = max(len(r) for r in rows)
    pad = classifier.tokenizer.pad_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    logits = model(ids.to(device), attention_mask=mask.to(device)).logits.float()
    return logits.softmax(-1)[:, target].cpu().tolist()


def deletion_curves(
    classifier: Any,
    attributions: TokenAttributions,
    *,
    fractions: Sequence[float] = FRACTIONS,
    random_orders: int = 3,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Each method's deletion curve (the target probability at each fraction removed),
    and "random": the mean over ``random_orders`` seeded random orders."""
    curves = {}
    ids, special, target = attributions.input_ids, attributions.special, attributions.target
    for method, scores in attributions.scores.items():
        order = _order(scores, special)
        curves[method] = _deletion_probabilities(classifier, ids, order, target, fractions)
    if random_orders:
        rng = _random.Random(seed)
        runs = []
        for _ in range(random_orders):
            order = [i for i in range(len(special)) if not special[i]]
            rng.shuffle(order)
            runs.append(_deletion_probabilities(classifier, ids, order, target, fractions))
        curves["random"] = [sum(col) / len(col) for col in zip(*runs)]
    return curves


def deletion_auc(curve: Sequence[float], fractions: Sequence[float] = FRACTIONS) -> float:
    """Area under a deletion curve over [0, 1] (trapezoids): lower is more faithful."""
    if len(curve) != len(fractions) or len(curve) < 2:
        raise ValueError(f"a curve of {len(curve)} points for {len(fractions)} fractions")
    area = sum(
        (fractions[i + 1] - fractions[i]) * (curve[i] + curve[i + 1]) / 2
        for i in range(len(curve) - 1)
    )
    return area / (fractions[-1] - fractions[0])


def faithfulness(
    classifier: Any,
    texts: Sequence[str],
    *,
    methods: Sequence[str] = METHODS,
    steps: int = 50,
    random_orders: int = 3,
    log=None,
) -> dict[str, Any]:
    """Mean deletion AUC per method (and random) over ``texts``, with its spread.

    Returns:
        A dict: "texts" (N), "fractions", "auc" (method -> mean), "auc_std", "curve"
        (method -> mean curve), "wins" (method -> share of the texts on which it has the
        lowest AUC), "ig_delta_mean".
    """
    per_text: dict[str, list[float]] = {}
    curves: dict[str, list[list[float]]] = {}
    deltas = []
    wins: dict[str, int] = {}
    for i, text in enumerate(texts):
        att = token_attributions(classifier, text, methods=methods, steps=steps)
        att.deletion = deletion_curves(classifier, att, random_orders=random_orders, seed=i)
        aucs = {m: deletion_auc(c) for m, c in att.deletion.items()}
        for m, a in aucs.items():
            per_text.setdefault(m, []).append(a)
            curves.setdefault(m, []).append(att.deletion[m])
        best = min((m for m in aucs if m != "random"), key=aucs.__getitem__)
        wins[best] = wins.get(best, 0) + 1
        if att.ig_delta is not None:
            deltas.append(att.ig_delta)
        if log is not None and (i + 1) % 20 == 0:
            means = {m: round(sum(v) / len(v), 4) for m, v in per_text.items()}
            log(f"{i + 1}/{len(texts)} texts: mean deletion AUC {means}")

    def mean(v):
        return sum(v) / len(v)

    def std(v):
        m = mean(v)
        return math.sqrt(sum((x - m) ** 2 for x in v) / max(1, len(v) - 1))

    return {
        "texts": len(texts),
        "fractions": list(FRACTIONS),
        "auc": {m: mean(v) for m, v in per_text.items()},
        "auc_std": {m: std(v) for m, v in per_text.items()},
        "curve": {m: [mean(col) for col in zip(*c)] for m, c in curves.items()},
        "wins": {m: wins.get(m, 0) / len(texts) for m in per_text if m != "random"},
        "ig_delta_mean": mean(deltas) if deltas else None,
    }
