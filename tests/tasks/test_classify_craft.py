"""The classifier's fine-tuning techniques as options of the one loop: ULMFiT's slanted
triangular rates, discriminative rates and gradual unfreezing, adversarial training on
the embeddings (FGM, PGD) and R-Drop — config, batch loss and exact resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_classify import toy_rows, write_csv

import torchformer
from torchformer.config import ConfigError, load_config, save_config
from torchformer.data.batching import pad_batch
from torchformer.tasks.classify import ClassificationTask, ClassifyConfig, train
from torchformer.text.tokenizer import Tokenizer
from torchformer.train.checkpoint import load_checkpoint

craft_rows, craft_csv = toy_rows, write_csv  # the classification tests' toy reviews


def craft_config(tmp_path: Path, run: str = "run", **overrides) -> ClassifyConfig:
    """A tiny run ``tmp_path / run``: 72 training rows, batches of 8 (9 steps an epoch), a
    2-layer encoder (4 layer groups: head, layer_1, layer_0, embeddings). The runs in one
    ``tmp_path`` share a tokenizer file (WordPiece breaks frequency ties differently from
    one process to the next)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    shared = tmp_path / "tokenizer.json"
    if not shared.is_file():
        Tokenizer.train_wordpiece(
            [r["text"] for r in craft_rows(96, 0)], vocab_size=200, min_frequency=1
        ).save(shared)
    base = {
        "run_dir": str(tmp_path / run),
        "report": False,
        "data.source": str(craft_csv(tmp_path / "train.csv", craft_rows(96, 0))),
        "data.test_file": str(craft_csv(tmp_path / "test.csv", craft_rows(32, 1))),
        "data.val_fraction": 0.25,
        "data.max_length": 32,
        "model.base": "scratch",
        "model.preset": "tiny",
        "model.pooling": "mean",
        "tokenizer.path": str(shared),
        "train.epochs": 2,
        "train.batch_size": 8,
        "train.lr": 3e-3,
        "train.warmup_ratio": 0.1,
        "train.progress": False,
        "train.patience": 10,
    }
    base.update(overrides)
    return load_config(ClassifyConfig, None, base)


def checkpoints(run_dir: Path) -> dict[int, dict]:
    return {
        int(p.stem.split("-")[1]): load_checkpoint(p)
        for p in sorted((run_dir / "checkpoints").glob("step-*.pt"))
    }


def changed(a: dict, b: dict, prefix: str) -> list[bool]:
    keys = [k for k in a["model"] if k.startswith(prefix)]
    assert keys, prefix
    return [not torch.equal(a["model"][k], b["model"][k]) for k in keys]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=1e-6, msg=key)


def prepared(tmp_path: Path, **overrides) -> tuple[ClassificationTask, torch.nn.Module]:
    cfg = craft_config(tmp_path, **overrides)
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    task = ClassificationTask(cfg)
    model = task.prepare(Path(cfg.run_dir), resume=False, main=True)
    model.train()
    return task, model


def batch_of(task: ClassificationTask, indices: list[int]):
    split = task.encoded["train"]
    ids, mask = pad_batch([split.input_ids[i] for i in indices], task.tokenizer.pad_id)
    return ids, mask, torch.tensor([split.labels[i] for i in indices])


# --- configuration ------------------------------------------------------------------------


def test_options_are_off_by_default_and_set_by_dotted_overrides(tmp_path):
    default = ClassifyConfig().train
    assert (default.layer_lr_decay, default.unfreeze, default.adversarial) == (None, "off", "none")
    assert (default.rdrop_alpha, default.stlr_cut_frac, default.stlr_ratio) == (0.0, 0.1, 32.0)
    assert (default.adv_epsilon, default.adv_weight) == (1.0, 1.0)
    assert (default.pgd_steps, default.pgd_alpha) == (3, 0.3)
    shipped = Path(torchformer.__file__).parent / "configs" / "imdb-minilm.yaml"
    argv = "--train.layer_lr_decay 0.8 --train.unfreeze 50 --train.schedule stlr "
    argv += "--train.stlr_cut_frac 0.2 --train.stlr_ratio 16 --train.adversarial pgd "
    argv += "--train.adv_epsilon 0.5 --train.pgd_steps 2 --train.pgd_alpha 0.1 "
    argv += "--train.adv_weight 0.3 --train.rdrop_alpha 0"
    tc = load_config(ClassifyConfig, shipped, argv.split()).train
    assert (tc.layer_lr_decay, tc.unfreeze, tc.schedule) == (0.8, 50, "stlr")
    assert (tc.stlr_cut_frac, tc.stlr_ratio, tc.adversarial) == (0.2, 16.0, "pgd")
    assert (tc.adv_epsilon, tc.pgd_steps, tc.pgd_alpha, tc.adv_weight) == (0.5, 2, 0.1, 0.3)
    assert (
        load_config(ClassifyConfig, None, ["--train.unfreeze", "epoch"]).train.unfreeze == "epoch"
    )
    with pytest.raises(ConfigError, match=r"train\.unfreeze"):
        load_config(ClassifyConfig, None, ["--train.unfreeze", "sometimes"])
    for value in ("off", "epoch", 7):  # a saved config.yaml reads back the same
        cfg = load_config(ClassifyConfig, None, {"train.unfreeze": value})
        save_config(cfg, tmp_path / "c.yaml")
        assert load_config(ClassifyConfig, tmp_path / "c.yaml").train.unfreeze == value


