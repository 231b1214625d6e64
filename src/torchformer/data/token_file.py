"""Packed token files for causal language modelling, and the sampler that reads them.

A corpus is tokenized once into a flat binary file of token ids (nanoGPT's
``train.bin``: ``uint16`` when the vocabulary fits, else ``uint32``), read back as a
read-only ``numpy.memmap`` so that a corpus larger than memory costs no RAM. Files,
all in one cache directory (default ``data_dir()/cache/tokens/``)::

    <corpus>-<key>.bin        the ids; documents joined by the end-of-text id
    <corpus>-<key>.idx.npy    int64 start offset of each document (boundaries)
    <corpus>-<key>.json       dtype, counts, ids and fingerprints; written last

``key`` is a hash of the corpus fingerprint (source paths, sizes and mtimes: see
``data.corpus``) and of the tokenizer's ``tokenizer.json`` (every setting that changes
an id), so a changed corpus or tokenizer gets a new file and an unchanged one is reused
without tokenizing. Each file is written to a temp file and renamed
(``io.atomic_write_bytes``) and the ``.json`` comes last, so a killed run leaves no file
that a later run would take for complete. Documents are tokenized in batches of about
``batch_chars`` characters and appended: neither the corpus nor its ids are ever held
whole.

``PackedBlockSampler`` draws contiguous blocks of ``block_size + 1`` tokens (input
``block[:-1]``, target ``block[1:]``) that run across document boundaries, as in GPT-2
and nanoGPT; the end-of-text id tells the model where one document stops.
"""

from __future__ import annotations

import array
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

import numpy as np
import torch

from torchformer.data.batching import _EpochBatchSampler
from torchformer.data.paths import data_dir as default_data_dir
from torchformer.data.records import DataError
from torchformer.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "PackedBlockSampler",
    "TokenFile",
    "build_token_file",
    "open_token_file",
    "read_blocks",
    "token_file_key",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the layout changes: old cache files are then not reused
_UINT16_LIMIT = 1 << 16
SamplingMode = Literal["epoch", "random", "streams"]


class _Corpus(Protocol):
    """What ``build_token_file`` needs of a corpus (``data.corpus.Corpus``)."""

    name: str

    def __iter__(self) -> Iterator[tuple[str, str]]: ...

    def fingerprint(self) -> str: ...


class _LMTokenizer(Protocol):
    """What it needs of a tokenizer (``text.tokenizer.Tokenizer``, which ``data`` may not
    import): ``backend.to_str()`` (the JSON that is fingerprinted) and these."""

    backend: Any
    vocab_size: int
    eos_id: int | None

    def encode_batch(
        self, texts: Sequence[str], *, max_length: int | None, add_special_tokens: bool
    ) -> list[list[int]]: ...


@dataclass(frozen=True)
class TokenFile:
    """A token file opened for reading.

    Attributes:
        path: the ``.bin`` file.
        tokens: (N,) the ids, a read-only memmap (``uint16`` or ``uint32``).
        doc_starts: (num_documents,) int64 offset of each document's first token.
        eot_id: the end-of-text id between documents, or None (no separator).
        vocab_size: the tokenizer's vocabulary size.
        key: the hash in the file name (corpus + tokenizer).
    """

    path: Path
    tokens: np.ndarray
    doc_starts: np.ndarray
    eot_id: int | None
    vocab_size: int
    key: str

    def __len__(self) -> int:
        return len(self.tokens)

    def document(self, index: int) -> np.ndarray:
        """The ids of document ``index`` (without the separator)."""
        start = int(self.doc_starts[index])
        if index + 1 < len(self.doc_starts):
            end = int(self.doc_starts[index + 1]) - (self.eot_id is not None)
        else:
            end = len(self.tokens)
        return self.tokens[start:end]


def token_file_key(corpus: _Corpus, tokenizer: _LMTokenizer, eot_id: int | None) -> str:
    """The 16-hex-digit cache key of (file format, corpus, tokenizer JSON, separator)."""
    tokenizer_hash = hashlib.sha256(tokenizer.backend.to_str().encode("utf-8")).hexdigest()
    parts = [FORMAT_VERSION, corpus.fingerprint(), tokenizer_hash, eot_id]
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()[:16]


