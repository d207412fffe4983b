"""The shared lifecycle of the added-module strategies (LoRA, prefix tuning, adapters), their configs,
and what happens when one strategy is applied after another (ftlib.lifecycle), on tiny BERT/RoBERTa."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from conftest import make_model
from safetensors import safe_open
from torch import nn

from ftlib import adapters, full, lora, prefix_tuning
from ftlib.adapters import (
    AdapterConfig,
    adapters_disabled,
    apply_adapters,
    load_adapters,
    merge_adapters,
    remove_adapters,
    save_adapters,
)
from ftlib.discriminative_lr import apply_discriminative_lr
from ftlib.feature_extraction import apply_feature_extraction
from ftlib.full import apply_full
from ftlib.gradual_unfreezing import apply_gradual_unfreezing
from ftlib.lifecycle import added_strategies
from ftlib.lora import (
    LoRAConfig,
    apply_lora,
    load_lora,
    lora_disabled,
    lora_layers,
    merge_lora,
    remove_lora,
    save_lora,
    unmerge_lora,
)
from ftlib.params import (
    ADDED_PREFIXES,
    has_prefix,
    load_trainable,
    save_trainable,
    trainable_names,
)
from ftlib.prefix_tuning import (
    PrefixConfig,
    apply_prefix_tuning,
    bake_prefix,
    load_prefix,
    prefix_disabled,
    remove_prefix,
    save_prefix,
)
from ftlib.strategies import STRATEGIES


def logits(model: nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"])


def perturb(model: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Move every tensor a strategy added (and the head) off its initial value, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if has_prefix(n, ADDED_PREFIXES.values()) or n.startswith("classifier."):
                p.add_(torch.randn(p.shape, generator=g) * std)
    return model


@dataclass(frozen=True)
class Lifecycle:
    """One added-module strategy's verbs, so every property below runs for all three."""

    name: str
    apply: Callable[[nn.Module], nn.Module]
    disabled: Callable
    remove: Callable[[nn.Module], nn.Module]
    save: Callable
    load: Callable
    merge: Callable[[nn.Module], nn.Module] | None  # None: cannot be merged


LIFECYCLES = {
    "lora": Lifecycle("lora", lambda m: apply_lora(m, rank=4), lora_disabled, remove_lora, save_lora, load_lora,
                      merge_lora),
    "prefix-tuning": Lifecycle("prefix-tuning", lambda m: apply_prefix_tuning(m, prefix_length=3, projection_dim=16),
                               prefix_disabled, remove_prefix, save_prefix, load_prefix, bake_prefix),
    "adapters": Lifecycle("adapters", lambda m: apply_adapters(m, bottleneck=4, placement="pfeiffer"),
                          adapters_disabled, remove_adapters, save_adapters, load_adapters, None),
}


@pytest.fixture(params=sorted(LIFECYCLES))
def life(request) -> Lifecycle:
    return LIFECYCLES[request.param]


# --- the verbs --------------------------------------------------------------------------------------------


def test_disabled_gives_the_base_models_outputs_from_the_same_object(life, arch, batch):
    expected = logits(make_model(arch), batch)
    model = perturb(life.apply(make_model(arch)))
    with torch.no_grad():  # the head moved too: compare the encoder's features, the part a strategy changes
        tuned = model.features(batch["input_ids"], batch["attention_mask"])
        base = make_model(arch).features(batch["input_ids"], batch["attention_mask"])
        assert not torch.allclose(tuned, base, atol=1e-4)
        with life.disabled(model) as same:
            assert same is model
            torch.testing.assert_close(model.features(batch["input_ids"], batch["attention_mask"]), base,
                                       atol=1e-6, rtol=0)
        torch.testing.assert_close(model.features(batch["input_ids"], batch["attention_mask"]), tuned,
                                   atol=0, rtol=0)  # switched back on after the block
    assert not torch.allclose(logits(model, batch), expected, atol=1e-4)


def test_disabled_restores_even_when_the_block_raises(life, batch):
    model = perturb(life.apply(make_model()))
    before = logits(model, batch)
    with pytest.raises(RuntimeError, match="boom"), life.disabled(model):
        raise RuntimeError("boom")
    assert torch.equal(logits(model, batch), before)


def test_remove_restores_the_original_model(life, arch, batch):
    original = make_model(arch)
    names = [n for n, _ in original.named_parameters()]
    model = perturb(life.apply(make_model(arch)))
    with torch.no_grad():
        model.classifier.load_state_dict(original.classifier.state_dict())  # the head is the task's, not the strategy's
    assert life.remove(model) is model
    assert [n for n, _ in model.named_parameters()] == names and not added_strategies(model)
    torch.testing.assert_close(logits(model, batch), logits(original, batch), atol=1e-6, rtol=0)
    life.apply(model)  # and the strategy can be applied again


