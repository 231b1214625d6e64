"""Labels: a deterministic label vocabulary, label checks, class balance and splits.

- ``LabelVocab`` maps labels (strings or integers) to indices in sorted order (integers
  numerically, strings alphabetically), so the mapping never depends on file order; it
  is saved as a plain list.
- ``check_labels`` catches the label mistakes that otherwise surface as a silent
  accuracy drop or an index error deep in training: a validation/test label the
  training data never has, and training data with a single class.
- ``label_counts``, ``warn_if_imbalanced`` and ``class_weights`` for imbalance.
- ``stratified_split``: a seeded held-out split preserving label proportions.
"""

from __future__ import annotations

import logging
import random
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from torchformer.data.records import DataError, Label, TextRecord
from torchformer.data.tabular import TableData

__all__ = [
    "LabelVocab",
    "check_labels",
    "check_training_labels",
    "class_weights",
    "label_counts",
    "stratified_split",
    "warn_if_imbalanced",
]

logger = logging.getLogger(__name__)


def _sorted_labels(labels: Iterable[Label]) -> list[Label]:
    """Unique labels, integers numerically or strings alphabetically (not mixed)."""
    unique = set(labels)
    kinds = set()
    for label in unique:
        if isinstance(label, bool) or not isinstance(label, str | int):
            raise TypeError(f"labels must be strings or integers, got {label!r}")
        kinds.add(str if isinstance(label, str) else int)
    if len(kinds) > 1:
        raise TypeError(f"labels mix strings and integers: {sorted(map(repr, unique))}")
    return sorted(unique)  # type: ignore[type-var]


class LabelVocab:
    """A fixed mapping label -> index.

    Args:
        labels: the labels in index order (e.g. a saved ``to_list()``); must be unique.
            Use ``from_labels`` to build a vocabulary from data (sorted order).
    """

    def __init__(self, labels: Sequence[Label]) -> None:
        labels = list(labels)
        _sorted_labels(labels)  # type check
        duplicates = [label for label, n in Counter(labels).items() if n > 1]
        if duplicates:
            raise ValueError(f"duplicate labels in the vocabulary: {duplicates}")
        if not labels:
            raise ValueError("a label vocabulary needs at least one label")
        self._labels = labels
        self._index = {label: index for index, label in enumerate(labels)}

    @classmethod
    def from_labels(cls, labels: Iterable[Label]) -> LabelVocab:
        """The sorted unique ``labels``."""
        return cls(_sorted_labels(labels))

    @classmethod
    def from_records(cls, records: Iterable[TextRecord]) -> LabelVocab:
        """The sorted labels of ``records`` (all must be labelled)."""
        return cls.from_labels(_labels_of(records))

    def to_list(self) -> list[Label]:
        """The labels in index order (JSON/YAML-serialisable)."""
        return list(self._labels)

    @classmethod
    def from_list(cls, labels: Sequence[Label]) -> LabelVocab:
        """Inverse of ``to_list``."""
        return cls(labels)

    def encode(self, label: Label) -> int:
        """The index of ``label``.

        Raises:
            KeyError: an unknown label (the message lists the known ones).
        """
        try:
            return self._index[label]
        except KeyError:
            raise KeyError(f"unknown label {label!r}; known labels: {self._labels}") from None

    def decode(self, index: int) -> Label:
        """The label at ``index``."""
        if not 0 <= index < len(self._labels):
            raise IndexError(f"label index {index} out of range 0..{len(self._labels) - 1}")
        return self._labels[index]

    def __len__(self) -> int:
        return len(self._labels)

    def __iter__(self) -> Iterator[Label]:
        return iter(self._labels)

    def __contains__(self, label: object) -> bool:
        return label in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelVocab) and self._labels == other._labels

    def __hash__(self) -> int:
        return hash(tuple(self._labels))

    def __repr__(self) -> str:
        return f"LabelVocab({self._labels!r})"


def _labels_of(records: Iterable[TextRecord]) -> Iterator[Label]:
    for index, record in enumerate(records):
        if record.label is None:
            raise ValueError(f"records[{index}] (id {record.id!r}) has no label")
        yield record.label


def label_counts(records: Iterable[TextRecord]) -> dict[Label, int]:
    """Records per label, in ``LabelVocab`` order."""
    counts = Counter(_labels_of(records))
    return {label: counts[label] for label in _sorted_labels(counts)}


