"""Feature extraction: a frozen encoder held in eval mode (no dropout), a trained head, cached features."""

from __future__ import annotations

import pytest
import torch
from conftest import Rows, block_of, make_model
from torch import nn
from torch.utils.data import DataLoader, SubsetRandomSampler

from ftlib.feature_extraction import apply_feature_extraction
from ftlib.full import apply_full
from ftlib.gradual_unfreezing import GradualUnfreezing
from ftlib.models import encoder_layers
from ftlib.params import trainable_names
from ftlib.train import Callback, encode_all, fit, uses_feature_cache


def features(model, batch) -> torch.Tensor:
    return model.features(batch["input_ids"], batch["attention_mask"])


def dropout_ps(model) -> set[float]:
    return {m.p for m in model.encoder.modules() if isinstance(m, nn.Dropout)}


def test_encoder_frozen_and_in_eval_mode_even_after_train(arch):
    model = apply_feature_extraction(make_model(arch))
    assert set(trainable_names(model)) == {"classifier.weight", "classifier.bias"}
    assert model.train() is model
    assert model.training and model.dropout.training  # the head still trains with its dropout
    assert not any(m.training for m in model.encoder.modules())  # every encoder module, dropout included
    model.eval().train(True)
    assert not model.encoder.training


def test_features_are_deterministic_in_train_mode(arch, batch):
    model = apply_feature_extraction(make_model(arch)).train()
    assert dropout_ps(model) == {0.1}  # the config has dropout; eval mode is what turns it off
    first, second = features(model, batch), features(model, batch)
    assert first.requires_grad is False  # frozen: no graph through the encoder
    assert torch.equal(first, second)


def test_pitfall_no_grad_alone_leaves_dropout_on(arch, batch):
    """The reference sketch: the encoder under torch.no_grad() but in train mode; its 'frozen' features move."""
    model = make_model(arch).train()
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        first, second = features(model, batch), features(model, batch)
    assert not torch.allclose(first, second, atol=1e-3)  # dropout makes every pass differ
    model.encoder.eval()
    with torch.no_grad():
        assert torch.equal(features(model, batch), features(model, batch))


def test_fit_trains_only_the_head_and_computes_the_features_once(arch):
    model = apply_feature_extraction(make_model(arch))
    assert uses_feature_cache(model)
    encoder_before = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    head_before = model.classifier.weight.detach().clone()
    calls = []
    model.encoder.register_forward_hook(lambda *args: calls.append(1))
    history = fit(model, DataLoader(Rows(12), batch_size=4), epochs=3, lr=1e-2, device="cpu", progress=False)
    assert len(history.epochs) == 3 and len(history.step_loss) == 9
    assert len(calls) == 3  # 12 examples in batches of 4, encoded in epoch 1 only
    for n, p in model.encoder.named_parameters():
        assert torch.equal(p, encoder_before[n]), n  # bit-identical
    assert not torch.equal(model.classifier.weight, head_before)
    assert not model.encoder.training and model.keep_encoder_eval


def test_fit_lowers_the_training_loss_on_cached_features():
    model = apply_feature_extraction(make_model())
    history = fit(model, DataLoader(Rows(24), batch_size=8), epochs=6, lr=3e-2, device="cpu", progress=False)
    losses = [row["train_loss"] for row in history.epochs]
    assert losses[-1] < losses[0]


def test_full_fine_tuning_afterwards_turns_the_encoder_back_on():
    model = apply_full(apply_feature_extraction(make_model()))
    assert not uses_feature_cache(model)
    assert model.train().encoder.training


@pytest.mark.parametrize("make, name", [
    (lambda: nn.Linear(4, 2), "Linear"),
    (lambda: make_model().encoder, "BertModel"),  # has .encoder (its BertEncoder) but no classifier head
])
def test_a_model_that_is_not_a_sequence_classifier_is_refused(make, name):
    model = make()
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(TypeError, match=rf"needs a model with \.encoder and \.classifier .*got {name}"):
        apply_feature_extraction(model)
    assert [p.requires_grad for p in model.parameters()] == flags


