"""Batching: length-grouped batch samplers with exact resume, and dynamic padding.

Padding to the longest sequence of a *random* batch wastes most of the compute when
lengths are skewed (IMDB reviews run from 10 to 2,500 tokens). Grouping similar
lengths fixes that while keeping enough randomness for SGD:

- ``LengthBucketBatchSampler``: fixed batch size, the way Hugging Face's
  ``group_by_length`` (``LengthGroupedSampler``) and fairseq do it: shuffle all
  indices, cut them into mega-batches of ``batch_size * bucket_size_multiplier``, sort
  each mega-batch by length, cut it into batches, shuffle the batch order.
- ``TokenBudgetBatchSampler``: fairseq's ``max_tokens`` batching for translation:
  sort by length (random tie-break), fill each batch while
  ``batch_size * longest <= max_tokens`` (the padded size), shuffle the batch order.

Both are seeded per epoch (``seed``, ``epoch``), advance the epoch after each full pass
(or take ``set_epoch``), and save ``state_dict()`` = epoch + batches already yielded,
so that after ``load_state_dict`` the next pass yields exactly the remaining batches of
the interrupted epoch. Use them as ``DataLoader(dataset, batch_sampler=sampler, ...)``.

Under distributed training both are rank-aware: every rank builds the same *global*
batches from the same seed (a config's batch size is the global batch), iterates them
in step, and trains on its own disjoint part, ``sampler.shard(batch)``
(``batch[rank::num_replicas]``). The resume state counts global batches, so it does not
depend on the number of processes: a run saved with 2 processes resumes with 1 (or 4)
and sees exactly the examples an unbroken run would.

With ``num_workers > 0`` a DataLoader draws batches from the sampler ahead of the
training loop (prefetching), so the sampler's count runs ahead of the batches actually
trained on. For exact resume, save the number of batches the loop *consumed* in the
state: ``{**sampler.state_dict(), "batches_yielded": steps_done_this_epoch}``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = [
    "ClassificationCollator",
    "LengthBucketBatchSampler",
    "TokenBudgetBatchSampler",
    "TokenizedDataset",
    "pad_batch",
    "padding_fraction",
]


def _as_lengths(lengths: Sequence[int]) -> np.ndarray:
    array = np.asarray(lengths, dtype=np.int64)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError("lengths must be a non-empty 1-D sequence of integers")
    if (array < 0).any():
        index = int(np.argmax(array < 0))
        raise ValueError(f"lengths[{index}] = {array[index]} is negative")
    return array


class _EpochBatchSampler(Sampler[list[int]]):
    """Epoch bookkeeping and resume state shared by the batch samplers below.

    Subclasses build one epoch's batches in ``_batches(epoch)``, deterministically from
    ``(seed, epoch)``, and describe their settings in ``_settings()`` (checked on load).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        *,
        seed: int,
        shuffle: bool,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        self.lengths = _as_lengths(lengths)
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self._epoch = 0
        self._yielded = 0  # batches of the current epoch already handed out
        self._resume = False  # next __iter__ continues from _yielded (after a load)

    def _batches(self, epoch: int) -> list[list[int]]:
        raise NotImplementedError

    def _settings(self) -> dict[str, Any]:
        return {
            "num_items": len(self.lengths),
            "lengths_crc32": zlib.crc32(self.lengths.tobytes()),
            "seed": self.seed,
            "shuffle": self.shuffle,
        }

    def shard(self, batch: Sequence[int]) -> list[int]:
        """This rank's part of a global batch: disjoint across ranks, together the batch.

        Strided (``batch[rank::num_replicas]``), so that in a length-sorted batch every
        rank gets a similar mix of lengths. Empty when the batch has fewer examples than
        there are ranks (the loop then runs a zero-weighted step to keep ranks in step).
        """
        return list(batch[self.rank :: self.num_replicas])

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its first batch on the next pass."""
        self._epoch = epoch
        self._yielded = 0
        self._resume = False

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches(self._epoch)
        start = self._yielded if self._resume else 0
        self._resume = False
        self._yielded = start
        for batch in batches[start:]:
            self._yielded += 1
            yield batch
        self._epoch += 1
        self._yielded = 0

    def state_dict(self) -> dict[str, Any]:
        """``epoch``, ``batches_yielded`` and the settings the state is only valid for."""
        return {"epoch": self._epoch, "batches_yielded": self._yielded, **self._settings()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: the next pass yields the batches of ``state["epoch"]`` not yet yielded.

        Raises:
            ValueError: the state was saved with other settings or data (named).
        """
        for key, value in self._settings().items():
            if key in state and state[key] != value:
                raise ValueError(
                    f"sampler state does not match: {key} was {state[key]!r}, now {value!r}; "
                    "resume needs the same data, lengths and settings"
                )
        self._epoch = int(state["epoch"])
        self._yielded = int(state["batches_yielded"])
        self._resume = True

    def __len__(self) -> int:
        return len(self._batches(0))


