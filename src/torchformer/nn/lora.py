"""Low-rank adapters (LoRA) on linear layers.

Implements LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
Models"): a linear layer's weight W stays frozen and a trainable low-rank
update is added beside it,

    h = W x + b + (alpha / r) · B A dropout(x)

A starts Kaiming-uniform (a = √5) and B at zero, as in Hugging Face PEFT, so an
adapted model starts out computing exactly what the base model computes. With
rank-stabilised scaling (Kalajdzievski 2023, "rsLoRA") the factor is
alpha / √r instead of alpha / r.

``apply_lora`` puts adapters on a model's chosen projections and freezes the
rest; ``merge_lora`` folds them back into plain ``nn.Linear`` weights for
export. ``torchformer.checkpoints.peft`` saves and loads them in PEFT's format.

Shapes: N any leading dimensions (B, T), I in_features, O out_features, r rank.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from torchformer.nn.linear import Linear, is_plain_linear, linear

# Short names of the projections, each standing for module-name suffixes: our
# vocabulary (q_proj, ..., ffn.up_proj) is the same in every model family.
TARGET_ALIASES: dict[str, tuple[str, ...]] = {
    "q": ("q_proj",),
    "k": ("k_proj",),
    "v": ("v_proj",),
    "out": ("out_proj",),
    "ffn_up": ("ffn.up_proj",),
    "ffn_down": ("ffn.down_proj",),
    "ffn_gate": ("ffn.gate_proj",),
    "ffn": ("ffn.up_proj", "ffn.down_proj", "ffn.gate_proj"),
}


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (Hu et al. 2021).

    The base layer's ``weight`` and ``bias`` are kept under the same names (the same
    ``Parameter`` objects, frozen), so a model's base keys do not change; the adapter
    adds ``lora_A.weight`` (r, I) and ``lora_B.weight`` (O, r), PEFT's names.

    Args:
        base: the layer to adapt (a plain ``nn.Linear``).
        r: rank of the update.
        alpha: scale of the update: it is multiplied by alpha / r.
        dropout: dropout on the adapter path's input only (the base path sees ``x``).
        use_rslora: scale by alpha / √r instead (rank-stabilised LoRA).

    Raises:
        TypeError: ``base`` is not a plain ``nn.Linear``.
        ValueError: ``r`` < 1 or ``dropout`` outside [0, 1).
    """

    def __init__(
        self,
        base: nn.Linear,
        *,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
    ) -> None:
        super().__init__()
        if not is_plain_linear(base):
            raise TypeError(f"LoRA adapts a plain nn.Linear, got {type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.register_parameter("weight", base.weight)  # (O, I) frozen
        self.register_parameter("bias", base.bias)  # (O,) or None, frozen
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        # PEFT uses an identity when there is no dropout; same result, no RNG draw.
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **factory)  # weight (r, I)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **factory)  # weight (O, r)
        self.reset_lora_parameters()
        self.train(base.training)  # new submodules start in training mode; follow the base

    def reset_lora_parameters(self) -> None:
        """PEFT's initialisation: A Kaiming-uniform (a = √5), B zero, so B·A = 0."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> Tensor:
        """The update the adapter adds to ``weight``: scaling · B A, (O, I)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling  # (O, I)

    def forward(self, x: Tensor) -> Tensor:
        """(N, I) -> (N, O): the base layer plus the scaled low-rank path."""
        out = linear(x, self.weight, self.bias)  # (N, O)
        # Same order of operations as PEFT's lora.Linear, for bit-close parity.
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling  # (N, O)

    def merged(self) -> Linear:
        """A plain linear layer (``nn.linear.Linear``) computing the same map: W + scaling · B A.

        Its parameters are frozen, like the base ones they replace; the bias is the
        base's own ``Parameter``.
        """
        layer = Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device="meta"
        )
        with torch.no_grad():
            weight = self.weight + self.delta_weight().to(self.weight.dtype)  # (O, I)
        layer.weight = nn.Parameter(weight, requires_grad=False)
        layer.bias = self.bias
        return layer.train(self.training)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, r={self.r}, alpha={self.alpha}, "
            f"scaling={self.scaling:g}"
        )


@dataclass(frozen=True)
class LoRASummary:
    """What ``apply_lora`` did.

    Attributes:
        trainable: number of parameters that require grad.
        total: number of parameters of the model, adapters included.
        adapted: names of the modules now ``LoRALinear``.
        trainable_modules: names of the other modules left trainable (PEFT's
            ``modules_to_save``).
    """

    trainable: int
    total: int
    adapted: tuple[str, ...]
    trainable_modules: tuple[str, ...] = ()

    @property
    def percent(self) -> float:
        """Trainable parameters as a percentage of all of them."""
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (
            f"trainable params: {self.trainable:,} of {self.total:,} ({self.percent:.2f}%); "
            f"LoRA on {len(self.adapted)} linear layers"
        )


