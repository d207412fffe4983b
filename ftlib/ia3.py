"""(IA)^3: learned vectors that rescale keys, values and feed-forward activations of a frozen encoder
(Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning" (T-Few), NeurIPS, arXiv:2205.05638; PEFT's IA3Config).

Two kinds of targeted nn.Linear, y = x W^T + b:
- a plain target (key, value) scales its OUTPUT:  y' = l * (x W^T + b),  l of size out,
  i.e. each key/value feature gets a learned gain;
- a feed-forward target scales its INPUT:  y' = (l * x) W^T + b,  l of size in. On the FFN's output
  projection the input is the intermediate activation gelu(x W1^T + b1) (I = 4H wide), so l gates each
  of the I hidden units, the paper's  l_ff * gamma(W1 x)  before W2. Scaling W2's output instead would
  only give H gains after the units are mixed, and would scale its bias too.
Every l starts at ones (the identity). Both forms are linear in x, so merge_ia3 folds l into the
weights: rows of W (and b) for a plain target, columns of W (b unchanged) for a feed-forward one.
PEFT matches names by suffix, so "output.dense" also selects each layer's attention-output projection
(and, listed in feedforward, scales its input too); so does this module, so the counts agree:
H + H + H + I per BERT layer.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .models import SequenceClassifier, base_encoder
from .params import freeze_except, load_trainable, save_trainable, trainable_state_dict
from .selective import refuse_incompatible
from .train import NO_DECAY

PREFIX = "ia3_"  # the learned vectors are named ….ia3_l; freezing and saving select them by this prefix


def _suffixes(value, name: str) -> tuple[str, ...]:
    value = (value,) if isinstance(value, str) else tuple(value)
    if any(not isinstance(v, str) or not v for v in value):
        raise TypeError(f"{name} must be module-name suffixes (non-empty str), got {value!r}")
    return value


@dataclass(frozen=True)
class IA3Config:
    """targets: nn.Linear name suffixes that get a vector; feedforward: those among them scaled at the input."""

    targets: tuple[str, ...] = ("key", "value", "output.dense")
    feedforward: tuple[str, ...] = ("output.dense",)

    def __post_init__(self) -> None:
        targets, feedforward = _suffixes(self.targets, "targets"), _suffixes(self.feedforward, "feedforward")
        if not targets:
            raise ValueError("targets must name at least one nn.Linear, e.g. ('key', 'value', 'output.dense')")
        stray = [f for f in feedforward if f not in targets]
        if stray:
            raise ValueError(f"feedforward {stray} must also be listed in targets {targets} (as in PEFT); "
                             "add them to targets or drop them from feedforward")
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "feedforward", feedforward)


class IA3Linear(nn.Module):
    """A frozen nn.Linear whose output (or, feed-forward, input) is rescaled by a learned vector ia3_l."""

    def __init__(self, base: nn.Linear, feedforward: bool):
        super().__init__()
        self.base, self.feedforward = base, feedforward
        size = base.in_features if feedforward else base.out_features
        w = base.weight
        self.ia3_l = nn.Parameter(torch.ones(size, device=w.device, dtype=w.dtype))  # ones: the identity
        self.enabled = True  # False: the plain base layer (ia3_disabled)
        base.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.base(x)
        if self.feedforward:
            return self.base(x * self.ia3_l)  # (B, T, in) gated per input unit -> (B, T, out)
        return self.base(x) * self.ia3_l  # (B, T, out) gained per output feature

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain nn.Linear with the vector folded in: same outputs, no extra multiply."""
        lin = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                        device=self.base.weight.device, dtype=self.base.weight.dtype)
        if self.feedforward:
            lin.weight.copy_(self.base.weight * self.ia3_l[None, :])  # (out, in): column j times l_j
            if lin.bias is not None:
                lin.bias.copy_(self.base.bias)
        else:
            lin.weight.copy_(self.base.weight * self.ia3_l[:, None])  # (out, in): row i times l_i
            if lin.bias is not None:
                lin.bias.copy_(self.base.bias * self.ia3_l)
        lin.requires_grad_(False)
        return lin.train(self.base.training)

    def extra_repr(self) -> str:
        return f"feedforward={self.feedforward}, size={self.ia3_l.numel()}, enabled={self.enabled}"


