"""Contracts of train/schedules.py: edge values of each formula, the plateau rule in both
modes, argument validation and a plateau scheduler's resume."""

import math

import pytest
import torch

from torchformer.train.schedules import build_scheduler, lr_multiplier


def make_optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def plateau(**kwargs):
    kwargs.setdefault("warmup_steps", 0)
    return build_scheduler(make_optimizer(1.0), "plateau", **kwargs)


# ---------------------------------------------------------------------------
# formulas at their edges
# ---------------------------------------------------------------------------


def test_inverse_sqrt_without_warmup_starts_at_base_lr():
    assert lr_multiplier("inverse_sqrt", 0) == 1.0
    assert lr_multiplier("inverse_sqrt", 1) == 1.0
    assert lr_multiplier("inverse_sqrt", 4) == pytest.approx(0.5)
    assert lr_multiplier("inverse_sqrt", 9, warmup_steps=1) == pytest.approx(1 / 3)


def test_noam_starts_at_zero_and_handles_tiny_warmup():
    sched = build_scheduler(make_optimizer(), "noam", warmup_steps=10, d_model=16)
    assert sched.lr == 0.0  # before the first step
    assert lr_multiplier("noam", 0, warmup_steps=10) == 0.0
    # warm-up 0 or 1: the factor is step**-0.5 from the first step
    assert lr_multiplier("noam", 1, warmup_steps=1) == 1.0
    assert lr_multiplier("noam", 1, warmup_steps=0) == 1.0
    assert lr_multiplier("noam", 4, warmup_steps=0) == pytest.approx(0.5)


def test_noam_default_scale_is_one():
    d_model, warmup = 64, 100
    sched = build_scheduler(make_optimizer(5.0), "noam", warmup_steps=warmup, d_model=d_model)
    sched.load_state_dict({**sched.state_dict(), "last_step": warmup})
    assert sched.lr == pytest.approx((d_model * warmup) ** -0.5)
    assert build_scheduler(make_optimizer(), "noam", d_model=1).lr == 0.0  # d_model=1 is valid


def test_unknown_name_in_lr_multiplier_lists_the_choices():
    with pytest.raises(ValueError) as err:
        lr_multiplier("warmup", 3)
    msg = str(err.value)
    assert "'warmup'" in msg and "linear, cosine, constant, inverse_sqrt, noam, plateau" in msg
    with pytest.raises(ValueError, match="choose one of linear, cosine, constant"):
        build_scheduler(make_optimizer(), "step")


def test_scheduler_reports_its_schedule_name():
    sched = build_scheduler(make_optimizer(), "cosine", total_steps=10)
    assert sched.name == "cosine" and sched.state_dict()["name"] == "cosine"
    assert repr(sched).startswith("Scheduler('cosine', step=0")


# ---------------------------------------------------------------------------
# argument validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_decaying_schedules_need_positive_total_steps(name):
    for bad in (None, 0, -3):
        with pytest.raises(ValueError, match=rf"schedule '{name}' needs total_steps > 0"):
            build_scheduler(make_optimizer(), name, total_steps=bad)
    assert build_scheduler(make_optimizer(), name, total_steps=1).lr == 1.0
    with pytest.raises(ValueError, match=r"warmup_steps \(5\) > total_steps \(3\)"):
        build_scheduler(make_optimizer(), name, warmup_steps=5, total_steps=3)


def test_negative_warmup_is_rejected():
    with pytest.raises(ValueError, match="warmup_steps must be >= 0, got -1"):
        build_scheduler(make_optimizer(), "constant", warmup_steps=-1)


def test_min_lr_ratio_range_is_inclusive():
    sched = build_scheduler(make_optimizer(), "cosine", total_steps=4, min_lr_ratio=1.0)
    for _ in range(4):
        sched.step()
    assert sched.lr == pytest.approx(1.0)  # ratio 1: no decay at all
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"min_lr_ratio must be in \[0, 1\], got {bad}"):
            build_scheduler(make_optimizer(), "cosine", total_steps=4, min_lr_ratio=bad)