class LengthBucketBatchSampler(_EpochBatchSampler):
    """Fixed-size batches of similar lengths (HF ``group_by_length`` / fairseq style).

    Args:
        lengths: the length (in tokens) of each example.
        batch_size: examples per batch.
        seed: base seed; epoch ``e`` uses ``(seed, e)``.
        shuffle: shuffle before bucketing and shuffle batch order (off: the data order
            is kept, mega-batches are still sorted, batches come in order).
        drop_last: drop the final incomplete batch.
        bucket_size_multiplier: mega-batch size in batches; larger = less padding,
            less randomness.
        num_replicas / rank: the distributed world; see ``shard``.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
        bucket_size_multiplier: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1 or bucket_size_multiplier < 1:
            raise ValueError("batch_size and bucket_size_multiplier must be at least 1")
        super().__init__(lengths, seed=seed, shuffle=shuffle, num_replicas=num_replicas, rank=rank)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.bucket_size_multiplier = bucket_size_multiplier

    def _settings(self) -> dict[str, Any]:
        return {
            **super()._settings(),
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "bucket_size_multiplier": self.bucket_size_multiplier,
        }

    def _batches(self, epoch: int) -> list[list[int]]:
        rng = self._rng(epoch)
        n = len(self.lengths)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        mega = self.batch_size * self.bucket_size_multiplier
        batches: list[list[int]] = []
        for start in range(0, n, mega):
            chunk = order[start : start + mega]
            # Longest first within the mega-batch; stable, so ties keep the shuffle order.
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches.extend(
                chunk[i : i + self.batch_size].tolist()
                for i in range(0, len(chunk), self.batch_size)
            )
        # Only the last batch of the last mega-batch can be short.
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


def pack_by_tokens(
    order: Sequence[int],
    lengths: Sequence[int],
    *,
    max_tokens: int | None,
    max_batch_size: int | None = None,
) -> list[list[int]]:
    """Consecutive batches of ``order`` (sorted by length): each grows while its padded
    size (examples × longest) stays within ``max_tokens`` and it holds fewer than
    ``max_batch_size`` examples (None: no such limit). An example longer than the budget
    gets a batch of its own."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        length = int(lengths[index])
        grown = max(longest, length)
        over = max_tokens is not None and grown * (len(current) + 1) > max_tokens
        if current and (over or (max_batch_size is not None and len(current) >= max_batch_size)):
            batches.append(current)
            current, grown = [], length
        current.append(index)
        longest = grown
    if current:
        batches.append(current)
    return batches


