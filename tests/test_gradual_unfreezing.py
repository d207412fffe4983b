"""Gradual unfreezing (ULMFiT) driven by fit: head first, then layers top-down, embeddings last."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, block_of, make_model
from conftest import rows_loader as loader
from torch import nn

from ftlib.gradual_unfreezing import GradualUnfreezing, apply_gradual_unfreezing, unfreezing_order
from ftlib.models import embeddings, encoder_layers
from ftlib.params import trainable_names
from ftlib.strategies import STRATEGIES
from ftlib.train import Callback, fit, param_groups

L = TINY["num_hidden_layers"]
BLOCKS = ["layer.1", "layer.0", "embeddings"]  # the thawing order of the 2-layer model
HEAD = {"classifier.weight", "classifier.bias"}








def trainable_blocks(model: nn.Module) -> set[str]:
    return {block_of(n) for n in trainable_names(model)} - {"head"}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed_blocks(model: nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    """Blocks with any tensor that differs from `before`, and whether the head moved ('head')."""
    return {block_of(n) for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def unchanged_blocks(model: nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    """Blocks whose every tensor is bit-identical to `before`."""
    blocks = {block_of(n) for n in before}
    return blocks - {block_of(n) for n, p in model.named_parameters() if not torch.equal(p, before[n])}


class Watch(Callback):
    """Which blocks are trainable at each epoch start and after each step (runs after GradualUnfreezing)."""

    def __init__(self):
        self.epochs: list[set[str]] = []
        self.steps: list[set[str]] = []

    def on_epoch_begin(self, state) -> None:
        self.epochs.append(trainable_blocks(state.model))

    def on_step_end(self, state) -> None:
        self.steps.append(trainable_blocks(state.model))


def run(model, callback, epochs: int, n: int = 8, batch_size: int = 4, groups=None, lr: float = 1e-2):
    watch = Watch()
    fit(model, loader(n, batch_size), epochs=epochs, lr=lr, groups=groups, callbacks=[callback, watch],
        device="cpu", progress=False, max_grad_norm=None)
    return watch


def test_apply_leaves_only_the_head_trainable(arch):
    model = apply_gradual_unfreezing(make_model(arch))
    assert set(trainable_names(model)) == HEAD


def test_unfreezing_order_is_top_layer_first_and_embeddings_last(arch):
    model = make_model(arch)
    order = unfreezing_order(model)
    layers = encoder_layers(model)
    assert order == [layers[1], layers[0], embeddings(model)]


def test_epoch_unit_thaws_one_block_per_epoch_top_down_and_logs_each_stage(arch):
    model = apply_gradual_unfreezing(make_model(arch))
    cb = GradualUnfreezing(every=1, unit="epoch", start=1)
    watch = run(model, cb, epochs=4)
    assert watch.epochs == [set(), {"layer.1"}, {"layer.1", "layer.0"}, {"layer.1", "layer.0", "embeddings"}]
    assert cb.log == [(1, 1), (2, 2), (3, 3)]  # (epochs done, blocks unfrozen)
    assert cb.unfrozen == 3


def test_epoch_unit_with_every_and_per_stage(arch):
    model = apply_gradual_unfreezing(make_model(arch))
    cb = GradualUnfreezing(every=2, unit="epoch", start=1, per_stage=2)
    watch = run(model, cb, epochs=4)
    assert watch.epochs == [set(), {"layer.1", "layer.0"}, {"layer.1", "layer.0"},
                            {"layer.1", "layer.0", "embeddings"}]
    assert cb.log == [(1, 2), (3, 3)]


def test_step_unit_thaws_after_the_given_steps():
    model = apply_gradual_unfreezing(make_model())
    cb = GradualUnfreezing(every=3, unit="step", start=2)
    watch = run(model, cb, epochs=3, n=12, batch_size=4)  # 9 steps: stages after steps 2, 5 and 8
    assert [len(s) for s in watch.steps] == [0, 1, 1, 1, 2, 2, 2, 3, 3]
    assert watch.steps[1] == {"layer.1"} and watch.steps[4] == {"layer.1", "layer.0"}
    assert cb.log == [(2, 1), (5, 2), (8, 3)]


def test_the_log_has_one_entry_per_stage_that_thawed_something():
    """Once every block is thawed there is nothing left to unfreeze; later ticks are not stages."""
    model = apply_gradual_unfreezing(make_model())
    cb = GradualUnfreezing(every=1, unit="epoch", start=1)
    run(model, cb, epochs=6)
    assert cb.log == [(1, 1), (2, 2), (3, 3)]


def test_a_layer_unfrozen_at_epoch_2_is_updated_and_the_layers_below_stay_bit_identical(arch):
    model = apply_gradual_unfreezing(make_model(arch))
    before = snapshot(model)
    run(model, GradualUnfreezing(every=1, unit="epoch", start=1), epochs=2)
    assert trainable_blocks(model) == {"layer.1"}
    # every tensor of the thawed top layer moved (key biases included: AdamW normalises their tiny gradient)
    top = [n for n in before if block_of(n) == "layer.1"]
    assert all(not torch.equal(dict(model.named_parameters())[n], before[n]) for n in top)
    assert changed_blocks(model, before) == {"head", "layer.1"}
    assert unchanged_blocks(model, before) == {"layer.0", "embeddings"}


def test_every_block_is_updated_once_thawed(arch):
    model = apply_gradual_unfreezing(make_model(arch))
    before = snapshot(model)
    run(model, GradualUnfreezing(every=1, unit="epoch", start=1), epochs=4)  # embeddings thawed for the last epoch
    assert changed_blocks(model, before) == {"head", *BLOCKS}


def test_the_registry_recipe_thaws_everything_evenly_and_trains_each_block():
    recipe = STRATEGIES["gradual-unfreezing"]
    model = recipe.apply(make_model())
    before = snapshot(model)
    total = 8  # 2 epochs x 4 steps
    [cb] = recipe.callbacks(model, total)
    assert (cb.unit, cb.every, cb.start) == ("step", 2, 2)  # 8 // (3 blocks + 1)
    watch = run(model, cb, epochs=2, n=16, batch_size=4, lr=recipe.lr)
    assert [len(s) for s in watch.steps] == [0, 1, 1, 2, 2, 3, 3, 3]  # embeddings last, with steps left to train
    assert changed_blocks(model, before) == {"head", *BLOCKS}


def test_pitfall_an_optimizer_built_from_the_trainable_parameters_never_updates_thawed_layers(arch, batch):
    """The reference sketch's bug, shown: the thawed layer gets gradients but its optimizer does not know it."""
    results = {}
    for how in ("trainable only", "param_groups"):
        model = apply_gradual_unfreezing(make_model(arch))
        params = [p for p in model.parameters() if p.requires_grad] if how == "trainable only" else param_groups(model)
        opt = torch.optim.AdamW(params, lr=1e-2)
        GradualUnfreezing().unfreeze(model)  # thaw the top layer after the optimizer exists
        before = snapshot(model)
        loss = F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        loss.backward()
        assert all(p.grad is not None for p in encoder_layers(model)[1].parameters())
        opt.step()
        results[how] = changed_blocks(model, before)
    assert results["trainable only"] == {"head"}  # layer.1 had a gradient and was not updated: the pitfall is real
    assert results["param_groups"] == {"head", "layer.1"}  # every tensor in up front: updated once thawed


