"""Attention weights for one input, through the public API, ready to draw.

Weights come from the models' reference attention path: the model is called
with ``return_attentions=True`` and returns them in its ``ModelOutput``;
nothing is hooked or stored on a module. Everything after that works on plain
tensors and token lists (in the spirit of bertviz), so the same views serve an
encoder's self-attention and a seq2seq model's cross-attention.

Shape legend: L layers, H heads, T query length, S key length.

The *payload* functions turn the tensors into the JSON that an HTML page
embeds (values rounded to 4 decimals). Long inputs are windowed: the
interactive matrix is stored as diagonal blocks of at most ``window`` tokens
(pages), never as a full T×T matrix per head, and a value budget drops whole
layers (earliest first) when even that is too much.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from torchformer.models.long_document import chunks_of

__all__ = [
    "TextAttention",
    "TranslationAttention",
    "as_layer_stack",
    "attention_for_text",
    "attention_for_translation",
    "attention_rollout",
    "cls_attention",
    "cross_attention_payload",
    "round_values",
    "self_attention_payload",
]

DECIMALS = 4
Reduce = int | Literal["mean"]


@dataclass
class TextAttention:
    """The attention of a classifier on one text.

    Attributes:
        text: the input text as given.
        tokens: the token strings the model saw (special tokens included).
        special: per token, True for special tokens ([CLS], [SEP], ...).
        attentions: (L, H, T, T) float32 self-attention probabilities.
        prediction: ``{"label", "confidence", "probabilities"}`` as ``predict()`` gives.
    """

    text: str
    tokens: list[str]
    special: list[bool]
    attentions: Tensor
    prediction: dict[str, Any]


@dataclass
class TranslationAttention:
    """The cross-attention of a translation model on one source text and its output.

    Attributes:
        source: the input text; translation: the decoded output.
        source_tokens: the S source tokens (special tokens included).
        target_tokens: the T predicted tokens (the output, then the end-of-sequence token).
        cross_attentions: (L, H, T, S): row t is the attention of the decoder query that
            predicted ``target_tokens[t]``.
    """

    source: str
    translation: str
    source_tokens: list[str]
    target_tokens: list[str]
    cross_attentions: Tensor


def as_layer_stack(attentions: Sequence[Tensor] | Tensor, *, index: int = 0) -> Tensor:
    """Normalise attention weights to one (L, H, T, S) float32 CPU tensor.

    Accepts what models return, a tuple of L tensors (B, H, T, S) (row ``index``
    of the batch is taken), or an already stacked (L, H, T, S) or single-layer
    (H, T, S) tensor.

    Raises:
        ValueError: the shapes are not one of those.
    """
    if isinstance(attentions, Tensor):
        if attentions.dim() == 3:
            attentions = attentions.unsqueeze(0)  # (1, H, T, S)
        if attentions.dim() != 4:
            raise ValueError(
                f"expected (L, H, T, S) or (H, T, S) attention, got {tuple(attentions.shape)}"
            )
        return attentions.detach().float().cpu()
    layers = list(attentions)
    if not layers or any(a is None for a in layers):
        raise ValueError("no attention weights: call the model with return_attentions=True")
    if any(a.dim() != 4 for a in layers):
        raise ValueError(
            f"expected per-layer (B, H, T, S) tensors, got {[tuple(a.shape) for a in layers]}"
        )
    return torch.stack([a[index] for a in layers]).detach().float().cpu()  # (L, H, T, S)


@torch.inference_mode()
def attention_for_text(classifier: Any, text: str) -> TextAttention:
    """Run a ``TextClassifier`` on one text and return its self-attention.

    Uses only the public inference API: ``classifier.encode`` (the run's cleaning
    and truncation), ``classifier.model(..., return_attentions=True)`` and the
    tokenizer's token strings. A chunk-and-pool classifier reads the text as chunks:
    the attention shown is its first chunk's.
    """
    model, tokenizer = classifier.model, classifier.tokenizer
    input_ids, attention_mask = classifier.encode([text])  # (1, T) each; one text, no padding
    device = next(model.parameters()).device
    out = model(
        input_ids.to(device), attention_mask=attention_mask.to(device), return_attentions=True
    )
    ids = input_ids[0].tolist()
    attentions = as_layer_stack(out.attentions)  # (L, H, T, T)
    config = getattr(model, "config", None)
    if getattr(config, "long_document", "truncate") == "chunks":
        # Chunk-and-pool reads the text as chunks, each its own sequence: show the first.
        chunk_ids, chunk_mask, _ = chunks_of(config, input_ids, attention_mask)
        ids = chunk_ids[0][chunk_mask[0].bool()].tolist()
        attentions = attentions[..., : len(ids), : len(ids)]  # the first chunk's real tokens
    special_ids = {
        i
        for i in (
            tokenizer.cls_id,
            tokenizer.sep_id,
            tokenizer.pad_id,
            tokenizer.bos_id,
            tokenizer.eos_id,
        )
        if i is not None
    }
    probs = out.logits[0].float().softmax(-1).cpu().tolist()  # (C,)
    best = max(range(len(probs)), key=probs.__getitem__)
    prediction = {
        "label": classifier.labels[best],
        "confidence": probs[best],
        "probabilities": dict(zip(classifier.labels, probs)),
    }
    return TextAttention(
        text=text,
        tokens=tokenizer.tokens(ids),
        special=[i in special_ids for i in ids],
        attentions=attentions,  # (L, H, T, T)
        prediction=prediction,
    )


@torch.inference_mode()
def attention_for_translation(
    translator: Any, text: str, *, beam_size: int | None = None
) -> TranslationAttention:
    """Translate one text with a ``Translator`` and return the decoder's cross-attention.

    The output is decoded as ``translate()`` does (beam search by default); then one
    teacher-forced pass of the model's ``decode(..., return_attentions=True)`` over
    ``[start] + output`` gives the attention behind each predicted token.
    """
    from torchformer.api import generate_ids

    model = translator.model
    cfg = model.config
    device = next(model.parameters()).device
    source = translator.src_tokenizer.encode_batch([text], max_length=cfg.max_len)[0]
    beam = beam_size or translator.settings.beam_size
    output = generate_ids(
        model,
        [source],
        beam_size=beam,
        max_new_tokens=translator.max_new_tokens([source], None),
        length_penalty=translator.settings.length_penalty,
    )[0][: cfg.max_len - 1]
    src = torch.tensor([source], device=device)  # (1, S)
    tgt_in = torch.tensor([[cfg.decoder_start_id, *output]], device=device)  # (1, T)
    out = model.decode(tgt_in, model.encode(src), return_attentions=True)
    return TranslationAttention(
        source=text,
        translation=translator.tgt_tokenizer.decode(output),
        source_tokens=translator.src_tokenizer.tokens(source),
        target_tokens=translator.tgt_tokenizer.tokens([*output, cfg.eos_id]),
        cross_attentions=as_layer_stack(out.cross_attentions),  # (L, H, T, S)
    )


def attention_rollout(
    attentions: list[Tensor] | tuple[Tensor, ...], *, residual: float = 0.5
) -> Tensor:
    """Rollout of per-layer attention (each (B, H, T, T)) -> (B, T, T).

    ``residual``: the identity's share in each layer (½ in the paper).
    """
    rollout = None
    for probs in attentions:
        a = probs.float().mean(dim=1)  # (B, T, T) mean over heads
        eye = torch.eye(a.size(-1), device=a.device).expand_as(a)
        a = residual * eye + (1.0 - residual) * a
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout  # later layers on the left
    if rollout is None:
        raise ValueError("attention_rollout needs the attention of at least one layer")
    return rollout


def _reduce(x: Tensor, dim: int, which: Reduce) -> Tensor:
    return x.mean(dim) if which == "mean" else x.select(dim, which)


def cls_attention(
    attentions: Tensor, *, layer: Reduce = -1, head: Reduce = "mean", query: int = 0
) -> Tensor:
    """Attention each token receives from the ``query`` position ([CLS] by default).

    Args:
        attentions: (L, H, T, S).
        layer: a layer index (default the last) or ``"mean"`` over layers.
        head: a head index or ``"mean"`` over heads (default).

    Returns:
        (S,) weights; they sum to 1 for a single layer and head.
    """
    rows = attentions[:, :, query, :]  # (L, H, S)
    return _reduce(_reduce(rows, 1, head), 0, layer)  # (S,)


def round_values(x: Tensor, decimals: int = DECIMALS) -> list:
    """Nested lists of ``x`` rounded to ``decimals`` (float64 first, so 0.1234 stays 0.1234)."""
    scale = 10.0**decimals
    return (x.double() * scale).round().div(scale).tolist()


def _pages(length: int, window: int) -> list[tuple[int, int]]:
    return [(start, min(start + window, length)) for start in range(0, length, window)]


def self_attention_payload(
    tokens: Sequence[str],
    attentions: Tensor,
    *,
    special: Sequence[bool] | None = None,
    window: int = 64,
    max_values: int = 2_000_000,
) -> dict[str, Any]:
    """The JSON an attention view embeds for (L, H, T, T) self-attention.

    Keys: ``tokens``, ``special``, ``n_layers``, ``n_heads``; ``cls`` (L, H, T):
    the attention each token receives from position 0, every layer and head;
    ``pages``: diagonal blocks ``{"start", "end", "attn": [layer][head][q][k]}``
    of at most ``window`` tokens, for the layers listed in ``layers``; ``note``
    says what the budget ``max_values`` (numbers stored for the pages) left out.
    """
    L, H, T, S = attentions.shape
    if T != S or len(tokens) != T:
        raise ValueError(
            f"self-attention (L, H, T, T) with {len(tokens)} tokens, got {tuple(attentions.shape)}"
        )
    pages = _pages(T, window)
    per_layer = H * sum((end - start) ** 2 for start, end in pages)
    n_keep = max(1, min(L, max_values // max(per_layer, 1)))
    layers = list(range(L - n_keep, L))
    note = ""
    if n_keep < L:
        omitted = "layer 0" if L - n_keep == 1 else f"layers 0–{L - n_keep - 1}"
        note = f"{omitted} omitted from the matrix view to keep the page small"
    if per_layer > max_values:  # even one layer is too much: keep the first pages that fit
        kept, used = [], 0
        for start, end in pages:
            used += H * (end - start) ** 2
            if kept and used > max_values:
                break
            kept.append((start, end))
        note = f"matrix view limited to tokens 0–{kept[-1][1] - 1} of {T} and the last layer"
        pages = kept
    stack = attentions[layers]  # (L', H, T, T)
    return {
        "kind": "self",
        "tokens": list(tokens),
        "special": [bool(s) for s in (special if special is not None else [False] * T)],
        "n_layers": L,
        "n_heads": H,
        "cls": round_values(attentions[:, :, 0, :]),  # (L, H, T)
        "window": window,
        "layers": layers,
        "pages": [
            {"start": start, "end": end, "attn": round_values(stack[:, :, start:end, start:end])}
            for start, end in pages
        ],
        "note": note,
    }


def cross_attention_payload(
    cross_attentions: Sequence[Tensor] | Tensor,
    source_tokens: Sequence[str],
    target_tokens: Sequence[str],
    *,
    window: int = 64,
) -> dict[str, Any]:
    """The JSON an alignment view embeds for encoder–decoder cross-attention.

    Args:
        cross_attentions: per-layer (B, H, T, S) tensors as ``decode(...,
            return_attentions=True)`` returns them (batch row 0), or (L, H, T, S).
        source_tokens: the S source tokens (keys).
        target_tokens: the T output tokens (queries).
        window: target rows per page.

    Keys: ``source_tokens``, ``target_tokens``, ``n_layers``, ``n_heads``,
    ``pages``: ``{"start", "end", "attn": [layer][head][t][s]}`` for target rows
    ``start:end`` and every source token.
    """
    stack = as_layer_stack(cross_attentions)  # (L, H, T, S)
    L, H, T, S = stack.shape
    if len(source_tokens) != S or len(target_tokens) != T:
        raise ValueError(
            f"cross-attention {tuple(stack.shape)} needs {T} target and {S} source tokens, "
            f"got {len(target_tokens)} and {len(source_tokens)}"
        )
    return {
        "kind": "cross",
        "source_tokens": list(source_tokens),
        "target_tokens": list(target_tokens),
        "n_layers": L,
        "n_heads": H,
        "window": window,
        "layers": list(range(L)),
        "pages": [
            {"start": start, "end": end, "attn": round_values(stack[:, :, start:end, :])}
            for start, end in _pages(T, window)
        ],
        "note": "",
    }
