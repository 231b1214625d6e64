"""Adversarial training on the embedding output (FGM, PGD) and R-Drop, on a tiny encoder."""

import copy

import pytest
import torch
import torch.nn.functional as F

from torchformer.models.encoder import EncoderForSequenceClassification, preset
from torchformer.train.adversarial import embedding_adversarial_loss
from torchformer.train.optim import build_optimizer
from torchformer.train.rdrop import rdrop_loss

PAD = 0


def tiny_encoder() -> EncoderForSequenceClassification:
    torch.manual_seed(0)
    cfg = preset("tiny", pooling="mean", dropout=0.0, attn_dropout=0.0, pad_id=PAD)
    return EncoderForSequenceClassification(cfg)


def padded_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 1000, (4, 10), generator=g)
    mask = (torch.arange(10) < torch.tensor([[10], [7], [5], [3]])).long()  # (B, T)
    return ids * mask, mask, torch.tensor([0, 1, 1, 0])  # padding = PAD


def reference_loss_and_grad(model, batch, delta=None):
    """The loss with ``delta`` added to the embedding output and its gradient there,
    computed with a hook of the test's own (the output made a leaf)."""
    ids, mask, labels = batch
    leaf = {}

    def hook(module, args, output):
        leaf["x"] = output.detach().requires_grad_()
        return leaf["x"] if delta is None else leaf["x"] + delta

    handle = model.encoder.embeddings.register_forward_hook(hook)
    try:
        loss = model(ids, attention_mask=mask, labels=labels).loss
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(loss, leaf["x"])
    return loss.detach(), g


def unit_per_example(g, mask):
    g = g * mask[..., None]
    return g / g.flatten(1).norm(dim=1).view(-1, 1, 1)


def adversarial(model, batch, **options):
    ids, mask, labels = batch
    return embedding_adversarial_loss(
        lambda: model(ids, attention_mask=mask, labels=labels).loss,
        model.encoder.embeddings,
        pad_id=PAD,
        **options,
    )


def per_example_norms(delta):
    return delta.flatten(1).norm(dim=1)


