"""LayerNorm tuning on tiny BERT/RoBERTa (and MiniLM, slow): the same tensors and outputs as PEFT's LNTuningConfig."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY, make_model
from torch import nn

from ftlib.ln_tuning import (
    LNTuningConfig,
    apply_ln_tuning,
    ln_tuning_disabled,
    load_ln_tuning,
    remove_ln_tuning,
    save_ln_tuning,
)
from ftlib.models import SequenceClassifier
from ftlib.params import count_parameters, trainable_names
from ftlib.prefix_tuning import apply_prefix_tuning

H, L, C = TINY["hidden_size"], TINY["num_hidden_layers"], 3
peft = pytest.importorskip("peft")


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"])


def hidden(encoder, batch) -> torch.Tensor:
    with torch.no_grad():
        return encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def peft_ln(encoder: nn.Module) -> nn.Module:
    return peft.get_peft_model(copy.deepcopy(encoder), peft.LNTuningConfig(target_modules=["LayerNorm"])).eval()


def ours_to_peft(name: str) -> str:
    """encoder.X.LayerNorm.weight -> base_model.model.X.LayerNorm.ln_tuning_layers.default.weight"""
    module, _, leaf = name.removeprefix("encoder.").rpartition(".")
    return f"base_model.model.{module}.ln_tuning_layers.default.{leaf}"


def check_parity(model: SequenceClassifier, batch: dict, seed: int = 0) -> int:
    """Same trainable tensors as PEFT, then the same perturbation on both, then the same hidden states."""
    theirs = peft_ln(model.encoder)
    ours = {n: p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("classifier.")}
    their = {n: p for n, p in theirs.named_parameters() if p.requires_grad}
    assert {ours_to_peft(n) for n in ours} == set(their)
    assert sum(p.numel() for p in ours.values()) == count_parameters(theirs).trainable
    start = hidden(model.encoder, batch)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in ours.items():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
            their[ours_to_peft(n)].copy_(p)
    a, b = hidden(model.encoder, batch), hidden(theirs, batch)
    assert (a - start).abs().max() > 1e-3  # the perturbation changes the outputs
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    return count_parameters(theirs).trainable


def test_same_tensors_and_outputs_as_peft(arch, batch):
    model = apply_ln_tuning(make_model(arch))
    n = check_parity(model, batch)
    assert n == (2 * L + 1) * 2 * H  # two norms per layer and one after the embeddings, gain and bias each
    assert count_parameters(model).trainable == n + H * C + C


def test_only_norms_and_head_train(arch):
    model = apply_ln_tuning(make_model(arch))
    names = set(trainable_names(model))
    assert names == {n for n, _ in model.named_parameters() if ".LayerNorm." in n or n.startswith("classifier.")}


def test_targets_choose_some_norms(arch):
    model = apply_ln_tuning(make_model(arch), targets="attention.output.LayerNorm")
    assert count_parameters(model).trainable == L * 2 * H + H * C + C


def test_unchanged_at_apply_disabled_and_remove(arch, batch):
    expected = logits(make_model(arch), batch)
    model = apply_ln_tuning(make_model(arch))
    torch.testing.assert_close(logits(model, batch), expected, atol=0, rtol=0)
    with torch.no_grad():
        model.encoder.encoder.layer[-1].output.LayerNorm.weight.mul_(1.5)  # the last norm feeds the pooling
    trained = logits(model, batch)
    assert (trained - expected).abs().max() > 1e-3
    with ln_tuning_disabled(model):
        torch.testing.assert_close(logits(model, batch), expected, atol=0, rtol=0)
    assert torch.equal(logits(model, batch), trained)
    remove_ln_tuning(model)
    torch.testing.assert_close(logits(model, batch), expected, atol=0, rtol=0)


def test_save_load_round_trip(arch, batch, tmp_path):
    model = apply_ln_tuning(make_model(arch))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    path = save_ln_tuning(model, tmp_path / "ln.safetensors")
    fresh = apply_ln_tuning(make_model(arch))
    assert not torch.equal(logits(fresh, batch), logits(model, batch))
    assert torch.equal(logits(load_ln_tuning(fresh, path), batch), logits(model, batch))


class NoNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.ModuleList([nn.Linear(4, 4)])


@pytest.mark.parametrize("make, kwargs, error, match", [
    (NoNorm, {}, ValueError, "NoNorm has no nn.LayerNorm.*use apply_bitfit or apply_ia3"),
    (make_model, {"targets": ("ln_f",)}, ValueError, r"target 'ln_f' matches no nn.LayerNorm.*attention\.output"),
    (make_model, {"targets": ()}, TypeError, "module-name suffixes"),
    (lambda: apply_ln_tuning(make_model()), {}, ValueError, r"already applied.*remove_ln_tuning\(model\) first"),
    (lambda: apply_prefix_tuning(make_model()), {}, ValueError, "prefix_\\* parameters .* would silently stop"),
], ids=["no-norm", "no-target", "empty-targets", "twice", "after-prefix"])
def test_bad_inputs_raise_and_name_the_fix(make, kwargs, error, match):
    model = make()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(error, match=match):
        apply_ln_tuning(model, **kwargs)
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}


def test_config_default_is_peft_target():
    assert LNTuningConfig().targets == ("LayerNorm",)


@pytest.mark.slow
def test_embedded_minilm_matches_peft():
    from ftlib.models import build_classifier

    model, tokenizer = build_classifier()
    model.eval()
    apply_ln_tuning(model)
    enc = tokenizer(["layer norm tuning", "a slightly longer second sentence"], padding=True, return_tensors="pt")
    assert check_parity(model, dict(enc)) == 9_984
