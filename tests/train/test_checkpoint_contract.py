"""Contracts of train/checkpoint.py: error messages that name the offending key or file,
unsafe files refused at load, unwrapping torch.compile, and the manager's defaults,
sharded (directory) checkpoints and clean-up."""

import re
import warnings

import numpy as np
import pytest
import torch

from torchformer.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    check_weights_only_safe,
    load_checkpoint,
    save_checkpoint,
    unwrap_model,
)


class Opaque:  # a pickled custom object: not weights_only-loadable
    def __init__(self):
        self.x = 1


# ---------------------------------------------------------------------------
# what is refused, and where
# ---------------------------------------------------------------------------


def test_unsafe_dict_key_is_named():
    with pytest.raises(TypeError) as err:
        check_weights_only_safe({"a": {(1, 2): 3}})
    assert str(err.value) == "state['a']: key (1, 2) of type tuple is not allowed"


def test_unsafe_list_item_is_named_with_its_index_and_type():
    with pytest.raises(TypeError) as err:
        check_weights_only_safe({"x": [1, 2.0, np.float64(0.5)]})
    assert str(err.value).startswith(
        "state['x'][2]: numpy.float64 cannot be loaded with torch.load(weights_only=True); "
        "convert it"
    )
    with pytest.raises(TypeError, match=r"^ckpt\[1\]\[0\]: .*Opaque cannot be loaded"):
        check_weights_only_safe([0, [Opaque()]], "ckpt")


def test_save_checkpoint_requires_a_dict(tmp_path):
    with pytest.raises(TypeError, match=r"^a checkpoint state must be a dict, got list$"):
        save_checkpoint(tmp_path / "c.pt", [1, 2])
    assert not (tmp_path / "c.pt").exists()


def test_load_refuses_a_file_holding_arbitrary_objects(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"obj": Opaque()}, path)  # written without save_checkpoint's check
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_checkpoint(path)


def test_corrupt_file_error_gives_size_and_cause(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"x" * 37)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    cause = err.value.__cause__
    assert cause is not None
    assert f"{path} is not a readable checkpoint (37 bytes; truncated or corrupt?)" in msg
    assert msg.endswith(f"{type(cause).__name__}: {cause}")


def test_load_refuses_a_file_that_is_not_a_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == f"{path}: expected a dict, found list"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_maps_gpu_tensors_to_cpu(tmp_path):
    path = save_checkpoint(tmp_path / "gpu.pt", {"w": torch.ones(2, device="cuda")})
    assert load_checkpoint(path)["w"].device == torch.device("cpu")


def test_unwrap_model_sees_through_torch_compile():
    model = torch.nn.Linear(2, 2)
    compiled = torch.compile(model)  # an OptimizedModule holding the model as `_orig_mod`
    assert unwrap_model(compiled) is model
    assert set(unwrap_model(compiled).state_dict()) == {"weight", "bias"}
    assert unwrap_model(model) is model


# ---------------------------------------------------------------------------
# CheckpointManager
# ---------------------------------------------------------------------------


def test_manager_keeps_three_by_default_and_creates_its_directory(tmp_path):
    directory = tmp_path / "run" / "checkpoints"
    manager = CheckpointManager(directory)
    for step in range(1, 6):
        manager.save(step, {"step": step})
    assert manager.steps() == [3, 4, 5]
    latest = manager.latest()
    assert latest.path == directory / "step-000005.pt" and latest.step == 5


def test_kept_note_names_the_newest_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=5)
    assert manager.kept_note() == f"no checkpoint had been written yet (nothing in {tmp_path})"
    for step in (10, 20, 30):
        manager.save(step, {"step": step})
    assert manager.kept_note() == f"the last good checkpoint (step 30) is kept in {tmp_path}"


def test_sharded_manager_uses_dcp_directories_and_prunes_them(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2, sharded=True)
    assert manager.path_for(7) == tmp_path / "step-000007.dcp"
    for step in (1, 2, 3):
        shard_dir = manager.path_for(step)
        shard_dir.mkdir()
        (shard_dir / "__0_0.distcp").write_bytes(b"shard")
    (tmp_path / "step-000009.pt").write_bytes(b"not sharded")  # ignored by a sharded manager
    assert manager.steps() == [1, 2, 3]
    manager.prune()
    assert manager.steps() == [2, 3]
    assert not (tmp_path / "step-000001.dcp").exists()
    assert CheckpointManager(tmp_path).steps() == [9]  # and the reverse


def test_manager_removes_leftovers_of_a_cut_short_sharded_save(tmp_path):
    stale = tmp_path / ".step-000040.dcp.tmp"
    stale.mkdir()
    (stale / "__0_0.distcp").write_bytes(b"half")
    (tmp_path / ".step-000040.pt.tmp-abc").write_bytes(b"half")
    keep = tmp_path / "step-000030.dcp"
    keep.mkdir()
    manager = CheckpointManager(tmp_path, sharded=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000030.dcp"]
    assert manager.steps() == [30]


def test_keep_last_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="keep_last must be >= 1, got 0"):
        CheckpointManager(tmp_path, keep_last=0)


