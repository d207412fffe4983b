"""The strategy a model carries: set by every apply_* verb, read by fit (recipe rate) and checkpoints."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
from conftest import make_model

from ftlib.discriminative_lr import apply_discriminative_lr
from ftlib.feature_extraction import apply_feature_extraction
from ftlib.full import apply_full
from ftlib.gradual_unfreezing import apply_gradual_unfreezing
from ftlib.strategy_tag import StrategyTag, strategy_tag, strategy_tags, tag_strategy


@dataclass(frozen=True)
class Config:
    rank: int = 8
    targets: tuple[str, ...] = ("query", "value")


@pytest.mark.parametrize("apply, name", [(apply_full, "full"), (apply_feature_extraction, "feature-extraction"),
                                         (apply_gradual_unfreezing, "gradual-unfreezing"),
                                         (apply_discriminative_lr, "discriminative-lr")])
def test_every_simple_strategy_tags_the_model_it_changes(apply, name):
    model = make_model()
    assert strategy_tag(model) is None
    assert apply(model) is model
    assert strategy_tag(model) == StrategyTag(name, {})


def test_a_config_is_stored_as_json_values_and_survives_deepcopy():
    model = tag_strategy(make_model(), "lora", Config())
    assert strategy_tag(model).config == {"rank": 8, "targets": ["query", "value"]}  # as a checkpoint reads it back
    assert strategy_tag(copy.deepcopy(model)) == strategy_tag(model)
    assert "ftlib_strategies" not in str(model.state_dict().keys())


def test_a_new_strategy_replaces_the_tag_unless_composed():
    model = apply_full(apply_feature_extraction(make_model()))
    assert [t.name for t in strategy_tags(model)] == ["full"]
    tag_strategy(model, "lora", {"rank": 4}, compose=True)
    assert [t.name for t in strategy_tags(model)] == ["full", "lora"] and strategy_tag(model).name == "lora"


@pytest.mark.parametrize("name, config, error, match", [
    ("", None, ValueError, "non-empty string"),
    ("lora", [("rank", 8)], TypeError, "a dataclass instance or a dict"),
    ("lora", {"init": object()}, TypeError, "JSON values"),
])
def test_bad_tags_are_refused(name, config, error, match):
    with pytest.raises(error, match=match):
        tag_strategy(make_model(), name, config)
