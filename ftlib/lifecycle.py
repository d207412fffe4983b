"""One lifecycle for every strategy, and the rules for applying one strategy after another.

A strategy lives in one module, `ftlib/<strategy>.py`, which owns its whole recipe:

    <Name>Config       a frozen dataclass validated in __post_init__ (a bad value raises, naming the fix)
    LR, RECIPE         the peak learning rate that works on MiniLM, and the Recipe the registry lists
    apply_<name>(model, <keyword args> | config=<Name>Config(...))   change the model in place, return it

A strategy that *adds modules* to a frozen encoder (LoRA, prefix tuning, adapters; later IA3, DoRA ...)
also has the same verbs, so the notebooks, the comparison and the CLI treat them alike:

    merge_<name> / bake_<name>(model)    fold the modules into plain weights for inference (if the maths
                                         allows: adapters cannot, their merge_adapters says why and raises)
    remove_<name>(model)                 put the original modules back
    <name>_disabled(model)               context manager: the base model's outputs, same object (forgetting)
    save_<name>(model, path) / load_<name>(model, path)   small safetensors file: added tensors + head,
                                         {"strategy": ..., "config": ...} in its metadata (save_added/load_added)
    one parameter-name prefix            params.ADDED_PREFIXES: freezing, saving and checkpoints use it

Combinations (check_can_apply, called by every apply_* before it changes anything):
    - a model carries at most one set of added modules: applying any strategy over LoRA, a prefix or
      adapters is refused, naming how to merge or remove them first (else their tensors freeze silently);
    - starting from a head-only model (feature extraction, gradual unfreezing before its first thaw) is
      supported: the head keeps its weights and `release_head_only` lets the encoder's dropout back on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from safetensors import safe_open
from torch import nn

from .params import ADDED_PREFIXES, has_prefix, load_trainable, save_trainable, trainable_state_dict

if TYPE_CHECKING:
    from .train import Callback

C = TypeVar("C")

# How to get rid of each added-module strategy before applying another one.
HOW_TO_CLEAR = {
    "lora": "merge_lora(model) to fold LoRA into the weights (or remove_lora(model) to drop it)",
    "prefix-tuning": "remove_prefix(model) to drop the prefix",
    "adapters": "remove_adapters(model) to drop the adapters",
}


@dataclass(frozen=True)
class Recipe:
    """How the registry applies and trains one strategy; each strategy module defines its own RECIPE."""

    name: str
    apply: Callable[[nn.Module], nn.Module]  # apply_<strategy> with its defaults
    lr: float  # peak learning rate that works for this strategy on MiniLM (set on the quick profile)
    groups: Callable[[nn.Module, float], list[dict]] | None = None  # optimizer groups, if not fit's default
    callbacks: Callable[[nn.Module, int], list[Callback]] = field(default=lambda model, total_steps: [])
    schedule: Callable[[int, int], float] | None = None  # LR multiplier; None = linear warm-up/decay
    summary: str = ""


def resolve_config(cls: type[C], config: C | None, **kwargs) -> C:
    """The config to use: `config` if given (then every keyword must be left at its default), else cls(**kwargs)."""
    if config is None:
        return cls(**kwargs)
    if not isinstance(config, cls):
        raise TypeError(f"config must be a {cls.__name__}, got {type(config).__name__}")
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    clash = sorted(k for k, v in kwargs.items() if v != defaults.get(k))
    if clash:
        raise TypeError(f"give either config=... or keyword arguments, not both (got config and {clash}); "
                        f"put them in the config: dataclasses.replace(config, {clash[0]}=...)")
    return config


def config_dict(config: Any) -> dict:
    """A config as plain JSON values (tuples become lists), for file metadata."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def added_strategies(model: nn.Module) -> list[str]:
    """The added-module strategies a model carries, read from its parameter names (ADDED_PREFIXES)."""
    names = [n for n, _ in model.named_parameters()]
    return [s for s, prefix in ADDED_PREFIXES.items() if any(has_prefix(n, prefix) for n in names)]


