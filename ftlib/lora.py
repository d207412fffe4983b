"""LoRA: low-rank adaptation of frozen linear layers (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
Large Language Models", arXiv:2106.09685).

Each targeted nn.Linear keeps its frozen weight W and learns a rank-r update:
    h = x W^T + b + dropout(x) @ A @ B * (alpha / r),   A: (in, r), B: (r, out)
A starts like PEFT's lora_A (Kaiming-uniform), B at zero, so the model is unchanged until it trains.
merge_lora folds the update into W for zero inference overhead; export_peft writes PEFT's adapter format.
The API follows minLoRA (verbs that change the model in place and return it) and PEFT (the maths);
the verbs are the shared lifecycle of ftlib.lifecycle: apply_lora, merge_lora, remove_lora, lora_disabled,
save_lora / load_lora, and the LORA_PREFIX every added tensor's name carries.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ftlib.lifecycle import (
    Recipe,
    check_can_apply,
    check_config,
    config_dict,
    disabled,
    load_added,
    read_saved,
    release_head_only,
    resolve_config,
    save_added,
)
from ftlib.models import SequenceClassifier, base_encoder
from ftlib.params import LORA_PREFIX, freeze_except, has_prefix, trainable_state_dict
from ftlib.strategy_tag import strategy_tag, tag_strategy

ALL_LINEAR = "all-linear"
LR = 1e-3  # peak learning rate on MiniLM (quick profile); full fine-tuning's 5e-5 barely moves B


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


@dataclass(frozen=True)
class LoRAConfig:
    """What apply_lora needs: rank r, scale alpha (the update is scaled by alpha/r), targets, dropout on x."""

    rank: int = 8
    alpha: float = 16
    targets: str | tuple[str, ...] = ("query", "value")  # module-name suffixes, or "all-linear"
    dropout: float = 0.0

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"rank must be a positive int (4 to 64 is typical), got {self.rank!r}")
        if not _is_number(self.alpha) or not self.alpha > 0:
            raise ValueError(f"alpha must be a number > 0 (the update is scaled by alpha/rank), got {self.alpha!r}")
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1), got {self.dropout!r}")
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        if not targets or any(not isinstance(t, str) for t in targets):
            raise TypeError(f"targets must be {ALL_LINEAR!r} or module-name suffixes (str), got {targets!r}")
        object.__setattr__(self, "targets", targets)  # a tuple: frozen and hashable


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update x @ A @ B * alpha/r."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.rank, self.alpha, self.dropout_p = rank, alpha, dropout
        self.scaling = alpha / rank  # keeps the update's size steady when you change r (paper, sec. 4.1)
        self.merged = False  # True: base.weight already holds the update, forward skips the low-rank path
        self.enabled = True  # False (lora_disabled): forward is the frozen base layer alone
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = base.weight
        a = torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype)  # (r, in): PEFT's lora_A.weight
        # Same distribution as PEFT's lora_A, not the same numbers: PEFT's constructors draw random numbers
        # before this init, so one seed gives different A in the two libraries (copy A across to compare).
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_A = nn.Parameter(a.T.contiguous())  # (in, r)
        self.lora_B = nn.Parameter(torch.zeros(rank, base.out_features, device=w.device, dtype=w.dtype))  # (r, out)
        base.requires_grad_(False)

    def delta_weight(self) -> torch.Tensor:
        """The update in nn.Linear's weight layout, so it can be added to W."""
        return (self.lora_A @ self.lora_B).T * self.scaling  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged and self.training and torch.is_grad_enabled() and self.lora_A.requires_grad:
            raise ValueError("LoRA is merged into the weights (merge_lora(model, replace=False)), so A and B would "
                             "get no gradient; call unmerge_lora(model) before training, or model.eval() to infer")
        out = self.base(x)  # (B, T, out)
        if self.merged or not self.enabled:
            return out
        return out + (self.lora_dropout(x) @ self.lora_A @ self.lora_B) * self.scaling  # (B, T, in) -> (B, T, out)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into W: same outputs, no extra matmuls."""
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of W so A and B can train again.

        Exact only up to rounding: (W + dW) - dW is not W bit for bit in floating point. Two roundings bound
        the error by eps * (|W| + |dW|) per weight (eps = 1.2e-7 in fp32): 3.0e-8 at most on MiniLM's
        query/value weights with B ~ N(0, 0.02), a trained-sized update (tests/test_lora.py checks the bound)."""
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, dropout={self.dropout_p}, merged={self.merged}"


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRALinear in the model, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def _encoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """nn.Linear modules inside the encoder (never the head), named as in model.named_modules()."""
    prefix = "encoder" if isinstance(model, SequenceClassifier) else ""
    return {n: m for n, m in base_encoder(model).named_modules(prefix=prefix) if isinstance(m, nn.Linear)}


def _kinds(names: Iterable[str]) -> list[str]:
    """Names without the layer index ('attention.self.query'), once each: what a target can name."""
    out = []
    for n in names:
        parts = n.split(".")
        idx = [i for i, p in enumerate(parts) if p.isdigit()]
        kind = ".".join(parts[idx[-1] + 1:] if idx else parts)
        if kind not in out:
            out.append(kind)
    return out


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)  # PEFT's rule for a list of target_modules


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16,
               targets: str | Iterable[str] = ("query", "value"), dropout: float = 0.0, *,
               config: LoRAConfig | None = None) -> nn.Module:
    """Wrap each targeted encoder nn.Linear in LoRALinear and freeze all but lora_* and the head, in place.

    Give the settings as keyword arguments or as config=LoRAConfig(...), not both."""
    config = resolve_config(LoRAConfig, config, rank=rank, alpha=alpha, targets=targets, dropout=dropout)
    if lora_layers(model):
        raise ValueError("model already has LoRA layers; apply_lora once, or merge_lora(model) before a second round")
    check_can_apply(model, "lora")  # before anything else: LoRA over adapters or a prefix is refused, naming the fix
    linears = _encoder_linears(model)
    if config.targets == (ALL_LINEAR,):
        chosen = dict(linears)
    else:
        chosen = {}
        for t in config.targets:
            hits = {n: m for n, m in linears.items() if _matches(n, t)}
            if not hits:
                raise ValueError(f"target {t!r} matches no nn.Linear in the encoder. Linear layers here (any dotted "
                                 f"suffix works): {', '.join(_kinds(linears))}; or targets={ALL_LINEAR!r}")
            chosen.update(hits)
    rank = config.rank
    for name, lin in chosen.items():  # check every layer before changing any, so a failure leaves the model intact
        if rank > min(lin.in_features, lin.out_features):
            raise ValueError(f"rank={rank} exceeds min(in, out)={min(lin.in_features, lin.out_features)} of {name}; "
                             "a low-rank update needs a smaller rank")
    release_head_only(model)  # over feature extraction: the encoder's dropout comes back with train()
    for name, lin in chosen.items():
        layer = LoRALinear(lin, rank, config.alpha, config.dropout).train(lin.training)  # keep eval mode
        model.set_submodule(name, layer)
    freeze_except(model, lambda n: has_prefix(n, LORA_PREFIX))
    return tag_strategy(model, "lora", config)  # fit and checkpoints read it


def merge_lora(model: nn.Module, replace: bool = True) -> nn.Module:
    """Fold every update into its weight; replace=True also swaps each LoRALinear for its plain nn.Linear.

    replace=False keeps A and B (unmerge_lora takes the update out again); training such a model is refused
    until unmerge_lora, since the merged forward pass gives A and B no gradient."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers to merge; call apply_lora(model, ...) first")
    for name, layer in layers.items():
        layer.merge()
        if replace:
            model.set_submodule(name, layer.base)
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo merge_lora(model, replace=False): W back to the original (up to rounding, see LoRALinear.unmerge)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers; merge_lora(model, replace=True) drops them for good")
    for layer in layers.values():
        layer.unmerge()
    return model


