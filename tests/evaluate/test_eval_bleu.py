"""corpus_scores: sacreBLEU BLEU + chrF with signatures."""

import sys

import pytest

from torchformer.evaluate.bleu import corpus_scores

sacrebleu = pytest.importorskip("sacrebleu")

HYPS = ["The dog runs in the park.", "A man is reading a book."]
REFS = ["The dog is running in the park.", "A man reads a book."]


def test_matches_sacrebleu_and_reports_signatures():
    scores = corpus_scores(HYPS, REFS)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert 0 < scores["bleu"] < 100
    for part in ("nrefs:1", "case:mixed", "tok:13a", "smooth:exp"):
        assert part in scores["bleu_signature"]
    assert "nrefs:1" in scores["chrf_signature"]


def test_identical_is_100_and_case_matters():
    assert corpus_scores(REFS, REFS)["bleu"] == pytest.approx(100.0)
    assert corpus_scores(REFS, REFS)["chrf"] == pytest.approx(100.0)
    assert corpus_scores([h.upper() for h in REFS], REFS)["bleu"] < 10


def test_multiple_references_per_hypothesis():
    multi = [[REFS[0], HYPS[0]], [REFS[1], "Someone reads."]]
    scores = corpus_scores(HYPS, multi)
    assert "nrefs:2" in scores["bleu_signature"]
    assert scores["bleu"] > corpus_scores(HYPS, REFS)["bleu"]  # hyp 1 matches a reference


def test_mismatched_lengths():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        corpus_scores(HYPS, REFS[:1])


def test_missing_sacrebleu_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # makes `import sacrebleu` fail
    with pytest.raises(ImportError, match=r"torchformer\[translate\]"):
        corpus_scores(HYPS, REFS)
