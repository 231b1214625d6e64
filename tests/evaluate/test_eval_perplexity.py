"""StreamingPerplexity: token-weighted NLL independent of batching."""

import math

import pytest
import torch
import torch.nn.functional as F

from torchformer.evaluate.perplexity import StreamingPerplexity


def test_matches_full_cross_entropy_and_ignores_padding():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, 11, generator=gen)
    targets = torch.randint(0, 11, (4, 7), generator=gen)
    targets[0, 5:] = -100
    targets[3, 2:] = -100
    meter = StreamingPerplexity()
    for b in range(4):  # batches of one sequence, of different lengths
        meter.update_from_logits(logits[b : b + 1], targets[b : b + 1])
    expected = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), ignore_index=-100)
    result = meter.compute()
    assert result["num_tokens"] == 28 - 2 - 5
    assert result["nll"] == pytest.approx(expected.item(), rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(expected.item()), rel=1e-6)
    assert result["bits_per_token"] == pytest.approx(expected.item() / math.log(2), rel=1e-6)


def test_uniform_model_has_vocab_size_perplexity_and_state_round_trips():
    meter = StreamingPerplexity()
    meter.update_from_logits(torch.zeros(2, 3, 50), torch.zeros(2, 3, dtype=torch.long))
    assert meter.compute()["perplexity"] == pytest.approx(50.0)
    other = StreamingPerplexity()
    other.load_state_dict(meter.state_dict())
    assert other.compute() == meter.compute()


def test_empty_and_overflow():
    assert math.isnan(StreamingPerplexity().compute()["perplexity"])
    meter = StreamingPerplexity()
    meter.update(1e6, 1)
    assert meter.compute()["perplexity"] == math.inf
