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
from ftlib.feature_extraction import apply_feature_extraction
from ftlib.full import apply_full
from ftlib.gradual_unfreezing import GradualUnfreezing, apply_gradual_unfreezing
from ftlib.lora import apply_lora
from ftlib.strategy_tag import tag_strategy
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


# --- the strategy travels with the checkpoint (issue 10, item 6) -------------------------------------------


def test_resuming_a_feature_extraction_checkpoint_as_full_fine_tuning_is_refused(tmp_path):
    train, val = _loaders()
    fit(apply_feature_extraction(make_model(num_labels=2)), train, val, epochs=1, lr=1e-3, progress=False,
        checkpoint_dir=tmp_path)
    model = apply_full(make_model(num_labels=2))
    with pytest.raises(ValueError, match=r"saved with strategy feature-extraction \{\}, but this model carries "
                                         r"full \{\}; apply the same strategy"):
        _fit(model, tmp_path, resume=True)
    assert all(p.requires_grad for p in model.parameters())  # refused before anything was frozen


def test_a_checkpoint_with_another_strategy_config_is_refused_naming_both(tmp_path):
    train, val = _loaders()
    model = tag_strategy(make_model(num_labels=2), "discriminative-lr", {"decay": 0.95})
    fit(model, train, val, epochs=1, lr=1e-3, progress=False, checkpoint_dir=tmp_path)
    other = tag_strategy(make_model(num_labels=2), "discriminative-lr", {"decay": 0.5})
    with pytest.raises(ValueError, match=r"discriminative-lr \{'decay': 0\.95\}, but this model carries "
                                         r"discriminative-lr \{'decay': 0\.5\}"):
        _fit(other, tmp_path, resume=True)


def test_the_strategy_and_its_config_are_stored(tmp_path):
    train, val = _loaders()
    fit(apply_gradual_unfreezing(make_model(num_labels=2)), train, val, epochs=2, lr=1e-3, progress=False,
        checkpoint_dir=tmp_path, callbacks=[GradualUnfreezing(every=1)])
    _, meta = checkpoint.load_checkpoint(tmp_path)
    assert meta["strategies"] == [{"name": "gradual-unfreezing", "config": {}}]


def test_every_file_is_fsynced_before_the_pointer_swap(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    checkpoint.save_checkpoint(tmp_path, "epoch-0001", {"model": {"w": torch.ones(3)}, "rng": {"t": torch.zeros(2)}},
                               {"epoch": 1})
    commit = events.index(("replace", "latest"))
    synced_before = {ino for kind, ino in events[:commit] if kind == "fsync"}
    written = [*(tmp_path / "epoch-0001").iterdir(), tmp_path / "epoch-0001", tmp_path / "latest"]
    assert len(written) == 5
    for path in written:
        assert path.stat().st_ino in synced_before, path.name
    assert ("fsync", tmp_path.stat().st_ino) in events[commit:]  # the rename itself made durable


def test_cuda_random_states_are_saved_and_restored(tmp_path, monkeypatch):
    """Mocked: a CUDA machine's per-device generator states go into the checkpoint and come back."""
    states = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda new: restored.extend(new))
    tensors, meta = checkpoint.rng_state()
    checkpoint.save_checkpoint(tmp_path, "t", {"rng": tensors}, {"rng": meta})
    loaded, loaded_meta = checkpoint.load_checkpoint(tmp_path)
    checkpoint.set_rng_state(loaded["rng"], loaded_meta["rng"])
    assert len(restored) == 2 and all(torch.equal(a, b) for a, b in zip(restored, states, strict=True))


def test_each_process_resumes_with_its_own_random_state(tmp_path):
    per_rank = []
    for seed in (1, 2):  # two processes, two different random states
        torch.manual_seed(seed)
        per_rank.append(checkpoint.rng_state())
    tensors, meta = checkpoint.pack_ranks(per_rank)
    checkpoint.save_checkpoint(tmp_path, "t", {"rng": tensors}, {"rng": meta})
    loaded, loaded_meta = checkpoint.load_checkpoint(tmp_path)
    for rank, seed in enumerate((1, 2)):
        torch.manual_seed(99)
        checkpoint.set_rng_state(*checkpoint.unpack_rank(loaded["rng"], loaded_meta["rng"], rank, world=2))
        got = torch.rand(3)
        torch.manual_seed(seed)
        assert torch.equal(got, torch.rand(3)), rank
    with pytest.raises(ValueError, match="saved by 2 processes, but this run has 4; resume with 2"):
        checkpoint.unpack_rank(loaded["rng"], loaded_meta["rng"], 0, world=4)
