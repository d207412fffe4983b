"""Bottleneck adapters: small trainable MLPs inserted into a frozen BERT/RoBERTa.

Two architectures, as AdapterHub defines them (adapter-hub/adapters, src/adapters/configuration/
adapter_config.py and methods/bottleneck.py + methods/modeling.py):

- Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP" (AdapterHub's DoubleSeqBnConfig):
  an adapter after the attention output projection *and* after the feed-forward output, each on the
  sub-layer's output before the residual add and LayerNorm, swish (SiLU) inside:
      y = LN(h + up(act(down(h))) + input),   h = dropout(dense(x))
- Pfeiffer et al. 2021, "AdapterFusion" (EACL 2021; AdapterHub's SeqBnConfig): one adapter per layer,
  after the feed-forward only, ReLU inside, and it reads the *normalised* sub-layer output
  (original_ln_before=True) while its skip connection carries the raw one (residual_before_ln=True);
  the layer's own LayerNorm is then applied again (original_ln_after=True):
      y = LN(h + up(act(down(LN(h + input)))) + input)
  With up = 0 both are the original layer exactly, so training starts from the pre-trained model.

AdapterHub's default bottleneck is hidden_size // 16 (reduction_factor=16, HOULSBY / PFEIFFER below) and
its default init is BERT's normal(0.02) for both projections; here the up-projection starts at zero, so
an adapter is the exact identity at initialisation. The registry uses a bottleneck of 64.

The reference text's sketch names modules BERT does not have (`layernorm1`, `ffn`); here we wrap the
real ones, `layer.attention.output` (BertSelfOutput) and `layer.output` (BertOutput), reusing their
dense/dropout/LayerNorm, so every original parameter keeps its name. New parameters live under
`adapter_attn` / `adapter_ffn` (ADAPTER_PREFIX); select them with `is_adapter_param(name)`.
Lifecycle (ftlib.lifecycle): apply_adapters, remove_adapters, adapters_disabled, save_adapters /
load_adapters; merge_adapters only explains why adapters cannot be merged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
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
)
from ftlib.models import encoder_layers
from ftlib.params import ADAPTER_PREFIX, freeze_except, has_prefix, save_trainable, trainable_state_dict
from ftlib.strategy_tag import tag_strategy

PLACEMENTS = {"houlsby": ("attention.output", "output"), "pfeiffer": ("output",)}  # sub-layers adapted
ORIGINAL_LN_BEFORE = {"houlsby": False, "pfeiffer": True}  # does the adapter read LN(h + input) rather than h?
DEFAULT_ACTIVATION = {"houlsby": "silu", "pfeiffer": "relu"}  # AdapterHub: "swish" (= SiLU) and "relu"
SLOT_NAMES = {"attention.output": "adapter_attn", "output": "adapter_ffn"}
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}
_PARTS = ("dense", "dropout", "LayerNorm")  # what a BERT-style sub-layer output must hold
LR = 1e-3  # peak learning rate on MiniLM (quick profile)


def _check_size(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_activation(activation) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {sorted(ACTIVATIONS)} (swish is 'silu')")


@dataclass(frozen=True)
class AdapterConfig:
    """What apply_adapters needs: the bottleneck width (or hidden // reduction_factor) and the architecture."""

    bottleneck: int | None = 64
    placement: str = "houlsby"  # "houlsby" (two per layer) or "pfeiffer" (one, after the feed-forward)
    activation: str | None = None  # None: the placement's own (houlsby: silu, pfeiffer: relu)
    train_layer_norm: bool = False  # Houlsby et al. also train the layers' LayerNorms
    reduction_factor: int | None = None  # AdapterHub's way: bottleneck = hidden_size // reduction_factor

    def __post_init__(self):
        if (self.bottleneck is None) == (self.reduction_factor is None):
            raise ValueError(f"give exactly one of bottleneck and reduction_factor, got bottleneck={self.bottleneck!r}"
                             f" and reduction_factor={self.reduction_factor!r} (AdapterHub: bottleneck=None, "
                             "reduction_factor=16)")
        if self.bottleneck is not None:
            _check_size("bottleneck", self.bottleneck)
        else:
            _check_size("reduction_factor", self.reduction_factor)
        if self.placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {self.placement!r}; valid: {sorted(PLACEMENTS)}")
        if self.activation is None:
            object.__setattr__(self, "activation", DEFAULT_ACTIVATION[self.placement])
        _check_activation(self.activation)
        if not isinstance(self.train_layer_norm, bool):
            raise TypeError(f"train_layer_norm must be True or False, got {self.train_layer_norm!r}")

    def width(self, hidden_size: int) -> int:
        """The bottleneck size m for a model of this hidden size."""
        return self.bottleneck if self.bottleneck is not None else max(1, hidden_size // self.reduction_factor)


HOULSBY = AdapterConfig(bottleneck=None, reduction_factor=16, placement="houlsby")  # AdapterHub's DoubleSeqBnConfig
PFEIFFER = AdapterConfig(bottleneck=None, reduction_factor=16, placement="pfeiffer")  # AdapterHub's SeqBnConfig


class Adapter(nn.Module):
    """residual + up(act(down(x))), residual = x unless given: starts as the exact identity on its skip."""

    def __init__(self, hidden_size: int, bottleneck: int, activation: str = "gelu"):
        super().__init__()
        _check_size("hidden_size", hidden_size)
        _check_size("bottleneck", bottleneck)
        _check_activation(activation)
        self.activation = activation
        self.down_proj = nn.Linear(hidden_size, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up_proj = nn.Linear(bottleneck, hidden_size)
        # Houlsby's near-identity init for down; up exactly zero so the residual path is all that remains.
        # Consequence: on the first step down_proj gets a zero gradient (it only matters once up != 0).
        nn.init.normal_(self.down_proj.weight, std=1e-2)
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.up_proj.bias)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        h = self.act(self.down_proj(x))  # (B, T, m)
        return (x if residual is None else residual) + self.up_proj(h)  # (B, T, H)


class AdaptedOutput(nn.Module):
    """A BertSelfOutput/BertOutput with an adapter between its dropout and its residual LayerNorm."""

    def __init__(self, original: nn.Module, adapter: Adapter, slot: str, original_ln_before: bool = False,
                 train_layer_norm: bool = False):
        super().__init__()
        self.dense, self.dropout, self.LayerNorm = original.dense, original.dropout, original.LayerNorm
        self.slot = slot  # attribute name of the adapter: "adapter_attn" or "adapter_ffn"
        self.original_ln_before = original_ln_before  # Pfeiffer: the adapter reads LN(h + input)
        self.train_layer_norm = train_layer_norm  # remembered for save_adapters / adapter_config
        self.enabled = True  # False (adapters_disabled): the original sub-layer's output
        setattr(self, slot, adapter)
        # Kept outside the module tree (its children are ours already) so remove_adapters can restore it.
        self.__dict__["_original"] = original

    @property
    def adapter(self) -> Adapter:
        return getattr(self, self.slot)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        """AdapterHub's bottleneck_layer_forward for one adapter: pre_forward, Adapter.forward, post_forward."""
        h = self.dropout(self.dense(hidden_states))  # (B, T, H): sub-layer output, intermediate -> H for FFN
        if not self.enabled:
            return self.LayerNorm(h + input_tensor)  # the original sub-layer
        x = self.LayerNorm(h + input_tensor) if self.original_ln_before else h  # (B, T, H): what the adapter reads
        out = self.adapter(x, residual=h)  # (B, T, H): residual_before_ln=True, so the skip carries h
        return self.LayerNorm(out + input_tensor)  # (B, T, H): original_ln_after=True


def is_adapter_param(name: str) -> bool:
    """True for parameters apply_adapters created (a name component starts with ADAPTER_PREFIX)."""
    return has_prefix(name, ADAPTER_PREFIX)


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


def apply_adapters(model: nn.Module, bottleneck: int | None = 64, placement: str = "houlsby", *,
                   activation: str | None = None, train_layer_norm: bool = False, reduction_factor: int | None = None,
                   config: AdapterConfig | None = None) -> nn.Module:
    """Insert adapters in place and freeze all but them and the head (and the layers' LayerNorms if asked).

    Give the settings as arguments or as config=AdapterConfig(...) (HOULSBY, PFEIFFER: AdapterHub's), not both."""
    config = resolve_config(AdapterConfig, config, bottleneck=bottleneck, placement=placement, activation=activation,
                            train_layer_norm=train_layer_norm, reduction_factor=reduction_factor)
    layers = encoder_layers(model)
    if any(isinstance(m, AdaptedOutput) for m in model.modules()):
        raise ValueError("adapters are already applied to this model; call remove_adapters first")
    check_can_apply(model, "adapters")  # over LoRA or a prefix: refused, naming the fix
    # Check every layer before changing any, so a failure leaves the model untouched.
    plan = [(layer, path, _sublayer(layer, path, i)) for i, layer in enumerate(layers)
            for path in PLACEMENTS[config.placement]]
    release_head_only(model)  # over feature extraction: the encoder's dropout comes back with train()
    for layer, path, original in plan:
        w = original.dense.weight
        adapter = Adapter(original.dense.out_features, config.width(original.dense.out_features), config.activation)
        _set(layer, path, AdaptedOutput(original, adapter.to(w.device, w.dtype), SLOT_NAMES[path],
                                        ORIGINAL_LN_BEFORE[config.placement], config.train_layer_norm))
    norms = _layer_norm_names(model) if config.train_layer_norm else set()  # Houlsby also trains the LayerNorms
    freeze_except(model, lambda n: is_adapter_param(n) or n in norms)
    return tag_strategy(model, "adapters", config)  # fit and checkpoints read it


def _layer_norm_names(model: nn.Module) -> set[str]:
    """Parameter names of every LayerNorm inside the transformer blocks (not the embeddings')."""
    inside = {id(p) for m in encoder_layers(model).modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in inside}


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


def _adapted(model: nn.Module) -> list[AdaptedOutput]:
    return [m for m in model.modules() if isinstance(m, AdaptedOutput)]


def merge_adapters(model: nn.Module) -> nn.Module:
    """Refused: an adapter cannot be folded into the frozen weights, so there is no merged form.

    LoRA's update x @ A @ B is linear in x and adds to W; an adapter puts a non-linearity between its two
    projections (and Pfeiffer's reads a LayerNorm output), so up(act(down(x))) is no matrix. Deploy the
    model as it is (about 2-4% extra compute), or choose LoRA when a merged model is needed."""
    raise ValueError("adapters cannot be merged into the weights (the non-linearity between down_proj and up_proj "
                     "is not a matrix); deploy the adapted model as it is, or use LoRA for a mergeable update")


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block every adapted sub-layer computes the original one: the base model's outputs, same object."""
    with disabled(_adapted(model), "adapters"):
        yield model


def adapter_config(model: nn.Module) -> AdapterConfig:
    """The AdapterConfig that rebuilds the model's adapters on a fresh model (bottleneck resolved)."""
    adapted = _adapted(model)
    if not adapted:
        raise ValueError("this model has no adapters; call apply_adapters(model, ...) first")
    slots = {m.slot for m in adapted}
    placement = "houlsby" if "adapter_attn" in slots else "pfeiffer"
    first = adapted[0]
    return AdapterConfig(first.adapter.down_proj.out_features, placement, first.adapter.activation,
                         first.train_layer_norm)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapters, head, and the layers' LayerNorms if they were trained: everything the task changed."""
    tensors = trainable_state_dict(model, prefixes=(ADAPTER_PREFIX,))
    if adapter_config(model).train_layer_norm:
        names = _layer_norm_names(model)
        tensors.update({n: p.detach() for n, p in model.named_parameters() if n in names})
    return tensors


def save_adapters(model: nn.Module, path: str | Path) -> Path:
    """Write adapter_state_dict to safetensors, with the adapter config in its metadata."""
    return save_trainable(model, path, tensors=adapter_state_dict(model),
                          metadata={"strategy": "adapters", "config": config_dict(adapter_config(model))})


def load_adapters(model: nn.Module, path: str | Path) -> nn.Module:
    """Load save_adapters' file into a model given apply_adapters with the same settings (checked)."""
    meta, keys = read_saved(path, "adapters")
    saved = meta["config"]
    if not _adapted(model):
        raise ValueError(f"model has no adapters; first call apply_adapters(model, bottleneck={saved['bottleneck']}, "
                         f"placement={saved['placement']!r}, activation={saved['activation']!r}), the settings in "
                         f"{path}")
    check_config(path, saved, config_dict(adapter_config(model)),
                 ("bottleneck", "placement", "activation", "train_layer_norm"), "apply_adapters")
    return load_added(model, path, "adapters", keys)


RECIPE = Recipe("adapters", apply_adapters, lr=LR, summary="Houlsby bottleneck adapters (64) in every layer")
