"""torchformer.evaluate: streaming metrics, BLEU/chrF, perplexity and error analysis."""

from torchformer.evaluate.bleu import corpus_scores
from torchformer.evaluate.classification import (
    StreamingClassificationMetrics,
    classification_report_text,
    expected_calibration_error,
    write_evaluation,
)
from torchformer.evaluate.perplexity import StreamingPerplexity

__all__ = [
    "StreamingClassificationMetrics",
    "StreamingPerplexity",
    "classification_report_text",
    "corpus_scores",
    "expected_calibration_error",
    "write_evaluation",
]
