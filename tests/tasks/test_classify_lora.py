"""LoRA in the classification task (``model.lora_r``): only the adapters and the head
train, ``best/`` is the merged plain model and ``best/adapter/`` the PEFT-format adapter
that gives the same outputs on the base model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_classify_craft import checkpoints, craft_config

import torchformer
from torchformer.checkpoints import load_pretrained
from torchformer.checkpoints.peft import load_adapter
from torchformer.tasks.classify import ClassificationTask, train
from torchformer.tasks.ensemble import average_run

LORA = {"model.lora_r": 4, "model.lora_alpha": 8.0, "model.lora_dropout": 0.0,
        "model.pooling": "pooler",  # transformers' BERT classifier: the adapter reproduces it
        "train.epochs": 1, "train.lr": 1e-2, "train.checkpoint_every": 1}  # fmt: skip


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir) -> Path:
    folder = tmp_path_factory.mktemp("lora")
    return train(craft_config(folder, **LORA, **{"model.base": str(tiny_model_dir),
                                                  "tokenizer.path": None}))  # fmt: skip


def test_only_the_adapters_and_the_head_train(lora_run: Path, tiny_model_dir: Path) -> None:
    extra = json.loads((lora_run / "manifest.json").read_text())["extra"]
    steps = checkpoints(lora_run)
    first, last = steps[min(steps)]["model"], steps[max(steps)]["model"]
    base, _ = load_pretrained(tiny_model_dir, task="classification")
    base_state = base.state_dict()
    adapters = [k for k in last if ".lora_A." in k or ".lora_B." in k]
    assert adapters and all(".q_proj." in k or ".v_proj." in k for k in adapters)
    head = [k for k in last if k.startswith(("classifier.", "encoder.pooler."))]
    counted = sum(last[k].numel() for k in adapters + head)
    assert extra["trainable_parameters"] == counted < extra["parameters"]
    for key, value in last.items():
        if key in adapters or key in head:
            continue
        torch.testing.assert_close(value, base_state[key], rtol=0, atol=0, msg=key)  # frozen
    assert any(not torch.equal(last[k], first[k]) for k in adapters if ".lora_B." in k)


def test_best_is_the_merged_model_and_the_adapter_reproduces_it(
    lora_run: Path, tiny_model_dir: Path
) -> None:
    best = lora_run / "best"
    config = json.loads((best / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == str(tiny_model_dir)
    classifier = torchformer.load(lora_run)  # a plain model: no LoRA modules
    assert not any("lora" in name for name, _ in classifier.model.named_parameters())
    pooling = classifier.model.config.pooling  # the run's: "pooler"
    model, _ = load_pretrained(tiny_model_dir, task="classification", pooling=pooling)
    load_adapter(model, best / "adapter")
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 5, 6, 3, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        merged = classifier.model(ids, attention_mask=mask).logits
        adapted = model.eval()(ids, attention_mask=mask).logits
    torch.testing.assert_close(adapted, merged, rtol=0, atol=1e-5)
    base, _ = load_pretrained(tiny_model_dir, task="classification", pooling=pooling)
    with torch.no_grad():
        assert not torch.allclose(base.eval()(ids, attention_mask=mask).logits, merged)


def test_lora_combinations_that_cannot_work_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model\.lora_r adapts a pretrained model"):
        train(craft_config(tmp_path, **{"model.lora_r": 4}))
    with pytest.raises(ValueError, match=r"cannot be combined with model\.freeze_encoder"):
        train(craft_config(tmp_path, **{"model.lora_r": 4, "model.base": "minilm",
                                        "model.freeze_encoder": True}))  # fmt: skip


def test_no_adapter_is_written_where_peft_would_not_reproduce_the_model(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Mean pooling: transformers' BERT classifier reads the pooler, so a PEFT adapter
    would give another model; best/ is still the merged model, and the pooler (unused)
    stays frozen."""
    config = craft_config(tmp_path, **{**LORA, "model.pooling": "mean",
                                       "model.base": str(tiny_model_dir), "tokenizer.path": None})  # fmt: skip
    task = ClassificationTask(config)
    model = task.prepare(tmp_path / "run", resume=False, main=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any("pooler" in n for n in trainable) and "classifier.weight" in trainable
    task.save_best(model, tmp_path / "best")
    assert (tmp_path / "best/config.json").is_file() and not (tmp_path / "best/adapter").exists()


def test_averaging_a_lora_run_is_refused(lora_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="LoRA run"):
        average_run(lora_run, tmp_path / "avg", last=2)


def test_peft_adapters_are_refused_for_what_transformers_bert_classifier_cannot_read():
    from types import SimpleNamespace

    from torchformer.tasks.classify_config import ModelConfig, peft_mismatch

    bert = SimpleNamespace(config=SimpleNamespace(flavour="bert"))
    plain = ModelConfig(base="some-bert", pooling="pooler")
    assert peft_mismatch(bert, plain) is None
    roberta = SimpleNamespace(config=SimpleNamespace(flavour="roberta"))
    assert "written for BERT models (some-bert is not one)" in peft_mismatch(roberta, plain)
    cases = {
        "pools by 'mean'": ModelConfig(base="b", pooling="mean"),
        "one truncated sequence": ModelConfig(base="b", pooling="pooler", long_document="chunks"),
        "full attention, not 'sliding_window'": ModelConfig(
            base="b", pooling="pooler", attention="sliding_window"
        ),
    }
    for message, m in cases.items():
        assert message in peft_mismatch(bert, m), message
