"""Learning-rate schedules: values at given steps, plateau behaviour, resume."""

import math

import pytest
import torch

from torchformer.train.schedules import build_scheduler, lr_multiplier


def make_optimizer(lr: float = 1.0, groups: int = 1) -> torch.optim.Optimizer:
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in range(groups)]
    return torch.optim.SGD(params, lr=lr)


def lrs_over(scheduler, steps: int) -> list[float]:
    """The lr in effect for optimizer steps 0 .. steps-1 (HF convention)."""
    out = []
    for _ in range(steps):
        out.append(scheduler.lr)
        scheduler.step()
    return out


def test_linear_warmup_then_decay_to_zero():
    sched = build_scheduler(make_optimizer(0.1), "linear", warmup_steps=4, total_steps=12)
    lrs = lrs_over(sched, 14)
    expected = [0.0, 0.025, 0.05, 0.075, 0.1, 0.0875, 0.075, 0.0625, 0.05, 0.0375, 0.025, 0.0125]
    assert lrs[:12] == pytest.approx(expected)
    assert lrs[12:] == [0.0, 0.0]  # stays at zero past the end


def test_cosine_with_min_ratio():
    sched = build_scheduler(
        make_optimizer(1.0), "cosine", warmup_steps=2, total_steps=10, min_lr_ratio=0.1
    )
    lrs = lrs_over(sched, 12)
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert lrs[6] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert lrs[10] == pytest.approx(0.1) and lrs[11] == pytest.approx(0.1)


def test_constant_with_warmup_and_without():
    sched = build_scheduler(make_optimizer(2.0), "constant", warmup_steps=4)
    assert lrs_over(sched, 7) == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    no_warmup = build_scheduler(make_optimizer(2.0), "constant")
    assert no_warmup.lr == 2.0


def test_noam_matches_paper_formula_and_ignores_base_lr():
    d_model, warmup, scale = 512, 4000, 2.0
    sched = build_scheduler(make_optimizer(123.0), "noam", warmup_steps=warmup, d_model=d_model,
                            scale=scale)  # fmt: skip
    for step in (1, 100, 4000, 10000):
        sched.load_state_dict({**sched.state_dict(), "last_step": step})
        paper = scale * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)
        assert sched.lr == pytest.approx(paper)
    # the peak is at the end of warm-up: scale * (d_model * warmup) ** -0.5
    sched.load_state_dict({**sched.state_dict(), "last_step": warmup})
    assert sched.lr == pytest.approx(scale * (d_model * warmup) ** -0.5)


def test_inverse_sqrt_peaks_at_base_lr():
    sched = build_scheduler(make_optimizer(1.0), "inverse_sqrt", warmup_steps=4)
    lrs = lrs_over(sched, 17)
    assert lrs[2] == pytest.approx(0.5)
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[16] == pytest.approx(0.5)  # sqrt(4 / 16)


def test_each_group_keeps_its_own_base_lr():
    opt = make_optimizer(1.0, groups=2)
    opt.param_groups[1]["lr"] = 0.1
    sched = build_scheduler(opt, "linear", warmup_steps=0, total_steps=4)
    sched.step()
    assert sched.get_last_lr() == pytest.approx([0.75, 0.075])


def test_plateau_reduces_after_patience_and_not_during_warmup():
    sched = build_scheduler(make_optimizer(1.0), "plateau", warmup_steps=2, plateau_mode="max",
                            plateau_factor=0.5, plateau_patience=1)  # fmt: skip
    assert sched.step_metric(0.5) is False  # in warm-up: no reduction, best tracked
    assert sched.step_metric(0.4) is False
    assert sched.step_metric(0.4) is False
    sched.step()
    sched.step()  # warm-up over
    assert sched.lr == 1.0
    assert sched.step_metric(0.4) is False  # 1st evaluation without improvement: patience
    assert sched.step_metric(0.4) is True  # 2nd: reduce
    assert sched.lr == pytest.approx(0.5)
    assert sched.step_metric(0.9) is False  # improvement resets
    assert sched.step_metric(0.9) is False
    assert sched.step_metric(0.9) is True
    assert sched.lr == pytest.approx(0.25)


def test_step_metric_is_a_noop_for_step_schedules():
    sched = build_scheduler(make_optimizer(1.0), "constant")
    for _ in range(5):
        assert sched.step_metric(0.0) is False
    assert sched.lr == 1.0


@pytest.mark.parametrize("name", ["linear", "cosine", "plateau"])
def test_state_dict_round_trip_resumes_the_same_lrs(name):
    def build(opt):
        return build_scheduler(opt, name, warmup_steps=3, total_steps=20, plateau_patience=0)

    sched = build(make_optimizer(1.0))
    for i in range(7):
        sched.step()
        sched.step_metric(-i)  # never improves in "max" mode: plateau reduces
    state = sched.state_dict()
    expected_now = sched.lr
    expected_next = lrs_over(sched, 5)

    resumed = build(make_optimizer(1.0))
    resumed.load_state_dict(state)
    assert resumed.lr == expected_now
    assert lrs_over(resumed, 5) == expected_next


def test_matches_hugging_face_reference():
    opt_mod = pytest.importorskip("transformers.optimization")
    total, warmup = 20, 5
    pairs = [
        ("linear", {}, opt_mod.get_linear_schedule_with_warmup, {"num_training_steps": total}),
        ("cosine", {}, opt_mod.get_cosine_schedule_with_warmup, {"num_training_steps": total}),
        ("cosine", {"min_lr_ratio": 0.2}, opt_mod.get_cosine_with_min_lr_schedule_with_warmup,
         {"num_training_steps": total, "min_lr_rate": 0.2}),
        ("constant", {}, opt_mod.get_constant_schedule_with_warmup, {}),
    ]  # fmt: skip
    for name, ours_kwargs, hf_fn, hf_kwargs in pairs:
        ours = build_scheduler(
            make_optimizer(1.0), name, warmup_steps=warmup, total_steps=total, **ours_kwargs
        )
        hf_opt = make_optimizer(1.0)
        hf = hf_fn(hf_opt, num_warmup_steps=warmup, **hf_kwargs)
        for _ in range(total + 1):  # (past the end HF's cosine rises again; ours stays)
            assert ours.lr == pytest.approx(hf_opt.param_groups[0]["lr"]), name
            ours.step()
            hf_opt.step()
            hf.step()


def test_invalid_arguments():
    with pytest.raises(ValueError, match="unknown schedule 'cosin'"):
        build_scheduler(make_optimizer(), "cosin")
    with pytest.raises(ValueError, match="needs total_steps"):
        build_scheduler(make_optimizer(), "linear", warmup_steps=2)
    with pytest.raises(ValueError, match="needs d_model"):
        build_scheduler(make_optimizer(), "noam", warmup_steps=2)
    sched = build_scheduler(make_optimizer(), "constant")
    with pytest.raises(ValueError, match="for schedule 'linear'"):
        sched.load_state_dict({"name": "linear", "last_step": 0, "base_lrs": [1.0]})


def test_lr_multiplier_is_pure():
    assert lr_multiplier("linear", 5, warmup_steps=10, total_steps=20) == 0.5
    assert math.isclose(lr_multiplier("cosine", 20, warmup_steps=0, total_steps=20), 0.0,
                        abs_tol=1e-12)  # fmt: skip
