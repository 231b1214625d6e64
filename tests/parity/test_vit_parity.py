"""ViT parity against Hugging Face ``transformers`` (tier 2).

Random-initialised tiny ``ViTForImageClassification`` / ``ViTModel`` are saved with
``save_pretrained`` and loaded through the production path (``load_pretrained`` and the
ViT key map); logits, every layer's hidden states and attention probabilities must
match, also at a larger image size with interpolated positions. Our models go to
``transformers`` through our ``save_pretrained`` and back.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from torchformer.checkpoints import CheckpointError, load_pretrained, save_pretrained
from torchformer.models.vit import ViTForImageClassification, ViTModel, preset

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.parity

ATOL = 1e-5
S, P, L, H, K = 16, 4, 2, 4, 3  # image side, patch, layers, heads, classes
T = (S // P) ** 2 + 1


def hf_config(**overrides):
    base = dict(
        image_size=S,
        patch_size=P,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=L,
        num_attention_heads=H,
        intermediate_size=37,
        hidden_act="gelu",
        num_labels=K,
        id2label={0: "cat", 1: "dog", 2: "fox"},
        label2id={"cat": 0, "dog": 1, "fox": 2},
    )
    return transformers.ViTConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    """One saved random tiny model per task, shared by the module's tests."""
    dirs = {}
    for seed, (task, cls) in enumerate(
        [
            ("base", transformers.ViTModel),
            ("classification", transformers.ViTForImageClassification),
        ]
    ):
        torch.manual_seed(seed)
        model = cls(hf_config()).eval()
        dirs[task] = tmp_path_factory.mktemp(task)
        model.save_pretrained(dirs[task])
    return dirs


def images(size: int | tuple[int, int] = S, n: int = 3) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(0))


def hf_load(cls, path, **kw):
    model, info = cls.from_pretrained(path, output_loading_info=True, **kw)
    return model.eval(), info


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def assert_states_match(ours, theirs, atol=ATOL):
    assert len(ours) == len(theirs) == L + 1  # embeddings + every layer (before the final norm)
    for layer, (a, b) in enumerate(zip(ours, theirs)):
        assert max_diff(a, b) <= atol, f"hidden state {layer}"


@pytest.mark.parametrize("attn_impl", ["sdpa", "reference"])
def test_classification_parity(hf_dirs, attn_impl):
    hf = transformers.ViTForImageClassification.from_pretrained(
        hf_dirs["classification"], attn_implementation="eager"
    ).eval()
    ours, report = load_pretrained(
        hf_dirs["classification"], task="classification", attn_impl=attn_impl
    )
    assert type(ours) is ViTForImageClassification and str(report) == "all weights loaded"
    assert ours.config.num_labels == K and ours.config.id2label == {0: "cat", 1: "dog", 2: "fox"}
    x = images()
    with torch.no_grad():
        a = ours(x, return_hidden_states=True, return_attentions=True)
        b = hf(x, output_hidden_states=True, output_attentions=True)
    assert a.logits.shape == (3, K)
    assert max_diff(a.logits, b.logits) <= ATOL
    assert_states_match(a.hidden_states, b.hidden_states)
    assert len(a.attentions) == len(b.attentions) == L
    for pa, pb in zip(a.attentions, b.attentions):
        assert pa.shape == (3, H, T, T)
        assert max_diff(pa, pb) <= ATOL
    # Same loss for the same labels.
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        la, lb = ours(x, labels=labels).loss, hf(x, labels=labels).loss
    assert abs(la.item() - lb.item()) <= ATOL


