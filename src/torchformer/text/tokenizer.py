"""Tokenizers: train, load, save and encode, on the Hugging Face ``tokenizers`` library.

``Tokenizer`` wraps a ``tokenizers.Tokenizer`` (the Rust implementation; one
``tokenizer.json`` file holds the whole pipeline: normalizer, pre-tokenizer, model,
post-processor, decoder) and adds what a training job needs:

- loading a pretrained model directory (``tokenizer.json``, or a BERT ``vocab.txt``);
- training a BERT-style WordPiece tokenizer (classification) or a BPE tokenizer whose
  ``decode`` gives back natural, detokenized text (translation, language modelling);
- batch encoding with a token budget and a choice of what to keep when a text is too
  long: its head, its tail, or both (Sun et al. 2019, "How to Fine-Tune BERT for Text
  Classification?": the first 128 + last 382 tokens of an IMDB review beat the head
  alone). Truncation cuts the *content* tokens; the special tokens of the tokenizer's
  own post-processor template (``[CLS] $A [SEP]``, ``<s> $A </s>``) are added after, so
  they always survive.

A ``tokenizer.json`` may carry its own truncation and padding settings (the packaged
MiniLM pads everything to 128); they are switched off here: truncation is an explicit
argument of ``encode_batch`` and padding belongs to batching (``data.batching``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tokenizers

from torchformer.text.backends import (
    ROLE_CANDIDATES,
    bert_wordpiece_from_vocab,
    bpe_trained,
    wordpiece_trained,
)

__all__ = ["EncodedText", "Tokenizer", "Truncation"]

Truncation = Literal["head", "tail", "head+tail"]
_TRUNCATIONS = ("head", "tail", "head+tail")


@dataclass(frozen=True)
class EncodedText:
    """One encoded text, for visualisation: ids with their token strings and offsets.

    ``offsets[i]`` is the ``(start, end)`` character span of token ``i`` in the
    original text; special tokens have ``(0, 0)`` and ``special_tokens_mask[i] == 1``.
    """

    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    special_tokens_mask: list[int]


def _check_texts(texts: Sequence[str]) -> list[str]:
    """Return ``texts`` as a list, or raise naming the first bad index."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got a single string; wrap it: [text]")
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}]: expected str, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"texts[{index}]: empty text {text!r}; expected non-empty text")
    return texts


def _encode_checked(encode: Any, texts: list[str]) -> list[Any]:
    """``encode(texts, add_special_tokens=False)``; the Rust side refuses a text holding a
    lone surrogate (not valid Unicode) with a ``TypeError`` naming no text: name it."""
    try:
        return encode(texts, add_special_tokens=False)
    except TypeError:
        for index, text in enumerate(texts):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(
                    f"texts[{index}]: lone surrogate {text[error.start]!r} at character "
                    f"{error.start}; expected valid Unicode text"
                ) from None
        raise


def checked_text_stream(texts: Iterable[str]) -> Iterator[str]:
    """Yield training texts, raising on a non-string (empty texts are harmless here)."""
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, got a single string")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}]: expected str, got {type(text).__name__}")
        yield text


def _truncate(seq: list, budget: int | None, truncation: str, head_tokens: int) -> list:
    """Keep at most ``budget`` items of ``seq``: head, tail, or head+tail."""
    if budget is None or len(seq) <= budget:
        return seq
    if truncation == "head":
        return seq[:budget]
    if truncation == "tail":
        return seq[len(seq) - budget :]
    return seq[:head_tokens] + seq[len(seq) - (budget - head_tokens) :]


def _normalizer_lowercases(spec: Mapping[str, Any] | None) -> bool:
    """Whether a serialized normalizer (tokenizer.json ``normalizer``) lowercases."""
    if not spec:
        return False
    kind = spec.get("type")
    if kind == "BertNormalizer":
        return bool(spec.get("lowercase"))
    if kind == "Lowercase":
        return True
    if kind == "Sequence":
        return any(_normalizer_lowercases(child) for child in spec.get("normalizers", []))
    return False


