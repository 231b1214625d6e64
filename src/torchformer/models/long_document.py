"""Long documents through a short-context encoder: chunk-and-pool, and longer positions.

Chunk-and-pool (Pappagari et al. 2019, "Hierarchical Transformers for Long Document
Classification"; the "overlapping chunks" baseline of Park et al. 2022): a document of
N tokens is cut into overlapping windows of ``length − 2`` tokens every ``stride`` tokens,
each window becomes its own ``[CLS] window [SEP]`` sequence through the encoder, and the
chunk vectors are pooled into one document vector — by their mean, their maximum, or a
learned attention over chunks (a score per chunk, softmax over the document's chunks).

Everything happens inside the model, on the ids of the whole document as the text
preprocessor produced them (``[CLS] tokens [SEP]``, padded): training, ``predict()``,
``evaluate``, the ONNX graph and the server all feed the same (B, N) ids and get the same
logits, so the strategy cannot differ between them.

Longer positions (Beltagy et al. 2020, "Longformer", section 5): a model pre-trained with
512 learned positions is extended to more by copying the 512 vectors over and over; with
sliding-window attention the encoder then reads the whole document in one pass.

Shapes: B documents, N tokens per document (padded), C chunks per document, L chunk
length, D width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Tokens a chunk-and-pool classifier reads in one call: its chunks have max_len positions,
# the document any length; exporters need a bound, this one is far beyond any review.
MAX_CHUNKED_TOKENS = 65_536


def max_input_length(config) -> int:
    """The longest id sequence a classifier of this ``EncoderConfig`` takes."""
    if getattr(config, "long_document", "truncate") == "chunks":
        return MAX_CHUNKED_TOKENS
    return config.max_len - getattr(config, "position_offset", 0)


def split_into_chunks(
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    length: int,
    stride: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Overlapping ``[CLS] window [SEP]`` chunks of each document.

    Args:
        input_ids: (B, N) ``[CLS] tokens [SEP]`` then padding.
        attention_mask: (B, N) 1 for the document's ids, 0 for padding.
        length: L, chunk length with its two special tokens.
        stride: tokens between the starts of consecutive windows (< L − 2: overlap).

    Returns:
        chunk ids (B·C, L), chunk attention mask (B·C, L), and ``exists`` (B, C): whether
        a document has that chunk (a short document has fewer; its first always exists).
    """
    B = input_ids.size(0)
    width = length - 2
    content = input_ids[:, 1:]  # (B, N - 1): tokens, [SEP], padding
    count = attention_mask.long().sum(1) - 2  # (B,) tokens between [CLS] and [SEP]
    longest = input_ids.size(1) - 2  # tokens of a document that fills the row
    C = (max(longest - width, 0) + stride - 1) // stride + 1  # windows to cover it
    need = max((C - 1) * stride + width - content.size(1), 0)
    windows = F.pad(content, (0, need), value=pad_id).unfold(1, width, stride)[:, :C]  # (B, C, W)
    starts = torch.arange(C, device=input_ids.device) * stride  # (C,)
    position = starts[:, None] + torch.arange(width, device=input_ids.device)  # (C, W)
    real = position[None] < count[:, None, None]  # (B, C, W)
    # A window exists where the previous one stopped short of the end (the first always).
    exists = (starts[None] == 0) | (starts[None] - stride + width < count[:, None])  # (B, C)
    pieces = windows.masked_fill(~real, pad_id)
    kept = real.sum(-1, keepdim=True)  # (B, C, 1) tokens in each window
    chunks = torch.cat(
        [
            torch.full_like(pieces[..., :1], cls_id),
            pieces,
            torch.full_like(pieces[..., :1], pad_id),
        ],
        dim=-1,
    )  # (B, C, L)
    chunks = chunks.scatter(2, kept + 1, torch.full_like(kept, sep_id))  # [SEP] after the last
    slots = torch.arange(length, device=input_ids.device)
    mask = (slots[None, None] < kept + 2) & exists[..., None]  # (B, C, L)
    return chunks.reshape(B * C, length), mask.reshape(B * C, length).long(), exists


def chunks_of(config, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``split_into_chunks`` with a chunk-and-pool ``EncoderConfig``'s settings."""
    return split_into_chunks(
        input_ids,
        attention_mask,
        length=config.chunk_length,
        stride=config.chunk_stride,
        cls_id=config.cls_id,
        sep_id=config.sep_id,
        pad_id=config.pad_id,
    )


def pool_chunks(
    vectors: Tensor, exists: Tensor, how: str, scorer: nn.Module | None = None
) -> Tensor:
    """Document vectors (B, D) from chunk vectors (B, C, D) over the chunks that exist."""
    keep = exists[..., None]  # (B, C, 1)
    if how == "mean":
        weights = keep.to(vectors.dtype)
        return (vectors * weights).sum(1) / weights.sum(1).clamp(min=1)
    if how == "max":
        return vectors.masked_fill(~keep, torch.finfo(vectors.dtype).min).amax(1)
    if how == "attention":
        scores = scorer(vectors).masked_fill(~keep, torch.finfo(vectors.dtype).min)  # (B, C, 1)
        return (scores.softmax(dim=1) * vectors).sum(1)
    raise ValueError(f"chunk_pooling must be 'mean', 'max' or 'attention', got {how!r}")


def extend_position_embeddings(embedding: nn.Embedding, max_len: int) -> nn.Embedding:
    """A position table of ``max_len`` rows whose rows repeat the trained ones (Longformer's
    copy initialisation): position p starts as position p mod the old length."""
    old, width = embedding.weight.shape
    if max_len <= old:
        return embedding
    grown = nn.Embedding(max_len, width).to(embedding.weight.device, embedding.weight.dtype)
    with torch.no_grad():
        grown.weight.copy_(embedding.weight.repeat((max_len + old - 1) // old, 1)[:max_len])
    return grown