@pytest.mark.parametrize("size", [2 * S, (24, 32)])
def test_interpolated_positions_parity(hf_dirs, size):
    hf = transformers.ViTForImageClassification.from_pretrained(hf_dirs["classification"]).eval()
    ours, _ = load_pretrained(hf_dirs["classification"], task="classification")
    x = images(size)
    with torch.no_grad():
        a = ours(x, interpolate_positions=True, return_hidden_states=True)
        b = hf(x, interpolate_pos_encoding=True, output_hidden_states=True)
    h, w = (size, size) if isinstance(size, int) else size
    assert a.hidden_states[0].shape == (3, 1 + (h // P) * (w // P), 32)
    assert_states_match(a.hidden_states, b.hidden_states)
    assert max_diff(a.logits, b.logits) <= ATOL
    with pytest.raises(ValueError, match="interpolate_positions=True"):
        ours(x)


def test_base_model_parity(hf_dirs):
    hf = transformers.ViTModel.from_pretrained(hf_dirs["base"]).eval()
    assert hf.pooler is not None  # HF's optional pooler: in the checkpoint, not in our model
    ours, report = load_pretrained(hf_dirs["base"])
    assert type(ours) is ViTModel
    assert report.new_keys == []
    assert set(report.ignored_keys) == {"pooler.dense.weight", "pooler.dense.bias"}
    assert "pooler.dense.weight" in str(report)
    x = images()
    with torch.no_grad():
        a = ours(x, return_hidden_states=True)
        b = hf(x, output_hidden_states=True)
    assert max_diff(a.last_hidden_state, b.last_hidden_state) <= ATOL
    assert_states_match(a.hidden_states, b.hidden_states)
    # A ViTModel checkpoint into the classifier: the encoder loads, the head is new.
    clf, report = load_pretrained(hf_dirs["base"], task="classification")
    assert report.new_keys == ["classifier.weight", "classifier.bias"]
    with torch.no_grad():
        assert max_diff(clf.vit(x).last_hidden_state, b.last_hidden_state) <= ATOL
    # A classifier checkpoint into the base model: the head is left out, and reported.
    _, report = load_pretrained(hf_dirs["classification"])
    assert set(report.ignored_keys) == {"classifier.weight", "classifier.bias"}


# --- round trips through save_pretrained -------------------------------------------------------
def test_our_classifier_loads_in_transformers(tmp_path):
    torch.manual_seed(3)
    config = preset("vit-tiny-test", id2label={0: "ant", 1: "bee", 2: "cow"})
    ours = ViTForImageClassification(config).eval()
    out = save_pretrained(ours, tmp_path / "clf")
    hf, info = hf_load(transformers.ViTForImageClassification, out)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    assert hf.config.id2label == {0: "ant", 1: "bee", 2: "cow"}
    assert hf.config.label2id == {"ant": 0, "bee": 1, "cow": 2}
    x = images()
    with torch.no_grad():
        assert max_diff(ours(x).logits, hf(x).logits) <= ATOL
    # And back: the same model, labels included.
    again, report = load_pretrained(out, task="classification")
    assert str(report) == "all weights loaded" and again.config == config
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, ours(x).logits, atol=0, rtol=0)


def test_our_base_model_loads_in_transformers(tmp_path):
    torch.manual_seed(4)
    ours = ViTModel(preset("vit-tiny-test")).eval()
    hf, info = hf_load(transformers.ViTModel, save_pretrained(ours, tmp_path / "base"))
    # Ours has no pooler: transformers initialises its own and says so; nothing else differs.
    assert set(info["missing_keys"]) == {"pooler.dense.weight", "pooler.dense.bias"}, info
    assert not info["unexpected_keys"] and not info["mismatched_keys"], info
    x = images()
    with torch.no_grad():
        a = ours(x, return_hidden_states=True)
        b = hf(x, output_hidden_states=True)
    assert max_diff(a.last_hidden_state, b.last_hidden_state) <= ATOL
    assert_states_match(a.hidden_states, b.hidden_states)


def test_linear_patch_embed_saves_and_loads(tmp_path):
    torch.manual_seed(5)
    ours = ViTForImageClassification(preset("vit-tiny-test", patch_embed="linear")).eval()
    out = save_pretrained(ours, tmp_path / "linear")
    again, _ = load_pretrained(out, task="classification")
    assert again.config.patch_embed == "linear"
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, ours(x).logits, atol=0, rtol=0)
        # transformers reads the same weights as its convolution.
        hf, _ = hf_load(transformers.ViTForImageClassification, out)
        assert max_diff(hf(x).logits, ours(x).logits) <= ATOL


def test_config_that_does_not_fit_the_weights(hf_dirs, tmp_path):
    out = shutil.copytree(hf_dirs["classification"], tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "image_size": 2 * S}))
    position_table = r"vit\.embeddings\.position_embeddings"
    with pytest.raises(
        CheckpointError, match=rf"shape mismatch for {position_table}.*\(1, 17, 32\).*\(1, 65, 32\)"
    ) as info:
        load_pretrained(out, task="classification")
    assert str(out) in str(info.value)
    (out / "config.json").write_text(json.dumps({**config, "intermediate_size": 64}))
    with pytest.raises(CheckpointError, match=r"shape mismatch for vit\.layers\.0\.ffn\.up_proj"):
        load_pretrained(out, task="classification")
    (out / "config.json").write_text(json.dumps({**config, "patch_size": [4, 8]}))
    with pytest.raises(CheckpointError, match=r"config\.json: field 'patch_size'.*not square"):
        load_pretrained(out, task="classification")
