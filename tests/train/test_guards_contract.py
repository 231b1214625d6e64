"""Contracts of train/guards.py and train/accumulation.py: the full error message, what
"no clipping" means, steps without gradients, and the fp16 GradScaler path."""

import math

import pytest
import torch
from torch import nn

from torchformer.train.accumulation import is_accumulation_boundary, optimizer_step
from torchformer.train.guards import NonFiniteLossError, check_finite
from torchformer.train.schedules import build_scheduler

ADVICE = (
    "the weights from before this step are intact: lower the learning rate, check the "
    "data near this step, or enable gradient clipping"
)


def test_error_message_in_full():
    err = NonFiniteLossError(3, math.nan)
    assert err.quantity == "loss" and err.step == 3 and math.isnan(err.value)
    assert str(err) == f"non-finite loss (nan) at step 3; {ADVICE}"
    noted = NonFiniteLossError(3, math.inf, "grad_norm", note="step 2 is kept")
    assert str(noted) == f"non-finite grad_norm (inf) at step 3; {ADVICE}; step 2 is kept"


def test_check_finite_reports_the_value_and_quantity():
    with pytest.raises(NonFiniteLossError) as err:
        check_finite(torch.tensor(float("-inf")), 5)
    assert err.value.value == -math.inf and err.value.quantity == "loss"
    assert str(err.value).startswith("non-finite loss (-inf) at step 5;")


def test_accum_steps_must_be_positive():
    with pytest.raises(ValueError, match="accum_steps must be >= 1, got 0"):
        is_accumulation_boundary(1, 0)


def linear(weight=(0.0, 0.0)):
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([weight]))
    return model


def test_max_grad_norm_zero_only_measures():
    model = linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model.weight.grad = torch.tensor([[3.0, 4.0]])
    assert optimizer_step(model, optimizer, None, max_grad_norm=0).item() == pytest.approx(5.0)
    assert model.weight.detach()[0].tolist() == pytest.approx([-3.0, -4.0])  # not clipped


def test_step_without_gradients_reports_zero_norm():
    model = linear((1.0, 2.0))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = build_scheduler(optimizer, "constant")
    norm = optimizer_step(model, optimizer, scheduler, max_grad_norm=1.0)
    assert norm.item() == 0.0
    assert model.weight.detach()[0].tolist() == [1.0, 2.0] and scheduler.last_step == 1


def test_without_check_step_a_non_finite_norm_is_only_reported():
    model = linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    model.weight.grad = torch.tensor([[float("inf"), 1.0]])
    assert math.isinf(optimizer_step(model, optimizer, None).item())


def make_scaler():
    try:
        return torch.amp.GradScaler("cpu", init_scale=8.0)
    except Exception as e:  # pragma: no cover - old torch
        pytest.skip(f"no CPU GradScaler: {e}")


def test_scaler_unscales_clips_steps_and_advances_the_schedule():
    model = linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = build_scheduler(optimizer, "linear", total_steps=4)
    scaler = make_scaler()
    scaler.scale(model(torch.tensor([[3.0, 4.0]])).sum()).backward()  # gradient 8 * (3, 4)
    norm = optimizer_step(model, optimizer, scheduler, max_grad_norm=1.0, scaler=scaler)
    assert norm.item() == pytest.approx(5.0)  # of the unscaled gradients
    assert model.weight.detach()[0].tolist() == pytest.approx([-0.6, -0.8])
    assert scheduler.last_step == 1 and model.weight.grad is None
    assert scaler.get_scale() == 8.0


def test_scaler_skips_an_overflowing_step_and_the_schedule_with_it():
    model = linear((1.0, 1.0))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = build_scheduler(optimizer, "linear", total_steps=4)
    scaler = make_scaler()
    scaler.scale(model(torch.tensor([[float("inf"), 1.0]])).sum()).backward()
    optimizer_step(model, optimizer, scheduler, scaler=scaler, check_step=3)  # no raise
    assert model.weight.detach()[0].tolist() == [1.0, 1.0]
    assert scheduler.last_step == 0 and scaler.get_scale() < 8.0


def test_error_value_is_a_python_float_for_a_tensor():
    with pytest.raises(NonFiniteLossError) as err:
        check_finite(torch.tensor(float("nan")), 1)
    assert type(err.value.value) is float and math.isnan(err.value.value)