def test_fgm_perturbation_is_epsilon_times_the_normalised_gradient():
    model, batch = tiny_encoder(), padded_batch()
    out = adversarial(model, batch, method="fgm", epsilon=0.7)
    clean, g = reference_loss_and_grad(model, batch)
    expected = 0.7 * unit_per_example(g, batch[1])
    torch.testing.assert_close(out.perturbation, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(per_example_norms(out.perturbation), torch.full((4,), 0.7))
    assert (out.perturbation[batch[1] == 0] == 0).all()  # padding is not perturbed
    assert out.perturbation[1, 6].abs().sum() > 0  # the last real token of row 1 is
    torch.testing.assert_close(out.clean.detach(), clean)
    adv_ref, _ = reference_loss_and_grad(model, batch, expected)
    torch.testing.assert_close(out.adversarial.detach(), adv_ref, rtol=1e-5, atol=1e-6)
    assert out.adversarial > out.clean  # the gradient's direction raises the loss


def test_padding_is_excluded_even_where_the_model_reads_it():
    # Without an attention mask the padding positions get a gradient: they must still be
    # left out of the perturbation and of its norm.
    model, (ids, mask, labels) = tiny_encoder(), padded_batch()
    out = embedding_adversarial_loss(
        lambda: model(ids, labels=labels).loss, model.encoder.embeddings, pad_id=PAD
    )
    assert (out.perturbation[mask == 0] == 0).all()
    torch.testing.assert_close(per_example_norms(out.perturbation), torch.ones(4))


def test_fgm_direction_raises_the_loss_more_than_random_directions():
    model, batch = tiny_encoder(), padded_batch()
    out = adversarial(model, batch, method="fgm", epsilon=0.05)
    torch.manual_seed(5)
    for _ in range(5):
        noise = torch.randn_like(out.perturbation) * batch[1][..., None]
        random_loss, _ = reference_loss_and_grad(
            model, batch, 0.05 * unit_per_example(noise, batch[1])
        )
        assert out.adversarial > random_loss


def test_pgd_follows_projected_normalised_ascent():
    model, batch = tiny_encoder(), padded_batch()
    eps, alpha, steps = 0.5, 0.3, 3
    out = adversarial(model, batch, method="pgd", epsilon=eps, alpha=alpha, steps=steps)
    delta = torch.zeros_like(out.perturbation)
    for _ in range(steps):  # Madry et al.: delta <- P_eps(delta + alpha g/|g|)
        _, g = reference_loss_and_grad(model, batch, delta)
        delta = delta + alpha * unit_per_example(g, batch[1])
        norms = per_example_norms(delta).view(-1, 1, 1)
        delta = delta * torch.clamp(eps / norms, max=1.0)
    torch.testing.assert_close(out.perturbation, delta, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(per_example_norms(out.perturbation), torch.full((4,), eps))
    adv_ref, _ = reference_loss_and_grad(model, batch, delta)
    torch.testing.assert_close(out.adversarial.detach(), adv_ref, rtol=1e-5, atol=1e-6)
    assert (out.perturbation[batch[1] == 0] == 0).all()


def test_pgd_inside_the_ball_is_not_projected_and_one_step_of_epsilon_is_fgm():
    model, batch = tiny_encoder(), padded_batch()
    inside = adversarial(model, batch, method="pgd", epsilon=10.0, alpha=0.1, steps=2)
    assert (per_example_norms(inside.perturbation) < 0.2 + 1e-5).all()
    assert (per_example_norms(inside.perturbation) > 0.1).all()  # two steps, not one
    one = adversarial(model, batch, method="pgd", epsilon=0.4, alpha=0.4, steps=1)
    fgm = adversarial(model, batch, method="fgm", epsilon=0.4)
    torch.testing.assert_close(one.perturbation, fgm.perturbation)


def test_the_parameter_gradient_treats_the_perturbation_as_a_constant():
    model, batch = tiny_encoder(), padded_batch()
    out = adversarial(model, batch, method="fgm", epsilon=0.5)
    (out.clean + 0.5 * out.adversarial).backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert "encoder.embeddings.token_embeddings.weight" in ours
    model.zero_grad(set_to_none=True)
    ids, mask, labels = batch
    clean = model(ids, attention_mask=mask, labels=labels).loss
    delta = out.perturbation.detach()
    handle = model.encoder.embeddings.register_forward_hook(lambda m, a, o: o + delta)
    adv = model(ids, attention_mask=mask, labels=labels).loss
    handle.remove()
    (clean + 0.5 * adv).backward()
    assert set(ours) == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, param in model.named_parameters():
        if name in ours:
            torch.testing.assert_close(ours[name], param.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_nothing_of_the_perturbation_remains_after_the_step():
    model, batch = tiny_encoder(), padded_batch()
    embeddings_before = copy.deepcopy(model.encoder.embeddings.state_dict())
    out = adversarial(model, batch, method="pgd", epsilon=1.0)
    assert not model.encoder.embeddings._forward_hooks  # the hook is gone
    for key, value in model.encoder.embeddings.state_dict().items():
        assert torch.equal(value, embeddings_before[key]), key  # weights untouched
    optimizer = build_optimizer(model, lr=1e-2)
    (out.clean + out.adversarial).backward()
    optimizer.step()
    fresh = tiny_encoder()  # the same architecture, no hook ever attached
    fresh.load_state_dict(model.state_dict())
    ids, mask, _ = batch
    assert torch.equal(
        model(ids, attention_mask=mask).logits, fresh(ids, attention_mask=mask).logits
    )


def test_frozen_embeddings_get_the_same_perturbation():
    model, batch = tiny_encoder(), padded_batch()
    trainable = adversarial(model, batch, method="fgm", epsilon=1.0)
    model.encoder.embeddings.requires_grad_(False)
    frozen = adversarial(model, batch, method="fgm", epsilon=1.0)
    torch.testing.assert_close(frozen.perturbation, trainable.perturbation)
    torch.testing.assert_close(frozen.adversarial, trainable.adversarial)


def test_bad_settings_are_refused():
    model, batch = tiny_encoder(), padded_batch()
    with pytest.raises(ValueError, match="'fgm' or 'pgd'"):
        adversarial(model, batch, method="free")
    with pytest.raises(ValueError, match="epsilon > 0"):
        adversarial(model, batch, method="fgm", epsilon=0.0)
    with pytest.raises(ValueError, match="steps >= 1"):
        adversarial(model, batch, method="pgd", steps=0)
    with pytest.raises(ValueError, match="alpha > 0"):
        adversarial(model, batch, method="pgd", alpha=0.0)
    assert not model.encoder.embeddings._forward_hooks


def test_pgd_runs_steps_plus_one_forward_passes_and_its_defaults_are_3_and_0_3():
    model, batch = tiny_encoder(), padded_batch()
    model.eval()  # no dropout: equal perturbations for equal settings
    ids, mask, labels = batch
    calls = []

    def loss_of():
        calls.append(1)
        return model(ids, attention_mask=mask, labels=labels).loss

    default = embedding_adversarial_loss(
        loss_of, model.encoder.embeddings, pad_id=PAD, method="pgd"
    )
    assert len(calls) == 4  # clean, 2 more ascent gradients, the adversarial loss
    explicit = adversarial(model, batch, method="pgd", steps=3, alpha=0.3)
    torch.testing.assert_close(default.perturbation, explicit.perturbation)
    calls.clear()
    embedding_adversarial_loss(loss_of, model.encoder.embeddings, pad_id=PAD, method="pgd", steps=1)
    assert len(calls) == 2


# --- R-Drop ---------------------------------------------------------------------------------


def test_rdrop_loss_is_mean_ce_plus_alpha_times_symmetric_kl():
    g = torch.Generator().manual_seed(0)
    l1, l2 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    labels = torch.tensor([0, 2, 1, 1, 0])
    p1, p2 = l1.softmax(-1), l2.softmax(-1)
    ce1 = -p1[torch.arange(5), labels].log().mean()
    ce2 = -p2[torch.arange(5), labels].log().mean()
    kl12 = (p1 * (p1.log() - p2.log())).sum(-1).mean()
    kl21 = (p2 * (p2.log() - p1.log())).sum(-1).mean()
    expected = 0.5 * (ce1 + ce2) + 0.7 * 0.5 * (kl12 + kl21)
    torch.testing.assert_close(rdrop_loss(l1, l2, labels, alpha=0.7), expected)
    torch.testing.assert_close(rdrop_loss(l1, l2, labels, alpha=0.0), 0.5 * (ce1 + ce2))
    torch.testing.assert_close(rdrop_loss(l1, l1, labels, alpha=3.0), F.cross_entropy(l1, labels))
    weights = torch.tensor([1.0, 2.0, 0.5])
    torch.testing.assert_close(
        rdrop_loss(l1, l1, labels, alpha=1.0, class_weights=weights),
        F.cross_entropy(l1, labels, weight=weights),
    )
