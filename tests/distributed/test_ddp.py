"""Training on several processes with torchrun (gloo, CPU): the same config gives the same
model on 1 or 2 processes, on one "node" or two, and across a resume at another world size.

Each test starts real ``torchrun`` processes on loopback (tier 3: system tests).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import torchformer
from torchformer.config import config_to_dict
from torchformer.text.tokenizer import Tokenizer
from torchformer.train.checkpoint import load_checkpoint

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tasks"))
sys.path.insert(0, str(HERE.parent / "translate"))
from test_classify import tiny_config as classify_config  # noqa: E402
from test_classify import toy_rows  # noqa: E402
from tiny_parallel import tiny_config as translate_config  # noqa: E402

DRIVER = HERE / "ddp_driver.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"
TIMEOUT = 300

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not TORCHRUN.exists(),
    reason="torch.distributed / torchrun not available",
)


def _env() -> dict[str, str]:
    """The processes import the torchformer this test imported (under mutation testing,
    the mutated copy), with one thread each."""
    source = str(Path(torchformer.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=path)
    env.pop("WORLD_SIZE", None)
    return env


def _run(cmd: list[str]) -> None:
    # (in the test's own directory: under mutation testing, where mutmut's config is)
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(config, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")
    return path


def drive(
    config: Path, out: Path, *, nproc: int, task: str = "classification", extra=()
) -> list[dict]:
    """Run the instrumented driver on ``nproc`` processes; returns each rank's record."""
    args = [str(DRIVER), str(config), "--task", task, "--out", str(out), *extra]
    if nproc == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(nproc), *args]
    _run(cmd)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def newest_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1])["model"]


def max_abs_diff(a: dict, b: dict) -> float:
    """The largest weight difference, key biases left out: softmax ignores a constant shift
    of the scores, so their true gradient is 0 and what they get is float noise (~1e-10),
    which Adam divides by its own root-mean-square and turns into lr-sized steps that
    differ with the summation order (measured: 2.5e-5 on the translation test)."""
    assert a.keys() == b.keys()
    keys = [k for k in a if not k.endswith("k_proj.bias")]
    assert len(keys) > len(a) // 2
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in keys)


@pytest.fixture(scope="module")
def classify_setup(tmp_path_factory):
    """A tiny classification config (dropout off, accumulation 4, one epoch of 9 global
    batches of 8 = 3 optimizer steps) with a shared tokenizer, and its 1-process run."""
    root = tmp_path_factory.mktemp("ddp-classify")
    tok = Tokenizer.train_wordpiece(
        [r["text"] for r in toy_rows(96, 0)], vocab_size=200, min_frequency=1
    )
    tok.save(root / "tokenizer.json")
    overrides = {
        "tokenizer.path": str(root / "tokenizer.json"), "model.dropout": 0.0,
        "model.classifier_dropout": 0.0, "train.epochs": 1, "train.grad_accum": 4,
        "train.checkpoint_every": 1, "train.threads": 1,
    }  # fmt: skip

    def config_at(name: str) -> Path:
        cfg = classify_config(root / "data", **overrides, run_dir=str(root / name))
        return write_config(cfg, root / f"{name}.yaml")

    reference = drive(config_at("single"), root / "single-out", nproc=1)[0]
    return root, config_at, reference


def test_two_processes_train_the_same_model_with_one_allreduce_per_step(classify_setup):
    root, config_at, reference = classify_setup
    ranks = drive(config_at("ddp2"), root / "ddp2-out", nproc=2)
    diff = max_abs_diff(newest_weights(root / "single"), newest_weights(root / "ddp2"))
    print(f"ddp2_vs_single_max_abs_diff={diff:.3e}")
    assert diff <= 1e-5
    for rank in ranks:  # 9 micro-batches, accumulation 4: steps of 4, 4 and 1 micro-batches
        assert rank["optimizer_steps"] == reference["optimizer_steps"] == 3
        assert rank["allreduces"] == rank["optimizer_steps"]
    # Disjoint shards that together are the single process's batches.
    assert not set(ranks[0]["seen"]) & set(ranks[1]["seen"])
    assert (
        sorted(ranks[0]["seen"] + ranks[1]["seen"]) == sorted(reference["seen"]) == list(range(72))
    )
    # Only rank 0 wrote the run; its metrics agree with the single process's.
    val = [json.loads(x) for x in (root / "ddp2" / "metrics.jsonl").read_text().splitlines()]
    single = [json.loads(x) for x in (root / "single" / "metrics.jsonl").read_text().splitlines()]
    pick = lambda rows: [r for r in rows if r["split"] == "val"][-1]  # noqa: E731
    assert pick(val)["accuracy"] == pick(single)["accuracy"]
    assert pick(val)["loss"] == pytest.approx(pick(single)["loss"], abs=1e-5)


