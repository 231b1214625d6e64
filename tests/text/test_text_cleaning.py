"""Cleaning steps, TextCleaner and the pretrained-tokenizer guard."""

from __future__ import annotations

import pytest

from torchformer.text.cleaning import (
    CLEANING_STEPS,
    TextCleaner,
    check_cleaning_steps,
    normalize_whitespace,
    remove_emails,
    remove_punctuation,
    remove_urls,
    strip_html,
)


def test_strip_html_turns_line_breaks_into_spaces_and_drops_tags() -> None:
    text = "Great film!<br /><br />Loved it.<BR>The <i>end</i> &amp; a < b > c"
    assert strip_html(text) == "Great film!  Loved it. The  end  & a < b > c"


def test_strip_html_never_merges_words_across_a_break() -> None:
    assert "word next" in normalize_whitespace(strip_html("word<br/>next"))


def test_remove_urls_keeps_sentence_punctuation() -> None:
    text = "See http://example.org/a?b=1. Or www.imdb.com/title, or (https://x.y/z)."
    assert remove_urls(text) == "See . Or , or ()."


def test_remove_emails() -> None:
    assert remove_emails("write to jane.doe+imdb@mail.example.co.uk now") == "write to  now"


def test_normalize_whitespace_collapses_and_strips() -> None:
    assert normalize_whitespace("  a\t\tb\n\nc  ") == "a b c"


def test_remove_punctuation_is_unicode_aware_and_keeps_symbols() -> None:
    assert remove_punctuation("«Don't» — stop! Costs $5…") == "Dont  stop Costs $5"


def test_cleaner_applies_steps_in_the_given_order() -> None:
    text = "Mail ME@Example.com<br />NOW!"
    emails_first = TextCleaner(["remove_emails", "strip_html", "normalize_whitespace"])
    punctuation_first = TextCleaner(
        ["remove_punctuation", "remove_emails", "strip_html", "normalize_whitespace"]
    )
    assert emails_first(text) == "Mail NOW!"
    # Without '@' and '.', the address is no longer recognised.
    assert punctuation_first(text) == "Mail MEExamplecom NOW"
    assert TextCleaner(["lowercase"]).clean_batch(["A", "Bc"]) == ["a", "bc"]


def test_cleaner_rejects_unknown_step_listing_valid_ones() -> None:
    with pytest.raises(ValueError, match="'strip_tags' at position 1") as info:
        TextCleaner(["lowercase", "strip_tags"])
    for step in CLEANING_STEPS:
        assert step in str(info.value)


def test_cleaner_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError, match="list of step names"):
        TextCleaner("lowercase")


def test_guard_refuses_lowercase_for_uncased_pretrained_tokenizer() -> None:
    with pytest.raises(ValueError, match=r"redundant.*uncased"):
        check_cleaning_steps(["lowercase"], pretrained_tokenizer=True, tokenizer_lowercases=True)


def test_guard_refuses_lowercase_for_cased_pretrained_tokenizer() -> None:
    with pytest.raises(ValueError, match="hurts a cased"):
        check_cleaning_steps(["lowercase"], pretrained_tokenizer=True, tokenizer_lowercases=False)


def test_guard_refuses_punctuation_removal_for_pretrained_tokenizer() -> None:
    with pytest.raises(ValueError, match=r"remove_punctuation.*force=True"):
        check_cleaning_steps(["strip_html", "remove_punctuation"], pretrained_tokenizer=True)


def test_guard_allows_safe_steps_and_trained_from_scratch_tokenizers() -> None:
    safe = ["strip_html", "remove_urls", "normalize_whitespace"]
    assert check_cleaning_steps(safe, pretrained_tokenizer=True) == safe
    unsafe = ["lowercase", "remove_punctuation"]
    assert check_cleaning_steps(unsafe, pretrained_tokenizer=False) == unsafe


def test_guard_force_applies_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="force=True"):
        steps = check_cleaning_steps(["lowercase"], pretrained_tokenizer=True, force=True)
    assert steps == ["lowercase"]
