"""Tests for torchformer.config: typed YAML configs with dotted overrides."""

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from torchformer.config import (
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_overrides,
    save_config,
)


class Pooling(enum.Enum):
    CLS = "cls"
    MEAN = "mean"


@dataclass
class ModelConfig:
    d_model: int = 32
    n_layers: int = 2
    dropout: float = 0.1
    freeze_encoder: bool = False
    pooling: Pooling = Pooling.CLS


@dataclass
class DataConfig:
    train_path: Path = Path("data/train.jsonl")
    max_length: int = 128
    label_names: list[str] = field(default_factory=lambda: ["neg", "pos"])
    bucket_sizes: list[int] = field(default_factory=list)
    cache_dir: Path | None = None


@dataclass
class TrainConfig:
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_steps: int | None = None
    fp16: bool = False
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class RunConfig:
    name: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-3))
    seed: int = 0


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


# --- loading and round trips -------------------------------------------------


def test_load_nested_yaml_keeps_unset_defaults(tmp_path):
    path = write(
        tmp_path,
        "name: imdb\nmodel:\n  d_model: 64\n  pooling: mean\ntrain:\n  lr: 3e-5\n  betas: [0.9, 0.98]\n",
    )
    cfg = load_config(RunConfig, path)
    assert cfg.name == "imdb"
    assert cfg.model == ModelConfig(d_model=64, pooling=Pooling.MEAN)
    # YAML 1.1 reads `3e-5` as a string; a float field still gets a float.
    assert cfg.train.lr == 3e-5 and isinstance(cfg.train.lr, float)
    assert cfg.train.betas == (0.9, 0.98)
    assert cfg.data == DataConfig()


def test_section_default_factory_values_survive_partial_yaml(tmp_path):
    # RunConfig.train defaults to TrainConfig(lr=1e-3); setting another train key keeps it.
    cfg = load_config(RunConfig, write(tmp_path, "name: x\ntrain:\n  fp16: true\n"))
    assert cfg.train.lr == 1e-3
    assert cfg.train.fp16 is True


def test_save_then_load_round_trip_is_equal(tmp_path):
    cfg = RunConfig(
        name="run",
        model=ModelConfig(d_model=48, dropout=0.0, pooling=Pooling.MEAN),
        data=DataConfig(
            train_path=Path("/a/b.csv"), label_names=["a", "b", "c"], bucket_sizes=[64, 128]
        ),
        train=TrainConfig(lr=3e-5, betas=(0.8, 0.9), max_steps=10, tags={"k": "v"}),
        seed=7,
    )
    path = save_config(cfg, tmp_path / "sub" / "config.yaml")
    assert load_config(RunConfig, path) == cfg
    assert config_from_dict(RunConfig, config_to_dict(cfg)) == cfg
    assert not list(path.parent.glob("*.tmp"))  # the temporary file was renamed away


def test_config_to_dict_is_plain_builtins():
    d = config_to_dict(RunConfig(name="x"))
    assert d["data"]["train_path"] == "data/train.jsonl"
    assert d["train"]["betas"] == [0.9, 0.999]
    assert d["model"]["pooling"] == "cls"


def test_missing_required_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "seed: 1\n")
    with pytest.raises(ConfigError, match=r"missing required key 'name'") as err:
        load_config(RunConfig, path)
    assert str(path) in str(err.value)


# --- overrides -----------------------------------------------------------------


def test_overrides_of_each_type(tmp_path):
    path = write(tmp_path, "name: base\n")
    cfg = load_config(
        RunConfig,
        path,
        [
            "--train.lr", "3e-5",
            "--data.max_length=256",
            "--model.freeze_encoder", "true",
            "--train.fp16",  # bare flag = true
            "--model.dropout", "0",
            "--data.train_path", "/tmp/t.jsonl",
            "--data.cache_dir", "none",
            "--data.label_names", "a,b,c",
            "--data.bucket_sizes", "[32, 64]",
            "--train.betas", "0.9,0.98",
            "--train.schedule", "cosine",
            "--train.max_steps", "100",
            "--train.tags", "{team: nlp}",
            "--model.pooling", "mean",
            "--name", "over",
            "--seed", "-3",
        ],
    )  # fmt: skip
    assert cfg.train.lr == 3e-5
    assert cfg.data.max_length == 256
    assert cfg.model.freeze_encoder is True
    assert cfg.train.fp16 is True
    assert cfg.model.dropout == 0.0 and isinstance(cfg.model.dropout, float)
    assert cfg.data.train_path == Path("/tmp/t.jsonl")
    assert cfg.data.cache_dir is None
    assert cfg.data.label_names == ["a", "b", "c"]
    assert cfg.data.bucket_sizes == [32, 64]
    assert cfg.train.betas == (0.9, 0.98)
    assert cfg.train.schedule == "cosine"
    assert cfg.train.max_steps == 100
    assert cfg.train.tags == {"team": "nlp"}
    assert cfg.model.pooling is Pooling.MEAN
    assert cfg.name == "over"
    assert cfg.seed == -3