def test_two_nodes_on_loopback_train_the_same_model(classify_setup):
    root, config_at, _ = classify_setup
    config, port = config_at("nodes2"), _free_port()
    procs = [
        subprocess.Popen(
            [
                str(TORCHRUN),
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(rank),
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "-m",
                "torchformer",
                "train",
                str(config),
            ],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert max_abs_diff(newest_weights(root / "single"), newest_weights(root / "nodes2")) <= 1e-5
    manifest = json.loads((root / "nodes2" / "manifest.json").read_text())
    assert manifest["extra"]["world_size"] == 2


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)])
def test_resume_at_another_world_size_sees_every_sample_once(classify_setup, before, after):
    root, config_at, reference = classify_setup
    name = f"resume{before}{after}"
    config = config_at(name)
    first = drive(config, root / f"{name}-a", nproc=before, extra=["--stop-at-step", "1"])
    assert load_checkpoint(root / name / "checkpoints" / "step-000001.pt")["step"] == 1
    second = drive(config, root / f"{name}-b", nproc=after, extra=["--resume"])
    seen = [i for rank in first + second for i in rank["seen"]]
    assert sorted(seen) == sorted(reference["seen"])  # none skipped, none twice
    assert max_abs_diff(newest_weights(root / "single"), newest_weights(root / name)) <= 1e-5


def test_translation_on_two_processes_equals_one(tmp_path):
    base = {"train.epochs": 1, "train.grad_accum": 2, "train.max_tokens": 120,
            "train.threads": 1, "train.bleu_samples": 16}  # fmt: skip
    single = translate_config(tmp_path / "data", run_dir=str(tmp_path / "single"), **base)
    one = drive(
        write_config(single, tmp_path / "single.yaml"), tmp_path / "o1", nproc=1, task="translation"
    )
    shared = {"tokenizer.path": str(tmp_path / "single" / "source_tokenizer.json"),
              "tokenizer.tgt_path": str(tmp_path / "single" / "target_tokenizer.json")}  # fmt: skip
    if not (tmp_path / "single" / "target_tokenizer.json").is_file():
        shared.pop("tokenizer.tgt_path")
    ddp = translate_config(tmp_path / "data", run_dir=str(tmp_path / "ddp2"), **base, **shared)
    two = drive(
        write_config(ddp, tmp_path / "ddp2.yaml"), tmp_path / "o2", nproc=2, task="translation"
    )
    assert (
        max_abs_diff(newest_weights(tmp_path / "single"), newest_weights(tmp_path / "ddp2")) <= 1e-5
    )
    assert two[0]["optimizer_steps"] == one[0]["optimizer_steps"] >= 2
    assert all(r["allreduces"] == r["optimizer_steps"] for r in two)
    assert sorted(two[0]["seen"] + two[1]["seen"]) == sorted(one[0]["seen"])


def test_fsdp2_on_two_processes_trains_the_same_model_and_its_sharded_checkpoints_load_in_one(
    classify_setup,
):
    """FSDP2 (fully_shard, gloo on CPU): sharded step checkpoints (one .dcp directory,
    written by both ranks) consolidate into a plain state dict equal to the 1-process
    run's weights; a resume from them on 1 process finishes with the same weights; best/
    is whole."""
    from torchformer.train.fsdp import consolidate

    root, config_at, _ = classify_setup
    path = config_at("fsdp2")
    config = yaml.safe_load(path.read_text())
    config["train"]["distributed"] = "fsdp"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    drive(path, root / "fsdp2-a", nproc=2, extra=["--stop-at-step", "1"])
    assert sorted(p.name for p in (root / "fsdp2" / "checkpoints").iterdir()) == ["step-000001.dcp"]
    drive(path, root / "fsdp2-b", nproc=1, extra=["--resume"])  # DCP reshards 2 -> 1
    steps = sorted((root / "fsdp2" / "checkpoints").glob("step-*.dcp"))
    assert steps[-1].name == "step-000003.dcp" and (steps[-1] / "loop.pt").is_file()
    single = newest_weights(root / "single")
    assert max_abs_diff(single, consolidate(steps[-1])) <= 1e-5
    best = torchformer.load(root / "fsdp2")  # whole weights in HF layout
    reference = torchformer.load(root / "single")
    texts = ["a superb and moving film", "dull, boring and bad"]
    assert torch.allclose(best.predict_proba(texts), reference.predict_proba(texts), atol=1e-5)