def remove_lora(model: nn.Module) -> nn.Module:
    """Put the plain nn.Linear layers back (a merged update is taken out first), dropping A and B; in place.

    requires_grad flags are left as they are (the base weights stay frozen)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("this model has no LoRA layers to remove")
    for name, layer in layers.items():
        layer.unmerge()
        model.set_submodule(name, layer.base)
    return model


@contextlib.contextmanager
def lora_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block every LoRA layer is its frozen base alone: the original model's outputs, same object."""
    layers = list(lora_layers(model).values())
    if any(layer.merged for layer in layers):
        raise ValueError("LoRA is merged into the weights, so it cannot be switched off; call unmerge_lora(model) "
                         "first")
    with disabled(layers, "LoRA layers"):
        yield model


def lora_settings(model: nn.Module) -> dict:
    """rank, alpha, dropout and target_modules of the model's LoRA layers (what a fresh model needs)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers; call apply_lora(model, ...) first")
    first = next(iter(layers.values()))
    return {"rank": first.rank, "alpha": first.alpha, "dropout": first.dropout_p,
            "targets": _target_modules(base_encoder(model))}


def _target_modules(encoder: nn.Module) -> list[str]:
    """PEFT target_modules selecting exactly our LoRA layers: short names if they suffice, else full names."""
    lora = {n for n, m in encoder.named_modules() if isinstance(m, LoRALinear)}
    short = sorted({n.split(".")[-1] for n in lora})
    plain = [n for n, m in encoder.named_modules() if type(m) is nn.Linear and n.rpartition(".")[0] not in lora]
    return sorted(lora) if any(_matches(n, s) for n in plain for s in short) else short


def lora_config(model: nn.Module) -> LoRAConfig:
    """The LoRAConfig that rebuilds the model's LoRA layers on a fresh model (targets as PEFT names them)."""
    settings = lora_settings(model)
    return LoRAConfig(settings["rank"], settings["alpha"], tuple(settings["targets"]), settings["dropout"])


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The lora_A / lora_B tensors plus the classifier head: everything the task changed."""
    return trainable_state_dict(model, prefixes=(LORA_PREFIX,))


def save_lora(model: nn.Module, path: str | Path) -> Path:
    """Write lora_state_dict to safetensors, with the LoRA config in its metadata."""
    config = config_dict(lora_config(model))
    return save_added(model, path, "lora", config, lora=lora_settings(model))


def load_lora(model: nn.Module, path: str | Path) -> nn.Module:
    """Load save_lora's file into a model given apply_lora with the same settings (checked)."""
    meta, keys = read_saved(path, "lora")
    saved = meta.get("config") or meta["lora"]
    if not lora_layers(model):
        raise ValueError(f"model has no LoRA layers; first call apply_lora(model, rank={saved['rank']}, "
                         f"alpha={saved['alpha']}, targets={tuple(saved['targets'])!r}) with the settings saved "
                         f"in {path}")
    check_config(path, saved, lora_settings(model), ("rank", "alpha"), "apply_lora")
    return load_added(model, path, "lora", keys)


