"""Atomic checkpoints, weights_only safety and the step-numbered checkpoint manager."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from torchformer.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_state,
)


def test_save_load_round_trip_of_a_training_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = {
        "step": 7,
        "epoch": 1,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "metadata": {"best_f1": 0.5, "labels": ["neg", "pos"], "betas": (0.9, 0.99)},
    }
    path = save_checkpoint(tmp_path / "ckpt.pt", state)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["metadata"] == state["metadata"]
    assert torch.equal(loaded["model"]["weight"], model.weight.detach())
    restored = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    restored.load_state_dict(loaded["optimizer"])
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"],
                       optimizer.state_dict()["state"][0]["exp_avg"])  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


def test_unsafe_objects_are_rejected_before_writing(tmp_path):
    path = tmp_path / "ckpt.pt"
    with pytest.raises(TypeError, match=r"state\['rng'\]\['numpy'\].*numpy"):
        save_checkpoint(path, {"rng": {"numpy": np.zeros(3)}})
    with pytest.raises(TypeError, match=r"state\['lr'\]"):
        save_checkpoint(path, {"lr": np.float64(0.1)})  # a float subclass that will not load
    assert not path.exists() and not list(tmp_path.iterdir())


def test_corrupt_file_error_names_the_file(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", {"w": torch.ones(1000)})
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:2000])  # a torn write, as a non-atomic save would leave
    with pytest.raises(CheckpointError, match=re.escape(str(bad))):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match=r"absent\.pt"):
        load_checkpoint(tmp_path / "absent.pt")


def test_manager_keeps_newest_and_skips_corrupt_latest(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (5, 10, 15):
        manager.save(step, {"step": step})
    assert manager.steps() == [10, 15]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000010.pt", "step-000015.pt"]

    manager.path_for(20).write_bytes(b"PK\x03\x04 not really a zip")  # corrupt newest
    with pytest.warns(RuntimeWarning, match="step-000020.pt"):
        latest = manager.latest()
    assert latest is not None and latest.step == 15 and latest.state == {"step": 15}


def test_manager_orders_by_step_number_not_name(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save(999_999, {"step": 999_999})
    manager.save(1_000_000, {"step": 1_000_000})  # 7 digits: sorts before "999999" as text
    assert manager.steps() == [1_000_000]
    assert manager.latest().state["step"] == 1_000_000


def test_manager_empty_directory(tmp_path):
    assert CheckpointManager(tmp_path / "new").latest() is None


# A child process saves checkpoints, then is SIGKILLed halfway through writing the next
# one: torch.save is replaced by a version that writes half the bytes, fsyncs and kills
# its own process, i.e. a crash in the middle of the write.
CHILD = textwrap.dedent(
    """
    import io, os, signal, sys
    import torch
    from torchformer.train.checkpoint import CheckpointManager, save_checkpoint

    directory, mode = sys.argv[1], sys.argv[2]
    manager = CheckpointManager(directory, keep_last=3)
    manager.save(1, {"step": 1, "w": torch.full((1000,), 1.0)})
    manager.save(2, {"step": 2, "w": torch.full((1000,), 2.0)})
    real_save = torch.save

    def save_half_then_die(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save_half_then_die
    big = {"step": 3, "w": torch.full((2_000_000,), 3.0)}
    if mode == "new":
        manager.save(3, big)
    else:  # overwrite the newest checkpoint in place
        save_checkpoint(manager.path_for(2), big)
    print("unreachable")
    """
)


@pytest.mark.parametrize("mode", ["new", "overwrite"])
def test_sigkill_during_write_keeps_previous_checkpoint(tmp_path, mode):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), mode],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "unreachable" not in proc.stdout
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[:1] and names[0].startswith(".step-000")  # the torn temp file is there
    assert ".tmp-" in names[0]
    assert names[1:] == ["step-000001.pt", "step-000002.pt"]  # no step-3, step-2 intact

    manager = CheckpointManager(tmp_path, keep_last=3)  # a restarted run
    latest = manager.latest()
    assert latest is not None and latest.step == 2
    assert torch.equal(latest.state["w"], torch.full((1000,), 2.0))  # the *old* step-2 state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000001.pt", "step-000002.pt"]


class Wrapper(torch.nn.Module):  # stands in for DistributedDataParallel (`.module`)
    def __init__(self, module):
        super().__init__()
        self.module = module


def test_training_state_unwraps_models_and_restores(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = training_state(step=4, epoch=1, model=Wrapper(model), optimizer=optimizer,
                           metadata={"note": "x"})  # fmt: skip
    assert set(state["model"]) == {"weight", "bias"}  # no "module." prefix
    loaded = load_checkpoint(save_checkpoint(tmp_path / "c.pt", state))

    fresh = torch.nn.Linear(2, 2)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.5)
    assert restore_training_state(loaded, model=fresh, optimizer=fresh_opt) == (4, 1)
    assert torch.equal(fresh.weight, model.weight) and fresh_opt.param_groups[0]["lr"] == 0.1
    with pytest.raises(KeyError, match="no scheduler state"):
        restore_training_state(loaded, model=fresh, scheduler=fresh_opt)


def test_a_corrupt_checkpoint_does_not_take_a_kept_slot(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (5, 10):
        manager.save(step, {"step": step})
    manager.path_for(15).write_bytes(b"PK\x03\x04 torn")  # a corrupt one between saves
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manager.save(20, {"step": 20})
    assert manager.steps() == [10, 20]  # the two newest readable ones
    assert [w.category for w in caught] == [RuntimeWarning]
    aside = tmp_path / "step-000015.pt.corrupt"
    assert str(caught[0].message).startswith(f"{manager.path_for(15)} is not a readable checkpoint")
    assert f"moved aside to {aside}" in str(caught[0].message)
    assert aside.read_bytes() == b"PK\x03\x04 torn"  # kept, out of the way
    manager.save(25, {"step": 25})
    assert manager.steps() == [20, 25]
    assert CheckpointManager(tmp_path, keep_last=2).latest().state == {"step": 25}


def test_saving_never_deletes_the_checkpoint_just_written(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save(5, {"step": 5})
    manager.path_for(9).write_bytes(b"not a checkpoint")  # a newer step, unreadable
    with pytest.warns(RuntimeWarning, match=r"step-000009\.pt"):
        latest = manager.latest()
    assert latest.step == 5  # the run resumes from step 5 and saves step 6
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = manager.save(6, {"step": 6})
    assert path.is_file() and manager.steps() == [6]
    assert [w.category for w in caught] == [RuntimeWarning]
    assert "step-000009.pt is not a readable checkpoint" in str(caught[0].message)
    assert load_checkpoint(path) == {"step": 6}


def test_a_full_disk_is_one_error_naming_the_last_good_checkpoint(tmp_path, monkeypatch):
    import errno
    import io

    import torchformer.io

    manager = CheckpointManager(tmp_path, keep_last=2)
    manager.save(1, {"step": 1, "w": torch.full((10,), 1.0)})
    good = manager.path_for(1).read_bytes()

    class FullDisk(io.FileIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torchformer.io.os, "fdopen", lambda fd, *a, **k: FullDisk(fd, "wb"))
    with pytest.raises(OSError) as info:
        manager.save(2, {"step": 2, "w": torch.full((100_000,), 2.0)})
    error = info.value
    assert error.errno == errno.ENOSPC and "No space left on device" in str(error)
    assert str(manager.path_for(2)) in str(error) and str(manager.path_for(1)) in str(error)
    assert error.__cause__ is None and error.__suppress_context__  # one error, not a chain
    monkeypatch.undo()
    assert manager.path_for(1).read_bytes() == good  # intact, and nothing else left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000001.pt"]
    assert torch.equal(manager.latest().state["w"], torch.full((10,), 1.0))
