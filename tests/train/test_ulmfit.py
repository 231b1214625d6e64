"""ULMFiT's fine-tuning schedule: slanted triangular rates, discriminative (layer-wise)
learning rates and gradual unfreezing (Howard & Ruder, 2018, sec. 3.2)."""

import itertools

import pytest
import torch

from torchformer.models.encoder import EncoderForSequenceClassification, preset
from torchformer.train.optim import build_optimizer, layer_groups, param_groups
from torchformer.train.schedules import build_scheduler, lr_multiplier
from torchformer.train.unfreeze import GradualUnfreezing


def sgd(lrs: list[float]) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    )


def lrs_over(scheduler, steps: int, group: int = 0) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[group]["lr"])
        scheduler.step()
    return out


def tiny_encoder(n_layers: int = 3) -> EncoderForSequenceClassification:
    torch.manual_seed(0)
    cfg = preset("tiny", n_layers=n_layers, pooling="pooler", dropout=0.0, attn_dropout=0.0)
    return EncoderForSequenceClassification(cfg)


def tiny_batch(vocab: int = 1000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (4, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[mask == 0] = 0
    return ids, mask, torch.tensor([0, 1, 1, 0])


def expected_label(name: str) -> str:
    """The spec of layer_groups, written out: which group a parameter belongs to."""
    if name.startswith("encoder.embeddings."):
        return "embeddings"
    if name.startswith("encoder.layers."):
        return f"layer_{int(name.split('.')[2])}"
    return "head"


def expected_depth(label: str, n_layers: int) -> int:
    if label == "head":
        return 0
    if label == "embeddings":
        return n_layers + 1
    return n_layers - int(label.removeprefix("layer_"))


# --- slanted triangular learning rates ----------------------------------------------------


def test_stlr_values_at_given_steps_follow_the_paper():
    # T = 200, cut_frac = 0.1: cut = 20; p = t/20 while rising, 1 - (t-20)/180 falling;
    # lr = 0.01 * (1 + 31 p) / 32 (Howard & Ruder, 2018, eq. 3).
    sched = build_scheduler(sgd([0.01]), "stlr", total_steps=200)
    lrs = lrs_over(sched, 201)
    assert lrs[0] == pytest.approx(0.01 / 32)  # p = 0
    assert lrs[10] == pytest.approx(0.01 * 16.5 / 32)  # p = 1/2 on the way up
    assert lrs[20] == pytest.approx(0.01)  # p = 1: the peak at cut
    assert lrs[110] == pytest.approx(0.01 * 16.5 / 32)  # p = 1 - 90/180
    assert lrs[200] == pytest.approx(0.01 / 32)  # p = 0 at T
    steps = [b - a for a, b in itertools.pairwise(lrs)]
    assert all(s > 0 for s in steps[:20]) and all(s < 0 for s in steps[20:])
    assert max(steps[:20]) == pytest.approx(min(steps[:20]))  # straight lines
    assert max(steps[20:]) == pytest.approx(min(steps[20:]))


def test_stlr_uses_cut_frac_and_ratio():
    # T = 8, cut_frac = 0.25, ratio = 4: cut = 2, fall over 2 * (4 - 1) = 6 steps.
    sched = build_scheduler(sgd([1.0]), "stlr", total_steps=8, cut_frac=0.25, ratio=4.0)
    expected = [0.25, 0.625, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25]  # (1 + 3 p) / 4
    assert lrs_over(sched, 9) == pytest.approx(expected)


def test_stlr_never_goes_below_the_lowest_rate_when_t_cut_frac_is_not_whole():
    # T = 25: cut = floor(2.5) = 2, and the paper's fall lasts 2 * 9 = 18 < 23 steps.
    lrs = lrs_over(build_scheduler(sgd([1.0]), "stlr", total_steps=25), 30)
    assert lrs[20] == pytest.approx(1 / 32)  # the fall ends at t = cut + 18
    assert min(lrs) == pytest.approx(1 / 32) and lrs[25] == pytest.approx(1 / 32)
    # too short to rise (cut = 0): falls from the peak over the T steps
    assert lr_multiplier("stlr", 0, total_steps=5) == 1.0
    assert lr_multiplier("stlr", 5, total_steps=5) == pytest.approx(1 / 32)


def test_stlr_keeps_each_groups_base_lr_and_resumes():
    sched = build_scheduler(sgd([1.0, 0.25]), "stlr", total_steps=40)
    for _ in range(7):
        sched.step()
    head, low = sched.get_last_lr()
    p = 1 - (7 - 4) / (4 * 9)  # cut = 4, falling
    assert head == pytest.approx((1 + 31 * p) / 32) and low == pytest.approx(0.25 * head)
    state, upcoming = sched.state_dict(), lrs_over(sched, 5, group=1)
    resumed = build_scheduler(sgd([1.0, 0.25]), "stlr", total_steps=40)
    resumed.load_state_dict(state)
    assert lrs_over(resumed, 5, group=1) == upcoming


def test_stlr_refuses_a_warmup_and_bad_settings():
    with pytest.raises(ValueError, match="its own warm-up"):
        build_scheduler(sgd([1.0]), "stlr", total_steps=10, warmup_steps=2)
    with pytest.raises(ValueError, match="needs total_steps"):
        build_scheduler(sgd([1.0]), "stlr")
    with pytest.raises(ValueError, match="cut_frac"):
        build_scheduler(sgd([1.0]), "stlr", total_steps=10, cut_frac=1.0)
    with pytest.raises(ValueError, match="ratio"):
        build_scheduler(sgd([1.0]), "stlr", total_steps=10, ratio=0.5)


def test_noam_keeps_the_ratio_between_groups():
    sched = build_scheduler(sgd([2.0, 0.5]), "noam", warmup_steps=4, d_model=16)
    for _ in range(6):
        sched.step()
    head, low = sched.get_last_lr()
    assert head == pytest.approx(16**-0.5 * min(6**-0.5, 6 * 4**-1.5))
    assert low == pytest.approx(head / 4)


# --- discriminative learning rates --------------------------------------------------------


def test_layer_groups_cover_every_parameter_once_from_the_top():
    model = tiny_encoder(n_layers=3)
    groups = layer_groups(model)
    assert [label for label, _ in groups] == [
        "head",
        "layer_2",
        "layer_1",
        "layer_0",
        "embeddings",
    ]
    listed = [n for _, names in groups for n in names]
    assert sorted(listed) == sorted(n for n, _ in model.named_parameters())
    for label, names in groups:
        assert all(expected_label(n) == label for n in names), label
    assert {"classifier.weight", "encoder.pooler.weight"} <= set(groups[0][1])
    with pytest.raises(ValueError, match="'embeddings' and a 'layers'"):
        layer_groups(torch.nn.Linear(2, 2))


class _Stack(torch.nn.Module):
    """A module with embeddings and a layers ModuleList (what layer_groups looks for)."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = torch.nn.Embedding(5, 2)
        self.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])


def test_layer_groups_of_the_stack_itself_and_beside_a_decoder_like_module():
    # The encoder alone is the stack (no prefix): its embeddings and layers still group.
    encoder = tiny_encoder(n_layers=2).encoder
    groups = dict(layer_groups(encoder))
    assert groups["embeddings"] and all(n.startswith("embeddings.") for n in groups["embeddings"])
    assert groups["layer_1"] and all(n.startswith("layers.1.") for n in groups["layer_1"])
    assert all(not n.startswith(("embeddings.", "layers.")) for n in groups["head"])
    # A module with 'layers' but no 'embeddings' (a decoder stack) is not a second stack.
    model = torch.nn.Module()
    model.encoder, model.decoder = _Stack(), torch.nn.Module()
    model.decoder.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    groups = dict(layer_groups(model))
    assert list(groups) == ["head", "layer_0", "embeddings"]
    assert groups["head"] == ["decoder.layers.0.weight", "decoder.layers.0.bias"]


def test_layer_groups_name_the_stacks_they_found_when_there_is_not_exactly_one():
    with pytest.raises(ValueError) as none:
        layer_groups(torch.nn.Linear(2, 2))
    assert str(none.value) == (
        "layer groups need one module with 'embeddings' and a 'layers' ModuleList "
        "(an encoder); found none in Linear"
    )
    outer = _Stack()
    outer.inner = _Stack()  # the model itself and one of its children
    with pytest.raises(ValueError) as two:
        layer_groups(outer)
    assert str(two.value).endswith("found ['(the model)', 'inner'] in _Stack")


@pytest.mark.parametrize("decay", [0.8, 1 / 2.6])
def test_layer_lr_decay_gives_each_depth_its_rate_and_keeps_the_weight_decay_split(decay):
    n_layers, lr = 3, 1e-3
    model = tiny_encoder(n_layers=n_layers)
    model.encoder.embeddings.token_type_embeddings.requires_grad_(False)  # frozen: left out
    optimizer = build_optimizer(model, lr=lr, weight_decay=0.01, layer_lr_decay=decay)
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    seen = []
    for group in optimizer.param_groups:
        label, kind = group["group_name"].split(".")
        depth = expected_depth(label, n_layers)
        assert group["lr"] == pytest.approx(lr * decay**depth), group["group_name"]
        assert group["weight_decay"] == (0.01 if kind == "decay" else 0.0)
        for name, param in zip(group["param_names"], group["params"]):
            assert expected_label(name) == label
            is_norm = name.split(".")[-2] in ("norm", "attn_norm", "ffn_norm")
            assert (kind == "no_decay") == (param.ndim < 2 or is_norm), name
            seen.append(id(param))
    assert sorted(seen) == sorted(trainable)  # every trainable parameter in exactly one group
    assert optimizer.param_groups[0]["group_name"] == "head.decay"  # the logged lr: the peak
    labels = {g["group_name"] for g in optimizer.param_groups}
    assert {"layer_2.decay", "layer_0.no_decay", "embeddings.decay"} <= labels


def test_layer_lr_decay_changes_each_depth_by_its_own_rate():
    # Adam's first step moves every weight with a gradient by about lr (m/sqrt(v) = ±1).
    n_layers, lr, decay = 2, 1e-3, 0.5
    model = tiny_encoder(n_layers=n_layers)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, lr=lr, weight_decay=0.0, layer_lr_decay=decay)
    sched = build_scheduler(optimizer, "constant")
    ids, mask, labels = tiny_batch()
    model(ids, attention_mask=mask, labels=labels).loss.backward()
    optimizer.step()
    sched.step()
    for label, names in layer_groups(model):
        moved = max((dict(model.named_parameters())[n] - before[n]).abs().max() for n in names)
        rate = lr * decay ** expected_depth(label, n_layers)
        assert moved.item() == pytest.approx(rate, rel=1e-3), label


def test_layer_lr_decay_validation():
    model = tiny_encoder()
    with pytest.raises(ValueError, match=r"layer_lr_decay must be in \(0, 1\]"):
        param_groups(model, 0.01, lr=1e-3, layer_lr_decay=1.5)
    with pytest.raises(ValueError, match="needs the peak lr"):
        param_groups(model, 0.01, layer_lr_decay=0.5)
    with pytest.raises(ValueError, match=r"layer_lr_decay must be in \(0, 1\]"):
        param_groups(model, 0.01, lr=1e-3, layer_lr_decay=0.0)
    flat = param_groups(model, 0.01, lr=1e-3, layer_lr_decay=1.0)  # 1: every depth the same
    assert flat and all(g["lr"] == 1e-3 for g in flat)
    plain = param_groups(model, 0.01)  # unchanged without it: two groups, no lr
    assert [g["group_name"] for g in plain] == ["decay", "no_decay"]
    assert all("lr" not in g for g in plain)


# --- gradual unfreezing -------------------------------------------------------------------


def test_unfreezing_schedule_by_epoch_and_by_steps():
    model = tiny_encoder(n_layers=2)  # 4 groups: head, layer_1, layer_0, embeddings
    by_epoch = GradualUnfreezing(model, "epoch")
    assert [by_epoch.groups_trainable(step=99, epoch=e) for e in range(6)] == [1, 2, 3, 4, 4, 4]
    by_steps = GradualUnfreezing(model, 5)
    counts = [by_steps.groups_trainable(step=s, epoch=0) for s in range(0, 25, 2)]
    assert counts == [1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 4]
    with pytest.raises(ValueError, match="unfreeze must be"):
        GradualUnfreezing(model, 0)


def test_frozen_groups_stay_bit_identical_while_unfrozen_ones_move():
    model = tiny_encoder(n_layers=2)
    names = dict(layer_groups(model))
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.1)  # every parameter
    unfreezing = GradualUnfreezing(model, 2)
    ids, mask, labels = tiny_batch()
    snapshots = [{n: p.detach().clone() for n, p in model.named_parameters()}]
    for step in range(6):
        unfreezing.apply(step=step, epoch=0)
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})

    def moved(a: int, b: int, label: str) -> list[bool]:
        return [not torch.equal(snapshots[a][n], snapshots[b][n]) for n in names[label]]

    # steps 0-1: the head alone (weight decay 0.1 would shrink any stepped weight)
    assert any(moved(0, 2, "head"))
    for label in ("layer_1", "layer_0", "embeddings"):
        assert not any(moved(0, 2, label)), label
    # steps 2-3: the top layer too
    assert any(moved(2, 4, "layer_1"))
    assert not any(moved(2, 4, "layer_0")) and not any(moved(2, 4, "embeddings"))
    # steps 4-5: the next layer; the embeddings still frozen
    assert any(moved(4, 6, "layer_0")) and not any(moved(0, 6, "embeddings"))
    # AdamW state only for stepped parameters, counted from their first step
    params = dict(model.named_parameters())
    assert optimizer.state[params["classifier.weight"]]["step"] == 6
    assert optimizer.state[params[names["layer_1"][0]]]["step"] == 4
    assert optimizer.state[params[names["layer_0"][0]]]["step"] == 2
    assert all(not optimizer.state[params[n]] for n in names["embeddings"])


def test_unfreezing_keeps_parameters_frozen_before_it():
    model = tiny_encoder(n_layers=2)
    model.encoder.embeddings.requires_grad_(False)
    unfreezing = GradualUnfreezing(model, 1)
    assert unfreezing.apply(step=10, epoch=0) == 4
    assert not any(p.requires_grad for p in model.encoder.embeddings.parameters())
    assert all(p.requires_grad for p in model.encoder.layers.parameters())
    assert unfreezing.apply(step=0, epoch=0) == 1  # a function of the position alone
    assert not any(p.requires_grad for p in model.encoder.layers.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())


def test_epoch_unfreezing_reads_the_epoch_and_drops_the_gradients_of_frozen_groups():
    model = tiny_encoder(n_layers=2)  # groups: head, layer_1, layer_0, embeddings
    names = dict(layer_groups(model))
    params = dict(model.named_parameters())
    for p in params.values():
        p.grad = torch.ones_like(p)
    unfreezing = GradualUnfreezing(model, "epoch")
    assert unfreezing.apply(step=0, epoch=1) == 2  # epoch 1: the head and the top layer
    assert all(params[n].requires_grad and params[n].grad is not None for n in names["layer_1"])
    for label in ("layer_0", "embeddings"):  # the first frozen group loses its gradient too
        assert all(not params[n].requires_grad and params[n].grad is None for n in names[label])


def test_unfreezing_logs_each_change_but_not_a_start_with_everything_trainable(caplog):
    caplog.set_level("INFO", logger="torchformer.train.unfreeze")
    model = tiny_encoder(n_layers=2)
    GradualUnfreezing(model, "epoch").apply(step=0, epoch=9)  # all 4 groups from the start
    assert caplog.records == []
    unfreezing = GradualUnfreezing(model, 2)
    for step in (0, 1, 2, 3, 6):
        unfreezing.apply(step=step, epoch=0)
    assert [r.getMessage() for r in caplog.records] == [
        "gradual unfreezing at step 0: training head",
        "gradual unfreezing at step 2: training head, layer_1",
        "gradual unfreezing at step 6: training head, layer_1, layer_0, embeddings",
    ]
