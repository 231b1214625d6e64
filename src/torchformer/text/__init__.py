"""torchformer.text: tokenizers (train and load, on the ``tokenizers`` library) and cleaning."""

from torchformer.text.cleaning import CLEANING_STEPS, TextCleaner, check_cleaning_steps
from torchformer.text.tokenizer import EncodedText, Tokenizer

__all__ = ["CLEANING_STEPS", "EncodedText", "TextCleaner", "Tokenizer", "check_cleaning_steps"]
