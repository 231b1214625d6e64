"""Explicit, configurable text cleaning.

Each cleaning step is a named, pure ``str -> str`` function; a ``TextCleaner`` applies
the steps it was given, in the given order. Nothing happens implicitly: a config lists
the steps it wants, e.g. ``["strip_html", "normalize_whitespace"]`` for IMDB reviews
(they contain ``<br />`` line breaks).

Some steps are harmful in front of a *pretrained* tokenizer: ``lowercase`` is redundant
for an uncased one (it lowercases itself) and destroys information for a cased one, and
``remove_punctuation`` feeds the model text unlike anything it was pretrained on.
``check_cleaning_steps`` refuses them unless asked explicitly with ``force=True``.
"""

from __future__ import annotations

import functools
import html
import re
import sys
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "CLEANING_STEPS",
    "TextCleaner",
    "check_cleaning_steps",
    "lowercase",
    "normalize_whitespace",
    "remove_emails",
    "remove_punctuation",
    "remove_urls",
    "strip_html",
]

# `<br />`, `<br>`, `<BR/>`: a line break, so it becomes a space (words must not merge).
_BREAK_RE = re.compile(r"<\s*br\s*/?\s*>", re.IGNORECASE)
# A tag needs a name right after `<` (or `</`), so "a < b > c" is left alone.
_TAG_RE = re.compile(r"</?[A-Za-z][^<>]*>")
# A URL ends before whitespace, quotes or brackets; trailing sentence punctuation
# ("see http://x.org.") is not part of it.
_URL_RE = re.compile(r"(?:https?://|ftp://|www\.)[^\s<>\"']*[^\s<>\"'.,;:!?)\]}]", re.IGNORECASE)
_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_WHITESPACE_RE = re.compile(r"\s+")


def strip_html(text: str) -> str:
    """Replace ``<br />`` by a space, drop other HTML tags and unescape entities."""
    text = _BREAK_RE.sub(" ", text)
    text = _TAG_RE.sub(" ", text)
    return html.unescape(text)


def remove_urls(text: str) -> str:
    """Remove ``http(s)://``, ``ftp://`` and ``www.`` URLs."""
    return _URL_RE.sub("", text)


def remove_emails(text: str) -> str:
    """Remove e-mail addresses."""
    return _EMAIL_RE.sub("", text)


def normalize_whitespace(text: str) -> str:
    """Collapse every run of whitespace (spaces, tabs, newlines) to one space; strip."""
    return _WHITESPACE_RE.sub(" ", text).strip()


def lowercase(text: str) -> str:
    """Lowercase the text."""
    return text.lower()


@functools.cache
def _punctuation_table() -> dict[int, None]:
    # Every Unicode punctuation character (categories Pc Pd Ps Pe Pi Pf Po), built once.
    return {
        code: None
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code)).startswith("P")
    }


def remove_punctuation(text: str) -> str:
    """Remove Unicode punctuation (categories P*); symbols such as ``$`` are kept."""
    return text.translate(_punctuation_table())


CLEANING_STEPS: dict[str, Callable[[str], str]] = {
    "strip_html": strip_html,
    "remove_urls": remove_urls,
    "remove_emails": remove_emails,
    "normalize_whitespace": normalize_whitespace,
    "lowercase": lowercase,
    "remove_punctuation": remove_punctuation,
}

# Steps that change what a pretrained tokenizer/model sees in a way it was not trained on.
_UNSAFE_FOR_PRETRAINED = ("lowercase", "remove_punctuation")


def _validate_step_names(steps: Sequence[str]) -> list[str]:
    if isinstance(steps, str):
        raise TypeError(f"steps must be a list of step names, got the string {steps!r}")
    valid = ", ".join(CLEANING_STEPS)
    for position, step in enumerate(steps):
        if step not in CLEANING_STEPS:
            raise ValueError(
                f"unknown cleaning step {step!r} at position {position}; valid steps: {valid}"
            )
    return list(steps)


class TextCleaner:
    """Apply named cleaning steps in order.

    Args:
        steps: names from ``CLEANING_STEPS``, applied left to right.

    Raises:
        ValueError: an unknown step name (the message lists the valid ones).

    Example:
        >>> TextCleaner(["strip_html", "normalize_whitespace"])("Great!<br /><br />Loved it")
        'Great! Loved it'
    """

    def __init__(self, steps: Sequence[str]) -> None:
        self.steps = _validate_step_names(steps)
        self._functions = [CLEANING_STEPS[step] for step in self.steps]

    def __call__(self, text: str) -> str:
        for function in self._functions:
            text = function(text)
        return text

    def clean_batch(self, texts: Iterable[str]) -> list[str]:
        """Clean every text of ``texts``."""
        return [self(text) for text in texts]

    def clean_and_find_empty(self, texts: Iterable[str]) -> tuple[list[str], list[int]]:
        """Clean every text; also the indices of those left empty (e.g. only HTML), which
        the caller names in its error or skips."""
        cleaned = self.clean_batch(texts)
        return cleaned, [i for i, text in enumerate(cleaned) if not text.strip()]

    def __repr__(self) -> str:
        return f"TextCleaner({self.steps!r})"


def check_cleaning_steps(
    steps: Sequence[str],
    *,
    pretrained_tokenizer: bool,
    tokenizer_lowercases: bool | None = None,
    force: bool = False,
) -> list[str]:
    """Validate cleaning steps against the tokenizer they feed.

    ``lowercase`` and ``remove_punctuation`` are refused in front of a pretrained
    tokenizer unless ``force=True`` (then a warning is emitted): an uncased pretrained
    tokenizer lowercases by itself, a cased one loses information the model uses, and
    a pretrained model has always seen punctuation.

    Args:
        steps: the cleaning step names.
        pretrained_tokenizer: whether the tokenizer (and model) is pretrained.
        tokenizer_lowercases: whether the tokenizer lowercases itself (see
            ``Tokenizer.lowercases``); only used to explain the refusal.
        force: accept the unsafe steps anyway.

    Returns:
        The validated list of step names.

    Raises:
        ValueError: an unknown step, or an unsafe step without ``force``.
    """
    steps = _validate_step_names(steps)
    if not pretrained_tokenizer:
        return steps
    unsafe = [step for step in steps if step in _UNSAFE_FOR_PRETRAINED]
    if not unsafe:
        return steps
    reasons = []
    if "lowercase" in unsafe:
        if tokenizer_lowercases:
            reasons.append(
                "'lowercase' is redundant: this pretrained tokenizer is uncased and "
                "lowercases its input itself"
            )
        elif tokenizer_lowercases is False:
            reasons.append(
                "'lowercase' hurts a cased pretrained tokenizer: the model was trained on "
                "cased text and uses case (names, emphasis, sentence starts)"
            )
        else:
            reasons.append(
                "'lowercase' is either redundant (an uncased tokenizer lowercases itself) "
                "or harmful (a cased model was trained on cased text)"
            )
    if "remove_punctuation" in unsafe:
        reasons.append(
            "'remove_punctuation' changes the input distribution: the pretrained model "
            "saw punctuation in all its training text and uses it (negation, '!', '?')"
        )
    message = "; ".join(reasons)
    if not force:
        raise ValueError(
            f"cleaning steps {unsafe} refused for a pretrained tokenizer: {message}. "
            "Remove them, or force them: data.force_cleaning: true in a run config "
            "(--data.force_cleaning true on the command line), force=True in Python."
        )
    warnings.warn(
        f"applying {unsafe} before a pretrained tokenizer (force=True): {message}",
        UserWarning,
        stacklevel=2,
    )
    return steps