class TokenBudgetBatchSampler(_EpochBatchSampler):
    """Batches whose padded size ``len(batch) * longest`` stays within ``max_tokens``.

    Examples are sorted by length (ties broken by the epoch's shuffle), packed greedily,
    and the batch order is shuffled per epoch (fairseq's ``--max-tokens``). For
    translation pass ``max(len(src), len(tgt))`` per pair.

    Args:
        lengths: the length (in tokens) of each example.
        max_tokens: the padded-token budget of one batch.
        seed: base seed; epoch ``e`` uses ``(seed, e)``.
        shuffle: shuffle ties and the batch order.
        max_batch_size: optional cap on examples per batch.
        num_replicas / rank: the distributed world; see ``shard``.

    Raises:
        ValueError: an example longer than ``max_tokens`` (named by index).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_tokens: int,
        *,
        seed: int,
        shuffle: bool = True,
        max_batch_size: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(lengths, seed=seed, shuffle=shuffle, num_replicas=num_replicas, rank=rank)
        too_long = np.flatnonzero(self.lengths > max_tokens)
        if len(too_long):
            index = int(too_long[0])
            raise ValueError(
                f"example {index} has length {self.lengths[index]} > max_tokens={max_tokens} "
                f"({len(too_long)} such examples); raise max_tokens or filter them out"
            )
        self.max_tokens = max_tokens
        self.max_batch_size = max_batch_size
        self._num_batches: int | None = None

    def _settings(self) -> dict[str, Any]:
        return {
            **super()._settings(),
            "max_tokens": self.max_tokens,
            "max_batch_size": self.max_batch_size,
        }

    def _batches(self, epoch: int) -> list[list[int]]:
        rng = self._rng(epoch)
        n = len(self.lengths)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        order = order[np.argsort(self.lengths[order], kind="stable")]
        batches = pack_by_tokens(
            order.tolist(),
            self.lengths,
            max_tokens=self.max_tokens,
            max_batch_size=self.max_batch_size,
        )
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __len__(self) -> int:
        # The sorted sequence of lengths, hence the packing, is the same every epoch.
        if self._num_batches is None:
            self._num_batches = len(self._batches(0))
        return self._num_batches


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Fraction of padded positions when each batch is padded to its longest example."""
    lengths_array = _as_lengths(lengths)
    real = padded = 0
    for batch in batches:
        batch_lengths = lengths_array[list(batch)]
        real += int(batch_lengths.sum())
        padded += int(batch_lengths.max()) * len(batch)
    return 1.0 - real / padded if padded else 0.0


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, *, pad_to_multiple_of: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id sequences to the longest one (dynamic padding).

    Args:
        sequences: token ids, one list per example.
        pad_id: the padding id.
        pad_to_multiple_of: round the length up to a multiple of this (tensor cores).

    Returns:
        ``input_ids`` (B, T) and ``attention_mask`` (B, T), both int64; the mask is 1 on
        real tokens and 0 on padding.

    Raises:
        ValueError: an empty batch or an empty sequence (named by index).
    """
    if len(sequences) == 0:
        raise ValueError("pad_batch needs at least one sequence")
    for index, sequence in enumerate(sequences):
        if len(sequence) == 0:
            raise ValueError(f"sequences[{index}] is empty")
    longest = max(len(sequence) for sequence in sequences)
    if pad_to_multiple_of:
        longest = math.ceil(longest / pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)  # (B, T)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
    return input_ids, attention_mask


class TokenizedDataset(Dataset):
    """Encoded examples for a classifier: ``{"input_ids": [...], "label": int}`` items.

    Args:
        input_ids: token ids per example.
        labels: label indices (see ``LabelVocab``), or None for prediction.
    """

    def __init__(self, input_ids: Sequence[Sequence[int]], labels: Sequence[int] | None = None):
        if labels is not None and len(labels) != len(input_ids):
            raise ValueError(f"{len(input_ids)} examples but {len(labels)} labels")
        self.input_ids = input_ids
        self.labels = labels

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"input_ids": self.input_ids[index]}
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item

    @property
    def lengths(self) -> list[int]:
        """Example lengths, for the batch samplers."""
        return [len(ids) for ids in self.input_ids]


class ClassificationCollator:
    """Collate ``{"input_ids", "label"}`` items into padded tensors (a DataLoader
    ``collate_fn``).

    Returns ``{"input_ids": (B, T), "attention_mask": (B, T), "labels": (B,)}`` (int64);
    ``labels`` is left out when the items carry none.
    """

    def __init__(self, pad_id: int, *, pad_to_multiple_of: int | None = None) -> None:
        self.pad_id = pad_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad_batch(
            [item["input_ids"] for item in items],
            self.pad_id,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        has_label = ["label" in item for item in items]
        if any(has_label):
            if not all(has_label):
                missing = has_label.index(False)
                raise ValueError(f"items[{missing}] has no 'label' but other items do")
            batch["labels"] = torch.tensor([int(item["label"]) for item in items], dtype=torch.long)
        return batch