def _matches(name: str, suffix: str) -> bool:
    """Whether module ``name`` is ``suffix`` or ends with ``.suffix`` (whole name parts)."""
    return name == suffix or name.endswith("." + suffix)


def _select(model: nn.Module, targets: Iterable[str], what: str) -> dict[str, list[str]]:
    """For each target (an alias of ``TARGET_ALIASES`` or a module-name suffix), the
    names of the modules it matches; a target matching nothing is an error."""
    names = [name for name, _ in model.named_modules() if name]
    out: dict[str, list[str]] = {}
    for target in targets:
        suffixes = TARGET_ALIASES.get(target, (target,))
        out[target] = [n for n in names if any(_matches(n, s) for s in suffixes)]
        if not out[target]:
            aliases = ", ".join(TARGET_ALIASES)
            raise ValueError(
                f"{what} {target!r} matches no module of {type(model).__name__}; expected one of "
                f"{aliases} or a module-name suffix such as 'self_attn.q_proj'"
            )
    return out


def apply_lora(
    model: nn.Module,
    *,
    r: int,
    alpha: float,
    dropout: float = 0.0,
    targets: Iterable[str] = ("q", "v"),
    trainable: Iterable[str] = (),
    use_rslora: bool = False,
) -> LoRASummary:
    """Put LoRA adapters on ``model``'s chosen linear layers, in place, and freeze the rest.

    Every parameter is frozen except the adapters' A and B and the parameters of the
    modules named in ``trainable`` (a new task head, PEFT's ``modules_to_save``).

    Args:
        model: any model built from ``torchformer.nn`` blocks.
        r: rank of each update.
        alpha: scale: updates are multiplied by alpha / r.
        dropout: dropout on each adapter's input.
        targets: which ``nn.Linear`` layers to adapt: "q", "k", "v", "out" (attention
            projections), "ffn_up", "ffn_down", "ffn_gate", "ffn" (all of the
            feed-forward's), or module-name suffixes ("self_attn.q_proj",
            "layers.0.ffn.up_proj"); a suffix matches whole name parts.
        trainable: module-name suffixes of modules to keep trainable, e.g.
            ("classifier", "pooler").
        use_rslora: scale by alpha / √r instead (rank-stabilised LoRA).

    Returns:
        The counts of trainable and all parameters and the names of the adapted modules.

    Raises:
        ValueError: a target or trainable name matches no module, a target already has an
            adapter, or a trainable module contains an adapted layer.
        TypeError: a target matches a module that is not a plain ``nn.Linear``.
    """
    chosen = sorted({n for names in _select(model, targets, "LoRA target").values() for n in names})
    for name in chosen:
        module = model.get_submodule(name)
        if isinstance(module, LoRALinear):
            raise ValueError(f"{name} already has a LoRA adapter")
        if not is_plain_linear(module):
            raise TypeError(
                f"LoRA target {name} is a {type(module).__name__}, not an nn.Linear; name its "
                "linear layers instead (e.g. 'self_attn.q_proj')"
            )
    kept = sorted({n for names in _select(model, trainable, "trainable").values() for n in names})
    for name in kept:
        inside = [n for n in chosen if n == name or n.startswith(name + ".")]
        if inside:
            raise ValueError(
                f"trainable module {name} contains the LoRA target {inside[0]}: its base weight "
                "would be trained too; name the head's own modules instead"
            )
    model.requires_grad_(False)
    for name in chosen:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(
            owner,
            child,
            LoRALinear(
                getattr(owner, child), r=r, alpha=alpha, dropout=dropout, use_rslora=use_rslora
            ),
        )
    for name in kept:
        model.get_submodule(name).requires_grad_(True)
    params = list(model.parameters())
    return LoRASummary(
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
        adapted=tuple(chosen),
        trainable_modules=tuple(kept),
    )


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's adapted layers by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W + scaling · B A), in place.

    Each ``LoRALinear`` becomes a plain ``nn.Linear`` computing the same map, so the
    model has its base parameter names again (``save_pretrained``, ONNX export and the
    fused inference paths take it as any other model). Other parameters keep their
    ``requires_grad``; the merged weights are frozen.

    Returns:
        ``model``.
    """
    for name, layer in lora_layers(model).items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.merged())
    return model
