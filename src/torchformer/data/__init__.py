"""torchformer.data: dataset readers, validation and batching.

Readers return validated records (``TextRecord``, ``SentencePair``) and raise
``DataError`` naming the file, line/record and field of bad input.
"""

from torchformer.data.batching import (
    ClassificationCollator,
    LengthBucketBatchSampler,
    TokenBudgetBatchSampler,
    TokenizedDataset,
    pad_batch,
    padding_fraction,
)
from torchformer.data.imdb import (
    balanced_sample,
    download_imdb,
    find_imdb,
    iter_imdb,
    read_imdb,
    read_imdb_splits,
)
from torchformer.data.labels import (
    LabelVocab,
    check_labels,
    check_training_labels,
    class_weights,
    label_counts,
    stratified_split,
    warn_if_imbalanced,
)
from torchformer.data.parallel import (
    SentencePair,
    find_multi30k,
    read_multi30k,
    read_parallel,
    read_parallel_tsv,
)
from torchformer.data.paths import data_dir
from torchformer.data.records import DataError, TextRecord
from torchformer.data.tabular import TableData, read_table

__all__ = [
    "ClassificationCollator",
    "DataError",
    "LabelVocab",
    "LengthBucketBatchSampler",
    "SentencePair",
    "TableData",
    "TextRecord",
    "TokenBudgetBatchSampler",
    "TokenizedDataset",
    "balanced_sample",
    "check_labels",
    "check_training_labels",
    "class_weights",
    "data_dir",
    "download_imdb",
    "find_imdb",
    "find_multi30k",
    "iter_imdb",
    "label_counts",
    "pad_batch",
    "padding_fraction",
    "read_imdb",
    "read_imdb_splits",
    "read_multi30k",
    "read_parallel",
    "read_parallel_tsv",
    "read_table",
    "stratified_split",
    "warn_if_imbalanced",
]