def test_pitfall_through_fit_with_trainable_only_groups():
    model = apply_gradual_unfreezing(make_model())
    before = snapshot(model)
    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    run(model, GradualUnfreezing(every=1, unit="epoch", start=1), epochs=3, groups=groups)
    assert trainable_blocks(model) == {"layer.1", "layer.0"}
    assert changed_blocks(model, before) == {"head"}  # thawed, yet never stepped


# --- errors ----------------------------------------------------------------------------------------


def test_a_model_with_no_layers_is_refused():
    with pytest.raises(ValueError, match="has no transformer layers"):
        apply_gradual_unfreezing(make_model(num_hidden_layers=0))
    with pytest.raises(ValueError, match="has no transformer layers"):
        unfreezing_order(nn.Sequential(nn.Linear(4, 4)))


def test_a_model_with_no_layers_is_refused_at_train_begin_too():
    model = make_model(num_hidden_layers=0)
    with pytest.raises(ValueError, match="has no transformer layers"):
        run(model, GradualUnfreezing(), epochs=2)


@pytest.mark.parametrize("kwargs, epochs, n, match", [
    (dict(unit="epoch", start=2), 2, 8, "after 2 epochs but training lasts 2"),
    (dict(unit="epoch", start=5), 2, 8, "after 5 epochs but training lasts 2"),
    (dict(unit="step", start=4), 2, 8, "after 4 steps but training lasts 4"),
])
def test_a_schedule_that_never_unfreezes_anything_is_refused_before_training(kwargs, epochs, n, match):
    model = apply_gradual_unfreezing(make_model())
    before = snapshot(model)
    with pytest.raises(ValueError, match=f"never unfreezes anything.*{match}; lower start or train longer"):
        run(model, GradualUnfreezing(**kwargs), epochs=epochs, n=n)
    assert changed_blocks(model, before) == set()  # refused before the first step


