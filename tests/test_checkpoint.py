"""Checkpoints: resume reproduces an uninterrupted run, a crashed save keeps the old one, mismatches are refused."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import make_model
from ddp_fit import Toy
from torch.utils.data import DataLoader

from ftlib import checkpoint
from ftlib.adapters import apply_adapters
from ftlib.gradual_unfreezing import GradualUnfreezing, apply_gradual_unfreezing
from ftlib.lora import apply_lora
from ftlib.train import Callback, fit


class Crash(Exception):
    pass


class CrashAtEpoch(Callback):
    """Simulates a killed job: raises when `epoch` begins (its predecessor's checkpoint is on disk)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_begin(self, state):
        if state.epoch == self.epoch:
            raise Crash


def _loaders(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return DataLoader(Toy(96, 0), batch_size=16, shuffle=True, generator=g), DataLoader(Toy(40, 1), batch_size=16)


def _model(strategy: str = "full", seed: int = 0):
    model = make_model(num_labels=2, seed=seed)
    if strategy == "lora":
        apply_lora(model, rank=4, alpha=8)
    elif strategy == "adapters":
        apply_adapters(model, bottleneck=8)
    elif strategy == "gradual":
        apply_gradual_unfreezing(model)
    return model


def _fit(model, folder, callbacks=(), resume=False):
    train, val = _loaders()
    return fit(model, train, val, epochs=4, lr=1e-3, seed=0, progress=False, callbacks=callbacks,
               checkpoint_dir=folder, resume=resume)


@pytest.mark.parametrize("strategy", ["full", "lora", "gradual"])
def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path, strategy):
    extra = (lambda: [GradualUnfreezing(every=1, unit="epoch")]) if strategy == "gradual" else (lambda: [])
    ref_model = _model(strategy)
    ref = _fit(ref_model, tmp_path / "ref", extra())
    crashed = _model(strategy)
    with pytest.raises(Crash):
        _fit(crashed, tmp_path / "run", [*extra(), CrashAtEpoch(3)])
    resumed_model = _model(strategy, seed=123)  # different init: everything must come from the checkpoint
    resumed = _fit(resumed_model, tmp_path / "run", [*extra(), CrashAtEpoch(99)], resume=True)
    assert resumed.step_loss == ref.step_loss
    assert [e["val_accuracy"] for e in resumed.epochs] == [e["val_accuracy"] for e in ref.epochs]
    assert resumed.best_epoch == ref.best_epoch
    for (n, a), (_, b) in zip(ref_model.state_dict().items(), resumed_model.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    assert [n for n, p in resumed_model.named_parameters() if p.requires_grad] == \
        [n for n, p in ref_model.named_parameters() if p.requires_grad]


def test_checkpoints_hold_only_safetensors_and_json(tmp_path):
    _fit(_model("lora"), tmp_path)
    files = {p.suffix for p in tmp_path.rglob("*") if p.is_file() and p.name != "latest"}
    assert files == {".safetensors", ".json"}
    assert (tmp_path / "latest").read_text() == "epoch-0004"
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["epoch-0004"]  # older ones pruned


def test_a_save_interrupted_before_the_rename_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    model = _model()
    train, val = _loaders()
    fit(model, train, val, epochs=1, lr=1e-3, progress=False, checkpoint_dir=tmp_path)
    before, _ = checkpoint.load_checkpoint(tmp_path)
    real_replace = os.replace

    def crash_on_commit(src, dst):
        if str(dst).endswith("latest"):
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", crash_on_commit)
    train, val = _loaders()
    with pytest.raises(OSError, match="power cut"):
        fit(model, train, val, epochs=2, lr=1e-2, progress=False, checkpoint_dir=tmp_path, resume=True)
    tensors, meta = checkpoint.load_checkpoint(tmp_path)
    assert meta["epoch"] == 1
    for name, t in before["model"].items():
        assert torch.equal(tensors["model"][name], t), name
    fresh = _model(seed=5)
    fresh.load_state_dict(tensors["model"])  # still loadable


@pytest.mark.parametrize("saved, loaded, match", [
    ("lora", "adapters", "saved from BertModel.* with lora, but this model is BertModel.* with adapters"),
    ("full", "lora", "with no added parameters, but this model is .* with lora"),
])
def test_a_checkpoint_from_another_strategy_is_refused(tmp_path, saved, loaded, match):
    train, val = _loaders()
    fit(_model(saved), train, val, epochs=1, lr=1e-3, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=match):
        _fit(_model(loaded), tmp_path, resume=True)


def test_a_checkpoint_from_another_architecture_is_refused(tmp_path):
    train, val = _loaders()
    fit(make_model(num_labels=2), train, val, epochs=1, lr=1e-3, progress=False, checkpoint_dir=tmp_path)
    other = make_model("roberta", num_labels=2)
    with pytest.raises(ValueError, match="BertModel.* but this model is RobertaModel"):
        fit(other, *_loaders(), epochs=2, progress=False, checkpoint_dir=tmp_path, resume=True)


def test_resume_needs_a_folder_and_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="checkpoint_dir"):
        fit(_model(), *_loaders(), progress=False, resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        fit(_model(), *_loaders(), progress=False, checkpoint_dir=tmp_path, resume=True)


def test_gradient_accumulation_equals_one_big_batch():
    """4 batches of 8 accumulated = 1 batch of 32: the same update (dropout off)."""
    data = Toy(64, 0)
    runs = []
    for batch_size, accum in ((32, 1), (8, 4)):
        model = make_model(num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        model.dropout.p = 0.0
        fit(model, DataLoader(data, batch_size=batch_size), epochs=1, lr=1e-3, grad_accum=accum, progress=False,
            max_grad_norm=None)
        runs.append(model.state_dict())
    for name, t in runs[0].items():
        torch.testing.assert_close(runs[1][name], t, atol=1e-5, rtol=1e-4, msg=name)
    with pytest.raises(ValueError, match="grad_accum"):
        fit(make_model(), DataLoader(data, batch_size=8), grad_accum=0, progress=False)