def _parts(bin_path: Path) -> tuple[Path, Path]:
    """The index and metadata files next to a ``.bin`` (names may hold dots)."""
    stem = bin_path.name.removesuffix(".bin")
    return bin_path.with_name(stem + ".idx.npy"), bin_path.with_name(stem + ".json")


def _batches(corpus: Iterable[tuple[str, str]], batch_chars: int) -> Iterator[list[tuple]]:
    """Documents grouped into batches of about ``batch_chars`` characters (a document
    longer than that is a batch of its own)."""
    batch: list[tuple[str, str]] = []
    size = 0
    for document in corpus:
        if batch and size + len(document[1]) > batch_chars:
            yield batch
            batch, size = [], 0
        batch.append(document)
        size += len(document[1])
    if batch:
        yield batch


def _encode(tokenizer: _LMTokenizer, batch: list[tuple[str, str]], name: str) -> list[list[int]]:
    try:
        return tokenizer.encode_batch(
            [text for _, text in batch], max_length=None, add_special_tokens=False
        )
    except Exception as error:  # the Rust side raises a bare Exception (an unknown char)
        raise DataError(
            f"cannot tokenize documents {batch[0][0]} .. {batch[-1][0]}: {error}",
            file=name,
            field="text",
        ) from error


def _write_ids(
    handle: BinaryIO,
    corpus: _Corpus,
    tokenizer: _LMTokenizer,
    dtype: np.dtype,
    eot_id: int | None,
    batch_chars: int,
) -> dict[str, Any]:
    """Tokenize the corpus batch by batch, appending ids (and separators) to ``handle``.

    Returns ``num_tokens`` and ``doc_starts`` (a compact int64 ``array``, not a list).
    """
    starts, num_tokens = array.array("q"), 0
    separator = np.array([] if eot_id is None else [eot_id], dtype=dtype)
    for batch in _batches(corpus, batch_chars):
        pieces = []
        for ids in _encode(tokenizer, batch, corpus.name):
            if starts:  # separator *between* documents, none before the first
                pieces.append(separator)
                num_tokens += len(separator)
            starts.append(num_tokens)
            pieces.append(np.asarray(ids, dtype=dtype))
            num_tokens += len(ids)
        handle.write(np.concatenate(pieces).tobytes())
    return {"num_tokens": num_tokens, "doc_starts": starts}


