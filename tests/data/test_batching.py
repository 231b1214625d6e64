"""Batch samplers (coverage, determinism, exact resume, padding) and dynamic padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from torchformer.data.batching import (
    ClassificationCollator,
    LengthBucketBatchSampler,
    TokenBudgetBatchSampler,
    TokenizedDataset,
    pad_batch,
    padding_fraction,
)


@pytest.fixture(scope="module")
def skewed_lengths() -> list[int]:
    # Long-tailed like IMDB reviews: median ~170 tokens, a few over 1,000.
    rng = np.random.default_rng(0)
    return np.clip(rng.lognormal(5.1, 0.7, size=3000), 5, 2000).astype(int).tolist()


def _flat(batches: list[list[int]]) -> list[int]:
    return sorted(i for batch in batches for i in batch)


# --- LengthBucketBatchSampler ---------------------------------------------------------------
def test_bucket_sampler_covers_every_index_once(skewed_lengths: list[int]) -> None:
    sampler = LengthBucketBatchSampler(skewed_lengths, 32, seed=0, bucket_size_multiplier=10)
    batches = list(sampler)
    assert _flat(batches) == list(range(len(skewed_lengths)))
    assert len(batches) == len(sampler) == 94  # ceil(3000 / 32)
    assert sorted(map(len, batches))[1:] == [32] * 93  # one short batch


def test_bucket_sampler_drop_last(skewed_lengths: list[int]) -> None:
    sampler = LengthBucketBatchSampler(skewed_lengths, 32, seed=0, drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 93
    assert all(len(batch) == 32 for batch in batches)


def test_bucket_sampler_is_seeded_per_epoch(skewed_lengths: list[int]) -> None:
    first = LengthBucketBatchSampler(skewed_lengths, 32, seed=7)
    second = LengthBucketBatchSampler(skewed_lengths, 32, seed=7)
    epoch0, epoch1 = list(first), list(first)  # the epoch advances after a full pass
    assert epoch0 == list(second)
    assert epoch1 != epoch0 and _flat(epoch1) == _flat(epoch0)
    second.set_epoch(1)
    assert list(second) == epoch1
    assert list(LengthBucketBatchSampler(skewed_lengths, 32, seed=8)) != epoch0


def test_bucket_sampler_groups_lengths(skewed_lengths: list[int]) -> None:
    rng = np.random.default_rng(0)
    order = rng.permutation(len(skewed_lengths)).tolist()
    random_batches = [order[i : i + 32] for i in range(0, len(order), 32)]
    bucketed = list(LengthBucketBatchSampler(skewed_lengths, 32, seed=0))
    random_padding = padding_fraction(random_batches, skewed_lengths)
    bucket_padding = padding_fraction(bucketed, skewed_lengths)
    # Random batches are mostly padding; length buckets waste a small fraction of that.
    assert random_padding > 0.55
    assert bucket_padding < 0.1
    assert bucket_padding < random_padding / 6


def test_bucket_sampler_without_shuffle_is_in_order_and_sorted(skewed_lengths: list[int]) -> None:
    sampler = LengthBucketBatchSampler(
        skewed_lengths, 10, seed=0, shuffle=False, bucket_size_multiplier=3
    )
    batches = list(sampler)
    assert _flat(batches[:3]) == list(range(30))  # the first mega-batch comes first
    lengths = [skewed_lengths[i] for batch in batches[:3] for i in batch]
    assert lengths == sorted(lengths, reverse=True)


@pytest.mark.parametrize("consumed", [0, 1, 40, 93, 94])
def test_bucket_sampler_resumes_exactly(skewed_lengths: list[int], consumed: int) -> None:
    sampler = LengthBucketBatchSampler(skewed_lengths, 32, seed=3)
    list(sampler)  # epoch 0
    iterator = iter(sampler)  # epoch 1, interrupted after `consumed` batches
    seen = [next(iterator) for _ in range(consumed)]
    state = sampler.state_dict()
    assert (state["epoch"], state["batches_yielded"]) == (1, consumed)
    uninterrupted = LengthBucketBatchSampler(skewed_lengths, 32, seed=3)
    uninterrupted.set_epoch(1)
    full_epoch1 = list(uninterrupted)
    full_epoch2 = list(uninterrupted)

    resumed = LengthBucketBatchSampler(skewed_lengths, 32, seed=3)
    resumed.load_state_dict(state)
    assert seen + list(resumed) == full_epoch1
    assert list(resumed) == full_epoch2  # then the next epoch, from its start


def test_resume_state_must_match_the_sampler(skewed_lengths: list[int]) -> None:
    state = LengthBucketBatchSampler(skewed_lengths, 32, seed=3).state_dict()
    with pytest.raises(ValueError, match="batch_size was 32, now 16"):
        LengthBucketBatchSampler(skewed_lengths, 16, seed=3).load_state_dict(state)
    changed = [*skewed_lengths[:-1], 1]
    with pytest.raises(ValueError, match="lengths_crc32"):
        LengthBucketBatchSampler(changed, 32, seed=3).load_state_dict(state)


def test_bucket_sampler_feeds_a_dataloader() -> None:
    input_ids = [[5] * n for n in (3, 9, 4, 8, 2, 7)]
    dataset = TokenizedDataset(input_ids, labels=[0, 1, 0, 1, 0, 1])
    sampler = LengthBucketBatchSampler(dataset.lengths, 2, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=ClassificationCollator(0))
    batches = list(loader)
    assert len(batches) == 3
    widths = sorted(batch["input_ids"].shape[1] for batch in batches)
    # One mega-batch sorted longest first: (9, 8), (7, 4), (3, 2), each padded to its longest.
    assert widths == [3, 7, 9]
    assert sum(int(batch["attention_mask"].sum()) for batch in batches) == 33
    assert all(batch["labels"].dtype == torch.long for batch in batches)


# --- TokenBudgetBatchSampler ----------------------------------------------------------------
def test_token_budget_respects_max_tokens_and_covers_all(skewed_lengths: list[int]) -> None:
    sampler = TokenBudgetBatchSampler(skewed_lengths, 4096, seed=0)
    batches = list(sampler)
    assert _flat(batches) == list(range(len(skewed_lengths)))
    padded = [len(b) * max(skewed_lengths[i] for i in b) for b in batches]
    assert max(padded) <= 4096
    assert sum(padded) / len(padded) > 0.8 * 4096  # batches are filled, not tiny
    assert padding_fraction(batches, skewed_lengths) < 0.05
    assert len(sampler) == len(batches) == len(list(sampler))


def test_token_budget_is_seeded_and_resumes(skewed_lengths: list[int]) -> None:
    sampler = TokenBudgetBatchSampler(skewed_lengths, 4096, seed=1)
    epoch0 = list(sampler)
    assert epoch0 == list(TokenBudgetBatchSampler(skewed_lengths, 4096, seed=1))
    iterator = iter(sampler)
    seen = [next(iterator) for _ in range(5)]
    resumed = TokenBudgetBatchSampler(skewed_lengths, 4096, seed=1)
    resumed.load_state_dict(sampler.state_dict())
    remaining = list(resumed)
    assert seen + remaining != epoch0  # epoch 1 has its own order
    reference = TokenBudgetBatchSampler(skewed_lengths, 4096, seed=1)
    reference.set_epoch(1)
    assert seen + remaining == list(reference)


def test_token_budget_caps_batch_size_and_rejects_too_long() -> None:
    batches = list(TokenBudgetBatchSampler([2] * 20, 100, seed=0, max_batch_size=4))
    assert sorted(map(len, batches)) == [4] * 5
    with pytest.raises(ValueError, match="example 1 has length 500 > max_tokens=100"):
        TokenBudgetBatchSampler([10, 500, 20], 100, seed=0)


# --- padding ----------------------------------------------------------------------------------
def test_pad_batch_pads_to_the_longest() -> None:
    input_ids, attention_mask = pad_batch([[7, 8, 9], [4]], pad_id=0)
    assert input_ids.tolist() == [[7, 8, 9], [4, 0, 0]]
    assert attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert input_ids.dtype == attention_mask.dtype == torch.long


def test_pad_batch_to_a_multiple() -> None:
    input_ids, attention_mask = pad_batch([[1] * 9, [2]], pad_id=3, pad_to_multiple_of=8)
    assert input_ids.shape == attention_mask.shape == (2, 16)
    assert int(attention_mask.sum()) == 10 and int((input_ids == 3).sum()) == 22


def test_pad_batch_rejects_empty_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        pad_batch([], pad_id=0)
    with pytest.raises(ValueError, match=r"sequences\[1\] is empty"):
        pad_batch([[1], []], pad_id=0)


def test_collator_without_labels_and_with_inconsistent_labels() -> None:
    collate = ClassificationCollator(pad_id=0)
    batch = collate([{"input_ids": [1, 2]}, {"input_ids": [3]}])
    assert set(batch) == {"input_ids", "attention_mask"}
    with pytest.raises(ValueError, match=r"items\[1\] has no 'label'"):
        collate([{"input_ids": [1], "label": 0}, {"input_ids": [3]}])
