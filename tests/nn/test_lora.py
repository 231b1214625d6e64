"""LoRA adapters (``nn.lora``): the layer's equation and initialisation, which parameters
``apply_lora`` leaves trainable, that a training step moves only those, and that
``merge_lora`` folds the adapters into plain linear layers with the same outputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torchformer.models.encoder import Encoder, EncoderForSequenceClassification, preset
from torchformer.nn.linear import is_plain_linear, linear
from torchformer.nn.lora import LoRALinear, apply_lora, lora_layers, merge_lora

V, L = 50, 2
QV = ("q", "v")
ALL = ("q", "k", "v", "out", "ffn")
# Our module names per target set, in a layer (what the aliases must expand to).
LAYER_MODULES = {
    QV: ("self_attn.q_proj", "self_attn.v_proj"),
    ALL: (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.out_proj",
        "ffn.up_proj",
        "ffn.down_proj",
    ),
}


def classifier(seed: int = 0, **overrides) -> EncoderForSequenceClassification:
    torch.manual_seed(seed)
    config = preset("tiny", vocab_size=V, max_len=80, num_labels=3, pooling="pooler", **overrides)
    return EncoderForSequenceClassification(config).eval()


def batch(length: int = 7, size: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, V, (size, length), generator=g)  # (B, T)
    mask = torch.ones_like(ids)
    mask[-1, length // 2 :] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


def outputs(model, inputs) -> torch.Tensor:
    """The last hidden states and the logits, flattened into one vector."""
    with torch.no_grad():
        out = model(inputs["input_ids"], attention_mask=inputs["attention_mask"])
    return torch.cat([out.last_hidden_state.flatten(), out.logits.flatten()])


def randomise_b(model, seed: int = 3) -> None:
    """Non-zero B, so that the adapters change the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            w = layer.lora_B.weight
            w.copy_(torch.randn(w.shape, generator=g) * 0.2)


# --- the layer ------------------------------------------------------------------------
def test_lora_linear_starts_as_the_base_layer_with_peft_initialisation():
    torch.manual_seed(0)
    base = nn.Linear(24, 10)
    weight, bias = base.weight, base.bias
    layer = LoRALinear(base, r=4, alpha=8)
    assert layer.weight is weight and layer.bias is bias  # same parameters, frozen
    assert not weight.requires_grad and not bias.requires_grad
    assert layer.lora_A.weight.shape == (4, 24) and layer.lora_B.weight.shape == (10, 4)
    assert layer.lora_A.weight.requires_grad and layer.lora_B.weight.requires_grad
    # Kaiming-uniform with a=√5: U(-1/√fan_in, 1/√fan_in); B zero
    a = layer.lora_A.weight
    assert a.abs().max() <= 1 / math.sqrt(24) and a.abs().max() > 0.5 / math.sqrt(24)
    assert a.std().item() == pytest.approx(1 / math.sqrt(24) / math.sqrt(3), rel=0.25)
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    x = torch.randn(3, 5, 24)
    # the base map computed by the same kernel (``nn.linear.linear``) is matched exactly
    torch.testing.assert_close(layer(x), linear(x, base.weight, base.bias), rtol=0, atol=0)
    torch.testing.assert_close(layer(x), base(x), rtol=1e-5, atol=1e-6)
    assert set(layer.state_dict()) == {"weight", "bias", "lora_A.weight", "lora_B.weight"}


@pytest.mark.parametrize(("use_rslora", "scaling"), [(False, 16 / 4), (True, 16 / 2)])
def test_lora_linear_is_base_plus_scaled_low_rank_update(use_rslora, scaling):
    torch.manual_seed(0)
    base = nn.Linear(12, 6)
    W, b = base.weight.detach().clone(), base.bias.detach().clone()
    layer = LoRALinear(base, r=4, alpha=16, use_rslora=use_rslora)
    nn.init.normal_(layer.lora_B.weight)
    A, B = layer.lora_A.weight.detach(), layer.lora_B.weight.detach()
    assert layer.scaling == scaling
    x = torch.randn(2, 3, 12)
    expected = x @ W.T + b + scaling * (x @ A.T @ B.T)  # (2, 3, 6)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.delta_weight(), scaling * B @ A)


def test_lora_dropout_acts_on_the_adapter_path_only():
    torch.manual_seed(0)
    base = nn.Linear(16, 16)
    layer = LoRALinear(base, r=2, alpha=2, dropout=0.5).train()
    x = torch.randn(4, 16)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)  # B = 0: dropout invisible
    nn.init.normal_(layer.lora_B.weight)
    with torch.no_grad():
        trained = layer(x)
        evaluated = layer.eval()(x)
    expected = base(x) + layer.scaling * layer.lora_B(layer.lora_A(x))
    torch.testing.assert_close(evaluated, expected)
    assert not torch.allclose(trained, evaluated)  # dropout was active in training


def test_lora_linear_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 4), r=0, alpha=1)
    with pytest.raises(ValueError, match="dropout"):
        LoRALinear(nn.Linear(4, 4), r=1, alpha=1, dropout=1.0)
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        LoRALinear(nn.Conv1d(4, 4, 1), r=1, alpha=1)


