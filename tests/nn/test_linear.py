"""nn.linear: oneDNN's kernel for fp32 CPU inference only, the standard op everywhere else."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchformer.nn import linear as linear_module
from torchformer.nn.linear import Linear, is_plain_linear, linear, onednn_applies

ONEDNN_IN_BUILD = linear_module.ONEDNN_AVAILABLE
needs_onednn = pytest.mark.skipif(
    not linear_module.ONEDNN_AVAILABLE, reason="PyTorch built without oneDNN"
)


@pytest.fixture(autouse=True)
def onednn_chosen(monkeypatch):
    """The oneDNN path on wherever PyTorch has the kernel, even when the tests run with
    TORCHFORMER_ONEDNN_LINEAR=0."""
    monkeypatch.setattr(linear_module, "_ONEDNN", linear_module.ONEDNN_AVAILABLE)


def _calls(fn) -> set[str]:
    """Names of the operators ``fn()`` dispatched (profiler events)."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return {event.key for event in prof.key_averages()}


@needs_onednn
def test_inference_uses_onednn_and_matches_f_linear():
    torch.manual_seed(0)
    layer = Linear(48, 80)
    for x in (
        torch.randn(3, 7, 48),
        torch.randn(5, 48),
        torch.randn(2, 6, 48)[:, -1:],
        torch.randn(48),
    ):
        with torch.inference_mode():
            assert onednn_applies(x, layer.weight)
            ours = layer(x)
            ops = _calls(lambda x=x: layer(x))
        assert "mkldnn::_linear_pointwise" in ops and "aten::addmm" not in ops
        reference = F.linear(x, layer.weight, layer.bias).detach()
        assert ours.shape == reference.shape
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # no_grad counts as inference too
        assert onednn_applies(torch.randn(2, 48), layer.weight)
    # Tied heads: no bias, the embedding matrix as the weight.
    table, hidden = torch.randn(100, 48), torch.randn(4, 48)
    with torch.inference_mode():
        tied = linear(hidden, table)
    torch.testing.assert_close(tied, hidden @ table.T, rtol=1e-5, atol=1e-5)


def test_training_autocast_and_other_dtypes_keep_the_standard_op():
    layer = Linear(16, 8)
    x = torch.randn(4, 16)
    assert not onednn_applies(x, layer.weight)  # autograd on: oneDNN's op has no backward
    out = layer(x)
    out.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert not onednn_applies(x.double(), layer.weight.double())
        assert not onednn_applies(x.bfloat16(), layer.weight.bfloat16())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not onednn_applies(x, layer.weight)
            assert layer(x).dtype == torch.bfloat16  # autocast still sees the linear


def test_graphs_hold_the_standard_linear():
    layer = Linear(16, 8).eval()
    x = torch.randn(2, 16)
    with torch.no_grad():
        traced = torch.jit.trace(layer, x)
    assert "aten::linear" in str(traced.graph) and "mkldnn" not in str(traced.graph)
    exported = torch.export.export(layer, (x,))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert any("linear" in t for t in targets) and not any("mkldnn" in t for t in targets)


def test_linear_is_nn_linear_for_state_dicts_and_checks():
    ours, theirs = Linear(6, 4), nn.Linear(6, 4)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 6)
    torch.testing.assert_close(ours(x), theirs(x))
    assert isinstance(ours, nn.Linear)
    assert is_plain_linear(ours) and is_plain_linear(theirs)

    class Wrapped(nn.Linear):
        pass

    assert not is_plain_linear(Wrapped(2, 2)) and not is_plain_linear(nn.Identity())


