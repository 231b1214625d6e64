"""Corpus BLEU and chrF with sacreBLEU (Post, 2018), reported with their signatures.

Scores are computed on *detokenized* text, cased, with sacreBLEU's default ``13a``
tokenizer, so they are comparable with published WMT/Multi30k numbers; the
signature string records exactly how (``nrefs:1|case:mixed|eff:no|tok:13a|...``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["corpus_scores"]


def _require_sacrebleu() -> Any:
    try:
        import sacrebleu
    except ImportError as e:
        raise ImportError("BLEU/chrF need sacrebleu: pip install 'torchformer[translate]'") from e
    return sacrebleu


def _reference_streams(
    references: Sequence[str] | Sequence[Sequence[str]], num_hypotheses: int
) -> list[list[str]]:
    """Turn per-hypothesis references into sacreBLEU's list of reference streams."""
    if len(references) != num_hypotheses:
        raise ValueError(
            f"got {num_hypotheses} hypotheses but {len(references)} references; "
            "give one reference (or one list of references) per hypothesis"
        )
    if all(isinstance(r, str) for r in references):
        return [list(references)]  # type: ignore[arg-type]
    counts = {len(r) for r in references}
    if len(counts) != 1 or any(isinstance(r, str) for r in references):
        raise ValueError("every hypothesis needs the same number of references")
    return [list(stream) for stream in zip(*references)]


def corpus_scores(
    hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
) -> dict[str, Any]:
    """Corpus-level BLEU and chrF of detokenized ``hypotheses`` against ``references``.

    Args:
        hypotheses: one detokenized system output per segment.
        references: one reference string per segment, or one list of ``k`` references
            per segment (the same ``k`` for all).

    Returns:
        ``{"bleu", "bleu_signature", "bleu_precisions", "brevity_penalty", "hyp_len",
        "ref_len", "chrf", "chrf_signature"}``; scores are on sacreBLEU's 0-100 scale.

    Raises:
        ImportError: sacrebleu is missing (it is the ``torchformer[translate]`` extra).
        ValueError: hypotheses and references do not line up.
    """
    sacrebleu = _require_sacrebleu()
    hyps = list(hypotheses)
    refs = _reference_streams(references, len(hyps))
    bleu_metric = sacrebleu.BLEU()  # cased, 13a, exponential smoothing: the defaults
    chrf_metric = sacrebleu.CHRF()
    bleu = bleu_metric.corpus_score(hyps, refs)
    chrf = chrf_metric.corpus_score(hyps, refs)
    return {
        "bleu": float(bleu.score),
        "bleu_signature": str(bleu_metric.get_signature()),
        "bleu_precisions": [float(p) for p in bleu.precisions],
        "brevity_penalty": float(bleu.bp),
        "hyp_len": int(bleu.sys_len),
        "ref_len": int(bleu.ref_len),
        "chrf": float(chrf.score),
        "chrf_signature": str(chrf_metric.get_signature()),
    }