def check_can_apply(model: nn.Module, strategy: str) -> None:
    """Refuse to apply `strategy` over another strategy's added modules, naming how to clear them first."""
    for other in added_strategies(model):
        if other != strategy:
            raise ValueError(
                f"cannot apply {strategy}: the model already carries {other} ({ADDED_PREFIXES[other]}* tensors), "
                f"which {strategy} would freeze or retrain without a word. Start from a fresh model, or first "
                f"{HOW_TO_CLEAR[other]}")


def release_head_only(model: nn.Module) -> nn.Module:
    """Undo feature extraction's eval lock, so train() reaches the encoder's dropout again; head kept."""
    if getattr(model, "keep_encoder_eval", False):
        model.keep_encoder_eval = False
        encoder = getattr(model, "encoder", None)
        if isinstance(encoder, nn.Module):
            encoder.train(model.training)
    return model


def prepare(model: nn.Module, strategy: str) -> nn.Module:
    """What every apply_* does before changing a model: refuse a bad combination, release a head-only start."""
    check_can_apply(model, strategy)
    return release_head_only(model)


@contextlib.contextmanager
def disabled(modules: Iterable[nn.Module], what: str) -> Iterator[None]:
    """Set `enabled = False` on each module inside the block (they then compute the base model), restore after."""
    modules = list(modules)
    if not modules:
        raise ValueError(f"this model has no {what} to disable; apply them first")
    previous = [m.enabled for m in modules]
    try:
        for m in modules:
            m.enabled = False
        yield
    finally:
        for m, p in zip(modules, previous, strict=True):
            m.enabled = p


def save_added(model: nn.Module, path: str | Path, strategy: str, config: dict, **extra) -> Path:
    """Write the head and every tensor the strategy added (trained or not), with its config in the metadata."""
    tensors = trainable_state_dict(model, prefixes=[ADDED_PREFIXES[strategy]])
    return save_trainable(model, path, tensors=tensors, metadata={"strategy": strategy, "config": config, **extra})


def read_saved(path: str | Path, strategy: str) -> tuple[dict, set[str]]:
    """(metadata, tensor names) of a file save_added wrote for `strategy`; anything else is a clear error."""
    saver = f"save_{'prefix' if strategy == 'prefix-tuning' else strategy.replace('-', '_')}"
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist; give the file {saver} wrote")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta, keys = f.metadata() or {}, set(f.keys())
        meta = json.loads(meta.get("ftlib", "{}"))
    except Exception as e:  # safetensors raises its own error types for a truncated or foreign file
        raise ValueError(f"{path} is not a safetensors file written by {saver} ({e}); save it again") from e
    if meta.get("strategy") != strategy and not (strategy == "lora" and "lora" in meta):  # old save_lora files
        found = meta.get("strategy", "no strategy")
        raise ValueError(f"{path} was not written by {saver} (its metadata names {found!r}); load it with its own "
                         "load_* function")
    return meta, keys


def load_added(model: nn.Module, path: str | Path, strategy: str, keys: set[str]) -> nn.Module:
    """Copy a save_added file into a model that carries the same strategy with the same config (checked before)."""
    missing = sorted(set(trainable_state_dict(model, prefixes=[ADDED_PREFIXES[strategy]])) - keys)
    if missing:
        raise KeyError(f"{path} lacks {len(missing)} tensors this model has, e.g. {missing[:3]} "
                       "(was it saved with other settings?)")
    return load_trainable(model, path)


def check_config(path: str | Path, saved: dict, ours: dict, keys: Iterable[str], apply: str) -> None:
    """Refuse a file saved with other settings, naming the apply call that matches it."""
    for key in keys:
        if saved.get(key) != ours.get(key):
            raise ValueError(f"{path} was saved with {key}={saved.get(key)!r}, but the model has "
                             f"{key}={ours.get(key)!r}; {apply} with the saved settings: {saved}")