def test_prune_sets_unreadable_files_aside_and_they_take_no_kept_slot(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    for step in (1, 2, 3):
        manager.save(step, {"step": step})
    manager.path_for(2).write_bytes(b"cut short")  # a new mtime: read again, not remembered
    torch.save([1, 2], manager.path_for(3))  # loads, but is no checkpoint (not a dict)
    with pytest.warns(RuntimeWarning, match=r"step-000003\.pt is not a readable checkpoint: "
                      r"moved aside to .*step-000003\.pt\.corrupt") as caught:  # fmt: skip
        manager.save(4, {"step": 4})
    assert len(caught) == 2  # step 3 and step 2, each named once
    assert manager.steps() == [1, 4]  # corrupt files take no slot: step 1 is not pruned
    assert (tmp_path / "step-000002.pt.corrupt").read_bytes() == b"cut short"  # never deleted
    assert (tmp_path / "step-000003.pt.corrupt").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # readable files, remembered: nothing to warn about
        manager.save(5, {"step": 5})
        manager.save(6, {"step": 6})
    assert manager.steps() == [4, 5, 6]


def test_a_write_error_names_the_newest_checkpoint_that_loads(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=5)
    full = OSError(28, "No space left on device")
    error = manager.write_error(1, full)
    assert error.errno == 28 and str(error).endswith(
        f"{manager.path_for(1)}: cannot write the checkpoint of step 1 (No space left on "
        f"device); no checkpoint had been written yet (nothing in {tmp_path})"
    )
    for step in (1, 2, 3):
        manager.save(step, {"step": step})
    manager.path_for(3).write_bytes(b"cut short")
    message = str(manager.write_error(4, full))
    assert f"the last good checkpoint, intact, is {manager.path_for(2)} (step 2)" in message
    assert "--resume" in message
    assert manager.write_error(2, OSError("disk gone")).errno is None  # no errno to carry


def test_a_fresh_manager_reads_each_checkpoint_it_did_not_write_once(tmp_path, monkeypatch):
    import torchformer.train.checkpoint as checkpoint_module

    first = CheckpointManager(tmp_path, keep_last=3)
    for step in (1, 2, 3):
        first.save(step, {"step": step})
    reads = []
    real = checkpoint_module.torch.load
    monkeypatch.setattr(
        checkpoint_module.torch, "load", lambda path, **kw: reads.append(path) or real(path, **kw)
    )
    resumed = CheckpointManager(tmp_path, keep_last=3)  # a resumed run: nothing remembered
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the three load: none is set aside
        resumed.save(4, {"step": 4})
        resumed.prune()
    assert resumed.steps() == [2, 3, 4] and not list(tmp_path.glob("*.corrupt"))
    # each file read once over two prunes (step 1 to know that it loads before pruning it)
    assert sorted(reads) == [resumed.path_for(1), resumed.path_for(2), resumed.path_for(3)]


# ---------------------------------------------------------------------------
# found by mutation testing (docs/mutation.md, train/ at b7efb1a)
# ---------------------------------------------------------------------------


def test_a_resumed_manager_keeps_the_tensor_checkpoints_of_the_run_it_continues(tmp_path):
    """A new manager (a resumed run) reads the older files on the CPU: none of them is
    taken for corrupt, and pruning keeps the newest."""
    first = CheckpointManager(tmp_path, keep_last=5)
    for step in (1, 2, 3):
        first.save(step, {"model": {"w": torch.full((2, 2), float(step))}})
    resumed = CheckpointManager(tmp_path, keep_last=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.save(4, {"model": {"w": torch.zeros(2, 2)}})
    assert resumed.steps() == [3, 4] and not list(tmp_path.glob("*.corrupt"))


def test_a_step_file_of_arbitrary_objects_is_set_aside_even_where_torch_allows_them(
    tmp_path, monkeypatch
):
    torch.save({"obj": Opaque()}, tmp_path / "step-000001.pt")
    torch.save({"obj": Opaque()}, tmp_path / "step-000002.pt")
    # torch.load unpickles anything when this is set and a call leaves weights_only unset
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "step-000002.pt")
    with pytest.warns(RuntimeWarning, match=r"step-00000[12]\.pt is not a readable checkpoint"):
        CheckpointManager(tmp_path).prune()
    assert (tmp_path / "step-000001.pt.corrupt").is_file()
    assert (tmp_path / "step-000002.pt.corrupt").is_file()
    assert CheckpointManager(tmp_path).steps() == []


def test_saving_an_older_step_never_deletes_the_file_just_written(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save(5, {"step": 5})
    path = manager.save(3, {"step": 3})  # e.g. a run restarted from an earlier step
    assert path.is_file() and manager.steps() == [3]


def test_a_write_error_without_an_errno_keeps_the_cause(tmp_path):
    error = CheckpointManager(tmp_path).write_error(3, OSError("quota exceeded"))
    assert "cannot write the checkpoint of step 3 (quota exceeded)" in str(error)
