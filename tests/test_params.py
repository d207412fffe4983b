"""Properties of ftlib.params: counting, memory accounting, freezing and saving only what trains."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_batch, make_model
from safetensors import safe_open
from torch import nn

from ftlib.params import (
    count_parameters,
    freeze_except,
    load_trainable,
    save_trainable,
    trainable_names,
    trainable_state_dict,
    training_memory,
)


class Tied(nn.Module):
    """An embedding whose weight is also the output projection's (weight tying), plus one own bias."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 10)
        self.out.weight = self.embed.weight  # shared: 40 numbers, not 80


def perturb(model, names, seed=0):
    """Move the named tensors away from their initial values, as training would."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in names:
            params[n].add_(torch.randn(params[n].shape, generator=g))
    return model


def logits(model, batch):
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"])


# --- counting --------------------------------------------------------------------------------------------


def test_count_equals_sum_of_numel(arch):
    model = make_model(arch)
    count = count_parameters(model)
    assert count.total == count.trainable == sum(p.numel() for p in model.parameters())
    freeze_except(model, lambda name: False)
    count = count_parameters(model)
    assert count.trainable == model.classifier.weight.numel() + model.classifier.bias.numel()
    assert count.total == sum(p.numel() for p in model.parameters())
    assert count.percent == pytest.approx(100 * count.trainable / count.total)
    assert f"{count.trainable:,}" in str(count) and f"{count.total:,}" in str(count)


def test_count_shared_tensors_once():
    model = Tied()
    assert count_parameters(model).total == 40 + 10
    shared = nn.Linear(3, 3)
    assert count_parameters(nn.Sequential(shared, nn.ReLU(), shared)).total == 12
    model.embed.weight.requires_grad_(False)
    assert count_parameters(model).trainable == 10


def test_count_empty_module():
    count = count_parameters(nn.ReLU())
    assert (count.trainable, count.total, count.percent) == (0, 0, 0.0)


# --- memory ----------------------------------------------------------------------------------------------


def test_training_memory_fp32(arch):
    model = freeze_except(make_model(arch), lambda name: ".layer.1." in name)
    count = count_parameters(model)
    assert 0 < count.trainable < count.total
    memory = training_memory(model)
    assert memory.parameters == 4 * count.total
    assert memory.gradients == 4 * count.trainable
    assert memory.optimizer == 8 * count.trainable  # AdamW: two moments per trainable weight
    assert memory.total == memory.parameters + memory.gradients + memory.optimizer


def test_training_memory_half_and_shared():
    model = make_model().half()
    count = count_parameters(model)
    assert training_memory(model).parameters == 2 * count.total
    assert training_memory(model, optimizer_states=1).optimizer == 2 * count.trainable  # e.g. SGD with momentum
    tied = training_memory(Tied())
    assert tied.parameters == 4 * 50 and tied.gradients == 4 * 50  # the tied weight once


# --- freezing --------------------------------------------------------------------------------------------


def test_freeze_except_keeps_the_head(arch):
    model = freeze_except(make_model(arch), lambda name: False)
    assert trainable_names(model) == ["classifier.weight", "classifier.bias"]


def test_freeze_except_keeps_what_is_asked(arch):
    model = make_model(arch)
    assert freeze_except(model, lambda name: "LayerNorm" in name) is model
    names = trainable_names(model)
    assert names == [n for n, _ in model.named_parameters() if "LayerNorm" in n or n.startswith("classifier.")]
    freeze_except(model, lambda name: True)  # it also unfreezes
    assert len(trainable_names(model)) == len(list(model.parameters()))


# --- saving and loading ----------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, arch):
    trained = freeze_except(make_model(arch), lambda name: ".layer.1.output." in name)
    names = trainable_names(trained)
    perturb(trained, names)
    path = save_trainable(trained, tmp_path / "sub" / "task.safetensors", metadata={"strategy": "test"})
    with safe_open(str(path), "pt") as f:
        assert sorted(f.keys()) == sorted(names)  # only what trains is written
        assert json.loads(f.metadata()["ftlib"]) == {"strategy": "test"}

    fresh = make_model(arch)
    frozen_before = {n: p.clone() for n, p in fresh.named_parameters() if n not in names}
    batch = make_batch()
    assert not torch.allclose(logits(fresh, batch), logits(trained, batch))
    assert load_trainable(fresh, path) is fresh
    own = dict(fresh.named_parameters())
    for n, p in trained.named_parameters():
        assert torch.equal(own[n], p), n  # bit-exact: saved tensors plus the shared frozen weights
    assert all(torch.equal(own[n], t) for n, t in frozen_before.items())
    assert torch.equal(logits(fresh, batch), logits(trained, batch))


def test_trainable_state_dict_by_prefix():
    model = make_model()
    tensors = trainable_state_dict(model, prefixes=["LayerNorm"])
    assert set(tensors) == {n for n, _ in model.named_parameters() if "LayerNorm" in n or n.startswith("classifier.")}
    assert all(not t.requires_grad for t in tensors.values())  # detached


def test_load_unknown_names_raises(tmp_path):
    model = make_model()
    path = save_trainable(model, tmp_path / "x.safetensors", tensors={"lora_A.weight": torch.zeros(2, 2)})
    with pytest.raises(KeyError, match=r"does not have: \['lora_A\.weight'\].*same strategy applied first"):
        load_trainable(model, path)


def test_load_wrong_shape_raises_and_changes_nothing(tmp_path):
    model = make_model(num_labels=3)
    before = {n: p.clone() for n, p in model.named_parameters()}
    tensors = {"classifier.bias": torch.ones(3), "classifier.weight": torch.ones(5, 32)}
    path = save_trainable(model, tmp_path / "x.safetensors", tensors=tensors)
    with pytest.raises(ValueError, match=r"classifier\.weight: saved shape \(5, 32\) != model shape \(3, 32\)"):
        load_trainable(model, path)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # checked before copying


def test_save_nothing_trainable_raises(tmp_path):
    model = make_model()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to save"):
        save_trainable(model, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
