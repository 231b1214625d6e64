"""The rank helpers of train/distributed.py in one process (the torchrun tests in
tests/distributed run them on 2 processes; these pin their contracts cheaply)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from torchformer.train.distributed import (
    World,
    gather_objects,
    init_distributed,
    is_main_process,
    main_process_first,
    resolve_device,
    shutdown_distributed,
    wrap_model,
)

TORCHRUN_ENV = {"RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}


@pytest.fixture
def one_process_group(tmp_path):
    """A real gloo process group of one process (what torchrun would have created)."""
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


def test_a_plain_process_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = init_distributed("cpu")
    assert world == World(rank=0, size=1, local_rank=0, device=torch.device("cpu"))
    assert world.is_main and not world.distributed and not world.owns_group
    assert world.sampler_args == {"num_replicas": 1, "rank": 0}
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed("cpu") == world


def test_world_properties():
    world = World(rank=2, size=4, local_rank=0)
    assert not world.is_main and world.distributed
    assert world.sampler_args == {"num_replicas": 4, "rank": 2}
    assert World(rank=0, size=2).is_main


def test_several_processes_without_torchrun_name_the_missing_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(
        RuntimeError, match=r"WORLD_SIZE=2 but LOCAL_RANK, MASTER_ADDR, MASTER_PORT"
    ):
        init_distributed("cpu")


def test_under_torchrun_the_group_is_created_with_the_devices_backend(monkeypatch):
    """gloo for CPU ranks, NCCL on the rank's own GPU (cuda:LOCAL_RANK), with the
    timeout; the process group and torch.cuda are stood in for, so it runs anywhere."""
    import datetime

    calls: list[tuple] = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group",
                        lambda backend, **kw: calls.append((backend, kw)))  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LOCAL_RANK", "1")
    world = init_distributed()  # "auto" without a GPU: the CPU, gloo, 30 minutes
    assert world == World(rank=0, size=2, local_rank=1, device=torch.device("cpu"),
                          owns_group=True)  # fmt: skip
    assert calls == [("gloo", {"timeout": datetime.timedelta(seconds=1800)})]
    calls.clear()
    world = init_distributed("cuda", timeout_s=60)
    assert world.device == torch.device("cuda", 1) and world.owns_group
    assert calls == [
        ("set_device", torch.device("cuda", 1)),
        ("nccl", {"timeout": datetime.timedelta(seconds=60)}),
    ]


def test_without_torchrun_the_error_says_how_to_start_it(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError) as error:
        init_distributed("cpu")
    assert str(error.value) == (
        "WORLD_SIZE=3 but RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set: start several "
        "processes with torchrun (torchrun --nproc_per_node N -m torchformer train CONFIG)"
    )


def test_under_torchrun_an_existing_group_is_joined_not_recreated(monkeypatch, one_process_group):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    world = init_distributed("cpu")
    assert world == World(rank=1, size=2, local_rank=1, device=torch.device("cpu"))
    assert not world.owns_group
    shutdown_distributed(world)  # not its group: left alone
    assert dist.is_initialized()


def test_shutdown_leaves_the_group_it_created(one_process_group):
    shutdown_distributed(World(owns_group=True))
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert resolve_device("cuda:1", local_rank=3) == torch.device("cuda", 1)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_is_main_process_reads_the_group_or_torchrun_rank(monkeypatch, one_process_group):
    assert is_main_process()  # rank 0 of the group
    dist.destroy_process_group()
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()  # outside the group: the rank torchrun gave
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()
    monkeypatch.delenv("RANK")
    assert is_main_process()
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)


def test_main_process_first_runs_rank_zero_with_main_true_and_returns_its_result():
    calls = []
    assert main_process_first(World(), lambda main: calls.append(main) or "done") == "done"
    assert calls == [True]


def test_main_process_first_on_rank_zero_of_several_broadcasts_success(one_process_group):
    calls = []
    assert main_process_first(World(rank=0, size=2), lambda main: calls.append(main) or 7) == 7
    assert calls == [True]  # rank 0 runs with main=True, once


def test_main_process_first_raises_rank_zeros_error(one_process_group):
    def fails(main):
        raise ValueError("bad data in train.csv:3")

    with pytest.raises(ValueError, match=r"train\.csv:3"):
        main_process_first(World(rank=0, size=2), fails)


def test_a_world_of_one_trains_the_model_itself_and_gathers_itself():
    model = nn.Linear(2, 2)
    assert wrap_model(model, World()) is model
    assert gather_objects(World(), {"a": 1}) == [{"a": 1}]


def test_several_processes_get_ddp_that_allows_unused_parameters(one_process_group):
    model = nn.Linear(2, 2)
    wrapped = wrap_model(model, World(rank=0, size=2))
    assert isinstance(wrapped, nn.parallel.DistributedDataParallel) and wrapped.module is model
    assert wrapped.find_unused_parameters


def test_fsdp_shards_the_model_in_place(one_process_group):
    model = nn.Sequential(nn.Linear(2, 2))
    sharded = wrap_model(model, World(rank=0, size=2), "fsdp")
    assert sharded is model and hasattr(model, "set_requires_gradient_sync")


def test_main_process_first_on_another_rank_runs_with_main_false(one_process_group):
    calls = []
    result = main_process_first(World(rank=1, size=2), lambda main: calls.append(main) or "mine")
    assert result == "mine" and calls == [False]  # rank 0 reported success first


class _Block(nn.Module):
    """Stands in for an EncoderLayer/DecoderLayer (matched by the class name's end)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return self.linear(x)


_Block.__name__ = "TinyLayer"


def test_fsdp_shards_each_layer_and_the_root(one_process_group):
    from torchformer.train.fsdp import full_model_state_dict, shard_model

    model = nn.Sequential(_Block(), _Block(), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shard_model(model)
    sharded = [name for name, m in model.named_modules() if type(m).__name__.startswith("FSDP")]
    assert sharded == ["", "0", "1"]  # the root and each *Layer, not the plain Linear
    full = full_model_state_dict(model)  # whole tensors on rank 0's CPU
    assert full.keys() == before.keys()
    assert all(type(v) is torch.Tensor and v.device.type == "cpu" for v in full.values())
    assert all(torch.equal(full[k], before[k]) for k in before)


def test_broadcast_object_gives_every_rank_rank_zeros_value(one_process_group):
    from torchformer.train.distributed import broadcast_object

    value = {"loss": 0.5, "accuracy": 0.75}
    assert broadcast_object(World(), value) is value  # a world of one: itself
    assert broadcast_object(World(rank=0, size=2), dict(value)) == value  # through the group


class _Seq2Seq(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.layer = _Block()

    def encode(self, x):
        return self.layer(self.embed(x))

    def decode(self, x):
        return self.embed(x)

    def forward(self, x):
        return self.decode(self.encode(x))


def test_fsdp_registers_a_seq2seq_models_encode_and_decode(one_process_group):
    """Decoding calls encode()/decode(), not forward(): they must gather the root's
    parameters too, so shard_model registers them with FSDP2."""
    from torchformer.train.fsdp import shard_model

    model = _Seq2Seq()
    plain = {name: getattr(model, name) for name in ("encode", "decode")}
    shard_model(model)
    for name, before in plain.items():
        assert getattr(model, name) != before  # wrapped by register_fsdp_forward_method
    x = torch.randn(2, 4)
    assert model.decode(model.encode(x)).shape == (2, 4)  # runs on the sharded model


def test_a_single_cuda_process_uses_the_first_gpu(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert init_distributed("cuda").device == torch.device("cuda", 0)
