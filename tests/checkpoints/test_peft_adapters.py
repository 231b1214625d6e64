"""LoRA adapters in PEFT's format against ``peft`` itself (tier 2).

Tiny random ``BertModel`` / ``BertForSequenceClassification`` checkpoints are saved
with ``transformers``; our model loads one, gets adapters (``apply_lora``) with random,
non-zero B and a changed head, and ``save_adapter`` writes them; ``PeftModel.from_pretrained``
on the same checkpoint must then compute the same outputs. The reverse: an adapter made
by ``peft.get_peft_model`` and ``save_pretrained`` goes onto our model with ``load_adapter``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from torchformer.checkpoints import CheckpointError, load_pretrained
from torchformer.checkpoints.peft import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    load_adapter,
    save_adapter,
)
from torchformer.nn.lora import apply_lora, lora_layers

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytestmark = pytest.mark.parity

V = 99
ATOL = 1e-5
LENGTHS = [9, 5, 2]
QV = ("q", "v")
ALL = ("q", "k", "v", "out", "ffn")
HF_CLASSES = {
    "base": transformers.BertModel,
    "classification": transformers.BertForSequenceClassification,
}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    """One saved random tiny BERT per task (2 layers, d_model 32, 3 labels)."""
    dirs = {}
    for seed, (task, cls) in enumerate(HF_CLASSES.items()):
        torch.manual_seed(seed)
        config = transformers.BertConfig(
            vocab_size=V,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            num_labels=3,
        )
        dirs[task] = tmp_path_factory.mktemp(task)
        cls(config).eval().save_pretrained(dirs[task])
    return dirs


def padded_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    T = max(LENGTHS)
    mask = (torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]).long()  # (B, T)
    ids = torch.randint(1, V, (len(LENGTHS), T), generator=g).masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask}


def ours_out(model, task: str) -> torch.Tensor:
    """The outputs to compare, flattened: hidden states and pooled vector, or logits.
    Padded positions are left out (transformers and we differ there by design)."""
    inputs = padded_batch()
    with torch.no_grad():
        out = model(inputs["input_ids"], attention_mask=inputs["attention_mask"])
    if task == "classification":
        return out.logits.flatten()
    hidden = out.last_hidden_state[inputs["attention_mask"].bool()]  # (tokens, D)
    return torch.cat([hidden.flatten(), out.pooled.flatten()])


def hf_out(model, task: str) -> torch.Tensor:
    inputs = padded_batch()
    with torch.no_grad():
        out = model(**inputs)
    if task == "classification":
        return out.logits.flatten()
    hidden = out.last_hidden_state[inputs["attention_mask"].bool()]
    return torch.cat([hidden.flatten(), out.pooler_output.flatten()])


def perturb(named_params, seed: int = 5) -> None:
    """Random non-zero B and shifted head weights, so that equal outputs mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in named_params:
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif "lora_A" not in name and p.requires_grad:  # a module to save
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


def our_adapted_model(hf_dir: Path, task: str, targets):
    model, _ = load_pretrained(hf_dir, task=task)
    trainable = ("classifier", "pooler") if task == "classification" else ()
    apply_lora(model, r=4, alpha=8, dropout=0.1, targets=targets, trainable=trainable)
    perturb(model.named_parameters())
    return model


# --- ours -> peft ---------------------------------------------------------------------
@pytest.mark.parametrize("targets", [QV, ALL], ids=["q,v", "q,k,v,out,ffn"])
@pytest.mark.parametrize("task", ["base", "classification"])
def test_our_adapter_gives_peft_the_same_outputs(hf_dirs, tmp_path, task, targets):
    ours = our_adapted_model(hf_dirs[task], task, targets)
    save_adapter(ours, tmp_path, base_model_name_or_path=str(hf_dirs[task]))
    plain = HF_CLASSES[task].from_pretrained(hf_dirs[task]).eval()
    base_out = hf_out(plain, task)
    theirs = peft.PeftModel.from_pretrained(plain, tmp_path).eval()
    expected = ours_out(ours, task)
    assert (expected - base_out).abs().max() > 1e-2  # the adapter changes the outputs
    torch.testing.assert_close(hf_out(theirs, task), expected, rtol=0, atol=ATOL)
    # every layer we adapted is a LoRA layer in peft's model, and no other
    n_peft = sum(isinstance(m, peft.tuners.lora.LoraLayer) for m in theirs.modules())
    assert n_peft == len(lora_layers(ours))
    # and back onto a fresh model of ours
    again, _ = load_pretrained(hf_dirs[task], task=task)
    load_adapter(again, tmp_path)
    torch.testing.assert_close(ours_out(again.eval(), task), expected, rtol=0, atol=0)