def _token_string(value: Any) -> str | None:
    """A special token as written in HF config files: a string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _config_special_tokens(directory: Path) -> dict[str, str]:
    """Special-token roles from ``special_tokens_map.json`` / ``tokenizer_config.json``."""
    roles: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = directory / name
        if not path.is_file():
            continue
        config = _read_json(path)
        for role in ROLE_CANDIDATES:
            token = _token_string(config.get(f"{role}_token"))
            if token is not None:
                roles[role] = token
    return roles


class Tokenizer:
    """A ``tokenizers.Tokenizer`` with explicit truncation, special-token ids and checks.

    Args:
        backend: the Rust tokenizer. Its own truncation/padding settings are disabled.
        special_tokens: role -> token string (roles: pad, unk, cls, sep, mask, bos,
            eos) overriding detection by the usual names (``[PAD]``/``<pad>``, ...).
        model_max_length: the longest input the matching model accepts, if known.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        special_tokens: Mapping[str, str] | None = None,
        model_max_length: int | None = None,
    ) -> None:
        backend.no_truncation()
        backend.no_padding()
        self.backend = backend
        self.model_max_length = model_max_length
        self._role_ids = self._resolve_roles(dict(special_tokens or {}))
        self._prefix, self._suffix = self._template_ends()

    # ----------------------------------------------------------------- construction
    def _resolve_roles(self, explicit: dict[str, str]) -> dict[str, int | None]:
        unknown = set(explicit) - set(ROLE_CANDIDATES)
        if unknown:
            raise ValueError(
                f"unknown special-token roles {sorted(unknown)}; valid: {list(ROLE_CANDIDATES)}"
            )
        role_ids: dict[str, int | None] = {}
        for role, candidates in ROLE_CANDIDATES.items():
            tokens = (explicit[role],) if role in explicit else candidates
            ids = [self.backend.token_to_id(token) for token in tokens]
            role_ids[role] = next((i for i in ids if i is not None), None)
        return role_ids

    def _template_ends(self) -> tuple[list[int], list[int]]:
        """The special ids the post-processor puts before and after one sequence."""
        if self.backend.post_processor is None:
            return [], []
        probe = self.backend.encode("a", add_special_tokens=False)
        full = self.backend.post_process(probe, None, True)
        mask = full.special_tokens_mask
        if 0 not in mask:  # the probe vanished (an empty vocabulary): no content to place
            return list(full.ids), []
        first = mask.index(0)
        last = len(mask) - 1 - mask[::-1].index(0)
        return list(full.ids[:first]), list(full.ids[last + 1 :])

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        special_tokens: Mapping[str, str] | None = None,
        model_max_length: int | None = None,
    ) -> Tokenizer:
        """Load a ``tokenizer.json`` file (see the class for the keyword arguments).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is not a valid ``tokenizer.json``.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as error:  # the Rust side raises a bare Exception
            raise ValueError(f"{path}: not a valid tokenizer.json: {error}") from error
        return cls(backend, special_tokens=special_tokens, model_max_length=model_max_length)

    @classmethod
    def from_pretrained_dir(cls, directory: str | Path) -> Tokenizer:
        """Load the tokenizer of a Hugging Face model directory.

        Uses ``tokenizer.json`` when present; otherwise builds a BERT WordPiece
        tokenizer from ``vocab.txt`` (lowercasing per ``do_lower_case`` in
        ``tokenizer_config.json``, default true as in BERT). Special-token roles and
        ``model_max_length`` come from ``tokenizer_config.json`` /
        ``special_tokens_map.json`` when present.

        Raises:
            FileNotFoundError: neither ``tokenizer.json`` nor ``vocab.txt`` exists.
        """
        directory = Path(directory)
        config_path = directory / "tokenizer_config.json"
        config = _read_json(config_path) if config_path.is_file() else {}
        roles = _config_special_tokens(directory)
        max_length = config.get("model_max_length")
        # HF writes a huge sentinel (1e30) when the model has no length limit.
        max_length = max_length if isinstance(max_length, int) and max_length < 10**7 else None
        if (directory / "tokenizer.json").is_file():
            return cls.from_file(
                directory / "tokenizer.json", special_tokens=roles, model_max_length=max_length
            )
        if (directory / "vocab.txt").is_file():
            backend = bert_wordpiece_from_vocab(directory / "vocab.txt", config, roles)
            return cls(backend, special_tokens=roles, model_max_length=max_length)
        raise FileNotFoundError(
            f"{directory}: no tokenizer found; expected tokenizer.json or a BERT vocab.txt"
        )

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as one ``tokenizer.json`` file (parents are created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(path))

    @classmethod
    def train_wordpiece(
        cls,
        texts: Iterable[str],
        *,
        vocab_size: int = 30000,
        min_frequency: int = 2,
        special_tokens: Sequence[str] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
        lowercase: bool = True,
    ) -> Tokenizer:
        """Train a BERT-style WordPiece tokenizer.

        BertNormalizer (optionally lowercasing, which also strips accents as BERT does),
        BertPreTokenizer, WordPiece with ``##`` continuation, ``[CLS] $A [SEP]``
        template, WordPiece decoder.

        Raises:
            ValueError: ``special_tokens`` lacks an unknown token or [CLS]/[SEP].
            TypeError: a text is not a string.
        """
        backend = wordpiece_trained(
            checked_text_stream(texts),
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(special_tokens),
            lowercase=lowercase,
        )
        return cls(backend)

    @classmethod
    def train_bpe(
        cls,
        texts: Iterable[str],
        *,
        vocab_size: int = 8000,
        min_frequency: int = 2,
        special_tokens: Sequence[str] = ("<pad>", "<unk>", "<s>", "</s>"),
        byte_level: bool = False,
        lowercase: bool = False,
    ) -> Tokenizer:
        """Train a BPE tokenizer whose ``decode`` returns natural, detokenized text.

        The default is SentencePiece-style: NFKC normalization and a Metaspace
        pre-tokenizer that keeps each word's leading space as ``▁``, so decoding restores
        the spacing exactly ("Ein Hund läuft." round-trips); a character never seen in
        training becomes the unknown token. ``byte_level=True`` gives GPT-2-style
        byte-level BPE (no unknown tokens at all; tokens are less readable). With ``<s>``/``</s>`` among
        the special tokens the template is ``<s> $A </s>``.

        Raises:
            ValueError: ``special_tokens`` lacks an unknown token (Metaspace BPE only).
            TypeError: a text is not a string.
        """
        backend = bpe_trained(
            checked_text_stream(texts),
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(special_tokens),
            byte_level=byte_level,
            lowercase=lowercase,
        )
        return cls(backend)

    # ------------------------------------------------------------------- properties
    @property
    def vocab_size(self) -> int:
        """Number of ids, added (special) tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int | None:
        return self._role_ids["pad"]

    @property
    def unk_id(self) -> int | None:
        return self._role_ids["unk"]

    @property
    def cls_id(self) -> int | None:
        return self._role_ids["cls"]

    @property
    def sep_id(self) -> int | None:
        return self._role_ids["sep"]

    @property
    def mask_id(self) -> int | None:
        return self._role_ids["mask"]

    @property
    def bos_id(self) -> int | None:
        return self._role_ids["bos"]

    @property
    def eos_id(self) -> int | None:
        return self._role_ids["eos"]

    @property
    def lowercases(self) -> bool:
        """Whether the tokenizer lowercases its input itself (an uncased tokenizer)."""
        spec = json.loads(self.backend.to_str()).get("normalizer")
        return _normalizer_lowercases(spec)

    @property
    def prefix_ids(self) -> list[int]:
        """The special ids ``add_special_tokens=True`` puts before a text (``[CLS]``, ``<s>``)."""
        return list(self._prefix)

    @property
    def suffix_ids(self) -> list[int]:
        """The special ids ``add_special_tokens=True`` puts after a text (``[SEP]``, ``</s>``)."""
        return list(self._suffix)

    @property
    def num_special_tokens(self) -> int:
        """How many special tokens ``add_special_tokens=True`` adds to one text."""
        return len(self._prefix) + len(self._suffix)

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token``, or None when it is not in the vocabulary."""
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """The token string of ``token_id``, or None when out of range."""
        return self.backend.id_to_token(token_id)

    def tokens(self, ids: Sequence[int]) -> list[str]:
        """The token string of each id (for attention views).

        Raises:
            ValueError: an id outside the vocabulary (its position is named).
        """
        tokens = []
        for position, token_id in enumerate(ids):
            token = self.backend.id_to_token(int(token_id))
            if token is None:
                raise ValueError(
                    f"ids[{position}] = {token_id} is outside the vocabulary "
                    f"(size {self.vocab_size})"
                )
            tokens.append(token)
        return tokens

    # --------------------------------------------------------------------- encoding
    def _content_budget(self, max_length: int | None, add_special_tokens: bool) -> int | None:
        if max_length is None:
            return None
        specials = self.num_special_tokens if add_special_tokens else 0
        if max_length - specials < 1:
            raise ValueError(
                f"max_length={max_length} leaves no room for content after "
                f"{specials} special tokens"
            )
        return max_length - specials

    @staticmethod
    def _head_size(truncation: str, budget: int | None, head_tokens: int | None) -> int:
        if truncation not in _TRUNCATIONS:
            raise ValueError(f"truncation must be one of {_TRUNCATIONS}, got {truncation!r}")
        if truncation != "head+tail" or budget is None:
            return 0
        if head_tokens is None:
            return budget // 4
        if not 0 <= head_tokens <= budget:
            raise ValueError(
                f"head_tokens={head_tokens} must be between 0 and the content budget {budget}"
            )
        return head_tokens

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        max_length: int | None,
        truncation: Truncation = "head",
        head_tokens: int | None = None,
        add_special_tokens: bool = True,
    ) -> list[list[int]]:
        """Encode texts to ids, truncated to ``max_length`` special tokens included.

        Args:
            texts: non-empty strings.
            max_length: total length limit (``None``: no truncation).
            truncation: keep the ``"head"``, the ``"tail"``, or ``"head+tail"`` of the
                content tokens.
            head_tokens: for ``"head+tail"``, how many leading tokens to keep (default: a
                quarter of the content budget); the rest of the budget comes from the end.
            add_special_tokens: add the post-processor's special tokens after truncation.

        Raises:
            TypeError: a text is not a string (its index is named).
            ValueError: an empty text or one holding a lone surrogate (its index is
                named), a bad truncation setting.
        """
        texts = _check_texts(texts)
        budget = self._content_budget(max_length, add_special_tokens)
        head = self._head_size(truncation, budget, head_tokens)
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        encodings = _encode_checked(encode, texts)
        prefix, suffix = (self._prefix, self._suffix) if add_special_tokens else ([], [])
        return [prefix + _truncate(e.ids, budget, truncation, head) + suffix for e in encodings]

    def encode_batch_with_offsets(
        self,
        texts: Sequence[str],
        *,
        max_length: int | None,
        truncation: Truncation = "head",
        head_tokens: int | None = None,
        add_special_tokens: bool = True,
    ) -> list[EncodedText]:
        """Like ``encode_batch``, also returning token strings and character offsets."""
        texts = _check_texts(texts)
        budget = self._content_budget(max_length, add_special_tokens)
        head = self._head_size(truncation, budget, head_tokens)
        prefix, suffix = (self._prefix, self._suffix) if add_special_tokens else ([], [])
        prefix_tokens, suffix_tokens = self.tokens(prefix), self.tokens(suffix)
        results = []
        for encoding in _encode_checked(self.backend.encode_batch, texts):
            ids = _truncate(encoding.ids, budget, truncation, head)
            tokens = _truncate(encoding.tokens, budget, truncation, head)
            offsets = _truncate(encoding.offsets, budget, truncation, head)
            results.append(
                EncodedText(
                    ids=prefix + ids + suffix,
                    tokens=prefix_tokens + tokens + suffix_tokens,
                    offsets=[(0, 0)] * len(prefix) + list(offsets) + [(0, 0)] * len(suffix),
                    special_tokens_mask=[1] * len(prefix) + [0] * len(ids) + [1] * len(suffix),
                )
            )
        return results

    def encode(
        self,
        text: str,
        *,
        max_length: int | None = None,
        truncation: Truncation = "head",
        head_tokens: int | None = None,
        add_special_tokens: bool = True,
    ) -> list[int]:
        """Encode one text (see ``encode_batch``)."""
        return self.encode_batch(
            [text],
            max_length=max_length,
            truncation=truncation,
            head_tokens=head_tokens,
            add_special_tokens=add_special_tokens,
        )[0]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Decode ids to text (detokenized by the tokenizer's decoder)."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(
        self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = True
    ) -> list[str]:
        """Decode a batch of id sequences."""
        return self.backend.decode_batch(
            [list(ids) for ids in batch], skip_special_tokens=skip_special_tokens
        )

    def __repr__(self) -> str:
        model = type(self.backend.model).__name__
        return f"Tokenizer({model}, vocab_size={self.vocab_size}, lowercases={self.lowercases})"