# --- apply_lora -----------------------------------------------------------------------
@pytest.mark.parametrize("targets", [QV, ALL], ids=["q,v", "q,k,v,out,ffn"])
def test_apply_lora_leaves_only_adapters_and_named_head_trainable(targets):
    model = classifier()
    r = 4
    summary = apply_lora(model, r=r, alpha=8, targets=targets, trainable=("classifier", "pooler"))
    adapted = [f"encoder.layers.{i}.{m}" for i in range(L) for m in LAYER_MODULES[targets]]
    assert summary.adapted == tuple(sorted(adapted))
    assert set(lora_layers(model)) == set(adapted)
    expected = {f"{m}.lora_{ab}.weight" for m in adapted for ab in "AB"}
    expected |= {"classifier.weight", "classifier.bias", "encoder.pooler.weight"}
    expected |= {"encoder.pooler.bias"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected
    params = dict(model.named_parameters())
    n_trainable = sum(params[n].numel() for n in expected)
    assert summary.trainable == n_trainable
    assert summary.total == sum(p.numel() for p in model.parameters())
    assert summary.percent == pytest.approx(100 * n_trainable / summary.total)
    # rank r on each adapted (O, I) layer: r·I + O·r parameters
    adapters = sum(r * (m.in_features + m.out_features) for m in lora_layers(model).values())
    assert n_trainable == adapters + 3 * 32 + 3 + 32 * 32 + 32
    assert f"{summary.trainable:,}" in str(summary)


def test_a_training_step_changes_only_the_trainable_parameters():
    # Wider initial weights than BERT's 0.02, so that attention is far from uniform and
    # every adapter (q and k too) gets a gradient.
    model = classifier(dropout=0.0, attn_dropout=0.0, initializer_range=0.2).train()
    apply_lora(model, r=4, alpha=8, targets=ALL, trainable=("classifier",))
    randomise_b(model)  # B = 0 would give A no gradient in the first step
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # Every parameter goes to the optimizer, as a careless caller would: the frozen ones
    # must get no gradient. Adam moves a parameter by about lr for any non-zero gradient.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-12)
    inputs = batch()
    out = model(
        inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=torch.tensor([0, 2])
    )
    out.loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_apply_lora_keeps_the_models_mode_and_works_on_the_fused_inference_path():
    model = classifier()  # eval
    base = classifier()
    apply_lora(model, r=2, alpha=4, dropout=0.5, targets=ALL)
    assert not any(m.training for m in model.modules())
    randomise_b(model)
    long = batch(length=40, size=2)  # 80 tokens: the fused q/k/v and FFN paths of plain Linears
    inference = outputs(model, long)  # under no_grad
    with torch.enable_grad():  # never fused
        out = model(long["input_ids"], attention_mask=long["attention_mask"])
    autograd = torch.cat([out.last_hidden_state.flatten(), out.logits.flatten()]).detach()
    torch.testing.assert_close(inference, autograd, rtol=1e-5, atol=1e-5)
    assert (inference - outputs(base, long)).abs().max() > 1e-3  # the adapters are used
    torch.testing.assert_close(outputs(model, long), inference, rtol=0, atol=0)  # no dropout


def test_apply_lora_errors_name_the_target():
    with pytest.raises(ValueError, match="'query' matches no module"):
        apply_lora(classifier(), r=2, alpha=2, targets=("query",))
    with pytest.raises(TypeError, match="self_attn is a MultiHeadAttention"):
        apply_lora(classifier(), r=2, alpha=2, targets=("self_attn",))
    with pytest.raises(ValueError, match="trainable 'head' matches no module"):
        apply_lora(classifier(), r=2, alpha=2, trainable=("head",))
    with pytest.raises(ValueError, match="contains the LoRA target"):
        apply_lora(classifier(), r=2, alpha=2, targets=("q",), trainable=("layers.0",))
    model = classifier()
    apply_lora(model, r=2, alpha=2, targets=("q",))
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        apply_lora(model, r=2, alpha=2, targets=("q",))


def test_module_name_suffixes_pick_single_layers():
    model = Encoder(preset("tiny", vocab_size=V))
    summary = apply_lora(model, r=2, alpha=2, targets=("layers.1.ffn.down_proj", "k"))
    assert summary.adapted == (
        "layers.0.self_attn.k_proj",
        "layers.1.ffn.down_proj",
        "layers.1.self_attn.k_proj",
    )


# --- merge_lora -----------------------------------------------------------------------
@pytest.mark.parametrize("targets", [QV, ALL], ids=["q,v", "q,k,v,out,ffn"])
def test_merge_lora_gives_plain_linears_with_equal_outputs(targets):
    base = classifier()
    model = classifier()
    base_keys = set(model.state_dict())
    apply_lora(model, r=4, alpha=8, targets=targets, trainable=("classifier",))
    randomise_b(model)
    inputs = batch()
    adapted = outputs(model, inputs)
    assert (adapted - outputs(base, inputs)).abs().max() > 1e-3  # not trivially equal
    q = model.encoder.layers[0].self_attn.q_proj
    expected_weight = q.weight.detach() + q.scaling * q.lora_B.weight.detach() @ q.lora_A.weight
    assert merge_lora(model) is model
    assert not lora_layers(model)
    assert is_plain_linear(model.encoder.layers[0].self_attn.q_proj)
    torch.testing.assert_close(model.encoder.layers[0].self_attn.q_proj.weight, expected_weight)
    assert set(model.state_dict()) == base_keys  # savable as the base model again
    torch.testing.assert_close(outputs(model, inputs), adapted, rtol=0, atol=1e-6)
