"""Feature extraction: a frozen encoder held in eval mode (no dropout), a trained head, cached features."""

from __future__ import annotations

import pytest
import torch
from conftest import Rows, make_model
from torch import nn
from torch.utils.data import DataLoader

from ftlib.feature_extraction import apply_feature_extraction
from ftlib.full import apply_full
from ftlib.params import trainable_names
from ftlib.train import fit, uses_feature_cache


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
