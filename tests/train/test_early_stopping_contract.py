"""Contracts of train/early_stopping.py: defaults, validation, min_delta in max mode,
ties in min mode, and restoring a state saved before any evaluation."""

import pytest

from torchformer.train.early_stopping import EarlyStopping


def test_default_patience_is_three():
    stopper = EarlyStopping("f1")
    assert stopper.best is None and stopper.best_step is None
    stopper.update(0.5, step=1)
    for _ in range(2):
        stopper.update(0.4)
        assert not stopper.should_stop
    stopper.update(0.4)
    assert stopper.should_stop


def test_invalid_settings_are_named():
    with pytest.raises(ValueError, match="mode must be 'min' or 'max', got 'up'"):
        EarlyStopping("f1", mode="up")
    with pytest.raises(ValueError, match=r"patience and min_delta must be >= 0, got -1, 0.0"):
        EarlyStopping("f1", patience=-1)
    with pytest.raises(ValueError, match=r"got 2, -0.5"):
        EarlyStopping("f1", patience=2, min_delta=-0.5)
    zero = EarlyStopping("f1", patience=0)  # allowed: stops at the first non-improvement
    zero.update(1.0)
    zero.update(0.9)
    assert zero.should_stop


def test_max_mode_needs_more_than_min_delta():
    stopper = EarlyStopping("f1", mode="max", min_delta=0.1)
    assert stopper.update(1.0) is True
    assert stopper.update(1.05) is False  # within min_delta above the best
    assert stopper.update(0.95) is False
    assert stopper.update(1.2) is True and stopper.best == 1.2


def test_min_mode_tie_is_not_an_improvement():
    stopper = EarlyStopping("loss", mode="min")
    assert stopper.update(2.0) is True
    assert stopper.update(2.0) is False and stopper.bad_evals == 1


def test_state_saved_before_any_evaluation_round_trips():
    fresh = EarlyStopping("f1")
    state = fresh.state_dict()
    other = EarlyStopping("f1")
    other.update(0.3, step=4)
    other.load_state_dict(state)
    assert other.state_dict() == state and other.best is None
    assert other.update(0.1, step=9) is True and other.best_step == 9


def test_a_nan_first_evaluation_counts_once():
    stopper = EarlyStopping("f1", patience=2)
    assert stopper.update(float("nan")) is False
    assert stopper.bad_evals == 1 and not stopper.should_stop
