"""LoRA adapters in Hugging Face PEFT's format, both ways (BERT family).

An adapter directory holds ``adapter_config.json`` (a ``peft.LoraConfig``) and
``adapter_model.safetensors``, whose keys are the Hugging Face model's names
under ``base_model.model.``: ``<module>.lora_A.weight`` (r, I) and
``<module>.lora_B.weight`` (O, r) per adapted linear layer, and the full weights
of each module in ``modules_to_save`` (the new task head) under their own names,
e.g. ``base_model.model.classifier.weight``. ``peft.PeftModel.from_pretrained``
reads what ``save_adapter`` writes, and ``load_adapter`` reads what
``PeftModel.save_pretrained`` writes.

Names go through the family's key maps (``checkpoints.bert``), never a second
table. PEFT chooses modules by name rules, which this module applies to the
Hugging Face names of our modules: ``target_modules`` as a list matches a whole
name or a suffix after a dot, as a string the whole name by regular expression;
``modules_to_save`` matches any name ending in one of its entries. For a
sequence classifier PEFT always saves the ``classifier`` head.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from torchformer.checkpoints.bert import ARCHITECTURES, BERT, Layout
from torchformer.checkpoints.hf import CheckpointError
from torchformer.io import atomic_write_bytes, atomic_write_text
from torchformer.models.encoder import Encoder, EncoderForSequenceClassification
from torchformer.nn.linear import is_plain_linear
from torchformer.nn.lora import LoRALinear, LoRASummary, apply_lora, lora_layers

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
# PEFT saves the weights of the PeftModel's inner model: base_model (the LoRA tuner)
# .model (the transformers model).
PREFIX = "base_model.model."
LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")

# Config fields of PEFT's LoraConfig this loader does not implement, each with the
# values that mean "not used".
_UNSUPPORTED = {
    "use_dora": (None, False),
    "bias": (None, "none"),
    "lora_bias": (None, False),
    "fan_in_fan_out": (None, False),
    "layers_to_transform": (None, []),
    "rank_pattern": (None, {}),
    "alpha_pattern": (None, {}),
    "trainable_token_indices": (None, [], {}),
    "target_parameters": (None, []),
    "layer_replication": (None, []),
    "alora_invocation_tokens": (None, []),
    "use_qalora": (None, False),
    "init_lora_weights": (None, True, False, "gaussian"),  # pissa, olora, ... change W
}


def _layout(model: nn.Module) -> Layout:
    """The BERT layout of one of our encoder models; other families are refused."""
    config = getattr(model, "config", None)
    if type(model) not in ARCHITECTURES or getattr(config, "flavour", None) != "bert":
        flavour = getattr(config, "flavour", None)
        raise CheckpointError(
            f"PEFT adapters are supported for BERT encoder models (Encoder, "
            f"EncoderForSequenceClassification, EncoderForMaskedLM with flavour 'bert'), "
            f"got {type(model).__name__} (flavour {flavour!r})"
        )
    return BERT


def _their_key(model: nn.Module, key: str, layout: Layout) -> str | None:
    """The Hugging Face name of one of our state-dict keys (as ``bert.state_to_hf``)."""
    if isinstance(model, Encoder):
        return layout.encoder.to_theirs(key)
    if key.startswith("encoder."):
        name = layout.encoder.to_theirs(key.removeprefix("encoder."))
        return None if name is None else layout.prefix + name
    return layout.heads.to_theirs(key)


def _our_key(model: nn.Module, key: str, layout: Layout) -> str | None:
    """Our state-dict key for a Hugging Face name (as ``bert.state_from_hf``)."""
    if isinstance(model, Encoder):  # a base model's names have no "bert." prefix
        return layout.encoder.to_ours(key.removeprefix(layout.prefix))
    if key.startswith(layout.prefix):
        name = layout.encoder.to_ours(key.removeprefix(layout.prefix))
        return None if name is None else "encoder." + name
    return layout.heads.to_ours(key)


def _hf_names(model: nn.Module, layout: Layout) -> dict[str, str]:
    """Our state-dict keys (adapters left out) -> their Hugging Face names."""
    out = {}
    for key in model.state_dict():
        if key.endswith(LORA_SUFFIXES):
            continue
        name = _their_key(model, key, layout)
        if name is None:
            raise CheckpointError(f"{key}: no name for it in the BERT layout")
        out[key] = name
    return out


def _parent(key: str) -> str:
    return key.rpartition(".")[0]


def _all_modules(hf_keys: Iterable[str]) -> set[str]:
    """Every module name the Hugging Face keys imply (each key's parents)."""
    modules = set()
    for key in hf_keys:
        parts = key.split(".")[:-1]
        modules.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return modules


def _target_match(name: str, target: str) -> bool:
    """PEFT's ``target_modules`` rule for a list entry."""
    return name == target or name.endswith("." + target)


def _save_match(name: str, entry: str) -> bool:
    """PEFT's ``modules_to_save`` rule: the name ends with the entry (any characters)."""
    return name.endswith(entry)


def _selectors(
    chosen: set[str], universe: set[str], match: Callable[[str, str], bool]
) -> list[str]:
    """The shortest dotted suffix of each chosen name that, under PEFT's rule ``match``,
    selects chosen names only; together they select exactly ``chosen``."""
    out = set()
    for name in sorted(chosen):
        parts = name.split(".")
        for i in range(len(parts) - 1, -1, -1):
            suffix = ".".join(parts[i:])
            if all(u in chosen for u in universe if match(u, suffix)):
                out.add(suffix)
                break
        else:
            out.add(name)
    return sorted(out)


def save_adapter(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    base_model_name_or_path: str | None,
    modules_to_save: Iterable[str] | None = None,
    revision: str | None = None,
) -> Path:
    """Write ``model``'s LoRA adapters in PEFT's format.

    Args:
        model: a BERT encoder model with adapters from ``nn.lora.apply_lora`` (all of one
            rank, alpha and dropout).
        out_dir: target directory (created).
        base_model_name_or_path: the base model the adapter is for (hub name or
            directory), written into the config as PEFT does.
        modules_to_save: our module names whose full weights are saved too (the new
            head). Default: the modules of the parameters that require grad outside
            the adapters, i.e. what ``apply_lora(trainable=...)`` left trainable. A
            sequence classifier's ``classifier`` is always saved (PEFT's rule).
        revision: the base model's revision, written into the config.

    Returns:
        The directory.

    Raises:
        CheckpointError: not a BERT model, or a weight with no Hugging Face name.
        ValueError: no adapters, adapters of different settings, or a module to save
            that contains an adapter.
    """
    layout = _layout(model)
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA adapters; call apply_lora first")
    settings = {(m.r, m.alpha, _dropout(m), m.use_rslora) for m in layers.values()}
    if len(settings) > 1:
        raise ValueError(
            f"PEFT's format holds one (r, alpha, dropout, use_rslora) per adapter, found {sorted(settings)}"
        )
    r, alpha, dropout, use_rslora = settings.pop()
    hf = _hf_names(model, layout)
    universe = _all_modules(hf.values())
    adapted = {_parent(hf[f"{name}.weight"]): layer for name, layer in layers.items()}
    saved = _saved_keys(model, layers, modules_to_save)
    state = model.state_dict()
    weights: dict[str, Tensor] = {}
    for module, layer in sorted(adapted.items()):
        weights[f"{PREFIX}{module}.lora_A.weight"] = layer.lora_A.weight
        weights[f"{PREFIX}{module}.lora_B.weight"] = layer.lora_B.weight
    for key in saved:
        weights[PREFIX + hf[key]] = state[key]
    saved_modules = {_parent(hf[key]) for key in saved}
    classifier = isinstance(model, EncoderForSequenceClassification)
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS" if classifier else None,
        "auto_mapping": None
        if classifier
        else {
            "base_model_class": ARCHITECTURES[type(model)],
            "parent_library": "transformers.models.bert.modeling_bert",
        },
        "base_model_name_or_path": base_model_name_or_path,
        "revision": revision,
        "r": r,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": dropout,
        "use_rslora": use_rslora,
        "target_modules": _selectors(set(adapted), universe, _target_match),
        "modules_to_save": _selectors(saved_modules, universe, _save_match) or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "use_dora": False,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "exclude_modules": None,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    atomic_write_bytes(out / ADAPTER_WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
    atomic_write_text(
        out / ADAPTER_CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n"
    )
    return out


def _dropout(layer: LoRALinear) -> float:
    return layer.lora_dropout.p if isinstance(layer.lora_dropout, nn.Dropout) else 0.0


def _saved_keys(
    model: nn.Module, layers: dict[str, LoRALinear], modules_to_save: Iterable[str] | None
) -> list[str]:
    """Our state-dict keys saved in full: those of the named modules, or of the modules
    whose parameters require grad outside the adapters; a classifier's head always."""
    in_adapter = tuple(f"{name}." for name in layers)
    if modules_to_save is None:
        owners = {
            _parent(k)
            for k, p in model.named_parameters()
            if p.requires_grad and not k.startswith(in_adapter)
        }
    else:
        owners = set()
        for entry in modules_to_save:
            found = [n for n, _ in model.named_modules() if n == entry or n.endswith("." + entry)]
            if not found:
                raise ValueError(f"module to save {entry!r} matches no module of the model")
            owners.update(found)
    if isinstance(model, EncoderForSequenceClassification):
        owners.add("classifier")
    keys = []
    for key in model.state_dict():
        owner = next((o for o in owners if key.startswith(f"{o}.")), None)
        if owner is None:
            continue
        if key.startswith(in_adapter) or any(n.startswith(f"{owner}.") for n in layers):
            raise ValueError(f"module to save {owner} contains a LoRA-adapted layer ({key})")
        keys.append(key)
    return keys


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path.parent} has no {ADAPTER_CONFIG_NAME}; is it a PEFT adapter?"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(config).__name__}")
    if config.get("peft_type") != "LORA":
        raise CheckpointError(
            f"{path}: peft_type {config.get('peft_type')!r}: only 'LORA' is supported"
        )
    for field, unused in _UNSUPPORTED.items():
        if config.get(field) not in unused:
            raise CheckpointError(
                f"{path}: field {field!r} = {config[field]!r} is not supported (expected one of {unused})"
            )
    r, alpha = config.get("r"), config.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise CheckpointError(f"{path}: field 'r': expected a positive integer, found {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise CheckpointError(f"{path}: field 'lora_alpha': expected a number, found {alpha!r}")
    return config


def _peft_targets(config: dict, names: dict[str, str], path: Path) -> list[str]:
    """Our linear layers PEFT would adapt: ``names`` maps our module -> its HF name."""
    targets, exclude = config.get("target_modules"), config.get("exclude_modules")
    saved = config.get("modules_to_save") or []

    def hit(name: str, rule) -> bool:
        if isinstance(rule, str):
            return re.fullmatch(rule, name) is not None
        return any(_target_match(name, t) for t in rule or ())

    chosen = [
        ours
        for ours, theirs in names.items()
        if hit(theirs, targets)
        and not (exclude and hit(theirs, exclude))
        and not any(re.match(rf"(^|.*\.){m}($|\..*)", theirs) for m in saved)
    ]
    if not chosen:
        raise CheckpointError(
            f"{path}: target_modules {targets!r} match none of the model's linear layers"
        )
    return chosen


def load_adapter(model: nn.Module, adapter_dir: str | os.PathLike) -> LoRASummary:
    """Read a PEFT LoRA adapter directory onto our model, in place.

    Applies LoRA with the config's r, lora_alpha, lora_dropout and use_rslora to the
    linear layers its ``target_modules`` choose (PEFT's matching, on the Hugging Face
    names of our modules), then loads every tensor of ``adapter_model.safetensors``:
    the A and B of each adapted layer and the full weights of the ``modules_to_save``.
    As after ``apply_lora``, only those are trainable.

    Args:
        model: a BERT encoder model holding the base weights the adapter was trained on.
        adapter_dir: a directory written by ``save_adapter`` or by PEFT's
            ``save_pretrained``.

    Returns:
        The ``apply_lora`` summary.

    Raises:
        CheckpointError: a config PEFT feature this loader does not implement, no
            target matching, or weights missing, unexpected or of the wrong shape
            (naming the file and the key).
        FileNotFoundError: no ``adapter_config.json`` or weights file.
        ValueError: the model already has adapters.
    """
    layout = _layout(model)
    if lora_layers(model):
        raise ValueError(
            f"{type(model).__name__} already has LoRA adapters; load onto a base model"
        )
    adapter_dir = Path(adapter_dir)
    config = _read_config(adapter_dir / ADAPTER_CONFIG_NAME)
    weights_path = adapter_dir / ADAPTER_WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{adapter_dir} has no {ADAPTER_WEIGHTS_NAME}")
    try:
        state = load_file(weights_path)
    except Exception as e:  # safetensors raises its own errors on truncated files
        raise CheckpointError(f"{weights_path}: not a readable safetensors file: {e}") from e
    hf = _hf_names(model, layout)
    linears = {
        name: _parent(hf[f"{name}.weight"])
        for name, m in model.named_modules()
        if is_plain_linear(m) and f"{name}.weight" in hf
    }
    targets = _peft_targets(config, linears, adapter_dir / ADAPTER_CONFIG_NAME)
    entries = config.get("modules_to_save") or []
    saved_modules = {
        m for m in _all_modules(hf.values()) if any(_save_match(m, e) for e in entries)
    }
    saved = [k for k, name in hf.items() if any(name.startswith(f"{m}.") for m in saved_modules)]
    summary = apply_lora(
        model,
        r=config["r"],
        alpha=config["lora_alpha"],
        dropout=config.get("lora_dropout") or 0.0,
        targets=targets,
        trainable=sorted({_parent(k) for k in saved}),
        use_rslora=bool(config.get("use_rslora")),
    )
    _load_tensors(model, state, targets, saved, layout, source=str(weights_path))
    return summary


def _load_tensors(
    model: nn.Module,
    state: dict[str, Tensor],
    targets: list[str],
    saved: list[str],
    layout: Layout,
    *,
    source: str,
) -> None:
    """Copy the adapter file's tensors into the adapted model; every key accounted for."""
    params = dict(model.named_parameters())
    expected = {f"{t}.lora_A.weight" for t in targets} | {f"{t}.lora_B.weight" for t in targets}
    expected |= set(saved)
    found: dict[str, Tensor] = {}
    unexpected = []
    for raw_key, value in state.items():
        key = raw_key.removeprefix(PREFIX)
        suffix = next((s for s in LORA_SUFFIXES if key.endswith(s)), None)
        if suffix is not None:
            module = _our_key(model, key.removesuffix(suffix) + ".weight", layout)
            ours = None if module is None else module.removesuffix(".weight") + suffix
        else:
            ours = _our_key(model, key, layout)
        if ours not in expected:
            unexpected.append(raw_key)
        else:
            found[ours] = value
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected weights {', '.join(unexpected[:10])}"
            + (f" and {len(unexpected) - 10} more" if len(unexpected) > 10 else "")
        )
    missing = sorted(expected - set(found))
    if missing:
        raise CheckpointError(f"{source}: weights missing for {', '.join(missing[:10])}")
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for key, value in found.items():
            target = params[key] if key in params else buffers[key]
            if target.shape != value.shape:
                raise CheckpointError(
                    f"{source}: shape mismatch for {key}: adapter {tuple(value.shape)}, "
                    f"model {tuple(target.shape)}"
                )
            target.copy_(value)