def test_override_wins_over_file_and_bool_false(tmp_path):
    path = write(tmp_path, "name: a\nmodel:\n  freeze_encoder: true\n")
    cfg = load_config(RunConfig, path, ["--model.freeze_encoder=no", "name=b"])
    assert cfg.model.freeze_encoder is False
    assert cfg.name == "b"


def test_mapping_overrides_are_typed_values():
    cfg = load_config(RunConfig, None, {"name": "m", "train.lr": 0.25, "data.label_names": ["x"]})
    assert (cfg.name, cfg.train.lr, cfg.data.label_names) == ("m", 0.25, ["x"])


def test_parse_overrides_forms():
    assert parse_overrides(["--a.b", "1", "--c=2", "--flag", "--d", "-1", "e=x"]) == [
        ("a.b", "1"),
        ("c", "2"),
        ("flag", None),
        ("d", "-1"),
        ("e", "x"),
    ]
    with pytest.raises(ConfigError, match="expected an override"):
        parse_overrides(["stray"])


# --- errors --------------------------------------------------------------------


def test_unknown_key_in_file_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path, "name: x\ntrain:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(RunConfig, path)
    msg = str(err.value)
    assert str(path) in msg
    assert "unknown key 'train.lrr'" in msg
    assert "did you mean 'train.lr'" in msg
    assert "betas" in msg  # lists the valid keys
    assert err.value.key == "train.lrr"


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'modle'; did you mean 'model'"):
        load_config(RunConfig, write(tmp_path, "name: x\nmodle:\n  d_model: 3\n"))


def test_wrong_type_in_file_names_key_file_and_expected_type(tmp_path):
    path = write(tmp_path, "name: x\nmodel:\n  n_layers: two\n")
    with pytest.raises(ConfigError) as err:
        load_config(RunConfig, path)
    msg = str(err.value)
    assert str(path) in msg and "'model.n_layers'" in msg and "expected int" in msg
    assert "'two'" in msg


@pytest.mark.parametrize(
    ("yaml_text", "key", "expected"),
    [
        ("model:\n  freeze_encoder: 1\n", "model.freeze_encoder", "expected bool"),
        ("model:\n  d_model: 3.5\n", "model.d_model", "expected int"),
        ("train:\n  schedule: cosin\n", "train.schedule", "one of 'linear', 'cosine'"),
        ("train:\n  betas: [0.9]\n", "train.betas", "expected 2 items"),
        ("data:\n  label_names: [a, 3]\n", "data.label_names[1]", "expected str"),
        ("model: 3\n", "model", "must be a mapping"),
        ("model:\n  pooling: max\n", "model.pooling", "one of 'cls', 'mean'"),
    ],
)
def test_wrong_types_are_rejected(tmp_path, yaml_text, key, expected):
    path = write(tmp_path, "name: x\n" + yaml_text)
    with pytest.raises(ConfigError, match=expected) as err:
        load_config(RunConfig, path)
    assert err.value.key == key
    assert err.value.source == str(path)


def test_override_errors_name_the_override(tmp_path):
    path = write(tmp_path, "name: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(RunConfig, path, ["--train.lr", "fast"])
    assert err.value.source == "override --train.lr"
    assert "expected float" in str(err.value)

    with pytest.raises(ConfigError, match=r"did you mean 'train.lr'") as err:
        load_config(RunConfig, path, ["--train.lrr", "1"])
    assert err.value.source == "override --train.lrr"

    with pytest.raises(ConfigError, match=r"'train.max_steps' needs a value"):
        load_config(RunConfig, path, ["--train.max_steps"])

    with pytest.raises(ConfigError, match=r"'seed' is a value, not a section"):
        load_config(RunConfig, path, ["--seed.x", "1"])


def test_invalid_yaml_and_non_mapping_name_the_file(tmp_path):
    path = write(tmp_path, "name: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML") as err:
        load_config(RunConfig, path)
    assert err.value.source == str(path)
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(RunConfig, write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(RunConfig, tmp_path / "absent.yaml")


def test_post_init_validation_becomes_config_error(tmp_path):
    @dataclass
    class Checked:
        heads: int = 4

        def __post_init__(self):
            if self.heads <= 0:
                raise ValueError("heads must be positive")

    with pytest.raises(ConfigError, match="heads must be positive"):
        load_config(Checked, write(tmp_path, "heads: 0\n"))


@dataclass
class Optimizer:
    eps: float = 1e-8


@dataclass
class WithOptional:
    optim: Optimizer | None = None
    extra: dict[str, int] = field(default_factory=dict)


def test_override_creates_optional_section_and_sets_mapping_entries():
    assert load_config(WithOptional).optim is None
    cfg = load_config(WithOptional, None, ["--optim.eps", "1e-6", "--extra.k", "3"])
    assert cfg.optim == Optimizer(eps=1e-6)
    assert cfg.extra == {"k": 3}


def test_invalid_yaml_is_one_line_naming_the_line_and_column(tmp_path):
    path = write(tmp_path, "name: x\nseed: [1,\n  2\nlr: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(RunConfig, path)
    message = str(err.value)
    assert message.startswith(f"{path}: line 4, column 3: invalid YAML: ") and "\n" not in message
    path.write_bytes(b"name: x\nnote: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"line 2: not UTF-8 text"):
        load_config(RunConfig, path)
