"""Bottleneck adapters: small trainable MLPs inserted into a frozen BERT/RoBERTa.

Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP": two adapters per layer, one after
the attention output projection and one after the feed-forward output. Pfeiffer et al. 2020/2021,
"AdapterFusion" (EACL 2021): one adapter per layer, after the feed-forward only; about as accurate
with half the adapters. Either way the adapter sits after the sub-layer's dense + dropout and before
its residual add and LayerNorm:  LayerNorm(adapter(dropout(dense(h))) + input).

The reference text's sketch names modules BERT does not have (`layernorm1`, `ffn`); here we wrap the
real ones, `layer.attention.output` (BertSelfOutput) and `layer.output` (BertOutput), reusing their
dense/dropout/LayerNorm, so every original parameter keeps its name. New parameters live under
`adapter_attn` / `adapter_ffn`; select them with `is_adapter_param(name)`, i.e.
`any(part.startswith("adapter_") for part in name.split("."))`, or save them with
`params.trainable_state_dict(model, prefixes=("adapter_",))`.
"""

from __future__ import annotations

import torch
from torch import nn

from ftlib.models import encoder_layers
from ftlib.params import freeze_except

ADAPTER_PREFIX = "adapter_"
PLACEMENTS = {"houlsby": ("attention.output", "output"), "pfeiffer": ("output",)}  # sub-layers adapted
SLOT_NAMES = {"attention.output": "adapter_attn", "output": "adapter_ffn"}
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}
_PARTS = ("dense", "dropout", "LayerNorm")  # what a BERT-style sub-layer output must hold


def _check_size(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class Adapter(nn.Module):
    """x + up(act(down(x))): starts as the exact identity, so inserting it leaves the model unchanged."""

    def __init__(self, hidden_size: int, bottleneck: int, activation: str = "gelu"):
        super().__init__()
        _check_size("hidden_size", hidden_size)
        _check_size("bottleneck", bottleneck)
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {sorted(ACTIVATIONS)}")
        self.down_proj = nn.Linear(hidden_size, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up_proj = nn.Linear(bottleneck, hidden_size)
        # Houlsby's near-identity init for down; up exactly zero so the residual path is all that remains.
        # Consequence: on the first step down_proj gets a zero gradient (it only matters once up != 0).
        nn.init.normal_(self.down_proj.weight, std=1e-2)
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.up_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.down_proj(x))  # (B, T, m)
        return x + self.up_proj(h)  # (B, T, H)


class AdaptedOutput(nn.Module):
    """A BertSelfOutput/BertOutput with an adapter between its dropout and its residual LayerNorm."""

    def __init__(self, original: nn.Module, adapter: Adapter, slot: str):
        super().__init__()
        self.dense, self.dropout, self.LayerNorm = original.dense, original.dropout, original.LayerNorm
        self.slot = slot  # attribute name of the adapter: "adapter_attn" or "adapter_ffn"
        setattr(self, slot, adapter)
        # Kept outside the module tree (its children are ours already) so remove_adapters can restore it.
        self.__dict__["_original"] = original

    @property
    def adapter(self) -> Adapter:
        return getattr(self, self.slot)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.dense(hidden_states))  # (B, T, H): sub-layer output, intermediate -> H for FFN
        h = self.adapter(h)  # (B, T, H)
        return self.LayerNorm(h + input_tensor)  # (B, T, H)


def is_adapter_param(name: str) -> bool:
    """True for parameters apply_adapters created (a name component starts with 'adapter_')."""
    return any(part.startswith(ADAPTER_PREFIX) for part in name.split("."))


def _sublayer(layer: nn.Module, path: str, index: int) -> nn.Module:
    """The BERT-style sub-layer output at `path`, or an error naming what was expected and found."""
    module = layer
    for attr in path.split("."):
        found = [n for n, _ in module.named_children()]
        if not hasattr(module, attr) or not isinstance(getattr(module, attr), nn.Module):
            raise ValueError(
                f"layer {index} ({type(layer).__name__}) has no BERT-style '{path}' sub-layer output: "
                f"expected a child {attr!r} of {type(module).__name__}, found children {found}"
            )
        module = getattr(module, attr)
    if isinstance(module, AdaptedOutput):
        raise ValueError(f"adapters are already applied (layer {index}, '{path}'); call remove_adapters first")
    missing = [p for p in _PARTS if not isinstance(getattr(module, p, None), nn.Module)]
    if missing or not isinstance(module.dense, nn.Linear):
        raise ValueError(
            f"layer {index} '{path}' ({type(module).__name__}) is not BERT-style: expected children "
            f"{list(_PARTS)} with dense an nn.Linear, found {[n for n, _ in module.named_children()]}"
        )
    return module


def _set(layer: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = layer.get_submodule(parent_path) if parent_path else layer
    setattr(parent, attr, module)


def apply_adapters(model: nn.Module, bottleneck: int = 64, placement: str = "houlsby", *,
                   activation: str = "gelu", train_layer_norm: bool = False) -> nn.Module:
    """Insert adapters in place and freeze all but them and the head (and the layers' LayerNorms if asked)."""
    _check_size("bottleneck", bottleneck)
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; valid: {sorted(PLACEMENTS)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {sorted(ACTIVATIONS)}")
    layers = encoder_layers(model)
    if any(isinstance(m, AdaptedOutput) for m in model.modules()):
        raise ValueError("adapters are already applied to this model; call remove_adapters first")
    # Check every layer before changing any, so a failure leaves the model untouched.
    plan = [(layer, path, _sublayer(layer, path, i)) for i, layer in enumerate(layers)
            for path in PLACEMENTS[placement]]
    # Houlsby also trains the layer norms: here every LayerNorm inside the transformer blocks.
    norms = {id(p) for m in layers.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    norms = norms if train_layer_norm else set()
    for layer, path, original in plan:
        w = original.dense.weight
        adapter = Adapter(original.dense.out_features, bottleneck, activation).to(w.device, w.dtype)
        _set(layer, path, AdaptedOutput(original, adapter, SLOT_NAMES[path]))
    params = dict(model.named_parameters())
    return freeze_except(model, lambda n: is_adapter_param(n) or id(params[n]) in norms)


def remove_adapters(model: nn.Module) -> nn.Module:
    """Put the original sub-layer outputs back (adapters discarded); requires_grad flags are left as they are."""
    found = False
    for layer in encoder_layers(model):
        for path in SLOT_NAMES:
            module = layer.get_submodule(path)
            if isinstance(module, AdaptedOutput):
                _set(layer, path, module._original)
                found = True
    if not found:
        raise ValueError("this model has no adapters to remove")
    return model


def adapter_modules(model: nn.Module) -> list[Adapter]:
    """Every Adapter in the model, bottom layer first (attention before feed-forward)."""
    return [m for m in model.modules() if isinstance(m, Adapter)]
