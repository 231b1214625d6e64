"""How the ``tokenizers`` backends behind ``text.tokenizer.Tokenizer`` are built: a BERT
WordPiece or a BPE (SentencePiece-style or GPT-2 byte-level) trained on texts, and a BERT
WordPiece rebuilt from a ``vocab.txt`` as ``BertTokenizerFast`` does.

Each function returns a bare ``tokenizers.Tokenizer`` (normalizer, pre-tokenizer, model,
decoder and template); ``Tokenizer`` wraps it with truncation, roles and checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

# Special-token roles and the token strings that play them in common vocabularies.
ROLE_CANDIDATES: dict[str, tuple[str, ...]] = {
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "cls": ("[CLS]",),
    "sep": ("[SEP]",),
    "mask": ("[MASK]", "<mask>"),
    "bos": ("<s>", "<bos>", "[BOS]"),
    "eos": ("</s>", "<eos>", "[EOS]", "<|endoftext|>"),
}


def wordpiece_trained(
    texts: Iterable[str],
    *,
    vocab_size: int,
    min_frequency: int,
    special_tokens: Sequence[str],
    lowercase: bool,
) -> tokenizers.Tokenizer:
    """A BERT WordPiece trained on ``texts`` (see ``Tokenizer.train_wordpiece``)."""
    special_tokens = list(special_tokens)
    unk = find_role_token("unk", special_tokens)
    cls_token = find_role_token("cls", special_tokens)
    sep_token = find_role_token("sep", special_tokens)
    backend = tokenizers.Tokenizer(models.WordPiece(unk_token=unk, continuing_subword_prefix="##"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = backend.token_to_id(cls_token), backend.token_to_id(sep_token)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls_token} $A {sep_token}",
        pair=f"{cls_token} $A {sep_token} $B:1 {sep_token}:1",
        special_tokens=[(cls_token, cls_id), (sep_token, sep_id)],
    )
    return backend


def bpe_trained(
    texts: Iterable[str],
    *,
    vocab_size: int,
    min_frequency: int,
    special_tokens: Sequence[str],
    byte_level: bool,
    lowercase: bool,
) -> tokenizers.Tokenizer:
    """A BPE trained on ``texts`` (see ``Tokenizer.train_bpe``)."""
    special_tokens = list(special_tokens)
    if byte_level:
        backend = tokenizers.Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        unk = find_role_token("unk", special_tokens)
        backend = tokenizers.Tokenizer(models.BPE(unk_token=unk))
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        alphabet = []
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    backend.normalizer = normalizers.Sequence(steps)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    bos = next((t for t in ROLE_CANDIDATES["bos"] if t in special_tokens), None)
    eos = next((t for t in ROLE_CANDIDATES["eos"] if t in special_tokens), None)
    if bos is not None and eos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}",
            pair=f"{bos} $A {eos} $B:1 {eos}:1",
            special_tokens=[(bos, backend.token_to_id(bos)), (eos, backend.token_to_id(eos))],
        )
    return backend


def find_role_token(role: str, special_tokens: Sequence[str]) -> str:
    for token in ROLE_CANDIDATES[role]:
        if token in special_tokens:
            return token
    raise ValueError(
        f"special_tokens {list(special_tokens)} has no {role} token; expected one of "
        f"{list(ROLE_CANDIDATES[role])}"
    )


def bert_wordpiece_from_vocab(
    vocab_path: Path, config: Mapping[str, Any], roles: Mapping[str, str]
) -> tokenizers.Tokenizer:
    """A BERT tokenizer (as ``BertTokenizerFast`` builds it) from a ``vocab.txt``."""
    unk = roles.get("unk", "[UNK]")
    cls_token, sep_token = roles.get("cls", "[CLS]"), roles.get("sep", "[SEP]")
    backend = tokenizers.Tokenizer(models.WordPiece.from_file(str(vocab_path), unk_token=unk))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"),
        lowercase=config.get("do_lower_case", True),
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    specials = [
        roles.get(role, default)
        for role, default in (
            ("pad", "[PAD]"),
            ("unk", unk),
            ("cls", cls_token),
            ("sep", sep_token),
            ("mask", "[MASK]"),
        )
    ]
    # Registered as added tokens so the normalizer never lowercases or splits them.
    backend.add_special_tokens([t for t in specials if backend.token_to_id(t) is not None])
    cls_id, sep_id = backend.token_to_id(cls_token), backend.token_to_id(sep_token)
    if cls_id is None or sep_id is None:
        raise ValueError(f"{vocab_path}: vocabulary lacks {cls_token!r} or {sep_token!r}")
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls_token} $A {sep_token}",
        pair=f"{cls_token} $A {sep_token} $B:1 {sep_token}:1",
        special_tokens=[(cls_token, cls_id), (sep_token, sep_id)],
    )
    return backend