def test_saved_adapter_files_are_in_peft_layout(hf_dirs, tmp_path):
    ours = our_adapted_model(hf_dirs["classification"], "classification", QV)
    save_adapter(ours, tmp_path, base_model_name_or_path="sentence-transformers/x")
    config = json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_CLS"
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 8, 0.1)
    assert config["target_modules"] == ["query", "value"]
    assert config["modules_to_save"] == ["classifier", "pooler.dense"]
    assert config["base_model_name_or_path"] == "sentence-transformers/x"
    keys = set(load_file(tmp_path / ADAPTER_WEIGHTS_NAME))
    lora = {
        f"base_model.model.bert.encoder.layer.{i}.attention.self.{m}.lora_{ab}.weight"
        for i in range(2)
        for m in ("query", "value")
        for ab in "AB"
    }
    head = {
        f"base_model.model.{m}.{p}"
        for m in ("classifier", "bert.pooler.dense")
        for p in ("weight", "bias")
    }
    assert keys == lora | head
    # PEFT's own config class reads it
    read = peft.PeftConfig.from_pretrained(tmp_path)
    assert read.r == 4 and set(read.target_modules) == {"query", "value"}


def test_a_classifier_head_is_saved_even_when_frozen(hf_dirs, tmp_path):
    """PEFT's SEQ_CLS rule: without the head the adapter would be useless on a fresh model."""
    ours, _ = load_pretrained(hf_dirs["classification"], task="classification")
    apply_lora(ours, r=2, alpha=2, targets=("q",))
    save_adapter(ours, tmp_path, base_model_name_or_path=None)
    config = json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    assert config["modules_to_save"] == ["classifier"]
    state = load_file(tmp_path / ADAPTER_WEIGHTS_NAME)
    torch.testing.assert_close(state["base_model.model.classifier.weight"], ours.classifier.weight)
    assert not any("pooler" in k for k in state)


def test_out_and_ffn_targets_are_named_apart(hf_dirs, tmp_path):
    """ "dense" would also adapt the pooler; "output.dense" both out and ffn_down."""
    ours, _ = load_pretrained(hf_dirs["base"], task="base")
    apply_lora(ours, r=2, alpha=2, targets=("out", "ffn_up"))
    save_adapter(ours, tmp_path, base_model_name_or_path=None)
    config = json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    assert config["target_modules"] == ["attention.output.dense", "intermediate.dense"]
    assert config["task_type"] is None and config["modules_to_save"] is None
    assert config["auto_mapping"]["base_model_class"] == "BertModel"


# --- peft -> ours ---------------------------------------------------------------------
PEFT_CASES = {
    # SEQ_CLS: peft adds the classifier to modules_to_save itself
    "cls-q,v+pooler": (
        "classification",
        dict(task_type="SEQ_CLS", target_modules=["query", "value"], modules_to_save=["pooler"]),
    ),
    # a module to save is never adapted: "dense" here leaves the pooler's dense layer alone
    "cls-dense+pooler": (
        "classification",
        dict(task_type="SEQ_CLS", target_modules=["dense"], modules_to_save=["pooler"]),
    ),
    # "dense": attention output, intermediate, output and the pooler's dense layer
    "cls-q,k,v,dense": (
        "classification",
        dict(task_type="SEQ_CLS", target_modules=["query", "key", "value", "dense"]),
    ),
    # a regular expression over the whole name; rsLoRA scaling
    "base-regex-rslora": (
        "base",
        dict(
            target_modules=r".*layer\.\d+\.(attention\.(self\.(query|key|value)|output\.dense)"
            r"|intermediate\.dense|output\.dense)",
            use_rslora=True,
            lora_dropout=0.2,
        ),
    ),
    "base-dense-excluding-pooler": (
        "base",
        dict(target_modules=["value", "dense"], exclude_modules=["pooler.dense"]),
    ),
}


