"""Data for the translation (text-to-text) task: text pairs in, token ids out.

Reads Multi30k, two line-aligned files per split, or TSV/CSV/JSON Lines files of
(source, target) pairs (``data.parallel`` does the reading and names the file, the line
and the field on bad input), prepends an optional task prefix to every source (T5's
``"translate German to English: "``, ``"summarize: "``), trains the source/target
tokenizers once and keeps them in the run directory (so a resumed run reuses the very
same vocabulary: BPE/WordPiece training breaks frequency ties differently from one
process to the next), and encodes every split once up front.

Every sequence is ``<s> tokens </s>`` (``[CLS] tokens [SEP]`` for WordPiece): the source
as is, the target split into decoder inputs ``<s> tokens`` and labels ``tokens </s>``
(teacher forcing). A pretrained model's tokenizer keeps its own template: T5 writes
``tokens </s>``, and the target is then preceded by the model's decoder start id (T5: the
padding id), as Hugging Face's ``shift_tokens_right`` does.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from torchformer.data.batching import pad_batch
from torchformer.data.parallel import (
    SentencePair,
    read_multi30k,
    read_parallel,
    read_parallel_table,
    read_parallel_tsv,
)
from torchformer.data.records import DataError
from torchformer.io import atomic_write_text
from torchformer.text.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

SOURCE_TOKENIZER = "source_tokenizer.json"
TARGET_TOKENIZER = "target_tokenizer.json"
SPLITS = ("train", "val", "test")
TABLE_SOURCES = ("tsv", "csv", "jsonl", "json")


@dataclass
class DataConfig:
    """Where the sentence pairs come from.

    Attributes:
        source: "multi30k", "files" (two line-aligned files per split), or one table file
            per split: "tsv" (no quoting), "csv" (header row, RFC 4180 quoting), "jsonl"
            (one object per line) or "json" (an array of objects).
        source_prefix: text put before every source, in training and in ``translate()``
            (saved with the model): T5's task prefix, e.g. "translate German to English: ".
        data_dir: the Multi30k folder (default: found under ``TORCHFORMER_DATA``).
        src_lang / tgt_lang: Multi30k languages (also recorded in the model directory).
        test_split: the Multi30k split used as test set.
        train_src / train_tgt / val_src / val_tgt / test_src / test_tgt: "files" paths
            (plain or .gz); test is optional.
        train_file / val_file / test_file: "tsv"/"csv"/"jsonl"/"json" paths (plain or .gz);
            src_column / tgt_column name the columns or keys (CSV/TSV: a header line).
        val_fraction: share of the training pairs held out when no validation data is given.
        train_samples / val_samples / test_samples: keep the first N pairs (short runs).
        max_length: tokens per sequence, special tokens included; longer training pairs
            are dropped (and counted), longer validation/test sources are truncated.
    """

    source: str = "multi30k"
    source_prefix: str = ""
    data_dir: str | None = None
    src_lang: str = "de"
    tgt_lang: str = "en"
    test_split: str = "test_2016_flickr"
    train_src: str | None = None
    train_tgt: str | None = None
    val_src: str | None = None
    val_tgt: str | None = None
    test_src: str | None = None
    test_tgt: str | None = None
    train_file: str | None = None
    val_file: str | None = None
    test_file: str | None = None
    src_column: str = "src"
    tgt_column: str = "tgt"
    val_fraction: float = 0.05
    train_samples: int | None = None
    val_samples: int | None = None
    test_samples: int | None = None
    max_length: int = 100


@dataclass
class TokenizerConfig:
    """Subword tokenizers trained with ``tokenizers`` on the training pairs.

    Attributes:
        kind: "bpe" (SentencePiece-style, decodes back to natural text) or "wordpiece".
        joint: one vocabulary for both languages (then the model shares its source and
            target embeddings and ties them to the output projection).
        vocab_size / min_frequency: trainer settings (per tokenizer when not joint).
        lowercase: lowercase the text (keep False for cased BLEU).
        path: an existing ``tokenizer.json``: the joint one, or the source one.
        tgt_path: the target ``tokenizer.json`` when not joint.
    """

    kind: str = "bpe"
    joint: bool = True
    vocab_size: int = 8000
    min_frequency: int = 2
    lowercase: bool = False
    path: str | None = None
    tgt_path: str | None = None


@dataclass
class EncodedPairs:
    """One split ready for batching: ``<s> .. </s>`` ids of both sides and the raw texts."""

    src_ids: list[list[int]]
    tgt_ids: list[list[int]]
    src_texts: list[str]
    tgt_texts: list[str]

    def __len__(self) -> int:
        return len(self.src_ids)

    @property
    def lengths(self) -> list[int]:
        """Per pair, the longer side (what a padded batch costs)."""
        return [max(len(s), len(t)) for s, t in zip(self.src_ids, self.tgt_ids)]

    @property
    def target_tokens(self) -> int:
        """Tokens the decoder predicts (labels: target tokens + ``</s>``)."""
        return sum(len(t) - 1 for t in self.tgt_ids)


@dataclass
class Batch:
    """Padded tensors of one batch (teacher forcing)."""

    src: torch.Tensor  # (B, S)
    src_mask: torch.Tensor  # (B, S)
    tgt_in: torch.Tensor  # (B, T) <s> tokens
    tgt_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T) tokens </s>, padding = pad_id
    # Labels that are not padding: the tokens the decoder predicts. (Not tgt_mask.sum():
    # a row shorter than the longest also feeds its </s> as an input, with a padding label.)
    num_target_tokens: int

    def to(self, device: torch.device) -> Batch:
        tensors = (self.src, self.src_mask, self.tgt_in, self.tgt_mask, self.labels)
        return Batch(*(t.to(device) for t in tensors), self.num_target_tokens)


def make_batch(pairs: EncodedPairs, indices: list[int], pad_id: int) -> Batch:
    """Pad the pairs ``indices`` and shift the targets for teacher forcing."""
    src, src_mask = pad_batch([pairs.src_ids[i] for i in indices], pad_id)  # (B, S)
    tgt, tgt_mask = pad_batch([pairs.tgt_ids[i] for i in indices], pad_id)  # (B, T + 1)
    # Inputs drop the last column, labels the first: input t predicts label t.
    return Batch(
        src,
        src_mask,
        tgt[:, :-1],
        tgt_mask[:, :-1],
        tgt[:, 1:],  # (B, T) each
        num_target_tokens=int(tgt_mask[:, 1:].sum()),
    )


# --- reading ------------------------------------------------------------------------------


def _first(pairs: list[SentencePair], n: int | None) -> list[SentencePair]:
    return pairs if n is None else pairs[:n]


def _read_split(config: DataConfig, split: str) -> list[SentencePair] | None:
    """The pairs of one split, or None when the config gives none."""
    if config.source == "multi30k":
        name = {"train": "train", "val": "val", "test": config.test_split}[split]
        return read_multi30k(config.data_dir, name, config.src_lang, config.tgt_lang)  # type: ignore[arg-type]
    if config.source == "files":
        src, tgt = getattr(config, f"{split}_src"), getattr(config, f"{split}_tgt")
        if (src is None) != (tgt is None):
            raise DataError(
                f"data.{split}_src and data.{split}_tgt must be given together", file=src or tgt
            )
        return read_parallel(src, tgt) if src is not None else None
    if config.source in TABLE_SOURCES:
        path = getattr(config, f"{split}_file")
        if not path:
            return None
        if config.source == "tsv":
            return read_parallel_tsv(path, config.src_column, config.tgt_column)
        return read_parallel_table(path, config.src_column, config.tgt_column, format=config.source)  # type: ignore[arg-type]
    raise ValueError(
        f"data.source must be one of 'multi30k', 'files', {', '.join(map(repr, TABLE_SOURCES))}; "
        f"got {config.source!r}"
    )


def load_pairs(config: DataConfig, *, seed: int) -> dict[str, list[SentencePair]]:
    """Read train/val/test pairs; without validation data a seeded share of train is held out.

    Raises:
        DataError: a bad file (both files and the line are named), or no training data.
        FileNotFoundError: a missing file (Multi30k: says what to download).
    """
    splits = {split: _read_split(config, split) for split in SPLITS}
    train = splits["train"]
    if not train:
        raise DataError(
            f"no training pairs: set data.train_src/train_tgt or data.train_file (source={config.source!r})"
        )
    if splits["val"] is None:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        n_val = max(1, round(config.val_fraction * len(train)))
        held_out = set(order[:n_val])
        splits["val"] = [p for i, p in enumerate(train) if i in held_out]
        train = [p for i, p in enumerate(train) if i not in held_out]
    return {
        "train": _first(train, config.train_samples),
        "val": _first(splits["val"], config.val_samples),
        "test": _first(splits["test"] or [], config.test_samples),
    }


# --- tokenizers ---------------------------------------------------------------------------


def special_ids(tokenizer: Tokenizer) -> tuple[int, int, int]:
    """(pad, start, end) ids: ``<pad> <s> </s>`` (BPE) or ``[PAD] [CLS] [SEP]`` (WordPiece)."""
    start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.cls_id
    end = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.sep_id
    if tokenizer.pad_id is None or start is None or end is None:
        raise ValueError(
            f"{tokenizer!r} needs pad, start (<s> or [CLS]) and end (</s> or [SEP]) tokens"
        )
    if tokenizer.num_special_tokens != 2:
        raise ValueError(
            f"{tokenizer!r} must wrap a text as '<s> $A </s>' (found {tokenizer.num_special_tokens} specials)"
        )
    return tokenizer.pad_id, start, end


def _train_tokenizer(config: TokenizerConfig, texts: list[str]) -> Tokenizer:
    if config.kind == "bpe":
        return Tokenizer.train_bpe(
            texts,
            vocab_size=config.vocab_size,
            min_frequency=config.min_frequency,
            lowercase=config.lowercase,
        )
    if config.kind == "wordpiece":
        return Tokenizer.train_wordpiece(
            texts,
            vocab_size=config.vocab_size,
            min_frequency=config.min_frequency,
            lowercase=config.lowercase,
        )
    raise ValueError(f"tokenizer.kind must be 'bpe' or 'wordpiece', got {config.kind!r}")


def load_or_train_tokenizers(
    config: TokenizerConfig,
    run_dir: Path,
    train: list[SentencePair],
    *,
    write: bool = True,
    pretrained: Tokenizer | None = None,
) -> tuple[Tokenizer, Tokenizer]:
    """The run's (source, target) tokenizers: a pretrained model's (``pretrained``, for both
    sides), given files, those a previous start of this run saved, or new ones trained on
    ``train``; saved in ``run_dir`` when ``write`` (rank 0; the other ranks of a
    distributed run read what it saved) and not there yet.

    Raises:
        ValueError: the two tokenizers disagree on the padding id (the model has one).
    """
    saved = run_dir / SOURCE_TOKENIZER, run_dir / TARGET_TOKENIZER
    if pretrained is not None:
        src_tok = tgt_tok = pretrained
    elif config.path:
        src_tok = Tokenizer.from_file(config.path)
        tgt_tok = src_tok if config.joint else Tokenizer.from_file(config.tgt_path or config.path)
    elif all(p.is_file() for p in saved):
        src_tok, tgt_tok = Tokenizer.from_file(saved[0]), Tokenizer.from_file(saved[1])
    elif config.joint:
        src_tok = tgt_tok = _train_tokenizer(
            config, [p.src for p in train] + [p.tgt for p in train]
        )
    else:
        src_tok, tgt_tok = (
            _train_tokenizer(config, [p.src for p in train]),
            _train_tokenizer(config, [p.tgt for p in train]),
        )
    if write and not all(p.is_file() for p in saved):
        for tokenizer, path in zip((src_tok, tgt_tok), saved):
            atomic_write_text(path, tokenizer.backend.to_str())
    if pretrained is None and special_ids(src_tok)[0] != special_ids(tgt_tok)[0]:
        raise ValueError(
            f"source and target tokenizers have different padding ids ({src_tok.pad_id}, {tgt_tok.pad_id})"
        )
    return src_tok, tgt_tok


# --- encoding -----------------------------------------------------------------------------


def encode_pairs(
    pairs: list[SentencePair],
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    *,
    max_length: int,
    drop_long: bool,
    prefix: str = "",
    start_id: int | None = None,
) -> tuple[EncodedPairs, int]:
    """Tokenize both sides; returns the encoded pairs and how many were dropped as too long.

    ``drop_long`` (training): pairs with a side over ``max_length`` are left out, since a
    truncated target teaches the model to stop mid-sentence. Otherwise (evaluation) every
    pair is kept and both sides are cut to ``max_length``. ``prefix`` goes before every
    source text (the raw texts are kept without it). ``start_id``: the decoder's first
    input, put before each target unless the target tokenizer starts a text with it.
    """
    limit = None if drop_long else max_length
    src_ids = src_tok.encode_batch([prefix + p.src for p in pairs], max_length=limit)
    lead = [] if start_id is None or tgt_tok.prefix_ids == [start_id] else [start_id]
    tgt_ids = [
        lead + ids
        for ids in tgt_tok.encode_batch(
            [p.tgt for p in pairs], max_length=None if limit is None else limit - len(lead)
        )
    ]
    keep = [
        i
        for i in range(len(pairs))
        if len(src_ids[i]) <= max_length and len(tgt_ids[i]) <= max_length
    ]
    encoded = EncodedPairs(
        src_ids=[src_ids[i] for i in keep],
        tgt_ids=[tgt_ids[i] for i in keep],
        src_texts=[pairs[i].src for i in keep],
        tgt_texts=[pairs[i].tgt for i in keep],
    )
    return encoded, len(pairs) - len(keep)


@dataclass
class PreparedData:
    """Everything the loop needs from the data side."""

    pairs: dict[str, list[SentencePair]]
    src_tok: Tokenizer
    tgt_tok: Tokenizer
    encoded: dict[str, EncodedPairs]
    dropped: dict[str, int] = field(default_factory=dict)


def prepare_data(
    data: DataConfig,
    tok_config: TokenizerConfig,
    run_dir: Path,
    *,
    seed: int,
    write: bool = True,
    pretrained_tokenizer: Tokenizer | None = None,
    start_id: int | None = None,
) -> PreparedData:
    """Read, tokenize (training or reloading the tokenizers) and encode every split.

    ``pretrained_tokenizer`` (a pretrained model's, for both sides) and its model's decoder
    ``start_id`` replace training tokenizers.
    """
    pairs = load_pairs(data, seed=seed)
    src_tok, tgt_tok = load_or_train_tokenizers(
        tok_config, run_dir, pairs["train"], write=write, pretrained=pretrained_tokenizer
    )
    if start_id is None:
        start_id = special_ids(tgt_tok)[1]
    encoded, dropped = {}, {}
    for split, split_pairs in pairs.items():
        if split_pairs:
            encoded[split], dropped[split] = encode_pairs(
                split_pairs,
                src_tok,
                tgt_tok,
                max_length=data.max_length,
                drop_long=split == "train",
                prefix=data.source_prefix,
                start_id=start_id,
            )
    if dropped.get("train"):
        logger.warning(
            "dropped %d training pairs longer than %d tokens", dropped["train"], data.max_length
        )
    if not len(encoded["train"]):
        raise DataError(
            f"every training pair is longer than data.max_length={data.max_length} tokens"
        )
    return PreparedData(pairs, src_tok, tgt_tok, encoded, dropped)