@needs_onednn
@pytest.mark.parametrize("shape", [(4, 6, 48), (9, 48), (48,)])
def test_training_runs_onednn_with_the_gradients_of_f_linear(shape):
    torch.manual_seed(1)
    weight = nn.Parameter(torch.randn(80, 48))
    bias = nn.Parameter(torch.randn(80))
    x = torch.randn(*shape, requires_grad=True)
    upstream = torch.randn(*shape[:-1], 80)

    def grads(fn):
        for t in (x, weight, bias):
            t.grad = None
        fn(x, weight, bias).backward(upstream)
        return [t.grad.clone() for t in (x, weight, bias)]

    ops = _calls(lambda: grads(linear))
    # forward and both backward products on oneDNN; no MKL product anywhere
    assert "mkldnn::_linear_pointwise" in ops and not {"aten::addmm", "aten::mm"} & ops
    for ours, reference in zip(grads(linear), grads(F.linear)):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-4)
    # A frozen weight (LoRA's base layer) gets no gradient and costs no product.
    weight.requires_grad_(False)
    x.grad = weight.grad = None
    linear(x, weight, bias).backward(upstream)
    assert weight.grad is None and x.grad is not None


@needs_onednn
def test_double_backward_works_as_with_f_linear():
    torch.manual_seed(2)
    weight = torch.randn(5, 7, requires_grad=True)
    x = torch.randn(3, 7, requires_grad=True)

    def penalty(fn):
        (gx,) = torch.autograd.grad(fn(x, weight).tanh().sum(), x, create_graph=True)
        (gw,) = torch.autograd.grad(gx.pow(2).sum(), weight)
        return gw

    torch.testing.assert_close(penalty(linear), penalty(F.linear), rtol=1e-5, atol=1e-5)


def test_tensor_subclasses_keep_f_linear():
    class Tagged(torch.Tensor):
        pass

    weight = nn.Parameter(torch.randn(4, 3))
    x = torch.randn(2, 3).as_subclass(Tagged)
    ops = _calls(lambda: linear(x, weight).sum().backward())
    assert "mkldnn::_linear_pointwise" not in ops
    assert weight.grad is not None
    # at inference too (a quantized weight is such a subclass: F.linear dispatches to it)
    with torch.inference_mode():
        ops = _calls(lambda: linear(torch.randn(2, 3), weight.detach().as_subclass(Tagged)))
    assert "mkldnn::_linear_pointwise" not in ops


@pytest.mark.parametrize(
    ("setting", "wanted"),
    [(None, True), ("", True), ("1", True), (" TRUE ", True), ("on", True), ("0", False),
     ("false", False), ("off", False)],
)  # fmt: skip
def test_onednn_is_the_default_unless_turned_off(setting, wanted):
    assert linear_module.onednn_linear_wanted(setting) is wanted


def test_a_bad_onednn_setting_names_the_variable():
    with pytest.raises(ValueError, match=r"TORCHFORMER_ONEDNN_LINEAR='fast': expected 0 or 1"):
        linear_module.onednn_linear_wanted("fast")


@pytest.mark.parametrize(("setting", "chosen"), [("0", False), ("1", True), ("yes please", True)])
def test_the_environment_variable_decides_at_import(setting, chosen):
    """In a fresh interpreter: the variable reaches ``_ONEDNN``; a bad value warns and
    keeps the default instead of breaking every command at import."""
    import os
    import subprocess
    import sys

    code = (
        "import warnings; warnings.simplefilter('always')\n"
        "from torchformer.nn import linear as m\n"
        "print(m._ONEDNN)"
    )
    env = {**os.environ, "TORCHFORMER_ONEDNN_LINEAR": setting}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(chosen and ONEDNN_IN_BUILD)
    if setting == "yes please":
        assert "TORCHFORMER_ONEDNN_LINEAR='yes please': expected 0 or 1" in done.stderr


def test_without_onednn_inference_runs_f_linear(monkeypatch):
    monkeypatch.setattr(linear_module, "_ONEDNN", False)  # TORCHFORMER_ONEDNN_LINEAR=0
    layer = Linear(16, 8)
    x = torch.randn(3, 16)
    with torch.inference_mode():
        assert not onednn_applies(x, layer.weight)
        ops = _calls(lambda: layer(x))
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    assert "mkldnn::_linear_pointwise" not in ops and "aten::linear" in ops
