"""rsLoRA, PiSSA, DoRA and LoRA+ against PEFT on tiny BERT/RoBERTa (hidden 32, 2 layers)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import make_encoder as _make_encoder
from conftest import make_model
from torch import nn

from ftlib.dora import DoRALinear, apply_dora, dora_layers
from ftlib.lora import LoRALinear, apply_lora, lora_layers, merge_lora, unmerge_lora
from ftlib.lora_plus import lora_plus_groups
from ftlib.params import count_parameters, trainable_names
from ftlib.pissa import apply_pissa
from ftlib.rslora import apply_rslora

peft = pytest.importorskip("peft", reason="PEFT is the reference implementation these tests compare against")


def make_encoder(arch="bert", **kwargs):
    return _make_encoder(arch, **kwargs).eval()  # dropout off: outputs are deterministic


def hidden(encoder, batch):
    with torch.no_grad():
        return encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def logits(model, batch):
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"])


def perturb(model, seed=0, std=0.1):
    """Move A, B (and m) off their init, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_" in n:
                p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def peft_layer(theirs, name):
    return theirs.get_submodule(f"base_model.model.{name}")


def copy_into_peft(ours, theirs):
    """Our factors (and magnitude) into PEFT's layers: lora_A (in, r) is PEFT's weight (r, in) transposed."""
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            t = peft_layer(theirs, name)
            t.lora_A["default"].weight.copy_(layer.lora_A.T)
            t.lora_B["default"].weight.copy_(layer.lora_B.T)
            if isinstance(layer, DoRALinear):
                t.lora_magnitude_vector["default"].weight.copy_(layer.lora_magnitude)


def peft_model(arch, **config):
    return peft.get_peft_model(make_encoder(arch), peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
                                                                  **config)).eval()


# --- rsLoRA -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 4, 16])
def test_rslora_scaling_is_alpha_over_sqrt_r_and_matches_peft(arch, batch, rank):
    ours = perturb(apply_rslora(make_encoder(arch), rank=rank, alpha=16))
    theirs = peft.get_peft_model(make_encoder(arch), peft.LoraConfig(r=rank, lora_alpha=16, use_rslora=True,
                                                                    target_modules=["query", "value"])).eval()
    for name, layer in lora_layers(ours).items():
        assert layer.scaling == pytest.approx(16 / rank**0.5) == peft_layer(theirs, name).scaling["default"]
    copy_into_peft(ours, theirs)
    torch.testing.assert_close(hidden(ours, batch), hidden(theirs, batch), atol=1e-5, rtol=0)
    plain = perturb(apply_lora(make_encoder(arch), rank=rank, alpha=16))  # same A, B, other constant
    if rank != 1:  # r = 1: alpha / r == alpha / sqrt(r)
        assert not torch.allclose(hidden(plain, batch), hidden(ours, batch), atol=1e-4)


def test_rslora_merges_like_lora(arch, batch):
    model = perturb(apply_rslora(make_model(arch)))
    before = logits(model, batch)
    merge_lora(model)
    torch.testing.assert_close(logits(model, batch), before, atol=1e-5, rtol=0)


# --- PiSSA ------------------------------------------------------------------------------------------


def test_pissa_matches_peft_factors_residual_and_outputs(arch, batch):
    ours = apply_pissa(make_encoder(arch))
    theirs = peft_model(arch, init_lora_weights="pissa")
    for name, layer in lora_layers(ours).items():
        t = peft_layer(theirs, name)
        torch.testing.assert_close(layer.lora_A.T, t.lora_A["default"].weight, atol=1e-5, rtol=0)
        torch.testing.assert_close(layer.lora_B.T, t.lora_B["default"].weight, atol=1e-5, rtol=0)
        torch.testing.assert_close(layer.base.weight, t.base_layer.weight, atol=1e-5, rtol=0)  # the residual
    torch.testing.assert_close(hidden(ours, batch), hidden(theirs, batch), atol=1e-5, rtol=0)
    perturb(ours)
    copy_into_peft(ours, theirs)
    torch.testing.assert_close(hidden(ours, batch), hidden(theirs, batch), atol=1e-5, rtol=0)


def test_pissa_principal_part_plus_residual_is_w_and_the_residual_lacks_the_top_directions(arch, batch):
    original = make_encoder(arch)
    model = apply_pissa(make_encoder(arch), rank=4)
    torch.testing.assert_close(hidden(model, batch), hidden(original, batch), atol=1e-5, rtol=0)  # unchanged at init
    for name, layer in lora_layers(model).items():
        w = original.get_submodule(name).weight
        torch.testing.assert_close(layer.base.weight + layer.delta_weight(), w, atol=1e-5, rtol=0)
        s = torch.linalg.svdvals(w)
        # the residual's singular values are W's from the (r+1)-th on: its top r directions went to A, B
        torch.testing.assert_close(torch.linalg.svdvals(layer.base.weight)[: len(s) - 4], s[4:], atol=1e-4, rtol=0)
        assert layer.lora_A.abs().sum() > 0 and layer.lora_B.abs().sum() > 0  # both factors non-zero: both learn


