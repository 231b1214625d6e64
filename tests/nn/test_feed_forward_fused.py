"""The oneDNN linear+activation path of FeedForward at inference equals the plain path."""

from __future__ import annotations

import pytest
import torch

from torchformer.nn import linear as linear_module
from torchformer.nn.feed_forward import FeedForward

pytestmark = pytest.mark.skipif(
    not linear_module.ONEDNN_AVAILABLE, reason="no oneDNN linear_pointwise op"
)


@pytest.fixture(autouse=True)
def onednn_chosen(monkeypatch):
    """The oneDNN path on even when the tests run with TORCHFORMER_ONEDNN_LINEAR=0."""
    monkeypatch.setattr(linear_module, "_ONEDNN", True)


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_new"])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_up_projection_equals_separate_ops(activation, bias):
    torch.manual_seed(0)
    ff = FeedForward(32, 64, activation=activation, bias=bias).eval()
    x = torch.randn(3, 7, 32)
    with torch.enable_grad():
        assert not ff._fused_up(x)
        reference = ff(x).detach()
    with torch.inference_mode():
        assert ff._fused_up(x)  # the fused kernel is the one that runs here
        fused = ff(x)
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-5)


def test_training_mode_keeps_dropout_even_without_grad():
    ff = FeedForward(32, 64, activation="gelu", dropout=0.5).train()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        assert not ff._fused_up(x)
        torch.manual_seed(1)
        a = ff(x)
        torch.manual_seed(2)
        b = ff(x)
    assert not torch.equal(a, b)  # dropout masks differ: the plain path ran
