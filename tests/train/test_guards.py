"""check_finite and optimizer_step."""

import math

import pytest
import torch
from torch import nn

from torchformer.train.accumulation import is_accumulation_boundary, optimizer_step
from torchformer.train.guards import NonFiniteLossError, check_finite
from torchformer.train.schedules import build_scheduler


@pytest.mark.parametrize("bad", [math.nan, math.inf, torch.tensor(float("nan"))])
def test_check_finite_raises_with_step(bad):
    with pytest.raises(NonFiniteLossError, match="at step 42") as err:
        check_finite(bad, 42)
    assert err.value.step == 42


def test_check_finite_accepts_finite_values():
    check_finite(torch.tensor(1.5), 1)
    check_finite(0.0, 2)


def test_optimizer_step_clips_steps_schedules_and_zeroes():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = build_scheduler(optimizer, "linear", total_steps=4)
    model.weight.grad = torch.tensor([[3.0, 4.0]])  # norm 5
    norm = optimizer_step(model, optimizer, scheduler, max_grad_norm=1.0)
    assert norm.item() == pytest.approx(5.0)  # reported before clipping
    assert model.weight.detach()[0].tolist() == pytest.approx([-0.6, -0.8])  # clipped to norm 1
    assert model.weight.grad is None
    assert scheduler.last_step == 1 and scheduler.lr == pytest.approx(0.75)


def test_optimizer_step_without_clipping_measures_only():
    model = nn.Linear(2, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    model.weight.grad = torch.tensor([[3.0, 4.0]])
    assert optimizer_step(model, optimizer, None).item() == pytest.approx(5.0)


def test_optimizer_step_refuses_a_non_finite_gradient_before_the_update():
    model = nn.Linear(2, 1, bias=False)
    before = model.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = build_scheduler(optimizer, "linear", total_steps=4)
    model.weight.grad = torch.tensor([[float("inf"), 1.0]])
    with pytest.raises(NonFiniteLossError, match=r"grad_norm .* at step 7") as err:
        optimizer_step(model, optimizer, scheduler, max_grad_norm=1.0, check_step=7)
    assert err.value.quantity == "grad_norm"
    assert torch.equal(model.weight.detach(), before) and scheduler.last_step == 0


def test_accumulation_boundaries():
    assert [is_accumulation_boundary(i, 3) for i in range(1, 7)] == [
        False, False, True, False, False, True,
    ]  # fmt: skip
    assert is_accumulation_boundary(4, 3, last=True)