def warn_if_imbalanced(
    counts: Mapping[Label, int], *, max_ratio: float = 1.5, name: str = "training data"
) -> bool:
    """Warn (``UserWarning``) when the largest class is over ``max_ratio`` x the smallest.

    Returns:
        Whether the data is imbalanced.
    """
    if not counts:
        return False
    largest, smallest = max(counts.values()), min(counts.values())
    ratio = largest / smallest if smallest else float("inf")
    if ratio <= max_ratio:
        return False
    message = (
        f"{name} is imbalanced: class counts {dict(counts)} (largest/smallest = {ratio:.2f} "
        f"> {max_ratio}); consider class_weights() in the loss, and report macro-F1, "
        "not only accuracy"
    )
    warnings.warn(message, UserWarning, stacklevel=2)
    logger.warning(message)
    return True


def class_weights(counts: Mapping[Label, int]) -> dict[Label, float]:
    """Inverse-frequency class weights, normalised so that balanced data gives 1.0.

    ``weight[c] = total / (n_classes * count[c])`` (scikit-learn's "balanced"), so the
    weighted number of examples equals the actual number.

    Raises:
        ValueError: no classes, or a class with a count below 1.
    """
    if not counts:
        raise ValueError("class_weights needs at least one class")
    empty = [label for label, count in counts.items() if count < 1]
    if empty:
        raise ValueError(f"classes {empty} have no examples; cannot weight them")
    total = sum(counts.values())
    return {label: total / (len(counts) * count) for label, count in counts.items()}


def _unpack(data: TableData | Sequence[TextRecord]) -> tuple[list[TextRecord], Path | None]:
    if isinstance(data, TableData):
        return data.records, data.path
    return list(data), None


def check_training_labels(train: TableData | Sequence[TextRecord], *, field: str = "label") -> None:
    """Refuse training data with fewer than two classes, naming the file and label field.

    Raises:
        DataError: a single class (or none).
    """
    train_records, train_path = _unpack(train)
    counts = label_counts(train_records)
    if len(counts) < 2:
        raise DataError(
            f"training data has a single class {dict(counts)}; a classifier needs at least "
            "two classes (is the label column right?)",
            file=train_path,
            field=field,
        )


def check_labels(
    train: TableData | Sequence[TextRecord],
    other: TableData | Sequence[TextRecord],
    other_name: str = "validation data",
    *,
    field: str = "label",
) -> None:
    """Check that ``other`` (validation/test) labels all occur in ``train``.

    Args:
        train: the training data.
        other: validation or test data.
        other_name: how to call ``other`` in messages (when it is not a ``TableData``).
        field: the label column, named in the error.

    Raises:
        DataError: training data with fewer than two classes; a label of ``other``
            absent from training (names the file and the first offending record).
    """
    check_training_labels(train, field=field)
    train_records, _ = _unpack(train)
    counts = label_counts(train_records)
    other_records, other_path = _unpack(other)
    unseen = [i for i, record in enumerate(other_records) if record.label not in counts]
    if not unseen:
        return
    first = unseen[0]
    label = other_records[first].label
    unseen_labels = sorted({repr(other_records[i].label) for i in unseen})
    location = other.location(first) if isinstance(other, TableData) else {"record": first + 1}
    raise DataError(
        f"label {label!r} does not occur in the training data (training labels: "
        f"{list(counts)}); {len(unseen)} record(s) of {other_name} have unseen labels "
        f"{', '.join(unseen_labels)}",
        file=other_path if other_path is not None else other_name,
        field=field,
        **location,
    )


def stratified_split(
    records: Sequence[TextRecord], fraction: float, seed: int
) -> tuple[list[TextRecord], list[TextRecord]]:
    """Split off a seeded, stratified ``fraction`` of ``records`` (e.g. a validation set).

    Each label contributes ``round(fraction * count)`` records, at least one and at most
    ``count - 1`` (a label with one record is never held out). Both parts keep the
    input order.

    Returns:
        ``(rest, held_out)``.

    Raises:
        ValueError: ``fraction`` outside (0, 1), or an unlabeled record.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    by_label: dict[Label, list[int]] = defaultdict(list)
    for index, label in enumerate(_labels_of(records)):
        by_label[label].append(index)
    rng = random.Random(seed)
    held: set[int] = set()
    for label in _sorted_labels(by_label):
        indices = by_label[label]
        # A label with one record stays in `rest`: training must see every class.
        size = min(max(round(fraction * len(indices)), 1), len(indices) - 1)
        held.update(rng.sample(indices, size))
    rest = [r for i, r in enumerate(records) if i not in held]
    held_out = [r for i, r in enumerate(records) if i in held]
    return rest, held_out