# --- the cache is valid only while the encoder is frozen and every row is written (issue 10, item 3) ----------


@pytest.mark.parametrize("cb", [GradualUnfreezing(every=1, unit="epoch", start=1),
                                GradualUnfreezing(every=2, unit="step", start=1)], ids=["epoch", "mid-epoch"])
def test_a_thawing_callback_on_top_of_feature_extraction_trains_what_it_thawed(cb):
    model = apply_feature_extraction(make_model())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, DataLoader(Rows(12), batch_size=4), epochs=3, lr=1e-2, callbacks=[cb], device="cpu", progress=False)
    moved = {block_of(n) for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert cb.unfrozen >= 2  # layer.1 and layer.0 thawed during the run
    assert moved == {block_of(n) for n in trainable_names(model)}  # whatever was thawed, trained
    assert {"head", "layer.1", "layer.0"} <= moved


def test_the_cache_is_used_again_once_the_encoder_is_frozen_again():
    """Cached epochs call the encoder once per example in all; a thawed epoch calls it for every batch."""

    class ThawForEpoch2(Callback):
        def on_epoch_begin(self, state):
            encoder_layers(state.model)[1].requires_grad_(state.epoch == 2)

    model = apply_feature_extraction(make_model())
    calls = []
    model.encoder.register_forward_hook(lambda *args: calls.append(1))
    history = fit(model, DataLoader(Rows(12), batch_size=4), epochs=3, lr=1e-2, callbacks=[ThawForEpoch2()],
                  device="cpu", progress=False)
    assert len(history.step_loss) == 9
    assert len(calls) == 3 + 3 + 3  # epoch 1: the cache; epoch 2: live; epoch 3: the cache, rebuilt


def loader_over(rows, **kwargs):
    return DataLoader(rows, **kwargs)


def test_encode_all_fills_the_rows_a_drop_last_loader_skips():
    model, rows = apply_feature_extraction(make_model()), Rows(10)
    feats, labels = encode_all(model, loader_over(rows, batch_size=4, drop_last=True), torch.device("cpu"),
                               progress=False)
    assert labels.tolist() == rows.labels.tolist()  # rows 8 and 9 too: no uninitialised memory
    torch.testing.assert_close(feats, features(model, {"input_ids": rows.ids, "attention_mask": rows.mask}))


def test_encode_all_keeps_only_the_rows_a_subset_sampler_draws():
    model, rows, subset = apply_feature_extraction(make_model()), Rows(10), [6, 1, 4]
    feats, labels = encode_all(model, loader_over(rows, batch_size=2, sampler=SubsetRandomSampler(subset)),
                               torch.device("cpu"), progress=False)
    ordered = sorted(subset)
    assert labels.tolist() == rows.labels[ordered].tolist()
    torch.testing.assert_close(feats, features(model, {"input_ids": rows.ids[ordered],
                                                       "attention_mask": rows.mask[ordered]}))


def test_encode_all_refuses_a_sampler_it_cannot_read_with_drop_last():
    model = apply_feature_extraction(make_model())
    loader = loader_over(Rows(10), batch_size=2, sampler=[0, 1, 2, 3, 4], drop_last=True)
    with pytest.raises(ValueError, match="drop_last=False"):
        encode_all(model, loader, torch.device("cpu"), progress=False)


@pytest.mark.parametrize("kwargs", [dict(batch_size=4, shuffle=True, drop_last=True),
                                    dict(batch_size=2, sampler=SubsetRandomSampler(range(7)))],
                         ids=["drop_last", "subset"])
def test_fit_on_cached_features_takes_the_loaders_steps_on_its_rows(kwargs):
    model, seen = apply_feature_extraction(make_model()), []
    model.classifier.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    loader = loader_over(Rows(10), **kwargs)
    history = fit(model, loader, epochs=3, lr=1e-2, device="cpu", progress=False)
    assert len(history.step_loss) == 3 * len(loader)
    assert sum(seen) == 3 * (8 if "drop_last" in kwargs else 7)  # the rows the loader gives, every epoch