def build_token_file(
    corpus: _Corpus,
    tokenizer: _LMTokenizer,
    *,
    cache_dir: str | Path | None = None,
    batch_chars: int = 1 << 22,
) -> TokenFile:
    """Tokenize ``corpus`` into a cached token file, or reuse the one already there.

    Args:
        corpus: a ``data.corpus.Corpus`` (anything with ``name``, ``fingerprint()`` and
            ``(doc_id, text)`` iteration).
        tokenizer: a ``text.tokenizer.Tokenizer``. Its ``eos_id`` separates documents;
            with none (a char tokenizer without end-of-text), documents are joined
            directly and only the index marks the boundaries.
        cache_dir: where token files live (default ``data_dir()/cache/tokens``).
        batch_chars: about how many characters to tokenize at a time (the memory bound;
            one document is never cut, so split a huge file by line or paragraph).

    Returns:
        The token file, opened (see ``open_token_file``).

    Raises:
        DataError: a document cannot be tokenized (the batch's document ids named), or
            the corpus has no document.
        PermissionError: ``cache_dir`` is not writable.
    """
    directory = Path(cache_dir) if cache_dir is not None else default_data_dir() / "cache/tokens"
    eot_id = tokenizer.eos_id
    key = token_file_key(corpus, tokenizer, eot_id)
    safe_name = re.sub(r"[^\w.-]", "_", corpus.name)  # a file name, never a path
    bin_path = directory / f"{safe_name}-{key}.bin"
    index_path, meta_path = _parts(bin_path)
    if meta_path.is_file():
        try:
            token_file = open_token_file(bin_path)
            logger.info("reusing token file %s", bin_path)
            return token_file
        except (FileNotFoundError, DataError) as error:  # e.g. a part deleted by hand
            logger.warning("rebuilding token file: %s", error)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except PermissionError as error:
        raise PermissionError(
            f"token cache directory {directory} is not writable; pass cache_dir="
        ) from error
    meta_path.unlink(missing_ok=True)  # a stale one must not vouch for the new parts
    vocab_size = tokenizer.vocab_size
    dtype = np.dtype(np.uint16 if vocab_size <= _UINT16_LIMIT else np.uint32)
    written: dict[str, Any] = {}
    logger.info("tokenizing %s into %s", corpus.name, bin_path)
    atomic_write_bytes(
        bin_path,
        lambda out: written.update(_write_ids(out, corpus, tokenizer, dtype, eot_id, batch_chars)),
    )
    starts = written["doc_starts"]
    if not starts:
        bin_path.unlink(missing_ok=True)
        raise DataError("the corpus has no non-empty document", file=corpus.name)
    atomic_write_bytes(index_path, lambda out: np.save(out, np.frombuffer(starts, np.int64)))
    meta = {
        "format_version": FORMAT_VERSION,
        "dtype": dtype.name,
        "num_tokens": written["num_tokens"],
        "num_documents": len(starts),
        "eot_id": eot_id,
        "vocab_size": vocab_size,
        "key": key,
        "corpus": corpus.name,
        "corpus_fingerprint": corpus.fingerprint(),
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")  # last: marks it done
    return open_token_file(bin_path)


def open_token_file(path: str | Path) -> TokenFile:
    """Open a ``.bin`` token file written by ``build_token_file``.

    Raises:
        FileNotFoundError: the ``.bin``, ``.idx.npy`` or ``.json`` file is missing.
        DataError: the files disagree (a truncated ``.bin``, an old format).
    """
    bin_path = Path(path)
    index_path, meta_path = _parts(bin_path)
    for needed in (bin_path, index_path, meta_path):
        if not needed.is_file():
            raise FileNotFoundError(f"token file part {needed} is missing")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}",
            file=meta_path,
            field="format_version",
        )
    dtype = np.dtype(meta["dtype"])
    expected = meta["num_tokens"] * dtype.itemsize
    if bin_path.stat().st_size != expected:
        raise DataError(
            f"{bin_path.stat().st_size} bytes, expected {expected} "
            f"({meta['num_tokens']} {dtype.name} ids); delete it to rebuild",
            file=bin_path,
        )
    tokens = np.memmap(bin_path, dtype=dtype, mode="r") if expected else np.zeros(0, dtype)
    return TokenFile(
        path=bin_path,
        tokens=tokens,
        doc_starts=np.load(index_path),
        eot_id=meta["eot_id"],
        vocab_size=meta["vocab_size"],
        key=meta["key"],
    )


