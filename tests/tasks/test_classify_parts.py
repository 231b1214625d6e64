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
