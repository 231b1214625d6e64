"""ONNX export of an ensemble: one graph when the members share a tokenizer and
preprocessing, checked over the parity grid and against the PyTorch ensemble; a clear
refusal otherwise."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from ensemble_fixtures import (
    TEXTS,
    member_on_own_tokenizer,
    member_on_tokenizer,
    save_run,
    shared_tokenizer,
)

import torchformer
from torchformer.api import EnsembleClassifier
from torchformer.cli import main
from torchformer.export.onnx import default_grid_lengths, export_classifier, read_metadata
from torchformer.export.runtime import OnnxClassifier
from torchformer.tasks.ensemble import write_ensemble


@pytest.fixture(scope="module")
def shared_ensemble_dir(tmp_path_factory):
    """Two members on one tokenizer (different seeds), weights 1:2; one member's head lists
    its labels as ("pos", "neg"), so the graph also reorders columns."""
    root = tmp_path_factory.mktemp("shared")
    tokenizer = shared_tokenizer()
    a = save_run(member_on_tokenizer(tokenizer, seed=0), root / "run-a")
    b = save_run(member_on_tokenizer(tokenizer, seed=5, labels=("pos", "neg")), root / "run-b")
    write_ensemble(root / "ensemble", [a, b], weights=[1, 2])
    return root / "ensemble"


def test_one_graph_matches_the_pytorch_ensemble(shared_ensemble_dir, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert main(["export", str(shared_ensemble_dir), "--out", str(out)]) == 0
    assert "passed" in capsys.readouterr().out
    meta = read_metadata(out)
    ens = torchformer.load(shared_ensemble_dir)
    assert meta["parity"]["passed"] and meta["ensemble"]["weights"] == pytest.approx([1 / 3, 2 / 3])
    # The same grid as a single model: batches 1, 3, 8 x lengths 1, 7, 64, max_length, max_len.
    single_grid = default_grid_lengths(ens.members[0])
    cells = {(c["batch"], c["length"]) for c in meta["parity"]["cells"]}
    assert cells == {(b, n) for b in (1, 3, 8) for n in single_grid}
    graph = onnx.load(out / "model.onnx").graph
    assert sum(node.op_type == "Attention" for node in graph.node) == 4  # 2 members x 2 layers
    assert json.loads((out / "labels.json").read_text()) == ens.labels == ["neg", "pos"]
    onnx_clf = OnnxClassifier.from_dir(out)
    expected = ens.predict_proba(TEXTS)
    torch.testing.assert_close(onnx_clf.predict_proba(TEXTS), expected, rtol=0, atol=1e-4)
    # Not a tautology: the weighted mean differs from each member and from the plain mean.
    members = [m.predict_proba(TEXTS)[:, order] for m, order in zip(ens.members, ens.orders)]
    assert (members[0] - members[1]).abs().max() > 1e-3
    assert (expected - (members[0] + members[1]) / 2).abs().max() > 1e-4


def test_members_with_different_tokenizers_are_refused(tmp_path):
    a = member_on_own_tokenizer(seed=0, steps=1)
    b = member_on_own_tokenizer(seed=1, steps=1)
    ens = EnsembleClassifier([a, b], names=["run-a", "run-b"])
    out = tmp_path / "onnx"
    with pytest.raises(ValueError, match="member run-b: its tokenizer differs from run-a's"):
        export_classifier(ens, out)
    assert not out.exists()  # refused before anything is written


def test_members_with_different_max_lengths_are_refused(tmp_path):
    tokenizer = shared_tokenizer()
    a = member_on_tokenizer(tokenizer, seed=0, steps=1, max_length=64)
    b = member_on_tokenizer(tokenizer, seed=1, steps=1, max_length=32)
    ens = EnsembleClassifier([a, b], names=["run-a", "run-b"])
    with pytest.raises(ValueError, match=r"member run-b: .*max_length: 64 vs 32"):
        export_classifier(ens, tmp_path / "onnx")