@pytest.mark.parametrize("kwargs, match", [
    (dict(every=0), "every must be a positive int, got 0"),
    (dict(every=1.5), "every must be a positive int, got 1.5"),
    (dict(every=-1), "every must be a positive int"),
    (dict(unit="batch"), "unit must be 'epoch' or 'step', got 'batch'"),
    (dict(unit="epochs"), "unit must be 'epoch' or 'step'"),
    (dict(per_stage=0), "per_stage must be a positive int"),
    (dict(start=0), "start must be a positive int"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GradualUnfreezing(**kwargs)


@pytest.mark.parametrize("layers, grad_accum", [(2, 4), (4, 4), (4, 1)])
def test_the_registry_recipe_thaws_every_block_with_gradient_accumulation(layers, grad_accum):
    """The interval comes from the optimizer steps fit plans, not from the batches a caller counts."""
    recipe = STRATEGIES["gradual-unfreezing"]
    model = recipe.apply(make_model(num_hidden_layers=layers))
    before = snapshot(model)
    n, batch_size, epochs = 64, 2, 2
    batches = epochs * math.ceil(n / batch_size)  # what a caller counting batches passes (ftlib.experiment does)
    [cb] = recipe.callbacks(model, batches)
    fit(model, loader(n, batch_size), epochs=epochs, lr=recipe.lr, grad_accum=grad_accum, callbacks=[cb],
        device="cpu", progress=False)
    assert cb.unfrozen == layers + 1  # every layer and the embeddings
    assert [stage for stage, _ in cb.log] == [cb.every * k for k in range(1, layers + 2)]
    assert cb.every == batches // grad_accum // (layers + 2)
    assert changed_blocks(model, before) == {"head", "embeddings", *(f"layer.{i}" for i in range(layers))}


def test_fit_refuses_gradual_unfreezing_without_a_thawing_callback():
    """Issue 11: apply_gradual_unfreezing then fit without its callback trained only the head, silently."""
    from conftest import make_model, rows_loader

    from ftlib.train import fit

    model = apply_gradual_unfreezing(make_model())
    with pytest.raises(ValueError, match=r"no callback thaws it.*callbacks=\[GradualUnfreezing"):
        fit(model, rows_loader(8), epochs=1, lr=1e-3, device="cpu", progress=False)
    fit(model, rows_loader(8), epochs=2, lr=1e-3, device="cpu", progress=False,
        callbacks=[GradualUnfreezing(every=1, unit="epoch")])  # with its callback it trains
