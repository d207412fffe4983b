"""BitFit on tiny BERT/RoBERTa: exactly the biases (and the head) train, and nothing else moves."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, make_model
from torch import nn

from ftlib.bitfit import (
    BitFitConfig,
    apply_bitfit,
    bias_names,
    bitfit_disabled,
    load_bitfit,
    remove_bitfit,
    save_bitfit,
)
from ftlib.feature_extraction import apply_feature_extraction
from ftlib.lora import apply_lora
from ftlib.params import count_parameters, trainable_names

H, L, FF, C = TINY["hidden_size"], TINY["num_hidden_layers"], TINY["intermediate_size"], 3


def biases_closed_form(H: int, L: int, FF: int) -> int:
    """Embedding LayerNorm H; per layer query/key/value 3H, attention output H, its LayerNorm H,
    intermediate FF, output H, its LayerNorm H: 7H + FF."""
    return H + L * (7 * H + FF)


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"])


def perturb_biases(model, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def test_count_is_every_bias_plus_the_head(arch):
    base = count_parameters(make_model(arch)).total
    model = apply_bitfit(make_model(arch))
    assert count_parameters(model).trainable == biases_closed_form(H, L, FF) + H * C + C
    assert count_parameters(model).total == base  # nothing added
    assert set(trainable_names(model)) == {n for n, _ in model.named_parameters()
                                           if n.endswith(".bias") or n.startswith("classifier.")}


def test_targets_choose_a_subset_as_in_the_papers_smallest_variant(arch):
    model = apply_bitfit(make_model(arch), targets=("query", "intermediate.dense"))
    assert count_parameters(model).trainable == L * (H + FF) + H * C + C
    assert all(n.endswith(("attention.self.query.bias", "intermediate.dense.bias")) or n.startswith("classifier.")
               for n in trainable_names(model))


def test_one_step_moves_biases_and_head_and_no_weight_matrix(arch, batch):
    model = apply_bitfit(make_model(arch))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"]).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not any(p.dim() >= 2 for n, p in model.named_parameters() if n in changed and not n.startswith("classifier"))
    frozen = [n for n, _ in model.named_parameters() if not n.endswith(".bias") and not n.startswith("classifier.")]
    assert frozen and all(torch.equal(dict(model.named_parameters())[n], before[n]) for n in frozen)
    assert changed >= {n for n in trainable_names(model) if n.endswith((".dense.bias", "LayerNorm.bias"))}


def test_outputs_unchanged_at_apply_and_disabled_restores_them(arch, batch):
    expected = logits(make_model(arch), batch)
    model = apply_bitfit(make_model(arch))
    torch.testing.assert_close(logits(model, batch), expected, atol=0, rtol=0)
    perturb_biases(model)
    model.classifier.load_state_dict(make_model(arch).classifier.state_dict())  # only the biases differ now
    trained = logits(model, batch)
    assert (trained - expected).abs().max() > 1e-3
    with bitfit_disabled(model):
        torch.testing.assert_close(logits(model, batch), expected, atol=0, rtol=0)
    assert torch.equal(logits(model, batch), trained)  # the block restores the trained biases
    remove_bitfit(model)
    torch.testing.assert_close(logits(model, batch), expected, atol=0, rtol=0)
    assert not hasattr(model, "bitfit_selection")


def test_selection_copy_is_not_saved_and_moves_with_the_model():
    model = apply_bitfit(make_model())
    plain = make_model()
    assert set(model.state_dict()) == set(plain.state_dict())  # checkpoints keep their keys
    assert all(b.dtype == torch.float64 for b in model.double().bitfit_selection.originals())


def test_save_load_round_trip(arch, batch, tmp_path):
    model = apply_bitfit(make_model(arch))
    perturb_biases(model)
    path = save_bitfit(model, tmp_path / "bitfit.safetensors")
    fresh = apply_bitfit(make_model(arch))
    assert not torch.equal(logits(fresh, batch), logits(model, batch))
    assert torch.equal(logits(load_bitfit(fresh, path), batch), logits(model, batch))
    other = apply_bitfit(make_model(arch), targets=("query",))
    with pytest.raises(ValueError, match="apply_bitfit with the saved targets"):
        load_bitfit(other, path)


def test_config_is_frozen_and_validated():
    assert BitFitConfig("query").targets == ("query",)
    with pytest.raises(TypeError, match="module-name suffixes"):
        BitFitConfig((3,))
    with pytest.raises(AttributeError):
        BitFitConfig().targets = ("x",)


class NoBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.ModuleList([nn.Linear(4, 4, bias=False)])
        self.norm = nn.LayerNorm(4, bias=False)


@pytest.mark.parametrize("make, kwargs, error, match", [
    (NoBias, {}, ValueError, "NoBias has no bias parameters.*use apply_ln_tuning or apply_ia3"),
    (make_model, {"targets": ("qkv",)}, ValueError, r"target 'qkv' matches no module with a bias.*attention\.self"),
    (make_model, {"targets": (None,)}, TypeError, "module-name suffixes"),
    (lambda: apply_bitfit(make_model()), {}, ValueError, r"already applied.*remove_bitfit\(model\) first"),
    (lambda: apply_lora(make_model()), {}, ValueError, "lora_\\* parameters .* would silently stop training"),
    (lambda: apply_feature_extraction(make_model()), {}, ValueError, "cannot follow feature extraction"),
], ids=["no-bias", "no-target", "bad-target", "twice", "after-lora", "after-feature-extraction"])
def test_bad_inputs_raise_and_name_the_fix(make, kwargs, error, match):
    model = make()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(error, match=match):
        apply_bitfit(model, **kwargs)
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}


def test_verbs_need_bitfit_first():
    with pytest.raises(ValueError, match=r"call apply_bitfit\(model\) first"):
        remove_bitfit(make_model())
    with pytest.raises(ValueError, match=r"call apply_bitfit\(model\) first"), bitfit_disabled(make_model()):
        pass


def test_bias_names_lists_every_encoder_bias():
    model = make_model()
    assert len(bias_names(model)) == 1 + L * 8  # embedding LayerNorm, then 8 biases per layer