def test_pissa_merge_restores_a_plain_model_with_the_trained_weights(arch, batch):
    model = perturb(apply_pissa(make_model(arch)))
    before = logits(model, batch)
    merge_lora(model)
    assert not lora_layers(model)
    torch.testing.assert_close(logits(model, batch), before, atol=1e-5, rtol=0)


def test_pissa_adapter_on_the_original_weight_double_counts_the_principal_part(arch, batch):
    """The pitfall when exporting: A, B belong to the residual base, not to W."""
    model = apply_pissa(make_encoder(arch))
    wrong = apply_lora(make_encoder(arch))  # original W, with PiSSA's factors copied in
    with torch.no_grad():
        for name, layer in lora_layers(wrong).items():
            layer.lora_A.copy_(lora_layers(model)[name].lora_A)
            layer.lora_B.copy_(lora_layers(model)[name].lora_B)
    assert not torch.allclose(hidden(wrong, batch), hidden(model, batch), atol=1e-2)


def test_pissa_rank_above_min_in_out_is_refused():
    model = make_model()
    with pytest.raises(ValueError, match=r"rank=33 exceeds min\(in, out\)=32"):
        apply_pissa(model, rank=33)
    assert not lora_layers(model)


# --- DoRA -------------------------------------------------------------------------------------------


def test_dora_minilm_size_count_matches_peft_closed_form():
    """MiniLM's shape (hidden 384, 6 layers) with random weights: 73,728 LoRA + 6*2*384 magnitudes = 78,336."""
    cfg = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    ours = apply_dora(make_encoder("bert", **cfg))
    theirs = peft.get_peft_model(make_encoder("bert", **cfg),
                                 peft.LoraConfig(r=8, target_modules=["query", "value"], use_dora=True))
    assert count_parameters(ours).trainable == 6 * 2 * (8 * (384 + 384) + 384) == 78_336
    assert count_parameters(ours) == count_parameters(theirs)


def test_dora_starts_unchanged_with_magnitude_equal_to_the_row_norms(arch, batch):
    original = make_model(arch)
    model = apply_dora(make_model(arch))
    assert torch.equal(logits(model, batch), logits(original, batch)) or torch.allclose(
        logits(model, batch), logits(original, batch), atol=1e-6, rtol=0)
    for layer in dora_layers(model).values():
        torch.testing.assert_close(layer.lora_magnitude, layer.base.weight.norm(dim=1))
    assert {n.rsplit(".", 1)[1] for n in trainable_names(model) if ".lora_" in n} == {
        "lora_A", "lora_B", "lora_magnitude"}


def test_dora_matches_peft_outputs_and_gradients_with_perturbed_a_b_m(arch, batch):
    ours = apply_dora(make_encoder(arch))
    theirs = peft_model(arch, use_dora=True)
    for name, layer in lora_layers(ours).items():  # same magnitude at init: ||W|| row by row
        torch.testing.assert_close(layer.lora_magnitude, peft_layer(theirs, name).lora_magnitude_vector["default"].weight)
    perturb(ours)
    copy_into_peft(ours, theirs)
    torch.testing.assert_close(hidden(ours, batch), hidden(theirs, batch), atol=1e-5, rtol=0)
    for model in (ours, theirs):  # gradients: the norm is a constant in backward in both
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state.square().sum().backward()
    for name, layer in lora_layers(ours).items():
        t = peft_layer(theirs, name)
        torch.testing.assert_close(layer.lora_A.grad.T, t.lora_A["default"].weight.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer.lora_B.grad.T, t.lora_B["default"].weight.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer.lora_magnitude.grad, t.lora_magnitude_vector["default"].weight.grad,
                                   atol=1e-5, rtol=1e-4)


def test_dora_norm_gets_no_gradient_a_differentiated_norm_would_change_b_grad():
    torch.manual_seed(0)
    layer = DoRALinear(nn.Linear(6, 5), rank=2)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 6)
    layer(x).square().sum().backward()
    detached = layer.lora_B.grad.clone()
    w = layer.base.weight + layer.delta_weight()  # the same function, with the norm differentiated
    y = layer.lora_magnitude * (F.linear(x, w) / w.norm(dim=1)) + layer.base.bias
    torch.testing.assert_close(y, layer(x))
    (full,) = torch.autograd.grad(y.square().sum(), layer.lora_B)
    assert not torch.allclose(full, detached, atol=1e-4)


