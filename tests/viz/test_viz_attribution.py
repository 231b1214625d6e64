"""Token attributions (integrated gradients, rollout, attention) and deletion curves."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("captum")

from torchformer.viz.attention import attention_rollout
from torchformer.viz.attribution import (
    FRACTIONS,
    deletion_auc,
    deletion_curves,
    faithfulness,
    integrated_gradients,
    rollout_scores,
    token_attributions,
)

TEXT = "a really moving film and the actors were great"


def log_odds(clf, ids: torch.Tensor, target: int, embeddings: torch.Tensor | None = None):
    """log p/(1 − p) of target for one (T,) text, optionally with the embedding block's
    output replaced."""
    layer = clf.model.encoder.embeddings
    handle = None
    if embeddings is not None:
        handle = layer.register_forward_hook(lambda m, i, o: embeddings)
    try:
        logits = clf.model(ids[None], attention_mask=torch.ones_like(ids)[None]).logits
    finally:
        if handle is not None:
            handle.remove()
    p = logits.float().softmax(-1)[:, target]
    return (p / (1 - p)).log()


def test_integrated_gradients_is_complete_and_equals_the_path_integral(tiny_classifier):
    """Σ attributions = log-odds(text) − log-odds(baseline) (completeness), and each token's
    score equals the integral written out (a 400-point midpoint rule on the embedding
    block's output, e): ∫ ∂f/∂e(base + α(x − base)) · (x − base) dα."""
    clf, _ = tiny_classifier
    # 512 steps: the tiny model differs from process to process (the WordPiece trainer breaks
    # ties in its own order), and with 128 steps the quadrature error of some of them
    # (0.01-0.08 seen in 1 of 4 processes) passed the completeness bound; with 512, < 5e-5.
    att = token_attributions(clf, TEXT, methods=["integrated_gradients"], steps=512)
    scores = torch.tensor(att.scores["integrated_gradients"])
    ids, special, target = att.input_ids, att.special, att.target
    pad = torch.full_like(ids, clf.tokenizer.pad_id)
    baseline_ids = torch.where(torch.tensor(special), ids, pad)
    with torch.no_grad():
        gap = log_odds(clf, ids, target) - log_odds(clf, baseline_ids, target)
    assert att.ig_delta is not None and att.ig_delta < 0.01
    assert abs(scores.sum().item() - gap.item()) < 0.01
    layer = clf.model.encoder.embeddings
    with torch.no_grad():
        x, base = layer(ids[None])[0], layer(baseline_ids[None])[0]  # (T, D)
    total = torch.zeros_like(x)
    n = 400
    for k in range(n):
        point = (base + (k + 0.5) / n * (x - base)).requires_grad_(True)
        (grad,) = torch.autograd.grad(log_odds(clf, ids, target, point[None]).sum(), point)
        total += grad / n
    want = ((x - base) * total).sum(-1)
    torch.testing.assert_close(scores, want, atol=0.02, rtol=0)
    assert scores[torch.tensor(special)].abs().max() < 1e-6  # unchanged in the baseline


def test_rollout_scores_are_rollouts_cls_row_or_mean_row(tiny_classifier):
    clf, _ = tiny_classifier
    torch.manual_seed(0)
    attentions = torch.rand(2, 4, 6, 6).softmax(-1)
    full = attention_rollout([a[None] for a in attentions])[0]
    torch.testing.assert_close(rollout_scores(attentions), full[0])
    torch.testing.assert_close(rollout_scores(attentions, pooling="mean"), full.mean(0))
    att = token_attributions(clf, TEXT, methods=["rollout", "attention"])
    assert abs(sum(att.scores["rollout"]) - 1) < 1e-5
    assert abs(sum(att.scores["attention"]) - 1) < 1e-5


def test_deletion_curves_remove_the_top_tokens_first(tiny_classifier):
    """Point k of a method's curve is the predicted class's probability on the text with
    its round(k/10 · n) top-scored non-special tokens removed (the special tokens stay):
    from the text's probability down to the empty text's."""
    clf, _ = tiny_classifier
    att = token_attributions(clf, TEXT, methods=["attention"])
    ids, target, special = att.input_ids.tolist(), att.target, att.special
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(len(ids), generator=g).tolist()
    att.scores = {"made_up": scores}
    curves = deletion_curves(clf, att, random_orders=2)
    assert set(curves) == {"made_up", "random"}
    ranked = sorted((i for i in range(len(ids)) if not special[i]), key=lambda i: -scores[i])
    for k, f in enumerate(FRACTIONS):
        gone = set(ranked[: round(f * len(ranked))])
        rest = torch.tensor([t for i, t in enumerate(ids) if i not in gone])[None]
        with torch.no_grad():
            p = clf.model(rest, attention_mask=torch.ones_like(rest)).logits.softmax(-1)
        assert abs(curves["made_up"][k] - p[0, target].item()) < 1e-5
    assert abs(curves["made_up"][0] - clf.predict_proba([TEXT])[0, target].item()) < 1e-5
    assert abs(curves["random"][-1] - curves["made_up"][-1]) < 1e-6  # all removed: same text
    assert curves["random"] != curves["made_up"]


def test_deletion_auc_is_the_mean_height_of_the_curve():
    assert deletion_auc([0.8] * 11) == pytest.approx(0.8)
    assert deletion_auc([1 - f for f in FRACTIONS]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="3 points for 11 fractions"):
        deletion_auc([1, 0.5, 0])


def test_faithfulness_summarises_the_texts(tiny_classifier):
    clf, _ = tiny_classifier
    texts = [TEXT, "a dull and boring plot the actors were awful", "the movie was superb"]
    report = faithfulness(clf, texts, steps=16, random_orders=2)
    assert report["texts"] == 3
    assert set(report["auc"]) == {"attention", "rollout", "integrated_gradients", "random"}
    assert sum(report["wins"].values()) == pytest.approx(1.0)
    assert all(len(c) == len(FRACTIONS) for c in report["curve"].values())
    aucs = [deletion_auc(report["curve"][m]) for m in report["auc"]]  # (mean curve's area)
    assert aucs == pytest.approx(list(report["auc"].values()), abs=1e-9)


def test_integrated_gradients_refuses_a_chunk_and_pool_classifier(tiny_classifier):
    clf, _ = tiny_classifier
    from dataclasses import replace

    chunked = type(clf).__new__(type(clf))
    chunked.__dict__.update(clf.__dict__)
    config = replace(
        clf.model.config,
        long_document="chunks",
        cls_id=2,
        sep_id=3,
        chunk_length=16,
        chunk_stride=8,
    )
    chunked.model = type(clf.model)(config)
    with pytest.raises(ValueError, match="chunk-and-pool"):
        integrated_gradients(chunked, torch.tensor([2, 5, 3]), [True, False, True], 0)


def test_bench_faithfulness_writes_its_table(tiny_run, tmp_path):
    from torchformer.cli import main

    texts = tmp_path / "texts.csv"
    texts.write_text("text\n" + "\n".join([TEXT, "a dull and boring plot"]) + "\n")
    out = tmp_path / "bench"
    code = main(
        ["bench", "faithfulness", str(tiny_run), "--texts-file", str(texts), "--texts", "2",
         "--steps", "8", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "faithfulness.json").read_text())
    assert report["texts"] == 2 and "integrated_gradients" in report["auc"]
    assert "| integrated gradients |" in (out / "faithfulness.md").read_text()