def test_save_load_round_trip_with_the_config_in_the_metadata(life, arch, batch, tmp_path):
    model = perturb(life.apply(make_model(arch)))
    path = life.save(model, tmp_path / "task.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["ftlib"])
        keys = set(f.keys())
    assert meta["strategy"] == life.name and meta["config"]
    prefix = ADDED_PREFIXES[life.name]
    assert keys == {n for n, _ in model.named_parameters() if has_prefix(n, prefix) or n.startswith("classifier.")}
    fresh = life.apply(make_model(arch))
    assert not torch.allclose(logits(fresh, batch), logits(model, batch), atol=1e-4)
    assert life.load(fresh, path) is fresh
    assert torch.equal(logits(fresh, batch), logits(model, batch))


def test_load_refuses_junk_other_strategies_and_bare_models(life, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="is not a safetensors file written by save_"):
        life.load(life.apply(make_model()), junk)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        life.load(life.apply(make_model()), tmp_path / "missing.safetensors")
    other = next(o for o in LIFECYCLES.values() if o is not life)
    foreign = other.save(other.apply(make_model()), tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=f"was not written by save_.*names '{other.name}'"):
        life.load(life.apply(make_model()), foreign)
    path = life.save(life.apply(make_model()), tmp_path / "task.safetensors")
    with pytest.raises(ValueError, match=r"first call apply_\w+\(model, "):
        life.load(make_model(), path)


@pytest.mark.parametrize("name, saved, other, match", [
    ("lora", LoRAConfig(rank=4), LoRAConfig(rank=2), "saved with rank=4.*apply_lora"),
    ("prefix-tuning", PrefixConfig(3, 16), PrefixConfig(4, 16), "saved with prefix_length=3.*apply_prefix_tuning"),
    ("adapters", AdapterConfig(4, "pfeiffer"), AdapterConfig(4, "houlsby"), "saved with placement='pfeiffer'"),
])
def test_load_refuses_a_file_saved_with_other_settings(name, saved, other, match, tmp_path):
    module = {"lora": lora, "prefix-tuning": prefix_tuning, "adapters": adapters}[name]
    path = LIFECYCLES[name].save(module.RECIPE.apply(make_model(), config=saved), tmp_path / "t.safetensors")
    with pytest.raises(ValueError, match=match):
        LIFECYCLES[name].load(module.RECIPE.apply(make_model(), config=other), path)


def test_merge_or_bake_keeps_outputs_and_adapters_say_why_they_cannot(life, batch):
    model = perturb(life.apply(make_model()))
    before = logits(model, batch)
    if life.merge is None:
        with pytest.raises(ValueError, match="cannot be merged.*non-linearity.*use LoRA"):
            merge_adapters(model)
        assert "cannot be folded" in merge_adapters.__doc__
        return
    life.merge(model)
    torch.testing.assert_close(logits(model, batch), before, atol=1e-5, rtol=0)


def test_baked_prefix_is_saved_by_save_trainable(arch, batch, tmp_path):
    """Issue 10 item 2: after bake_prefix the prefix is frozen, and save_trainable used to write the head only."""
    model = bake_prefix(perturb(apply_prefix_tuning(make_model(arch), prefix_length=3, projection_dim=16)))
    path = save_trainable(model, tmp_path / "baked.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert {"prefix_encoder.prefix_keys", "prefix_encoder.prefix_values"} <= set(f.keys())
    fresh = bake_prefix(apply_prefix_tuning(make_model(arch), prefix_length=3, projection_dim=16))
    assert torch.equal(logits(load_trainable(fresh, path), batch), logits(model, batch))


def test_baked_prefix_file_loads_into_an_unbaked_model(batch, tmp_path):
    model = bake_prefix(perturb(apply_prefix_tuning(make_model(), prefix_length=3, projection_dim=16)))
    path = save_prefix(model, tmp_path / "baked.safetensors")
    fresh = load_prefix(apply_prefix_tuning(make_model(), prefix_length=3, projection_dim=16), path)
    assert fresh.prefix_encoder.baked and torch.equal(logits(fresh, batch), logits(model, batch))
    unbaked = save_prefix(apply_prefix_tuning(make_model(), prefix_length=3, projection_dim=16), tmp_path / "u.st")
    with pytest.raises(ValueError, match="holds the prefix MLP.*then bake_prefix"):
        load_prefix(fresh, unbaked)


# --- configs and recipes ----------------------------------------------------------------------------------


CONFIGS = [  # (module, config class, keyword arguments that differ from the defaults)
    (lora, LoRAConfig, {"rank": 4, "alpha": 8.0, "targets": ("query",), "dropout": 0.1}),
    (prefix_tuning, PrefixConfig, {"prefix_length": 3, "projection_dim": 16}),
    (adapters, AdapterConfig, {"bottleneck": 4, "placement": "pfeiffer", "activation": "gelu",
                               "train_layer_norm": True}),
]


@pytest.mark.parametrize("module, cls, kwargs", CONFIGS, ids=[c[1].__name__ for c in CONFIGS])
def test_apply_takes_keywords_or_a_frozen_config_with_the_same_result(module, cls, kwargs):
    config = cls(**kwargs)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.__setattr__(next(iter(kwargs)), None)
    by_keywords = module.RECIPE.apply(make_model(), **kwargs)
    by_config = module.RECIPE.apply(make_model(), config=config)
    assert trainable_names(by_keywords) == trainable_names(by_config)
    assert [(n, p.shape) for n, p in by_keywords.named_parameters()] == \
           [(n, p.shape) for n, p in by_config.named_parameters()]
    with pytest.raises(TypeError, match="either config=... or keyword arguments"):
        module.RECIPE.apply(make_model(), config=config, **kwargs)
    with pytest.raises(TypeError, match=f"config must be a {cls.__name__}"):
        module.RECIPE.apply(make_model(), config=dict(kwargs))


def test_each_strategy_module_owns_its_recipe():
    for module in (full, lora, prefix_tuning, adapters):
        assert STRATEGIES[module.RECIPE.name] is module.RECIPE and module.RECIPE.lr == module.LR
    assert list(STRATEGIES)[:7] == ["full", "feature-extraction", "gradual-unfreezing", "discriminative-lr", "lora",
                                    "prefix-tuning", "adapters"]  # the reference text's seven first, in its order


@pytest.mark.parametrize("make, match", [
    (lambda: PrefixConfig(prefix_length=True), "prefix_length must be a positive int, got True"),
    (lambda: PrefixConfig(projection_dim=False), "projection_dim must be a positive int, got False"),
    (lambda: apply_prefix_tuning(make_model(), prefix_length=True), "prefix_length must be a positive int"),
    (lambda: LoRAConfig(rank=True), "rank must be a positive int"),
    (lambda: LoRAConfig(alpha=True), "alpha must be a number > 0"),
    (lambda: AdapterConfig(bottleneck=True), "bottleneck must be a positive int"),
    (lambda: AdapterConfig(bottleneck=None), "exactly one of bottleneck and reduction_factor"),
    (lambda: AdapterConfig(reduction_factor=16), "exactly one of bottleneck and reduction_factor"),
    (lambda: AdapterConfig(activation="swish"), r"unknown activation 'swish'.*\(swish is 'silu'\)"),
], ids=["prefix-length-bool", "projection-bool", "apply-prefix-bool", "rank-bool", "alpha-bool", "bottleneck-bool",
        "neither-size", "both-sizes", "swish"])
def test_configs_refuse_bools_and_ambiguous_sizes(make, match):
    """Issue 10 item 8: prefix_length=True used to be accepted and fail inside nn.Embedding."""
    with pytest.raises(ValueError, match=match):
        make()


# --- one strategy after another ----------------------------------------------------------------------------


def lora_merged_away(model):
    return merge_lora(apply_lora(model, rank=4))


def lora_merged_in_place(model):
    return merge_lora(apply_lora(model, rank=4), replace=False)


FIRST = {  # what the model went through before the second strategy
    "feature-extraction": apply_feature_extraction,
    "gradual-unfreezing": apply_gradual_unfreezing,
    "full": apply_full,
    "discriminative-lr": apply_discriminative_lr,
    "lora": LIFECYCLES["lora"].apply,
    "lora merged (replace=True)": lora_merged_away,
    "lora merged (replace=False)": lora_merged_in_place,
    "prefix-tuning": LIFECYCLES["prefix-tuning"].apply,
    "prefix-tuning baked": lambda m: bake_prefix(LIFECYCLES["prefix-tuning"].apply(m)),
    "adapters": LIFECYCLES["adapters"].apply,
}
THEN = {"lora": LIFECYCLES["lora"].apply, "prefix-tuning": LIFECYCLES["prefix-tuning"].apply,
        "adapters": LIFECYCLES["adapters"].apply, "full": apply_full, **{
            n: STRATEGIES[n].apply for n in ("feature-extraction", "gradual-unfreezing", "discriminative-lr")}}
CLEAR = {"lora": r"merge_lora\(model\) to fold LoRA into the weights", "prefix-tuning": r"remove_prefix\(model\)",
         "adapters": r"remove_adapters\(model\)"}
SUPPORTED = [(f, t) for f in ("feature-extraction", "gradual-unfreezing", "full", "discriminative-lr",
                              "lora merged (replace=True)") for t in ("lora", "prefix-tuning", "adapters")]
REFUSED = [  # (first, then, what the message must name)
    *[(f, t, rf"carries {f}.*{CLEAR[f]}") for f in ("lora", "prefix-tuning", "adapters")
      for t in ("lora", "prefix-tuning", "adapters", "full", "feature-extraction", "gradual-unfreezing",
                "discriminative-lr") if t != f],
    ("lora merged (replace=False)", "adapters", rf"carries lora.*{CLEAR['lora']}"),
    ("prefix-tuning baked", "lora", rf"carries prefix-tuning.*{CLEAR['prefix-tuning']}"),
    ("lora", "lora", "already has LoRA layers"),
    ("prefix-tuning", "prefix-tuning", "already applied"),
    ("adapters", "adapters", r"already applied.*remove_adapters"),
]


def added_and_head(model: nn.Module, strategy: str) -> list[str]:
    return [n for n, _ in model.named_parameters() if has_prefix(n, ADDED_PREFIXES[strategy]) or
            n.startswith("classifier.")]


@pytest.mark.parametrize("first, then", SUPPORTED, ids=[f"{f} -> {t}" for f, t in SUPPORTED])
def test_supported_combinations_train_the_second_strategy_with_dropout_back(first, then, batch):
    """A head-only start (or any all-or-nothing flag state) under an added-module strategy: the head keeps
    its weights, exactly the new modules and the head train, and train() reaches the encoder's dropout."""
    model = FIRST[first](make_model())
    with torch.no_grad():
        model.classifier.weight.add_(1.0)  # as if the head had been trained first
    head = model.classifier.weight.detach().clone()
    THEN[then](model)
    assert trainable_names(model) == added_and_head(model, then)
    assert torch.equal(model.classifier.weight, head)
    model.train()
    assert model.encoder.training and all(m.training for m in model.encoder.modules() if isinstance(m, nn.Dropout))
    assert not getattr(model, "keep_encoder_eval", False)


def test_feature_extraction_then_registry_strategies_train_with_dropout():
    """Issue 10 item 4 through the registry (CLI, compare, run_strategy): full and discriminative LR after
    feature extraction used to keep the encoder in eval mode, so it trained without dropout."""
    for name in ("full", "discriminative-lr"):
        model = STRATEGIES[name].apply(apply_feature_extraction(make_model()))
        model.train()
        assert model.encoder.training and not model.keep_encoder_eval, name


@pytest.mark.parametrize("first, then, match", REFUSED, ids=[f"{f} -> {t}" for f, t, _ in REFUSED])
def test_refused_combinations_name_the_fix_and_change_nothing(first, then, match):
    model = FIRST[first](make_model())
    flags = [(n, p.requires_grad) for n, p in model.named_parameters()]
    kinds = [type(m).__name__ for m in model.modules()]
    with pytest.raises(ValueError, match=match):
        THEN[then](model)
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == flags
    assert [type(m).__name__ for m in model.modules()] == kinds


def test_training_a_model_merged_in_place_is_refused_until_unmerged(batch):
    """Issue 11: fit after merge_lora(replace=False) trained nothing (the merged forward skips A and B)."""
    model = lora_merged_in_place(make_model())
    expected = logits(model, batch)  # inference on the merged model is fine
    model.train()
    with pytest.raises(ValueError, match=r"merged into the weights.*unmerge_lora\(model\) before training"):
        model(batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        model(batch["input_ids"], batch["attention_mask"])  # a no-grad pass in train mode is still allowed
    unmerge_lora(model)
    loss = nn.functional.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])
    loss.backward()
    assert all(layer.lora_B.grad is not None and layer.lora_B.grad.any() for layer in lora_layers(model).values())
    torch.testing.assert_close(logits(model.eval(), batch), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="cannot be switched off; call unmerge_lora"), \
            lora_disabled(lora_merged_in_place(make_model())):
        pass
