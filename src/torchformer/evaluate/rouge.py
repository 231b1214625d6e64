"""ROUGE (Lin, 2004) with Google's ``rouge-score`` package, the implementation behind the
published summarization numbers of T5, PEGASUS and Hugging Face ``evaluate``.

Scores are the mean F-measure over segments, on a 0-100 scale, with the Porter stemmer
(as ``evaluate`` and the T5 paper report them). ``rougeLsum`` treats newlines as sentence
breaks (summary-level LCS); the other three ignore them.

``rouge-score``'s tokenizer keeps only ``[a-z0-9]`` runs after lowercasing, so text in
languages with other letters (German umlauts, Czech, anything non-Latin) loses those
characters: use chrF there. The ``signature`` records the settings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

__all__ = ["ROUGE_TYPES", "rouge_scores"]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _require_rouge_score() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:
        raise ImportError("ROUGE needs rouge-score: pip install 'torchformer[translate]'") from e
    # rouge-score logs "Using default tokenizer." through absl at INFO on every scorer.
    logging.getLogger("absl").setLevel(max(logging.getLogger("absl").level, logging.WARNING))
    return rouge_scorer


def rouge_scores(
    hypotheses: Sequence[str], references: Sequence[str], *, use_stemmer: bool = True
) -> dict[str, Any]:
    """Corpus ROUGE-1/2/L/Lsum: the mean per-segment F-measure, 0-100.

    Returns:
        ``{"rouge1", "rouge2", "rougeL", "rougeLsum", "rouge_signature"}``.

    Raises:
        ImportError: rouge-score is missing (it is in the ``torchformer[translate]`` extra).
        ValueError: hypotheses and references do not line up, or there are none.
    """
    rouge_scorer = _require_rouge_score()
    hyps, refs = list(hypotheses), list(references)
    if len(hyps) != len(refs):
        raise ValueError(f"got {len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        raise ValueError("ROUGE needs at least one hypothesis")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hyp, ref in zip(hyps, refs):
        scores = scorer.score(ref, hyp)  # (target, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    result: dict[str, Any] = {name: 100.0 * total / len(hyps) for name, total in totals.items()}
    result["rouge_signature"] = (
        f"rouge-score|agg:mean-f|stem:{'yes' if use_stemmer else 'no'}|tok:default-ascii"
    )
    return result