def test_impossible_combinations_are_refused_before_the_run(tmp_path):
    cases = {
        "needs model.freeze_encoder: false": {
            "train.unfreeze": "epoch",
            "model.freeze_encoder": True,
        },
        "cannot be combined": {"train.rdrop_alpha": 1.0, "train.adversarial": "fgm"},
        r"layer_lr_decay must be in \(0, 1\]": {"train.layer_lr_decay": 0.0},
        "must be 'off', 'epoch' or >= 1": {"train.unfreeze": 0},
        "adv_epsilon": {"train.adversarial": "pgd", "train.pgd_steps": 0},
    }
    for i, (message, overrides) in enumerate(cases.items()):
        cfg = craft_config(tmp_path, f"run{i}", **overrides)
        with pytest.raises(ValueError, match=message):
            train(cfg)
        assert not Path(cfg.run_dir).exists()


def test_the_task_builds_discriminative_groups_and_stlr(tmp_path):
    task, model = prepared(tmp_path, **{"train.layer_lr_decay": 0.5, "train.schedule": "stlr"})
    optimizer = task.build_optimizer(model)
    scheduler = task.build_scheduler(optimizer, 40)
    lrs = {g["group_name"]: g["lr"] for g in optimizer.param_groups}
    first = 3e-3 / 32  # stlr starts at lr / ratio, without warm-up
    depth = {"head": 0, "layer_1": 1, "layer_0": 2, "embeddings": 3}
    for name, lr in lrs.items():
        assert lr == pytest.approx(first * 0.5 ** depth[name.split(".")[0]]), name
    assert scheduler.lr == pytest.approx(first)
    default_task, default_model = prepared(tmp_path / "default")
    plain = default_task.build_optimizer(default_model)
    assert [g["group_name"] for g in plain.param_groups] == ["decay", "no_decay"]


# --- batch losses -------------------------------------------------------------------------


def test_rdrop_batch_loss_is_the_formula_over_two_dropout_passes(tmp_path):
    task, model = prepared(tmp_path, **{"train.rdrop_alpha": 2.0, "model.dropout": 0.2})
    indices = list(range(8))
    ids, mask, labels = batch_of(task, indices)
    torch.manual_seed(7)
    loss = task.batch_loss(model, indices, torch.device("cpu"))
    torch.manual_seed(7)  # the same dropout masks: the batch twice in one pass
    l1, l2 = model(ids.repeat(2, 1), attention_mask=mask.repeat(2, 1)).logits.chunk(2)
    p1, p2 = l1.softmax(-1), l2.softmax(-1)
    rows = torch.arange(len(indices))
    ce = -0.5 * (p1[rows, labels].log().mean() + p2[rows, labels].log().mean())
    kl = 0.5 * ((p1 * (p1 / p2).log()).sum(-1) + (p2 * (p2 / p1).log()).sum(-1)).mean()
    assert kl > 1e-4  # the two passes differ
    torch.testing.assert_close(loss, ce + 2.0 * kl)

    task.config.train.rdrop_alpha = 0.0  # off: the plain loss of one pass
    torch.manual_seed(7)
    plain = task.batch_loss(model, indices, torch.device("cpu"))
    torch.manual_seed(7)
    torch.testing.assert_close(plain, model(ids, attention_mask=mask, labels=labels).loss)


def test_fgm_batch_loss_is_clean_plus_weighted_adversarial_loss(tmp_path):
    options = {"train.adversarial": "fgm", "train.adv_epsilon": 0.5, "train.adv_weight": 0.3}
    task, model = prepared(tmp_path, **options, **{"model.dropout": 0.0})
    indices = [3, 9, 20, 41]
    ids, mask, labels = batch_of(task, indices)
    assert (mask == 0).any()  # padded
    weights_before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = task.batch_loss(model, indices, torch.device("cpu"))

    leaf = {}

    def loss_at(delta):
        def hook(module, args, output):
            leaf["x"] = output.detach().requires_grad_()
            return leaf["x"] + delta

        handle = model.encoder.embeddings.register_forward_hook(hook)
        try:
            return model(ids, attention_mask=mask, labels=labels).loss
        finally:
            handle.remove()

    clean = loss_at(0.0)
    (g,) = torch.autograd.grad(clean, leaf["x"])
    g = g * mask[..., None]  # the task's pad id marks the padding
    delta = 0.5 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1)
    torch.testing.assert_close(loss, clean + 0.3 * loss_at(delta), rtol=1e-5, atol=1e-6)
    assert loss > clean
    assert not model.encoder.embeddings._forward_hooks
    assert all(torch.equal(v, weights_before[k]) for k, v in model.state_dict().items())


