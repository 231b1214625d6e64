"""Language-model tokenizers: GPT-2-style byte-level BPE and nanoGPT's character level."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchformer.data.corpus import shakespeare_char_split, tinyshakespeare_corpus
from torchformer.data.paths import data_dir
from torchformer.text.lm_tokenizers import (
    END_OF_TEXT,
    char_tokenizer,
    train_byte_level_bpe,
    train_char_tokenizer,
)
from torchformer.text.tokenizer import Tokenizer

SPEECHES = [
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n",
    "All:\nSpeak, speak.\n\n",
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n",
    "All:\nResolved. resolved.\n\n",
    "MENENIUS:\nWhy, masters, my good friends,  mine honest neighbours,\nWill you undo yourselves?\n",
]
CORPUS = SPEECHES * 20
UNSEEN = "  ROMEO:\n\tBut soft! what light — through yonder window breaks? café 🌹\r\n"


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_byte_level_bpe(iter(CORPUS), vocab_size=300, min_frequency=2)


# --- byte-level BPE --------------------------------------------------------------------------
def test_bpe_round_trips_any_text_exactly(bpe: Tokenizer) -> None:
    for text in [*SPEECHES, UNSEEN, "".join(SPEECHES)]:
        ids = bpe.encode(text)
        assert bpe.decode(ids) == text
    assert bpe.unk_id is None  # nothing is unknown: every byte is in the alphabet


def test_bpe_has_gpt2_end_of_text_and_learns_merges(bpe: Tokenizer) -> None:
    assert bpe.eos_id == bpe.token_to_id(END_OF_TEXT) == 0
    assert 256 < bpe.vocab_size <= 300
    text = SPEECHES[0]
    assert len(bpe.encode(text)) < 0.6 * len(text.encode("utf-8"))  # merges compress (0.55)
    assert bpe.encode("Speak") == bpe.encode("Speak", add_special_tokens=False)  # no template
    # The separator never comes out of plain text; decoding skips it by default.
    assert bpe.eos_id not in bpe.encode("".join(SPEECHES))
    assert bpe.decode([*bpe.encode("a"), bpe.eos_id, *bpe.encode("b")]) == "ab"


def test_bpe_save_load_round_trip(bpe: Tokenizer, tmp_path: Path) -> None:
    bpe.save(tmp_path / "tok" / "tokenizer.json")
    loaded = Tokenizer.from_file(tmp_path / "tok" / "tokenizer.json")
    assert loaded.encode(UNSEEN) == bpe.encode(UNSEEN)
    assert loaded.decode(loaded.encode(UNSEEN)) == UNSEEN
    assert (loaded.vocab_size, loaded.eos_id) == (bpe.vocab_size, bpe.eos_id)


def test_bpe_custom_end_of_text_is_the_eos(tmp_path: Path) -> None:
    tokenizer = train_byte_level_bpe(CORPUS, vocab_size=270, end_of_text="<eot>")
    assert tokenizer.eos_id == tokenizer.token_to_id("<eot>") == 0


def test_bpe_rejects_a_vocabulary_without_room_and_non_strings() -> None:
    with pytest.raises(ValueError, match="vocab_size=257 must exceed the 256 byte"):
        train_byte_level_bpe(CORPUS, vocab_size=257)
    with pytest.raises(TypeError, match=r"texts\[1\]: expected str"):
        train_byte_level_bpe(["ok", 3], vocab_size=300)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="single string"):
        train_byte_level_bpe("just one string", vocab_size=300)


# --- character level --------------------------------------------------------------------------
def test_char_vocabulary_is_the_sorted_set_of_characters() -> None:
    text = "".join(SPEECHES)
    tokenizer = train_char_tokenizer(iter(SPEECHES))
    chars = sorted(set(text))
    assert tokenizer.vocab_size == len(chars)
    stoi = {c: i for i, c in enumerate(chars)}  # nanoGPT's shakespeare_char prepare.py
    assert tokenizer.encode(text) == [stoi[c] for c in text]
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.eos_id is None and tokenizer.unk_id is None


def test_char_keeps_whitespace_runs_and_newlines() -> None:
    tokenizer = char_tokenizer(" \n\tab")
    text = "a  b\n\n\tba \n"
    order = ["\t", "\n", " ", "a", "b"]  # sorted by code point
    assert tokenizer.encode(text) == [order.index(c) for c in text]
    assert tokenizer.tokens(tokenizer.encode(text)) == list(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_char_handles_characters_outside_the_bmp() -> None:
    tokenizer = char_tokenizer("a🌹é")
    assert tokenizer.encode("🌹aé🌹") == [2, 0, 1, 2]  # sorted: 'a' < 'é' < '🌹'
    assert tokenizer.decode([2, 0, 1, 2]) == "🌹aé🌹"


def test_char_unknown_character_raises() -> None:
    tokenizer = char_tokenizer("ab")
    with pytest.raises(Exception, match="UNK"):
        tokenizer.encode("abc")


def test_char_end_of_text_comes_after_the_characters() -> None:
    tokenizer = char_tokenizer("ba", end_of_text=END_OF_TEXT)
    assert tokenizer.vocab_size == 3
    assert tokenizer.eos_id == 2
    assert tokenizer.encode(f"ab{END_OF_TEXT}b") == [0, 1, 2, 1]
    assert tokenizer.decode([0, 2, 1]) == "ab"
    with pytest.raises(ValueError, match="also a character"):
        char_tokenizer("ab<", end_of_text="<")


def test_char_rejects_bad_alphabets() -> None:
    with pytest.raises(ValueError, match="single characters"):
        char_tokenizer(["ab", "c"])
    with pytest.raises(ValueError, match="single characters"):
        char_tokenizer([])


def test_char_save_load_round_trip(tmp_path: Path) -> None:
    tokenizer = train_char_tokenizer(SPEECHES, end_of_text=END_OF_TEXT)
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = Tokenizer.from_file(tmp_path / "tokenizer.json")
    text = "".join(SPEECHES)
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.decode(loaded.encode(text)) == text
    assert (loaded.vocab_size, loaded.eos_id) == (tokenizer.vocab_size, tokenizer.eos_id)


# --- the real file (tier 3) ---------------------------------------------------------------
@pytest.mark.data
def test_shakespeare_char_has_65_characters_and_nanogpt_ids() -> None:
    if not (data_dir() / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip("Tiny Shakespeare absent: set TORCHFORMER_DATA to the shared data folder")
    [(_, text)] = list(tinyshakespeare_corpus())
    tokenizer = train_char_tokenizer([text])
    assert tokenizer.vocab_size == 65
    train, val = shakespeare_char_split(text)
    ids = tokenizer.encode(train)
    assert len(ids) == 1_003_854
    assert ids[:8] == [18, 47, 56, 57, 58, 1, 15, 47]  # "First Ci", as nanoGPT encodes it
    assert tokenizer.decode(tokenizer.encode(val)) == val
    bpe = train_byte_level_bpe([train], vocab_size=512)
    assert bpe.decode(bpe.encode(val)) == val
    assert len(bpe.encode(val)) < 0.6 * len(val)  # 0.53 with 512 ids
