"""ONNX export of an ensemble of text classifiers as one graph.

When the members share a tokenizer and preprocessing (max length, truncation,
cleaning), one set of ids feeds them all, so the ensemble is one graph: every member's
encoder and head on the same (input_ids, attention_mask), their softmax outputs
averaged with the ensemble's weights. The graph's output keeps the ``logits`` contract
of a single model's export: it is the log of the weighted mean probability, computed
stably as logsumexp_i(log_softmax(z_i) + log w_i), so that its softmax is exactly the
ensemble's probabilities and ``OnnxClassifier``, ``serve`` and ``quantize`` use it
unchanged. The export is checked over the same parity grid as a single model, against
the same members in PyTorch.

Shapes: B batch, T sequence length, C classes, M members.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from torchformer.api import EnsembleClassifier
from torchformer.export.onnx import (
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    GRID_BASE_LENGTHS,
    GRID_BATCHES,
    ONNX_NAME,
    ExportResult,
    check_parity,
    export_graph,
    export_metadata,
    finish_export,
    resolve_attn_impl,
    with_attention,
    write_preprocessing,
)
from torchformer.models.long_document import max_input_length

__all__ = ["EnsembleLogits", "export_ensemble", "shared_preprocessing"]


class EnsembleLogits(nn.Module):
    """(input_ids, attention_mask) (B, T) -> log of the weighted mean of the members'
    softmax (B, C), in the ensemble's label order.

    Args:
        models: the members' ``EncoderForSequenceClassification`` models.
        weights: one weight per member, summing to 1.
        orders: for each member, the member's column of each ensemble label.
    """

    def __init__(
        self, models: list[nn.Module], weights: list[float], orders: list[list[int]]
    ) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)
        self.register_buffer("log_weights", torch.tensor(weights, dtype=torch.float32).log())
        self.register_buffer("orders", torch.tensor(orders, dtype=torch.long))  # (M, C)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        parts = []
        for i, model in enumerate(self.models):
            logits = model(input_ids, attention_mask=attention_mask).logits.float()  # (B, C)
            log_probs = logits.log_softmax(-1).index_select(1, self.orders[i])  # (B, C)
            parts.append(log_probs + self.log_weights[i])
        return torch.logsumexp(torch.stack(parts), dim=0)  # (M, B, C) -> (B, C)


def shared_preprocessing(ensemble: EnsembleClassifier) -> None:
    """Check that one set of ids serves every member.

    Raises:
        ValueError: a member whose tokenizer or preprocessing settings differ from the
            first member's (naming the member and what differs): such an ensemble runs
            in PyTorch (each member tokenizes for itself) but is not one graph.
    """
    first, first_name = ensemble.members[0], ensemble.names[0]
    vocab, settings = first.tokenizer.backend.to_str(), asdict(first.settings)
    for name, member in zip(ensemble.names[1:], ensemble.members[1:]):
        if member.tokenizer.backend.to_str() != vocab:
            raise ValueError(
                f"ensemble member {name}: its tokenizer differs from {first_name}'s; one ONNX "
                "graph needs members that share a tokenizer (use the ensemble in PyTorch, "
                "or export the members one by one)"
            )
        theirs = asdict(member.settings)
        differ = {k: (settings[k], theirs[k]) for k in settings if settings[k] != theirs.get(k)}
        if differ:
            detail = "; ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in differ.items())
            raise ValueError(
                f"ensemble member {name}: its preprocessing differs from {first_name}'s "
                f"({detail}); one ONNX graph needs one tokenizer and max length"
            )


def export_ensemble(
    ensemble: EnsembleClassifier,
    out_dir: str | os.PathLike,
    *,
    attn_impl: str = "auto",
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    batches: tuple[int, ...] = GRID_BATCHES,
    lengths: tuple[int, ...] | None = None,
    source: str | None = None,
) -> ExportResult:
    """Export ``ensemble`` as one ONNX graph (see the module) and check it over the grid.

    Writes what ``export_classifier`` writes; ``export.json`` also names the members and
    their weights under ``"ensemble"``.

    Raises:
        ValueError: the members' tokenizers or preprocessing differ.
        ParityError: a grid cell exceeds ``tolerance`` (files kept, ``"passed": false``).
    """
    shared_preprocessing(ensemble)  # before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    attn_impl = resolve_attn_impl(attn_impl, opset)
    models = [m.model for m in ensemble.members]
    max_length = min(max_input_length(m.config) for m in models)
    graph = EnsembleLogits(
        [with_attention(m, attn_impl) for m in models], ensemble.weights, ensemble.orders
    )
    onnx_path = export_graph(
        graph, out / ONNX_NAME, attn_impl=attn_impl, opset=opset, max_length=max_length
    )
    first = ensemble.members[0]
    write_preprocessing(out, first)  # the ensemble's labels are the first member's, in order
    if lengths is None:
        wanted = {*GRID_BASE_LENGTHS, first.settings.max_length, max_length}
        lengths = tuple(sorted(n for n in wanted if 1 <= n <= max_length))
    reference = EnsembleLogits(models, ensemble.weights, ensemble.orders)
    report = check_parity(
        reference,
        onnx_path,
        batches=batches,
        lengths=lengths,
        tolerance=tolerance,
        vocab_size=min(m.config.vocab_size for m in models),
    )
    metadata = export_metadata(
        onnx_path,
        report,
        opset=opset,
        attn_impl=attn_impl,
        labels=ensemble.labels,
        max_sequence_length=max_length,
        source=source,
    )
    metadata["ensemble"] = {
        "members": ensemble.names,
        "weights": ensemble.weights,
        "output": "log of the weighted mean of the members' probabilities",
    }
    return finish_export(out, onnx_path, report, metadata)