def ia3_layers(model: nn.Module) -> dict[str, IA3Linear]:
    """Every IA3Linear in the model, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, IA3Linear)}


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)  # PEFT's rule for a list of target_modules


def _kinds(names: Iterable[str]) -> list[str]:
    """Names without the layer index, once each: what a target can name."""
    out = []
    for n in names:
        parts = n.split(".")
        idx = [i for i, p in enumerate(parts) if p.isdigit()]
        kind = ".".join(parts[idx[-1] + 1:] if idx else parts)
        if kind not in out:
            out.append(kind)
    return out


def _linear_or_wrapper(m: nn.Module) -> bool:
    """An nn.Linear, or a module wrapping one as `.base` (IA3Linear, LoRALinear): what a target may name."""
    return isinstance(m, nn.Linear) or isinstance(getattr(m, "base", None), nn.Linear)


def _plan(model: nn.Module, config: IA3Config) -> dict[str, tuple[nn.Linear, bool]]:
    """name -> (the nn.Linear to wrap, feedforward?) for every target; errors before anything changes."""
    prefix = "encoder" if isinstance(model, SequenceClassifier) else ""
    modules = dict(base_encoder(model).named_modules(prefix=prefix))
    linears = [n for n, m in modules.items() if type(m) is nn.Linear]
    plan = {}
    for t in config.targets:
        hits = [n for n, m in modules.items() if _matches(n, t) and _linear_or_wrapper(m)]
        if not hits:
            raise ValueError(f"target {t!r} matches no nn.Linear in the encoder. Linear layers here (any dotted "
                             f"suffix works): {', '.join(_kinds(linears))}")
        for n in hits:
            m = modules[n]
            if isinstance(m, IA3Linear):
                raise ValueError("(IA)^3 is already applied to this model; merge_ia3 or remove_ia3 first")
            if type(m) is not nn.Linear:
                raise ValueError(f"(IA)^3 needs a plain nn.Linear at {n}, found {type(m).__name__} (another "
                                 "strategy's wrapper?); merge that strategy first or choose other targets")
            plan[n] = (m, any(_matches(n, f) for f in config.feedforward))
    return plan


def apply_ia3(model: nn.Module, targets: str | Iterable[str] = ("key", "value", "output.dense"),
              feedforward: str | Iterable[str] = ("output.dense",)) -> nn.Module:
    """Wrap each targeted encoder nn.Linear in IA3Linear (vectors at ones) and freeze all but them and the head."""
    config = IA3Config(targets, feedforward)
    if ia3_layers(model):
        raise ValueError("(IA)^3 is already applied to this model; merge_ia3 or remove_ia3 first")
    refuse_incompatible(model, "(IA)^3", PREFIX, "apply_ia3 to a fresh model")
    plan = _plan(model, config)  # every check before any change
    for name, (lin, ff) in plan.items():
        model.set_submodule(name, IA3Linear(lin, ff).train(lin.training))
    model.ia3_config = config  # a plain attribute: what save_ia3 writes into the file's metadata
    return freeze_except(model, lambda n: any(part.startswith(PREFIX) for part in n.split(".")))


def ia3_param_groups(model: nn.Module, weight_decay: float = 0.01) -> list[dict]:
    """fit's two AdamW groups, with the (IA)^3 vectors in the no-decay one: weight decay pulls a tensor
    towards 0, and a scaling vector at 0 silences its features; its neutral value is 1, not 0."""
    named = list(model.named_parameters())  # every tensor, as param_groups does (AdamW skips the frozen)
    free = [p for n, p in named if n.endswith(NO_DECAY) or n.split(".")[-1].startswith(PREFIX)]
    ids = {id(p) for p in free}
    return [{"params": [p for _, p in named if id(p) not in ids], "weight_decay": weight_decay},
            {"params": free, "weight_decay": 0.0}]


def _layers(model: nn.Module, verb: str) -> dict[str, IA3Linear]:
    layers = ia3_layers(model)
    if not layers:
        raise ValueError(f"model has no (IA)^3 layers to {verb}; call apply_ia3(model) first")
    return layers


def merge_ia3(model: nn.Module) -> nn.Module:
    """Fold every vector into its weight and put plain nn.Linear layers back: same outputs, zero overhead."""
    for name, layer in _layers(model, "merge").items():
        model.set_submodule(name, layer.merged())
    model.__dict__.pop("ia3_config", None)
    return model


def remove_ia3(model: nn.Module) -> nn.Module:
    """Put the original nn.Linear layers back, vectors discarded (requires_grad flags stay as they are)."""
    for name, layer in _layers(model, "remove").items():
        model.set_submodule(name, layer.base)
    model.__dict__.pop("ia3_config", None)
    return model


@contextlib.contextmanager
def ia3_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block every vector is bypassed: the base model's outputs, exactly."""
    layers = list(_layers(model, "disable").values())
    previous = [layer.enabled for layer in layers]
    for layer in layers:
        layer.enabled = False
    try:
        yield model
    finally:
        for layer, was in zip(layers, previous, strict=True):
            layer.enabled = was


def ia3_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The ia3_l vectors plus the classifier head: everything the task changed."""
    _layers(model, "save")
    return trainable_state_dict(model, prefixes=(PREFIX,))


def save_ia3(model: nn.Module, path: str | Path) -> Path:
    """Write ia3_state_dict to safetensors, with targets and feedforward in its metadata."""
    tensors = ia3_state_dict(model)
    return save_trainable(model, path, tensors=tensors, metadata={"ia3": asdict(model.ia3_config)})


def load_ia3(model: nn.Module, path: str | Path) -> nn.Module:
    """Load save_ia3's file into a model given apply_ia3 with the same settings (checked)."""
    with safe_open(str(path), framework="pt") as f:
        saved = json.loads((f.metadata() or {}).get("ftlib", "{}")).get("ia3")
        keys = set(f.keys())
    if saved is None:
        raise ValueError(f"{path} was not written by save_ia3 (no (IA)^3 settings in its metadata)")
    _layers(model, "load into")
    ours = asdict(model.ia3_config)
    if {k: list(v) for k, v in ours.items()} != {k: list(v) for k, v in saved.items()}:
        raise ValueError(f"{path} was saved with {saved}, but the model has {ours}; apply_ia3 with the saved settings")
    missing = sorted(set(ia3_state_dict(model)) - keys)
    if missing:
        raise KeyError(f"{path} lacks {len(missing)} tensors this model has, e.g. {missing[:3]}")
    return load_trainable(model, path)
