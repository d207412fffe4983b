"""Which strategy a model carries, by name and config: what `fit` reads its recipe rate from and checkpoints store.

Parameter names cannot tell full fine-tuning, feature extraction, gradual unfreezing and discriminative LR
apart (they add nothing), so every `apply_*` verb tags the model it changes:

    tag_strategy(model, "lora", LoraConfig(rank=8))   # a dataclass or a dict of JSON values
    strategy_tag(model)   # StrategyTag(name='lora', config={'rank': 8, ...}), or None when untagged

A new tag replaces the old one (the new strategy owns the model); `compose=True` adds it on top, for
combinations a strategy module supports (e.g. LoRA on a model whose head was trained first).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from torch import nn

TAG_ATTRIBUTE = "ftlib_strategies"  # a plain attribute on the model: survives deepcopy, not state_dict


@dataclass(frozen=True)
class StrategyTag:
    name: str
    config: dict[str, Any]

    def __str__(self) -> str:
        return f"{self.name} {self.config}"

    def to_json(self) -> dict:
        return {"name": self.name, "config": self.config}


def _as_json_config(config) -> dict:
    """A config as plain JSON values (tuples become lists), so a saved and a live one compare equal."""
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, dict):
        raise TypeError(f"a strategy config must be a dataclass instance or a dict, got {type(config).__name__}")
    try:
        return json.loads(json.dumps(config))
    except TypeError as e:
        raise TypeError(f"a strategy config must hold JSON values (numbers, strings, lists, dicts): {e}") from e


def tag_strategy(model: nn.Module, name: str, config=None, *, compose: bool = False) -> nn.Module:
    """Record that strategy `name` with `config` was applied to `model`; returns the model."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a strategy name must be a non-empty string, got {name!r}")
    tag = StrategyTag(name, _as_json_config(config))
    earlier = strategy_tags(model) if compose else ()
    object.__setattr__(model, TAG_ATTRIBUTE, (*earlier, tag))  # not a submodule or buffer: a plain attribute
    return model


def strategy_tags(model: nn.Module) -> tuple[StrategyTag, ...]:
    """Every strategy the model carries, in the order applied (empty when none was)."""
    return tuple(model.__dict__.get(TAG_ATTRIBUTE, ()))


def strategy_tag(model: nn.Module) -> StrategyTag | None:
    """The strategy applied last, or None for a model no `apply_*` verb has touched."""
    tags = strategy_tags(model)
    return tags[-1] if tags else None


def describe_tags(tags) -> str:
    """'lora {...}', 'feature-extraction {} + lora {...}', or 'no strategy' for a log or an error message."""
    return " + ".join(str(t) for t in tags) or "no strategy"


def tags_from_json(saved: list[dict]) -> tuple[StrategyTag, ...]:
    return tuple(StrategyTag(t["name"], t["config"]) for t in saved)
