"""The text preprocessor: how raw text becomes token ids, in training and in every use.

Cleaning steps + tokenizer + truncation settings, as one object. The classification
task builds it once, encodes its training, validation and test data with it, and saves
its settings next to the weights (``best/torchformer.json`` + ``tokenizer.json``);
``torchformer.load()``, ``evaluate``, the ONNX export and the server rebuild the same
object from that directory. One code path, so training and serving cannot skew.

    pre = TextPreprocessor(tokenizer, cleaning=["strip_html"], max_length=256)
    cleaned, empty = pre.clean(["A <b>fine</b> film."])
    ids = pre.encode(cleaned)  # [[101, ..., 102]]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torchformer.text.cleaning import TextCleaner
from torchformer.text.tokenizer import Tokenizer

__all__ = ["TextPreprocessor"]


class TextPreprocessor:
    """Clean, tokenize and truncate texts the one way a model was trained with.

    Args:
        tokenizer: the model's tokenizer.
        cleaning: cleaning step names (``text.cleaning.CLEANING_STEPS``), applied in order.
        max_length: tokens per text, special tokens included.
        truncation: "head", "tail" or "head+tail" (keep the start and the end).
        head_tokens: with "head+tail", tokens kept from the start (None: the tokenizer's default).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        cleaning: Sequence[str],
        max_length: int,
        truncation: str = "head+tail",
        head_tokens: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.cleaner = TextCleaner(cleaning)
        self.max_length = max_length
        self.truncation = truncation
        self.head_tokens = head_tokens

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    def clean(self, texts: Iterable[str]) -> tuple[list[str], list[int]]:
        """The cleaned texts, and the indices of those that cleaned to nothing."""
        return self.cleaner.clean_and_find_empty(texts)

    def encode(self, cleaned_texts: Sequence[str]) -> list[list[int]]:
        """Token ids of already cleaned texts, truncated the model's way."""
        return self.tokenizer.encode_batch(
            list(cleaned_texts),
            max_length=self.max_length,
            truncation=self.truncation,
            head_tokens=self.head_tokens,
        )