# --- through the loop: effects and exact resume -------------------------------------------


def test_ulmfit_with_pgd_resumes_exactly_and_unfreezes_from_the_top(tmp_path):
    options = {
        "train.checkpoint_every": 1,
        "train.keep_checkpoints": 100,
        "train.eval_every": 4,
        "train.schedule": "stlr",
        "train.stlr_cut_frac": 0.5,
        "train.layer_lr_decay": 0.5,
        "train.unfreeze": 3,  # groups trainable: 1 for steps 1-3, 2 for 4-6, 3, then 4
        "train.adversarial": "pgd",
        "train.pgd_steps": 2,
        "model.classifier_dropout": 0.3,
    }
    unbroken = train(craft_config(tmp_path, "a", **options))
    cfg = craft_config(tmp_path, "b", **options)
    train(cfg, stop_at_step=5)  # between two unfreezings
    resumed = train(cfg, resume=True)
    a, b = checkpoints(unbroken), checkpoints(resumed)
    assert max(a) == max(b) == 18
    assert_same_weights(a[18], b[18])
    assert json.loads((resumed / "eval/test/metrics.json").read_text()) == json.loads(
        (unbroken / "eval/test/metrics.json").read_text()
    )
    # the effect of the schedule of unfreezing, in the unbroken run's checkpoints
    assert any(changed(a[1], a[3], "classifier."))
    for frozen in ("encoder.layers.1.", "encoder.layers.0.", "encoder.embeddings."):
        assert not any(changed(a[1], a[3], frozen)), frozen
    assert any(changed(a[3], a[6], "encoder.layers.1."))
    assert not any(changed(a[3], a[6], "encoder.layers.0."))
    assert any(changed(a[6], a[9], "encoder.layers.0."))
    assert not any(changed(a[1], a[9], "encoder.embeddings."))
    assert any(changed(a[9], a[12], "encoder.embeddings."))
    # the manifest counts what the run trains by its end (all of it, as full fine-tuning
    # counts), not the first group alone
    manifest = json.loads((unbroken / "manifest.json").read_text())
    every = sum(p.numel() for p in torchformer.load(unbroken).model.parameters())
    assert manifest["extra"]["trainable_parameters"] == every
    # stlr over the 18 steps (cut = 9), on the head; the embeddings at lr * 0.5**3
    logged = [json.loads(x) for x in (unbroken / "metrics.jsonl").read_text().splitlines()]
    lr_at = {x["step"]: x["lr"] for x in logged if x["split"] == "train"}
    assert lr_at[1] == pytest.approx(3e-3 * (1 + 1 / 9 * 31) / 32)  # rising: p = t / cut
    p = 1 - (10 - 9) / (9 * (1 / 0.5 - 1))
    assert lr_at[10] == pytest.approx(3e-3 * (1 + p * 31) / 32)
    groups = {g["group_name"]: g["lr"] for g in a[10]["optimizer"]["param_groups"]}
    assert groups["embeddings.decay"] == pytest.approx(groups["head.decay"] * 0.5**3)
    assert math.isclose(groups["head.decay"], lr_at[10])


def test_epoch_unfreezing_with_rdrop_resumes_exactly(tmp_path):
    options = {
        "train.checkpoint_every": 1,
        "train.keep_checkpoints": 100,
        "train.unfreeze": "epoch",
        "train.rdrop_alpha": 1.0,
        "model.dropout": 0.1,
    }
    unbroken = train(craft_config(tmp_path, "a", **options))
    cfg = craft_config(tmp_path, "b", **options)
    train(cfg, stop_at_step=12)  # mid-epoch 1
    resumed = train(cfg, resume=True)
    a, b = checkpoints(unbroken), checkpoints(resumed)
    assert_same_weights(a[18], b[18])
    # epoch 0 (steps 1-9): the head alone; epoch 1: the top layer too
    assert not any(changed(a[1], a[9], "encoder.layers.1."))
    assert any(changed(a[9], a[18], "encoder.layers.1."))
    assert not any(changed(a[1], a[18], "encoder.layers.0."))
    assert not any(changed(a[1], a[18], "encoder.embeddings."))