def test_noam_needs_positive_d_model():
    for bad in (None, 0, -8):
        with pytest.raises(ValueError, match=r"^schedule 'noam' needs d_model > 0$"):
            build_scheduler(make_optimizer(), "noam", warmup_steps=4, d_model=bad)


def test_plateau_validates_mode_and_factor():
    with pytest.raises(ValueError, match="plateau_mode must be 'min' or 'max', got 'down'"):
        plateau(plateau_mode="down")
    for bad in (0.0, 1.0, 1.5, -0.5):
        with pytest.raises(ValueError, match=rf"plateau_factor must be in \(0, 1\), got {bad}"):
            plateau(plateau_factor=bad)
    assert plateau(plateau_mode="min").lr == 1.0


# ---------------------------------------------------------------------------
# plateau behaviour
# ---------------------------------------------------------------------------


def test_plateau_warmup_ramps_the_rate():
    sched = plateau(warmup_steps=4)
    lrs = []
    for _ in range(6):
        lrs.append(sched.lr)
        sched.step()
    assert lrs == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])


def test_plateau_default_patience_is_two():
    sched = plateau(plateau_factor=0.5)
    assert sched.step_metric(1.0) is False  # best
    assert sched.step_metric(1.0) is False  # 1 without improvement
    assert sched.step_metric(1.0) is False  # 2
    assert sched.step_metric(1.0) is True  # 3 > patience
    assert sched.lr == pytest.approx(0.5)


def test_plateau_min_mode_improves_downwards_with_relative_threshold():
    sched = plateau(plateau_mode="min", plateau_patience=0, plateau_threshold=0.1)
    assert sched.step_metric(1.0) is False  # best = 1.0
    assert sched.step_metric(0.5) is False  # lower: an improvement
    assert sched.lr == 1.0
    assert sched.step_metric(0.46) is True  # lower, but by less than 10 %: no improvement
    assert sched.lr == pytest.approx(0.5)
    assert sched.step_metric(0.52) is True  # higher: no improvement
    assert sched.lr == pytest.approx(0.25)
    assert sched.step_metric(0.4) is False  # 20 % lower: an improvement
    assert sched.lr == pytest.approx(0.25)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_plateau_equal_value_is_not_an_improvement(mode):
    sched = plateau(plateau_mode=mode, plateau_patience=0)
    assert sched.step_metric(0.0) is False  # best = 0: the margin is 0
    assert sched.step_metric(0.0) is True
    assert sched.lr == pytest.approx(0.5)


def test_plateau_max_mode_threshold():
    sched = plateau(plateau_mode="max", plateau_patience=0, plateau_threshold=0.1)
    sched.step_metric(1.0)
    assert sched.step_metric(1.05) is True  # within the 10 % margin: no improvement
    assert sched.step_metric(1.2) is False


def test_plateau_nan_metric_never_improves():
    sched = plateau(plateau_patience=1)
    assert sched.step_metric(float("nan")) is False  # 1 evaluation without improvement
    assert sched.step_metric(float("nan")) is True  # 2 > patience
    assert sched.lr == pytest.approx(0.5)


def test_plateau_patience_restarts_after_each_reduction():
    sched = plateau(plateau_patience=1, plateau_factor=0.5)
    sched.step_metric(1.0)
    assert [sched.step_metric(0.0) for _ in range(6)] == [False, True] * 3
    assert sched.lr == pytest.approx(0.125)


def test_plateau_is_floored_at_min_lr_ratio():
    sched = plateau(plateau_patience=0, plateau_factor=0.5, min_lr_ratio=0.3, warmup_steps=2)
    sched.step()
    sched.step()
    sched.step_metric(1.0)
    sched.step_metric(1.0)
    assert sched.lr == pytest.approx(0.5)
    sched.step_metric(1.0)  # scale 0.25 < 0.3
    assert sched.lr == pytest.approx(0.3)
    sched.step_metric(1.0)
    assert sched.lr == pytest.approx(0.3)