def test_dora_with_dropout_matches_peft_in_train_mode(batch):
    ours = perturb(apply_dora(make_encoder("bert"), dropout=0.3)).train()
    theirs = peft_model("bert", use_dora=True, lora_dropout=0.3).train()
    copy_into_peft(ours, theirs)
    for model in (ours, theirs):  # the attention/hidden dropouts off; only LoRA's dropout is random
        for n, m in model.named_modules():
            if isinstance(m, nn.Dropout) and "lora_dropout" not in n:
                m.p = 0.0
    torch.manual_seed(3)
    a = ours(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    torch.manual_seed(3)
    b = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_dora_merged_equals_unmerged_and_unmerge_restores(arch, batch):
    model = perturb(apply_dora(make_model(arch)))
    weights = {n: lay.base.weight.clone() for n, lay in dora_layers(model).items()}
    before = logits(model, batch)
    merge_lora(model, replace=False)
    torch.testing.assert_close(logits(model, batch), before, atol=1e-5, rtol=0)
    unmerge_lora(model)
    for n, lay in dora_layers(model).items():
        torch.testing.assert_close(lay.base.weight, weights[n], atol=1e-6, rtol=0)
    merge_lora(model)
    assert not lora_layers(model) and all(type(m) is not DoRALinear for m in model.modules())
    torch.testing.assert_close(logits(model, batch), before, atol=1e-5, rtol=0)


def test_dora_keeps_a_and_b_from_apply_lora_and_leaves_the_rng_alone():
    torch.manual_seed(7)
    plain = apply_lora(make_encoder("bert", seed=1))
    after_plain = torch.rand(1)
    torch.manual_seed(7)
    dora = apply_dora(make_encoder("bert", seed=1))
    assert torch.equal(torch.rand(1), after_plain)
    for name, layer in lora_layers(plain).items():
        assert torch.equal(dora_layers(dora)[name].lora_A, layer.lora_A)
        assert type(dora_layers(dora)[name]) is DoRALinear and isinstance(layer, LoRALinear)


# --- LoRA+ ------------------------------------------------------------------------------------------


def test_lora_plus_groups_match_peft_create_loraplus_optimizer(arch):
    from peft.optimizers import create_loraplus_optimizer

    theirs = peft_model(arch)
    ours = apply_lora(make_encoder(arch))
    opt = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=2e-4, loraplus_lr_ratio=16)
    names = {id(p): n.removeprefix("base_model.model.").replace(".default.weight", "")
             for n, p in theirs.named_parameters()}
    expected = sorted((g["lr"], g["weight_decay"], sorted(names[id(p)] for p in g["params"]))
                      for g in opt.param_groups if g["params"])
    own = {id(p): n for n, p in ours.named_parameters()}
    got = sorted((g["lr"], g["weight_decay"], sorted(own[id(p)] for p in g["params"]))
                 for g in lora_plus_groups(ours, 2e-4, ratio=16) if g["params"])
    assert got == expected
    assert [lr for lr, _, _ in got] == [2e-4, 2e-4 * 16]


def test_lora_plus_groups_on_a_classifier_follow_peft_rule_for_1d_tensors():
    model = apply_lora(make_model())
    groups = lora_plus_groups(model, 1e-3, ratio=4)
    own = {id(p): n for n, p in model.named_parameters()}
    by_lr = {}
    for g in groups:
        by_lr.setdefault(g["lr"], set()).update(own[id(p)] for p in g["params"])
    assert by_lr[1e-3] == {n for n in trainable_names(model) if n.endswith("lora_A")} | {"classifier.weight"}
    assert by_lr[4e-3] == {n for n in trainable_names(model) if n.endswith("lora_B")} | {"classifier.bias"}
    assert sum(len(g["params"]) for g in groups) == len(trainable_names(model))  # every trainable tensor, once


@pytest.mark.parametrize("kwargs, match", [
    ({"lr": 0.0}, "lr must be a number > 0"), ({"lr": 1e-3, "ratio": 0.5}, "ratio must be a number >= 1"),
])
def test_lora_plus_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lora_plus_groups(apply_lora(make_model()), **kwargs)


def test_lora_plus_needs_lora_layers():
    with pytest.raises(ValueError, match="no trainable lora_B; apply_lora"):
        lora_plus_groups(make_model(), 1e-3)


def test_each_variant_refuses_a_second_application():
    for apply in (apply_rslora, apply_pissa, apply_dora):
        model = apply(make_model())
        snapshot = copy.deepcopy(model.state_dict())
        with pytest.raises(ValueError, match="already has LoRA layers"):
            apply(model)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in snapshot.items())


@pytest.mark.parametrize("apply", [apply_rslora, apply_pissa, apply_dora], ids=["lora-rs", "pissa", "dora"])
def test_export_peft_refuses_a_variant_it_would_write_as_plain_lora(apply, tmp_path):
    """export_peft writes use_rslora=False, use_dora=False and the original base: silently wrong for a variant."""
    from ftlib.lora import export_peft

    with pytest.raises(ValueError, match="export_peft writes plain LoRA.*save_lora"):
        export_peft(apply(make_model(), rank=4, alpha=8), tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_variants_carry_their_own_strategy_tag():
    """fit(lr=None) and checkpoints read the tag: a variant must not pass for plain LoRA."""
    from ftlib.strategy_tag import strategy_tag

    for apply, name in [(apply_rslora, "lora-rs"), (apply_pissa, "pissa"), (apply_dora, "dora")]:
        assert strategy_tag(apply(make_model(), rank=4, alpha=8)).name == name
