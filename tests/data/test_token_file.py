"""Packed token files (cache, fingerprint, atomic writes, streaming) and the block sampler."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from torchformer.data.corpus import Corpus, shakespeare_char_corpora, text_corpus
from torchformer.data.paths import data_dir
from torchformer.data.records import DataError
from torchformer.data.token_file import (
    PackedBlockSampler,
    build_token_file,
    open_token_file,
    read_blocks,
)
from torchformer.text.lm_tokenizers import END_OF_TEXT, char_tokenizer, train_char_tokenizer
from torchformer.text.tokenizer import Tokenizer

DOCS = ["hello world\n", "abc", "the end.\n"]
ALPHABET = "".join(sorted(set("".join(DOCS)))) + "xyz"


class CountingTokenizer(Tokenizer):
    """A Tokenizer that counts its ``encode_batch`` calls and the texts it saw."""

    def __init__(self, backend, **kwargs) -> None:
        super().__init__(backend, **kwargs)
        self.calls = 0
        self.texts = 0

    def encode_batch(self, texts: Sequence[str], **kwargs) -> list[list[int]]:
        self.calls += 1
        self.texts += len(texts)
        return super().encode_batch(texts, **kwargs)


def _tokenizer(alphabet: str = ALPHABET, end_of_text: str | None = END_OF_TEXT):
    inner = char_tokenizer(alphabet, end_of_text=end_of_text)
    roles = {"eos": end_of_text} if end_of_text else {}
    return CountingTokenizer(inner.backend, special_tokens=roles)


def _folder(root: Path, docs: Sequence[str] = DOCS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for index, text in enumerate(docs):
        (root / f"{index:03d}.txt").write_text(text)
    return root


def _expected(tokenizer: Tokenizer, docs: Sequence[str]) -> list[int]:
    ids: list[int] = []
    for index, text in enumerate(docs):
        ids += ([tokenizer.eos_id] if index else []) + tokenizer.encode(text)
    return ids


# --- layout -------------------------------------------------------------------------------
def test_documents_are_joined_by_end_of_text_with_an_index_of_starts(tmp_path: Path) -> None:
    tokenizer = _tokenizer()
    token_file = build_token_file(
        text_corpus(_folder(tmp_path / "c")), tokenizer, cache_dir=tmp_path / "cache"
    )
    assert token_file.tokens.dtype == np.uint16
    assert token_file.tokens.tolist() == _expected(tokenizer, DOCS)
    assert token_file.doc_starts.tolist() == [0, 13, 17]  # 12 ids + eot, 3 ids + eot
    assert [tokenizer.decode(token_file.document(i).tolist()) for i in range(3)] == DOCS
    assert token_file.eot_id == tokenizer.eos_id == len(ALPHABET)
    assert len(token_file) == 12 + 1 + 3 + 1 + 9
    meta = json.loads(token_file.path.with_name(token_file.path.stem + ".json").read_text())
    assert (meta["num_tokens"], meta["num_documents"], meta["dtype"]) == (26, 3, "uint16")
    assert token_file.path.name == f"c-{token_file.key}.bin"
    with pytest.raises(ValueError, match="read-only"):
        token_file.tokens[0] = 1  # a memmap opened read-only


def test_without_end_of_text_documents_are_joined_directly(tmp_path: Path) -> None:
    tokenizer = _tokenizer(end_of_text=None)
    token_file = build_token_file(
        text_corpus(_folder(tmp_path / "c")), tokenizer, cache_dir=tmp_path
    )
    assert token_file.eot_id is None
    assert token_file.tokens.tolist() == tokenizer.encode("".join(DOCS))
    assert token_file.doc_starts.tolist() == [0, 12, 15]
    assert tokenizer.decode(token_file.document(1).tolist()) == "abc"


class WideTokenizer:
    """A duck-typed tokenizer with ids past uint16 (a 70,000-id vocabulary)."""

    backend = type("Backend", (), {"to_str": lambda self: '{"wide": 1}'})()
    vocab_size = 70_000
    eos_id = 69_999

    def encode_batch(self, texts, *, max_length, add_special_tokens):
        return [[65_000 + ord(c) for c in text] for text in texts]


def test_a_vocabulary_past_65536_ids_is_stored_as_uint32(tmp_path: Path) -> None:
    token_file = build_token_file(
        text_corpus(_folder(tmp_path / "c", ["ab", "c"])), WideTokenizer(), cache_dir=tmp_path
    )
    assert token_file.tokens.dtype == np.uint32
    assert token_file.tokens.tolist() == [65_097, 65_098, 69_999, 65_099]


def test_default_cache_dir_is_under_the_data_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCHFORMER_DATA", str(tmp_path / "data"))
    token_file = build_token_file(text_corpus(_folder(tmp_path / "c")), _tokenizer())
    assert token_file.path.parent == tmp_path / "data" / "cache" / "tokens"


# --- cache: reuse, invalidation ------------------------------------------------------------
def test_second_call_reuses_the_file_without_tokenizing(tmp_path: Path) -> None:
    corpus, tokenizer = text_corpus(_folder(tmp_path / "c")), _tokenizer()
    first = build_token_file(corpus, tokenizer, cache_dir=tmp_path / "cache")
    assert tokenizer.calls == 1
    again = build_token_file(text_corpus(tmp_path / "c"), tokenizer, cache_dir=tmp_path / "cache")
    assert tokenizer.calls == 1  # reused
    assert again.path == first.path and again.tokens.tolist() == first.tokens.tolist()


def test_a_changed_tokenizer_or_corpus_makes_a_new_file(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = build_token_file(text_corpus(_folder(tmp_path / "c")), _tokenizer(), cache_dir=cache)
    other_tokenizer = _tokenizer(ALPHABET + "q")
    second = build_token_file(text_corpus(tmp_path / "c"), other_tokenizer, cache_dir=cache)
    assert other_tokenizer.calls == 1 and second.key != first.key
    (tmp_path / "c" / "001.txt").write_text("abcabc")
    tokenizer = _tokenizer()
    third = build_token_file(text_corpus(tmp_path / "c"), tokenizer, cache_dir=cache)
    assert tokenizer.calls == 1 and third.key not in (first.key, second.key)
    assert tokenizer.decode(third.document(1).tolist()) == "abcabc"
    line_split = build_token_file(
        text_corpus(tmp_path / "c", split="line"), tokenizer, cache_dir=cache
    )
    assert line_split.key != third.key and tokenizer.calls == 2
    assert len(list(cache.glob("*.bin"))) == 4


# --- streaming in batches -------------------------------------------------------------------
def test_a_corpus_larger_than_a_batch_streams_through_in_batches(tmp_path: Path) -> None:
    docs = [f"doc {i}: " + "abcxyz"[i % 6] * (i % 7 + 1) + "\n" for i in range(40)]
    alphabet = "".join(sorted(set("".join(docs))))
    corpus = text_corpus(_folder(tmp_path / "c", docs))
    whole, chunked = _tokenizer(alphabet), _tokenizer(alphabet)
    reference = build_token_file(corpus, whole, cache_dir=tmp_path / "a")
    streamed = build_token_file(corpus, chunked, cache_dir=tmp_path / "b", batch_chars=50)
    assert whole.calls == 1
    assert chunked.calls >= sum(len(d) for d in docs) // 50  # many small batches
    assert chunked.texts == 40  # each document tokenized once
    assert streamed.tokens.tolist() == reference.tokens.tolist() == _expected(whole, docs)
    assert streamed.doc_starts.tolist() == reference.doc_starts.tolist()


def test_a_document_longer_than_the_batch_is_a_batch_of_its_own(tmp_path: Path) -> None:
    docs = ["a" * 30, "b", "c" * 25]
    tokenizer = _tokenizer("abc")
    token_file = build_token_file(
        text_corpus(_folder(tmp_path / "c", docs)), tokenizer, cache_dir=tmp_path, batch_chars=10
    )
    assert tokenizer.calls == 3
    assert token_file.tokens.tolist() == _expected(tokenizer, docs)


# --- atomic writes and damaged caches -----------------------------------------------------------
class FailingTokenizer(CountingTokenizer):
    """Dies (like a killed run) on its second batch."""

    def encode_batch(self, texts, **kwargs):
        if self.calls == 1:
            raise KeyboardInterrupt
        return super().encode_batch(texts, **kwargs)


def test_a_run_killed_mid_write_leaves_nothing_that_is_reused(tmp_path: Path) -> None:
    docs = ["abc" * 5] * 6
    corpus = text_corpus(_folder(tmp_path / "c", docs))
    failing = FailingTokenizer(char_tokenizer("abc", end_of_text=END_OF_TEXT).backend)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        build_token_file(corpus, failing, cache_dir=cache, batch_chars=20)
    assert list(cache.iterdir()) == []  # the temp file is gone, no final name was made
    tokenizer = _tokenizer("abc")
    token_file = build_token_file(corpus, tokenizer, cache_dir=cache, batch_chars=20)
    assert tokenizer.calls > 1 and token_file.tokens.tolist() == _expected(tokenizer, docs)


def test_a_file_without_its_metadata_is_rebuilt_not_reused(tmp_path: Path) -> None:
    corpus = text_corpus(_folder(tmp_path / "c"))
    token_file = build_token_file(corpus, _tokenizer(), cache_dir=tmp_path)
    meta = token_file.path.with_name(token_file.path.stem + ".json")
    meta.unlink()  # as if killed between the .bin and the .json
    tokenizer = _tokenizer()
    rebuilt = build_token_file(corpus, tokenizer, cache_dir=tmp_path)
    assert tokenizer.calls == 1 and meta.is_file()
    assert rebuilt.tokens.tolist() == _expected(tokenizer, DOCS)


def test_a_truncated_file_is_refused_on_open_and_rebuilt(tmp_path: Path) -> None:
    corpus = text_corpus(_folder(tmp_path / "c"))
    token_file = build_token_file(corpus, _tokenizer(), cache_dir=tmp_path)
    path = token_file.path
    del token_file
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"50 bytes, expected 52 \(26 uint16 ids\)"):
        open_token_file(path)
    tokenizer = _tokenizer()
    assert len(build_token_file(corpus, tokenizer, cache_dir=tmp_path)) == 26
    assert tokenizer.calls == 1


def test_untokenizable_and_empty_corpora_are_named_errors(tmp_path: Path) -> None:
    corpus = text_corpus(_folder(tmp_path / "c", ["abc", "ab?"]))
    with pytest.raises(DataError, match=r"001\.txt.*UNK"):
        build_token_file(corpus, _tokenizer("abc"), cache_dir=tmp_path / "x")
    empty = Corpus("../empty", lambda: iter(()), files=[])
    with pytest.raises(DataError, match="no non-empty document"):
        build_token_file(empty, _tokenizer(), cache_dir=tmp_path / "y")
    assert list((tmp_path / "y").iterdir()) == []
    assert not (tmp_path / "empty").exists()  # the name never leaves the cache directory


# --- read_blocks ----------------------------------------------------------------------------------
def test_read_blocks_gives_inputs_and_shifted_targets() -> None:
    tokens = np.arange(10, dtype=np.uint16)
    inputs, targets = read_blocks(tokens, [0, 6], block_size=3)
    assert inputs.dtype == targets.dtype == torch.int64
    assert inputs.tolist() == [[0, 1, 2], [6, 7, 8]]
    assert targets.tolist() == [[1, 2, 3], [7, 8, 9]]
    with pytest.raises(IndexError, match="block at 7 of 4 tokens"):
        read_blocks(tokens, [7], block_size=3)
    with pytest.raises(IndexError, match="block at -1"):
        read_blocks(tokens, [-1], block_size=3)


# --- PackedBlockSampler ---------------------------------------------------------------------------
def _epoch(sampler: PackedBlockSampler) -> list[list[int]]:
    return [list(batch) for batch in sampler]


def test_epoch_mode_covers_every_target_once_in_shuffled_order() -> None:
    n, block = 103, 8  # (103 - 1) // 8 = 12 blocks; the last token past them is unused
    sampler = PackedBlockSampler(n, block, batch_size=5, seed=0)
    batches = _epoch(sampler)
    assert len(batches) == len(sampler) == 3 and [len(b) for b in batches] == [5, 5, 2]
    starts = [s for batch in batches for s in batch]
    assert sorted(starts) == list(range(0, 96, 8))
    assert starts != sorted(starts)  # shuffled
    targets = sorted(t for s in starts for t in range(s + 1, s + block + 1))
    assert targets == list(range(1, 97))  # every position a target exactly once
    assert max(starts) + block + 1 <= n
    assert sampler.epoch == 1


def test_epoch_mode_without_shuffle_and_with_drop_last() -> None:
    sampler = PackedBlockSampler(50, 4, batch_size=5, seed=0, shuffle=False, drop_last=True)
    assert _epoch(sampler) == [[0, 4, 8, 12, 16], [20, 24, 28, 32, 36]]  # 12 blocks: 2 kept
    assert len(sampler) == 2


def test_blocks_fit_exactly_at_the_end_of_the_file() -> None:
    sampler = PackedBlockSampler(9, 4, batch_size=2, seed=0, shuffle=False)
    assert _epoch(sampler) == [[0, 4]]  # the block at 4 reads tokens 4..8, the last ones
    tokens = np.arange(9)
    assert read_blocks(tokens, [4], 4)[1].tolist() == [[5, 6, 7, 8]]
    with pytest.raises(ValueError, match="fewer than one block"):
        PackedBlockSampler(4, 4, batch_size=1, seed=0)


def test_random_mode_draws_valid_offsets_up_to_the_last_block() -> None:
    n, block = 20, 16  # valid starts: 0..3 (start + 17 <= 20)
    sampler = PackedBlockSampler(n, block, 50, seed=1, mode="random", batches_per_epoch=4)
    batches = _epoch(sampler)
    assert len(batches) == len(sampler) == 4 and all(len(b) == 50 for b in batches)
    starts = {s for batch in batches for s in batch}
    assert starts == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="batches_per_epoch"):
        PackedBlockSampler(n, block, 2, seed=0, mode="random")
    with pytest.raises(ValueError, match="mode must be"):
        PackedBlockSampler(n, block, 2, seed=0, mode="sliding")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["epoch", "random"])
def test_deterministic_per_seed_and_epoch(mode: str) -> None:
    def make(seed: int) -> PackedBlockSampler:
        return PackedBlockSampler(1000, 7, 4, seed=seed, mode=mode, batches_per_epoch=30)

    a, b = make(3), make(3)
    epoch0, epoch1 = _epoch(a), _epoch(a)
    assert epoch0 == _epoch(b) and epoch1 == _epoch(b)
    assert epoch0 != epoch1  # a new order each epoch
    assert _epoch(make(4)) != epoch0
    a.set_epoch(1)
    assert _epoch(a) == epoch1


@pytest.mark.parametrize("mode", ["epoch", "random"])
def test_resume_mid_epoch_yields_exactly_the_remaining_batches(mode: str) -> None:
    def make() -> PackedBlockSampler:
        return PackedBlockSampler(500, 6, 4, seed=7, mode=mode, batches_per_epoch=10)

    unbroken = make()
    _epoch(unbroken)
    expected_epoch1, expected_epoch2 = _epoch(unbroken), _epoch(unbroken)

    first = make()
    _epoch(first)
    iterator = iter(first)
    seen = [next(iterator) for _ in range(3)]
    state = first.state_dict()
    assert (state["epoch"], state["batches_yielded"]) == (1, 3)

    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(state)))  # as saved in a checkpoint
    assert resumed.epoch == 1
    assert len(resumed) - resumed.state_dict()["batches_yielded"] == len(resumed) - 3  # loop
    rest = _epoch(resumed)
    assert seen + rest == expected_epoch1
    assert _epoch(resumed) == expected_epoch2


def test_a_state_from_other_settings_is_refused() -> None:
    state = PackedBlockSampler(500, 6, 4, seed=7).state_dict()
    with pytest.raises(ValueError, match="block_size was 6, now 8"):
        PackedBlockSampler(500, 8, 4, seed=7).load_state_dict(state)
    with pytest.raises(ValueError, match="num_tokens was 500, now 501"):
        PackedBlockSampler(501, 6, 4, seed=7).load_state_dict(state)


def test_two_ranks_share_global_batches_with_disjoint_shards() -> None:
    ranks = [PackedBlockSampler(300, 5, 6, seed=2, num_replicas=2, rank=r) for r in (0, 1)]
    single = PackedBlockSampler(300, 5, 6, seed=2)
    global0, global1, reference = _epoch(ranks[0]), _epoch(ranks[1]), _epoch(single)
    assert global0 == global1 == reference  # the same global batches on every rank
    for batch in reference:
        shard0, shard1 = ranks[0].shard(batch), ranks[1].shard(batch)
        assert not set(shard0) & set(shard1)
        assert sorted(shard0 + shard1) == sorted(batch)
        assert abs(len(shard0) - len(shard1)) <= 1
    with pytest.raises(ValueError, match="rank must be in"):
        PackedBlockSampler(300, 5, 6, seed=2, num_replicas=2, rank=2)


def test_sampler_drives_blocks_of_a_token_file(tmp_path: Path) -> None:
    tokenizer = _tokenizer()
    token_file = build_token_file(
        text_corpus(_folder(tmp_path / "c")), tokenizer, cache_dir=tmp_path
    )
    sampler = PackedBlockSampler(len(token_file), 5, 2, seed=0)
    for batch in sampler:
        inputs, targets = read_blocks(token_file.tokens, batch, 5)  # (B, T), (B, T)
        assert inputs.shape == targets.shape == (len(batch), 5)
        for row, start in enumerate(batch):
            assert targets[row].tolist() == token_file.tokens[start + 1 : start + 6].tolist()


# --- the real file (tier 3) -----------------------------------------------------------------------
@pytest.mark.data
def test_shakespeare_char_token_files_match_nanogpt(tmp_path: Path) -> None:
    if not (data_dir() / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip("Tiny Shakespeare absent: set TORCHFORMER_DATA to the shared data folder")
    corpora = shakespeare_char_corpora()
    [(_, train_text)] = list(corpora["train"])
    tokenizer = train_char_tokenizer([train_text, *corpora["val"].texts()])
    assert tokenizer.vocab_size == 65
    train = build_token_file(corpora["train"], tokenizer, cache_dir=tmp_path)
    val = build_token_file(corpora["val"], tokenizer, cache_dir=tmp_path)
    assert (len(train), len(val)) == (1_003_854, 111_540)  # nanoGPT's train.bin / val.bin
    assert train.tokens.dtype == np.uint16 and train.path.stat().st_size == 2 * 1_003_854
    stoi = {c: i for i, c in enumerate(sorted(set(train_text)))}
    assert train.tokens[:1000].tolist() == [stoi[c] for c in train_text[:1000]]
    assert tokenizer.decode(val.tokens[-200:].tolist()).endswith("art waking.\n")
    sampler = PackedBlockSampler(len(train), 64, 12, seed=1337)
    assert len(sampler) == (1_003_854 - 1) // 64 // 12 + 1


def test_streams_continue_every_row_and_shard_rows_to_fixed_ranks():
    from torchformer.data.token_file import PackedBlockSampler

    sampler = PackedBlockSampler(101, 5, 4, seed=0, mode="streams")  # 4 streams of 25
    batches = list(sampler)
    assert len(sampler) == len(batches) == 5
    assert batches[0] == [0, 25, 50, 75]
    assert all(
        [b + 5 for b in prev] == nxt for prev, nxt in itertools.pairwise(batches)
    )  # each row goes on where it stopped
    assert batches[-1][-1] + 5 + 1 <= 101  # the last block's targets are in the file
    rank1 = PackedBlockSampler(101, 5, 4, seed=0, mode="streams", num_replicas=2, rank=1)
    assert [rank1.shard(b) for b in rank1] == [b[1::2] for b in batches]
    with pytest.raises(ValueError, match="shorter than one block"):
        PackedBlockSampler(30, 10, 4, seed=0, mode="streams")