def export_peft(model: nn.Module, path: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) for the bare encoder.

    peft.PeftModel.from_pretrained(encoder, path) then reproduces our encoder's outputs. The classifier
    head is not part of the adapter (PEFT loads it onto the bare encoder); keep it with save_lora.
    """
    tag = strategy_tag(model)
    if tag is not None and tag.name != "lora" or any(type(m) is not LoRALinear for m in lora_layers(model).values()):
        raise ValueError(f"export_peft writes plain LoRA, but this model carries {tag.name if tag else 'a LoRA variant'} "
                         "(its scaling, initialisation or layers differ): keep it with save_lora, or merge_lora and "
                         "save the merged model")
    settings, encoder = lora_settings(model), base_encoder(model)
    tensors = {}
    for name, layer in lora_layers(encoder).items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A.detach().T  # (r, in)
        tensors[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B.detach().T  # (out, r)
    config = {
        "peft_type": "LORA", "task_type": None, "r": settings["rank"], "lora_alpha": settings["alpha"],
        "target_modules": settings["targets"], "lora_dropout": settings["dropout"], "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "modules_to_save": None,
        "init_lora_weights": True, "inference_mode": True,
        "base_model_name_or_path": base_model_name_or_path or getattr(encoder.config, "_name_or_path", None) or None,
    }
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({n: t.contiguous().cpu() for n, t in tensors.items()}, str(path / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    return path


RECIPE = Recipe("lora", apply_lora, lr=LR, summary="rank-8 updates on query and value, base frozen")
