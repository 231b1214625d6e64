"""ROUGE through Google's rouge-score: the mean F-measure per segment, 0-100."""

import builtins
import logging

import pytest

from torchformer.evaluate import rouge as rouge_module
from torchformer.evaluate.rouge import ROUGE_TYPES, rouge_scores


def test_rouge_is_the_mean_f_measure_of_rouge_score() -> None:
    same = rouge_scores(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert [same[name] for name in ROUGE_TYPES] == [100.0] * 4
    assert rouge_scores(["dogs bark"], ["cats purr"])["rouge1"] == 0.0
    # unigrams: 2 of 3 hypothesis words, 2 of 4 reference words: F = 2PR / (P + R) = 4/7
    scores = rouge_scores(["the cat sat", "a b"], ["the cat ran away", "a b"])
    assert scores["rouge1"] == pytest.approx(100 * (4 / 7 + 1) / 2)
    # bigrams: "the cat" of 2 and 3: F = 2 (1/2)(1/3) / (1/2 + 1/3) = 2/5; "a b" matches
    assert scores["rouge2"] == pytest.approx(100 * (2 / 5 + 1) / 2)
    assert scores["rougeL"] == pytest.approx(scores["rouge1"])  # the LCS is "the cat"
    assert set(scores) == {*ROUGE_TYPES, "rouge_signature"}
    assert scores["rouge_signature"] == "rouge-score|agg:mean-f|stem:yes|tok:default-ascii"


def test_the_stemmer_is_on_by_default_and_recorded() -> None:
    stemmed = rouge_scores(["the cats are running"], ["the cat is running"])
    plain = rouge_scores(["the cats are running"], ["the cat is running"], use_stemmer=False)
    assert stemmed["rouge1"] == pytest.approx(75.0)  # the, cat(s), running
    assert plain["rouge1"] == pytest.approx(50.0)  # the, running
    assert plain["rouge_signature"] == "rouge-score|agg:mean-f|stem:no|tok:default-ascii"


def test_lsum_reads_newlines_as_sentence_breaks() -> None:
    hyp, ref = "b c\na", "a\nb c"
    scores = rouge_scores([hyp], [ref])
    assert scores["rougeLsum"] == pytest.approx(100.0)  # summary-level: each sentence matched
    assert scores["rougeL"] < 100.0  # one sequence: the LCS of "b c a" and "a b c" is "b c"


def test_mismatched_or_empty_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="got 2 hypotheses but 1 references"):
        rouge_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="ROUGE needs at least one hypothesis"):
        rouge_scores([], [])


def test_a_missing_rouge_score_names_the_extra(monkeypatch) -> None:
    real_import = builtins.__import__

    def no_rouge(name, *args, **kwargs):
        if name.startswith("rouge_score"):
            raise ImportError("No module named 'rouge_score'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rouge)
    with pytest.raises(ImportError, match=r"pip install 'torchformer\[translate\]'"):
        rouge_scores(["a"], ["a"])


def test_absl_info_lines_are_silenced_but_warnings_kept() -> None:
    absl = logging.getLogger("absl")
    before = absl.level
    try:
        absl.setLevel(logging.DEBUG)
        rouge_module._require_rouge_score()
        assert absl.level == logging.WARNING
        absl.setLevel(logging.ERROR)  # a stricter level the user chose stays
        rouge_module._require_rouge_score()
        assert absl.level == logging.ERROR
    finally:
        absl.setLevel(before)
