"""EarlyStopping: improvements, patience, min_delta, NaN, state round trip."""

import math

import pytest

from torchformer.train.early_stopping import EarlyStopping


def test_max_mode_patience_and_best():
    stopper = EarlyStopping("f1", mode="max", patience=2)
    assert [stopper.update(v, step=s) for s, v in enumerate([0.5, 0.6, 0.6, 0.55])] == [
        True, True, False, False,
    ]  # fmt: skip
    assert stopper.best == 0.6 and stopper.best_step == 1
    assert stopper.should_stop


def test_min_mode_with_min_delta():
    stopper = EarlyStopping("loss", mode="min", patience=3, min_delta=0.1)
    assert stopper.update(1.0) is True
    assert stopper.update(0.95) is False  # better, but not by more than min_delta
    assert stopper.update(0.85) is True
    assert stopper.best == 0.85 and stopper.bad_evals == 0
    assert not stopper.should_stop


def test_nan_never_improves_and_counts_against_patience():
    stopper = EarlyStopping("loss", mode="min", patience=1)
    assert stopper.update(math.nan) is False
    assert stopper.best is None and stopper.should_stop


def test_state_round_trip_continues_counting():
    stopper = EarlyStopping("f1", patience=3)
    for value in (0.5, 0.4, 0.4):
        stopper.update(value, step=1)
    resumed = EarlyStopping("f1", patience=3)
    resumed.load_state_dict(stopper.state_dict())
    assert (resumed.best, resumed.bad_evals, resumed.should_stop) == (0.5, 2, False)
    resumed.update(0.45)
    assert resumed.should_stop
    with pytest.raises(ValueError, match="tracks max 'f1'"):
        EarlyStopping("loss", mode="min").load_state_dict(stopper.state_dict())
