"""Tokenizers for language modelling, built on ``tokenizers`` and returned as ``Tokenizer``.

- ``train_byte_level_bpe``: GPT-2's scheme (Radford et al. 2019): the text's UTF-8 bytes
  mapped to printable characters, GPT-2's pre-tokenization regex, BPE merges learned on
  the corpus, and an end-of-text special token (``<|endoftext|>``) to separate
  documents. There is no normalizer and every byte is in the base alphabet, so nothing
  is unknown and ``decode(encode(text)) == text`` for any text. (``Tokenizer.train_bpe``
  with ``byte_level=True`` applies NFKC first, which is not reversible, and has no
  end-of-text token: right for translation, not for a language model.)
- ``train_char_tokenizer`` / ``char_tokenizer``: nanoGPT's ``shakespeare_char``: the
  vocabulary is the sorted set of characters of the training text (65 on Tiny
  Shakespeare), id = rank in that order, so ids equal nanoGPT's ``stoi``. Built as a
  ``tokenizers`` WordLevel model over single characters (a pre-tokenizer that isolates
  every character, a ``Fuse`` decoder that joins them back) so that it saves, loads
  and encodes in Rust like every other tokenizer. Without an unknown token (nanoGPT has
  none), encoding a character outside the vocabulary raises.

Both return the project's ``Tokenizer`` wrapper: ``encode``/``decode``/``save``/
``Tokenizer.from_file``, ``vocab_size``, ``eos_id`` (the end-of-text id, found by name).
"""

from __future__ import annotations

from collections.abc import Iterable

import tokenizers
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

from torchformer.text.tokenizer import Tokenizer, checked_text_stream

__all__ = ["END_OF_TEXT", "char_tokenizer", "train_byte_level_bpe", "train_char_tokenizer"]

END_OF_TEXT = "<|endoftext|>"  # GPT-2's document separator; Tokenizer finds it as eos
# One match per Unicode code point, newlines included ("." would skip "\n"; Oniguruma,
# the regex engine of `tokenizers`, has no (?s) flag).
_ONE_CHARACTER = r"[\s\S]"


def train_byte_level_bpe(
    texts: Iterable[str],
    *,
    vocab_size: int = 8192,
    min_frequency: int = 2,
    end_of_text: str = END_OF_TEXT,
) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE tokenizer.

    Args:
        texts: training documents (streamed; e.g. ``corpus.texts()``).
        vocab_size: the vocabulary size, special token and the 256 byte symbols
            included (GPT-2: 50,257).
        min_frequency: the least count a pair needs to be merged.
        end_of_text: the special token placed between documents (id 0).

    Raises:
        TypeError: a text is not a string.
        ValueError: ``vocab_size`` leaves no room beyond the 256 bytes.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size <= len(alphabet) + 1:
        raise ValueError(
            f"vocab_size={vocab_size} must exceed the {len(alphabet)} byte symbols "
            f"plus {end_of_text!r}"
        )
    backend = tokenizers.Tokenizer(models.BPE())
    # GPT-2: no prefix space (a text's first word is encoded as written) and its regex.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[end_of_text],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    backend.train_from_iterator(checked_text_stream(texts), trainer=trainer)
    return Tokenizer(backend, special_tokens={"eos": end_of_text})


def char_tokenizer(characters: Iterable[str], *, end_of_text: str | None = None) -> Tokenizer:
    """A character-level tokenizer over ``characters`` (ids in sorted character order).

    Args:
        characters: the alphabet (duplicates are ignored; each item one character).
        end_of_text: an optional special token with the id after the last character
            (nanoGPT's shakespeare_char has none: the corpus is one document).

    Raises:
        ValueError: an item is not a single character, or the alphabet is empty.
    """
    alphabet = sorted(set(characters))
    bad = [c for c in alphabet if not isinstance(c, str) or len(c) != 1]
    if bad or not alphabet:
        raise ValueError(
            f"characters must be non-empty single characters; got {bad[:5] or 'nothing'}"
        )
    vocab = {character: index for index, character in enumerate(alphabet)}
    # unk_token names a token absent from the vocabulary: an unseen character raises
    # "Missing [UNK] token" instead of being silently mapped.
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(_ONE_CHARACTER), behavior="isolated")
    backend.decoder = decoders.Fuse()  # join the characters back without spaces
    roles = {}
    if end_of_text is not None:
        if end_of_text in vocab:
            raise ValueError(f"end_of_text {end_of_text!r} is also a character of the text")
        backend.add_special_tokens([end_of_text])
        roles["eos"] = end_of_text
    return Tokenizer(backend, special_tokens=roles)


def train_char_tokenizer(texts: Iterable[str], *, end_of_text: str | None = None) -> Tokenizer:
    """A character-level tokenizer whose vocabulary is every character of ``texts``.

    The texts are streamed; only the set of characters is kept. See ``char_tokenizer``.
    """
    characters: set[str] = set()
    for text in checked_text_stream(texts):
        characters.update(text)
    return char_tokenizer(characters, end_of_text=end_of_text)