def test_plateau_resume_keeps_best_and_patience_count():
    def build():
        return plateau(plateau_patience=1)

    sched = build()
    sched.step_metric(0.5)  # best
    sched.step_metric(0.4)  # 1 evaluation without improvement
    state = sched.state_dict()
    assert state["plateau"] == {"scale": 1.0, "best": 0.5, "bad_evals": 1}

    resumed = build()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    assert resumed.step_metric(0.45) is True  # still below the restored best; patience runs out
    assert resumed.lr == pytest.approx(0.5)

    fresh = build()  # a state saved before any evaluation
    fresh_state = fresh.state_dict()
    assert fresh_state["plateau"]["best"] is None
    resumed = build()
    resumed.load_state_dict(fresh_state)
    assert resumed.state_dict() == fresh_state
    assert resumed.step_metric(0.1) is False  # the first value is the best so far


def test_plateau_state_without_plateau_entry_loads():
    sched = plateau(warmup_steps=4)
    sched.load_state_dict({"name": "plateau", "last_step": 2, "base_lrs": [2.0]})
    assert sched.lr == pytest.approx(1.0)
    assert math.isclose(sched.state_dict()["plateau"]["scale"], 1.0)


def test_warmup_may_last_the_whole_run():
    sched = build_scheduler(make_optimizer(1.0), "linear", warmup_steps=4, total_steps=4)
    lrs = []
    for _ in range(5):
        lrs.append(sched.lr)
        sched.step()
    assert lrs == pytest.approx([0.0, 0.25, 0.5, 0.75, 0.0])


def test_cosine_over_a_single_step_ends_at_min_ratio():
    assert lr_multiplier("cosine", 1, total_steps=1, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_multiplier("cosine", 3, warmup_steps=2, total_steps=3) == pytest.approx(0.0)


# ---------------------------------------------------------------------------
# found by mutation testing (docs/mutation.md, train/ at b7efb1a)
# ---------------------------------------------------------------------------


def test_a_warmup_of_one_step_starts_every_schedule_at_zero():
    assert build_scheduler(make_optimizer(1.0), "constant", warmup_steps=1).lr == 0.0
    assert lr_multiplier("plateau", 0, warmup_steps=1) == 0.0
    assert lr_multiplier("constant", 1, warmup_steps=1) == 1.0


def test_stlr_with_a_one_step_rise_falls_over_the_papers_length():
    from torchformer.train.schedules import slanted_triangular

    # T = 10, cut_frac 0.1: cut = 1, the fall takes cut * (1 / cut_frac - 1) = 9 steps
    assert slanted_triangular(5, 10, cut_frac=0.1, ratio=32) == pytest.approx(
        (1 + (1 - 4 / 9) * 31) / 32
    )


def test_noam_ignores_the_optimizers_rate_even_when_it_is_zero():
    sched = build_scheduler(make_optimizer(0.0), "noam", warmup_steps=4, d_model=16)
    for _ in range(4):
        sched.step()
    assert sched.lr == pytest.approx(16**-0.5 * 4**-0.5)


def test_noam_keeps_the_ratio_of_real_learning_rates():
    optimizer = torch.optim.SGD(
        [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (1e-3, 2.5e-4)]
    )
    sched = build_scheduler(optimizer, "noam", warmup_steps=4, d_model=16)
    for _ in range(4):
        sched.step()
    head, low = sched.get_last_lr()
    assert head == pytest.approx(16**-0.5 * 4**-0.5) and low == pytest.approx(head / 4)


def test_stlr_settings_at_their_bounds():
    with pytest.raises(ValueError, match="cut_frac"):
        build_scheduler(make_optimizer(1.0), "stlr", total_steps=10, cut_frac=0.0)
    for ratio in (1.0, 1.5):  # ratio 1 is a constant rate: allowed
        sched = build_scheduler(make_optimizer(1.0), "stlr", total_steps=10, ratio=ratio)
        rates = []
        for _ in range(10):
            rates.append(sched.lr)
            sched.step()
        assert min(rates) >= 1 / ratio - 1e-12 and max(rates) <= 1.0
        if ratio == 1.0:
            assert rates == [1.0] * 10
