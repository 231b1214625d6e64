"""Parts of the classification task below a training run."""

from __future__ import annotations

from test_classify import tiny_config  # tests/tasks is on sys.path

from torchformer.tasks.classify import scratch_tokenizer

TEXTS = [f"word{i} other{i * 7} thing{i * 13}" for i in range(300)]


def test_a_scratch_tokenizer_keeps_to_the_configured_vocabulary_size(tmp_path):
    small = scratch_tokenizer(
        tiny_config(tmp_path, **{"tokenizer.vocab_size": 120}), TEXTS, resume=False
    )
    large = scratch_tokenizer(
        tiny_config(tmp_path, **{"tokenizer.vocab_size": 400}), TEXTS, resume=False
    )
    assert small.vocab_size <= 120 < large.vocab_size <= 400


def test_an_ensemble_members_score_over_a_single_example():
    import math

    import torch

    from torchformer.tasks.classifier import _MemberScore

    score = _MemberScore(num_classes=2)
    score.update(torch.tensor([[0.25, 0.75]]), torch.tensor([1]))
    got = score.compute()
    assert got["accuracy"] == 1.0
    assert math.isclose(got["loss"], -math.log(0.75), rel_tol=1e-6)  # the mean over one
    empty = _MemberScore(num_classes=2).compute()
    assert empty["loss"] == 0.0 and empty["accuracy"] == 0.0  # nothing seen: no division by 0
