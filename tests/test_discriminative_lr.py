"""Discriminative learning rates and the slanted-triangular schedule (ULMFiT), read back from the optimizer."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, block_of, make_model
from conftest import rows_loader as loader

from ftlib.discriminative_lr import (
    ULMFIT_DECAY,
    apply_discriminative_lr,
    layer_lrs,
    layerwise_param_groups,
    slanted_triangular,
)
from ftlib.strategies import STRATEGIES
from ftlib.train import NO_DECAY, Callback, fit

L = TINY["num_hidden_layers"]
BASE = 1e-3








def expected_lr(block: str, base: float, decay: float, layers: int = L) -> float:
    if block == "embeddings":
        return base * decay**layers
    if block == "head":
        return base
    return base * decay ** (layers - 1 - int(block.split(".")[1]))


def lr_by_name(model, optimizer) -> dict[str, float]:
    lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    return {n: lr[id(p)] for n, p in model.named_parameters()}


@pytest.mark.parametrize("decay", [0.95, ULMFIT_DECAY, 1.0], ids=["0.95", "ulmfit", "no-decay"])
def test_learning_rates_read_back_from_the_optimizer(arch, decay):
    model = apply_discriminative_lr(make_model(arch))
    opt = torch.optim.AdamW(layerwise_param_groups(model, BASE, decay), lr=123.0)  # group lrs win over the default
    got = lr_by_name(model, opt)
    for name, lr in got.items():
        assert lr == pytest.approx(expected_lr(block_of(name), BASE, decay), rel=1e-12), name
    assert {block_of(n) for n in got} == {"embeddings", "head", *(f"layer.{i}" for i in range(L))}
    # the closed form, spelled out for the 2-layer model: head, top layer, bottom layer, embeddings
    assert got["classifier.weight"] == pytest.approx(BASE)
    assert got["encoder.encoder.layer.1.output.dense.weight"] == pytest.approx(BASE)
    assert got["encoder.encoder.layer.0.output.dense.weight"] == pytest.approx(BASE * decay)
    assert got["encoder.embeddings.word_embeddings.weight"] == pytest.approx(BASE * decay**2)


def test_ulmfit_decay_is_one_over_2_6_and_layer_lrs_match_the_groups():
    assert ULMFIT_DECAY == pytest.approx(1 / 2.6)
    model = make_model()
    lrs = layer_lrs(model, BASE, ULMFIT_DECAY)
    assert list(lrs) == ["embeddings", "layer.0", "layer.1", "head"]
    assert lrs["embeddings"] == pytest.approx(BASE / 2.6**2) and lrs["layer.0"] == pytest.approx(BASE / 2.6)
    groups = layerwise_param_groups(model, BASE, ULMFIT_DECAY)
    for g in groups:
        assert g["lr"] == lrs[g["name"].removesuffix(" (no decay)")]


def test_every_parameter_is_in_exactly_one_group_and_no_decay_holds_biases_and_layernorms(arch):
    model = make_model(arch)
    groups = layerwise_param_groups(model, BASE, weight_decay=0.05)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        in_group = [names[id(p)] for p in g["params"]]
        no_decay = g["name"].endswith("(no decay)")
        assert g["weight_decay"] == (0.0 if no_decay else 0.05)
        assert all(n.endswith(NO_DECAY) == no_decay for n in in_group), g["name"]
        assert all(block_of(n) == g["name"].removesuffix(" (no decay)") for n in in_group)
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert "encoder.encoder.layer.0.attention.output.LayerNorm.weight" in no_decay
    assert "encoder.embeddings.LayerNorm.weight" in no_decay and "classifier.bias" in no_decay
    assert "encoder.encoder.layer.0.attention.self.query.weight" not in no_decay
    assert len(groups) == 2 * (L + 2)  # embeddings, each layer, head; each with and without decay


def test_extra_parameters_outside_the_encoder_get_the_head_rate():
    from ftlib.lora import apply_lora

    model = apply_lora(make_model(), rank=2)  # lora_* live inside the layers: they get their layer's rate
    got = lr_by_name(model, torch.optim.AdamW(layerwise_param_groups(model, BASE, 0.5)))
    assert got["encoder.encoder.layer.0.attention.self.query.lora_A"] == pytest.approx(BASE * 0.5)
    assert got["classifier.weight"] == pytest.approx(BASE)


class RecordLRs(Callback):
    """Every group's lr before the first step and after each scheduler step."""

    def __init__(self):
        self.lrs: list[list[float]] = []

    def on_train_begin(self, state) -> None:
        self.lrs.append([g["lr"] for g in state.optimizer.param_groups])

    def on_step_end(self, state) -> None:
        self.lrs.append([g["lr"] for g in state.optimizer.param_groups])


def fit_recipe(n: int, batch_size: int, epochs: int) -> tuple[list[dict], RecordLRs]:
    recipe = STRATEGIES["discriminative-lr"]
    model = recipe.apply(make_model())
    groups, record = recipe.groups(model, recipe.lr), RecordLRs()
    fit(model, loader(n, batch_size), epochs=epochs, lr=recipe.lr, groups=groups, schedule=recipe.schedule,
        callbacks=[record], device="cpu", progress=False)
    return groups, record