@pytest.mark.parametrize("case", list(PEFT_CASES))
def test_peft_adapter_gives_our_model_the_same_outputs(hf_dirs, tmp_path, case):
    task, options = PEFT_CASES[case]
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=16, **options)
    theirs = peft.get_peft_model(HF_CLASSES[task].from_pretrained(hf_dirs[task]), config)
    perturb(theirs.named_parameters())
    theirs.eval().save_pretrained(tmp_path)
    ours, _ = load_pretrained(hf_dirs[task], task=task)
    base_out = ours_out(ours, task)
    summary = load_adapter(ours, tmp_path)
    expected = hf_out(theirs, task)
    assert (expected - base_out).abs().max() > 1e-2
    torch.testing.assert_close(ours_out(ours, task), expected, rtol=0, atol=ATOL)
    n_lora = sum(isinstance(m, peft.tuners.lora.LoraLayer) for m in theirs.modules())
    assert len(summary.adapted) == n_lora > 0
    dropouts = {getattr(m.lora_dropout, "p", 0.0) for m in lora_layers(ours).values()}
    assert dropouts == {options.get("lora_dropout", 0.0)}
    # what peft trains (A, B and its copies of the modules to save) is what we train
    assert summary.trainable == sum(p.numel() for p in theirs.parameters() if p.requires_grad)


# --- errors ---------------------------------------------------------------------------
@pytest.fixture
def adapter_dir(hf_dirs, tmp_path) -> Path:
    ours = our_adapted_model(hf_dirs["classification"], "classification", QV)
    return save_adapter(ours, tmp_path / "adapter", base_model_name_or_path=None)


def fresh(hf_dirs):
    return load_pretrained(hf_dirs["classification"], task="classification")[0]


def edit_config(adapter_dir: Path, **fields) -> None:
    path = adapter_dir / ADAPTER_CONFIG_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def edit_weights(adapter_dir: Path, edit) -> None:
    path = adapter_dir / ADAPTER_WEIGHTS_NAME
    state = load_file(path)
    edit(state)
    save_file(state, path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"use_dora": True}, "'use_dora' = True is not supported"),
        ({"rank_pattern": {"query": 8}}, "'rank_pattern'"),
        ({"peft_type": "IA3"}, "only 'LORA'"),
        ({"r": 0}, "field 'r'"),
        ({"target_modules": ["nothing"]}, "match none"),
    ],
)
def test_unsupported_or_wrong_config_is_refused(hf_dirs, adapter_dir, fields, message):
    edit_config(adapter_dir, **fields)
    with pytest.raises(CheckpointError, match=message):
        load_adapter(fresh(hf_dirs), adapter_dir)


def test_wrong_weights_are_refused_naming_the_key(hf_dirs, adapter_dir):
    key = "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight"
    edit_weights(adapter_dir, lambda s: s.pop(key))
    with pytest.raises(
        CheckpointError, match=re.escape("missing for encoder.layers.1.self_attn.v_proj")
    ):
        load_adapter(fresh(hf_dirs), adapter_dir)
    edit_weights(
        adapter_dir,
        lambda s: s.update({key: torch.zeros(32, 4), "base_model.model.x": torch.zeros(1)}),
    )
    with pytest.raises(CheckpointError, match=re.escape("unexpected weights base_model.model.x")):
        load_adapter(fresh(hf_dirs), adapter_dir)
    edit_weights(
        adapter_dir, lambda s: (s.pop("base_model.model.x"), s.update({key: torch.zeros(32, 3)}))
    )
    with pytest.raises(CheckpointError, match=re.escape("shape mismatch for encoder.layers.1")):
        load_adapter(fresh(hf_dirs), adapter_dir)


def test_adapters_go_on_a_base_bert_model_only(hf_dirs, adapter_dir):
    model = fresh(hf_dirs)
    load_adapter(model, adapter_dir)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        load_adapter(model, adapter_dir)
    roberta = load_pretrained(hf_dirs["classification"], task="classification")[0]
    roberta.config.flavour = "roberta"
    with pytest.raises(CheckpointError, match="BERT encoder models"):
        load_adapter(roberta, adapter_dir)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        save_adapter(fresh(hf_dirs), adapter_dir, base_model_name_or_path=None)