def read_blocks(
    tokens: np.ndarray, starts: Sequence[int], block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets of the blocks starting at ``starts``.

    Returns:
        ``input_ids`` (B, T) and ``targets`` (B, T), int64, with T = ``block_size`` and
        ``targets[:, t] == tokens[start + t + 1]``.

    Raises:
        IndexError: a block would read past the end of ``tokens`` (its start named).
    """
    rows = []
    for start in starts:
        if start < 0 or start + block_size + 1 > len(tokens):
            raise IndexError(
                f"block at {start} of {block_size + 1} tokens runs outside the {len(tokens)} tokens"
            )
        rows.append(np.asarray(tokens[start : start + block_size + 1], dtype=np.int64))
    blocks = torch.from_numpy(np.stack(rows))  # (B, T + 1)
    return blocks[:, :-1], blocks[:, 1:]  # (B, T), (B, T)


class PackedBlockSampler(_EpochBatchSampler):
    """Batches of block start offsets into a token file, for causal LM training.

    A batch is a list of token offsets; ``read_blocks(token_file.tokens, batch,
    block_size)`` turns (a rank's ``shard`` of) it into tensors. Two modes:

    - ``"epoch"``: the file cut into ``(N - 1) // block_size`` consecutive blocks (each
      block's last token is the next one's first input, so every token after the first
      is a target exactly once per epoch), in a shuffled order per ``(seed, epoch)``.
    - ``"random"``: nanoGPT's ``get_batch``: ``batches_per_epoch`` batches of offsets
      drawn uniformly from ``[0, N - block_size - 1]``, seeded by ``(seed, epoch)``.

    - ``"streams"``: Transformer-XL's ordered reading: the file cut into ``batch_size``
      equal streams, row b of batch s is the s-th block of stream b. Consecutive
      batches continue every row where the previous one stopped (a memory of the
      previous segment stays valid); every epoch reads the streams from the start.
      Sharding keeps a row on the same rank from batch to batch.

    Epochs, ``state_dict``/``load_state_dict`` (exact resume, counted in global
    batches), ``set_epoch`` and ``shard`` (``batch[rank::num_replicas]``) are those of
    the samplers in ``data.batching``, so the training loop drives it like them.

    Args:
        num_tokens: the token file's length.
        block_size: T, the model's context length.
        batch_size: blocks per global batch.
        seed: base seed; epoch ``e`` uses ``(seed, e)``.
        mode: ``"epoch"`` or ``"random"``.
        batches_per_epoch: required for ``"random"``; unused for ``"epoch"``.
        shuffle: ``"epoch"`` mode: shuffle block order (off: file order).
        drop_last: ``"epoch"`` mode: drop the final incomplete batch.
        num_replicas / rank: the distributed world; see ``shard``.

    Raises:
        ValueError: the file is shorter than one block, or a bad setting (named).
    """

    def __init__(
        self,
        num_tokens: int,
        block_size: int,
        batch_size: int,
        *,
        seed: int,
        mode: SamplingMode = "epoch",
        batches_per_epoch: int | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if block_size < 1 or batch_size < 1:
            raise ValueError(f"block_size={block_size} and batch_size={batch_size} must be >= 1")
        if num_tokens < block_size + 1:
            raise ValueError(
                f"the token file has {num_tokens} tokens, fewer than one block of "
                f"block_size + 1 = {block_size + 1}"
            )
        if mode not in ("epoch", "random", "streams"):
            raise ValueError(f"mode must be 'epoch', 'random' or 'streams', got {mode!r}")
        if mode == "random" and (batches_per_epoch is None or batches_per_epoch < 1):
            raise ValueError("mode='random' needs batches_per_epoch >= 1")
        # The base class keeps per-example lengths for bookkeeping only; here the one
        # "example" is the file (its settings below replace the base's).
        super().__init__(
            [num_tokens], seed=seed, shuffle=shuffle, num_replicas=num_replicas, rank=rank
        )
        self.num_tokens = num_tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.mode = mode
        self.batches_per_epoch = batches_per_epoch if mode == "random" else None
        self.drop_last = drop_last
        self.num_blocks = (num_tokens - 1) // block_size  # "epoch" mode
        self.stream_len = (num_tokens - 1) // batch_size  # "streams" mode
        if mode == "streams" and self.stream_len < block_size:
            raise ValueError(
                f"the token file has {num_tokens} tokens: {batch_size} streams of "
                f"{self.stream_len} tokens are shorter than one block of {block_size}"
            )

    def _settings(self) -> dict[str, Any]:
        return {
            "num_tokens": self.num_tokens,
            "block_size": self.block_size,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "mode": self.mode,
            "batches_per_epoch": self.batches_per_epoch,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def _batches(self, epoch: int) -> list[list[int]]:
        rng = self._rng(epoch)
        if self.mode == "random":
            # The last valid start leaves block_size + 1 tokens: high is exclusive.
            high = self.num_tokens - self.block_size
            shape = (self.batches_per_epoch, self.batch_size)
            return rng.integers(0, high, size=shape).tolist()
        if self.mode == "streams":
            starts = np.arange(self.batch_size) * self.stream_len  # (B,) stream starts
            return [
                (starts + s * self.block_size).tolist()
                for s in range(self.stream_len // self.block_size)
            ]
        order = rng.permutation(self.num_blocks) if self.shuffle else np.arange(self.num_blocks)
        starts = order * self.block_size
        batches = [
            starts[i : i + self.batch_size].tolist()
            for i in range(0, self.num_blocks, self.batch_size)
        ]
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __len__(self) -> int:
        if self.mode == "random":
            return int(self.batches_per_epoch)  # type: ignore[arg-type]
        if self.mode == "streams":
            return self.stream_len // self.block_size
        if self.drop_last:
            return self.num_blocks // self.batch_size
        return math.ceil(self.num_blocks / self.batch_size)