def test_fit_with_the_recipe_keeps_the_ratios_between_groups_along_the_slanted_triangle():
    groups, record = fit_recipe(n=20, batch_size=2, epochs=2)  # 20 steps: cut at step 2
    peak = STRATEGIES["discriminative-lr"].lr
    base = [g["initial_lr"] for g in groups]  # what LambdaLR scales: the groups' own rates
    for g in groups:  # the recipe's default decay, 0.95 per layer down
        assert g["initial_lr"] == pytest.approx(expected_lr(g["name"].removesuffix(" (no decay)"), peak, 0.95))
    head = [g["name"] == "head" for g in groups].index(True)
    schedule = slanted_triangular()
    assert len(record.lrs) == 21
    for step, lrs in enumerate(record.lrs):
        for lr, b in zip(lrs, base, strict=True):
            assert lr == pytest.approx(b * schedule(step, 20), rel=1e-9)  # the one multiplier for every group
            assert lr / lrs[head] == pytest.approx(b / base[head], rel=1e-9)  # ratios preserved
    head_lrs = [lrs[head] for lrs in record.lrs]
    assert head_lrs[2] == pytest.approx(peak)  # the peak, at the cut
    assert head_lrs[0] == pytest.approx(head_lrs[20]) == pytest.approx(head_lrs[2] / 32)


def test_fit_with_the_recipe_never_uses_a_negative_learning_rate():
    """25 steps (25 * 0.1 is not an integer): every rate fit steps with must stay in [peak/32, peak]."""
    groups, record = fit_recipe(n=25, batch_size=5, epochs=5)
    head = [g["name"] == "head" for g in groups].index(True)
    peak = STRATEGIES["discriminative-lr"].lr
    used = [lrs[head] for lrs in record.lrs[:25]]  # record.lrs[s] is the rate of optimizer step s
    assert min(used) >= peak / 32 * (1 - 1e-9), f"negative or too-small rates: {[f'{x:.2e}' for x in used]}"


# --- slanted_triangular ------------------------------------------------------------------------------


def check_triangle(cut_frac: float, ratio: float, total: int) -> None:
    s = slanted_triangular(cut_frac, ratio)
    values = [s(t, total) for t in range(total + 1)]
    cut = max(1, int(total * cut_frac))
    assert values[0] == pytest.approx(1 / ratio)  # starts at 1/ratio
    assert values[cut] == pytest.approx(1.0) and max(values) == pytest.approx(1.0)  # peaks at 1 at the cut
    assert values[total] == pytest.approx(1 / ratio)  # and falls back to 1/ratio at t = T
    assert all(a <= b for a, b in zip(values[:cut], values[1:cut + 1], strict=True))  # rising
    assert all(a >= b for a, b in zip(values[cut:], values[cut + 1:], strict=False))  # falling
    assert all(1 / ratio - 1e-12 <= v <= 1 + 1e-12 for v in values)


@pytest.mark.parametrize("cut_frac, ratio, total", [
    (0.1, 32, 10), (0.1, 32, 20), (0.1, 32, 100), (0.1, 32, 1000), (0.25, 8, 40), (0.5, 2, 10), (0.2, 1, 15),
])
def test_slanted_triangular_shape_when_the_cut_is_exact(cut_frac, ratio, total):
    check_triangle(cut_frac, ratio, total)


@pytest.mark.parametrize("cut_frac, ratio, total", [
    (0.1, 32, 25), (0.1, 32, 21), (0.1, 32, 99), (0.1, 32, 5), (0.1, 32, 2), (0.9, 32, 15), (0.3, 10, 11),
])
def test_slanted_triangular_shape_when_total_times_cut_frac_is_not_an_integer(cut_frac, ratio, total):
    """cut = floor(T * cut_frac); the fall must still end at 1/ratio at T, never below it (nor negative)."""
    check_triangle(cut_frac, ratio, total)


def test_ratio_one_is_constant():
    s = slanted_triangular(0.1, 1)
    assert all(s(t, 50) == pytest.approx(1.0) for t in range(51))


@pytest.mark.parametrize("kwargs", [dict(cut_frac=0.0), dict(cut_frac=1.0), dict(cut_frac=-0.1),
                                    dict(cut_frac=1.5), dict(ratio=0.5), dict(ratio=0)])
def test_slanted_triangular_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="need 0 < cut_frac < 1 and ratio >= 1"):
        slanted_triangular(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(base_lr=0.0), "base_lr must be positive, got 0.0"),
    (dict(base_lr=-1e-4), "base_lr must be positive"),
    (dict(decay=0.0), r"decay must be in \(0, 1\] \(1 = no decay; ULMFiT uses 1/2.6\), got 0.0"),
    (dict(decay=-0.5), r"decay must be in \(0, 1\]"),
    (dict(decay=1.01), r"decay must be in \(0, 1\]"),
])
def test_layer_lrs_and_groups_reject_bad_rates(kwargs, match):
    kwargs = {"base_lr": BASE, **kwargs}
    with pytest.raises(ValueError, match=match):
        layer_lrs(make_model(), **kwargs)
    with pytest.raises(ValueError, match=match):
        layerwise_param_groups(make_model(), **kwargs)


def test_groups_need_transformer_layers():
    with pytest.raises(ValueError, match="has no transformer layers"):
        layerwise_param_groups(make_model(num_hidden_layers=0), BASE)


def test_apply_makes_every_parameter_trainable(arch):
    model = make_model(arch)
    for p in model.parameters():
        p.requires_grad_(False)
    assert apply_discriminative_lr(model) is model
    assert all(p.requires_grad for p in model.parameters())
