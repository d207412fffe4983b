"""Properties of ftlib.lora on tiny BERT/RoBERTa models (hidden 32, 2 layers, intermediate 37)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, make_encoder, make_model
from safetensors import safe_open
from torch import nn

from ftlib.lora import (
    LoRALinear,
    apply_lora,
    export_peft,
    load_lora,
    lora_layers,
    lora_state_dict,
    merge_lora,
    save_lora,
    unmerge_lora,
)
from ftlib.params import count_parameters, trainable_names

H, FFN, L = TINY["hidden_size"], TINY["intermediate_size"], TINY["num_hidden_layers"]
ALL_KINDS = {"attention.self.query", "attention.self.key", "attention.self.value",
             "attention.output.dense", "intermediate.dense", "output.dense"}


def logits(model, batch):
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"])


def hidden(encoder, batch):
    with torch.no_grad():
        return encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def randomize_b(model, seed=0, scale=0.1):
    """Move off the B=0 identity init, as training would, so the update is not zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * scale)
    return model


def test_output_unchanged_right_after_apply(arch, batch):
    model = make_model(arch)
    before = logits(model, batch)
    apply_lora(model)
    assert len(lora_layers(model)) == L * 2
    assert torch.equal(logits(model, batch), before)  # B = 0: the update is exactly zero


@pytest.mark.parametrize("targets", [("query", "value"), ("query", "key", "value"), ("value",)])
@pytest.mark.parametrize("rank", [1, 8])
def test_only_lora_and_head_train_with_closed_form_count(arch, targets, rank):
    model = apply_lora(make_model(arch), rank=rank, targets=targets)
    lora_names = {f"{n}.{p}" for n in lora_layers(model) for p in ("lora_A", "lora_B")}
    assert set(trainable_names(model)) == lora_names | {"classifier.weight", "classifier.bias"}
    assert count_parameters(model.encoder).trainable == L * len(targets) * rank * (H + H)


def test_trainable_count_matches_peft(arch):
    peft = pytest.importorskip("peft")
    ours = apply_lora(make_model(arch), rank=8, targets=("query", "value")).encoder
    theirs = peft.get_peft_model(make_encoder(arch), peft.LoraConfig(r=8, target_modules=["query", "value"]))
    assert count_parameters(ours) == count_parameters(theirs)  # trainable and total


def test_lora_linear_matches_hand_computed_maths():
    torch.manual_seed(0)
    lin = nn.Linear(5, 7)
    layer = LoRALinear(lin, rank=3, alpha=6)
    assert layer.lora_A.shape == (5, 3) and layer.lora_B.shape == (3, 7)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 4, 5)  # (B, T, in)
    expected = x @ lin.weight.T + lin.bias + x @ layer.lora_A @ layer.lora_B * (6 / 3)  # (B, T, out)
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-6)
    assert not lin.weight.requires_grad and not lin.bias.requires_grad


def test_init_is_peft_kaiming_for_a_and_zero_for_b():
    lin = nn.Linear(64, 48)
    torch.manual_seed(3)
    layer = LoRALinear(lin, rank=4)
    torch.manual_seed(3)
    ref = torch.empty(4, 64)  # PEFT's lora_A.weight layout, (r, in)
    nn.init.kaiming_uniform_(ref, a=math.sqrt(5))
    assert torch.equal(layer.lora_A, ref.T)
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(64)  # kaiming(a=sqrt5) bound, not the reference's 0.01
    assert layer.lora_A.abs().max() > 0.5 / math.sqrt(64)
    assert torch.equal(layer.lora_B, torch.zeros(4, 48))


def test_new_layers_follow_eval_mode_so_dropout_is_off(batch):
    model = randomize_b(apply_lora(make_model("bert"), dropout=0.5))  # make_model returns it in eval mode
    assert not any(layer.training for layer in lora_layers(model).values())
    assert torch.equal(logits(model, batch), logits(model, batch))
    model.train()
    assert all(layer.lora_dropout.training for layer in lora_layers(model).values())


def test_merge_equals_unmerged_and_drops_wrappers(arch, batch):
    original = make_model(arch)
    model = randomize_b(apply_lora(make_model(arch)))
    unmerged = logits(model, batch)
    assert not torch.allclose(unmerged, logits(original, batch), atol=1e-3)  # the update is not zero
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert count_parameters(model).total == count_parameters(original).total
    torch.testing.assert_close(logits(model, batch), unmerged, atol=1e-5, rtol=0)


def test_merge_then_unmerge_restores_weights(arch, batch):
    original = make_model(arch)
    model = randomize_b(apply_lora(make_model(arch)))
    unmerged = logits(model, batch)
    merge_lora(model, replace=False)
    assert all(layer.merged for layer in lora_layers(model).values())
    q = model.encoder.encoder.layer[0].attention.self.query
    assert not torch.allclose(q.base.weight, original.encoder.encoder.layer[0].attention.self.query.weight)
    torch.testing.assert_close(logits(model, batch), unmerged, atol=1e-5, rtol=0)
    unmerge_lora(model)
    torch.testing.assert_close(q.base.weight, original.encoder.encoder.layer[0].attention.self.query.weight,
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(model, batch), unmerged, atol=1e-5, rtol=0)


def test_one_adamw_step_lowers_loss_and_changes_only_trainable_tensors(arch, batch):
    model = randomize_b(apply_lora(make_model(arch)))  # B != 0, so A gets a gradient too
    trainable = set(trainable_names(model))
    before = {n: t.clone() for n, t in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    loss = F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])
    loss.backward()
    opt.step()
    after = model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == trainable
    assert F.cross_entropy(logits(model, batch), batch["labels"]) < loss.item()


def test_save_load_into_fresh_model_reproduces_outputs(arch, batch, tmp_path):
    model = randomize_b(apply_lora(make_model(arch), rank=4, alpha=8))
    with torch.no_grad():  # stand-in for training: A and the head move too
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    path = save_lora(model, tmp_path / "lora.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(lora_state_dict(model))
        assert json.loads(f.metadata()["ftlib"])["lora"]["rank"] == 4
    fresh = apply_lora(make_model(arch), rank=4, alpha=8)
    assert not torch.equal(logits(fresh, batch), logits(model, batch))
    load_lora(fresh, path)
    assert torch.equal(logits(fresh, batch), logits(model, batch))


def test_load_refuses_mismatched_models(tmp_path):
    path = save_lora(apply_lora(make_model("bert"), rank=4, alpha=8), tmp_path / "lora.safetensors")
    with pytest.raises(ValueError, match=r"apply_lora\(model, rank=4, alpha=8"):
        load_lora(make_model("bert"), path)
    with pytest.raises(ValueError, match="saved with alpha=8"):
        load_lora(apply_lora(make_model("bert"), rank=4, alpha=16), path)
    with pytest.raises(KeyError, match="lacks 4 tensors"):
        load_lora(apply_lora(make_model("bert"), rank=4, alpha=8, targets=("query", "key", "value")), path)


@pytest.mark.parametrize("targets", [("query", "value"), "all-linear", ("0.attention.self.query",)])
def test_export_peft_parity(arch, batch, targets, tmp_path):
    peft = pytest.importorskip("peft")
    model = randomize_b(apply_lora(make_model(arch), rank=4, alpha=8, targets=targets))
    export_peft(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8)
    bare = make_encoder(arch)
    plain = hidden(bare, batch)
    theirs = peft.PeftModel.from_pretrained(bare, tmp_path)
    assert sum("lora_A" in n for n, _ in theirs.named_parameters()) == len(lora_layers(model))
    ours = hidden(model.encoder, batch)
    assert not torch.allclose(ours, plain, atol=1e-3)
    torch.testing.assert_close(hidden(theirs, batch), ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"rank": 0}, ValueError, "rank must be a positive int"),
    ({"rank": -2}, ValueError, "rank must be a positive int"),
    ({"rank": 4.0}, ValueError, "rank must be a positive int"),
    ({"rank": 33}, ValueError, r"rank=33 exceeds min\(in, out\)=32 of encoder\.encoder\.layer\.0\.attention\.self\.query"),
    ({"alpha": 0}, ValueError, "alpha must be a number > 0"),
    ({"alpha": -1.0}, ValueError, "alpha must be a number > 0"),
    ({"dropout": 1.0}, ValueError, r"dropout must be a probability in \[0, 1\)"),
    ({"dropout": -0.1}, ValueError, r"dropout must be a probability in \[0, 1\)"),
    ({"targets": ("query", "vaule")}, ValueError,
     r"'vaule' matches no nn.Linear.*attention\.self\.query.*intermediate\.dense.*'all-linear'"),
    ({"targets": ("classifier",)}, ValueError, "'classifier' matches no nn.Linear in the encoder"),
    ({"targets": ()}, TypeError, "targets must be"),
    ({"targets": ("query", 3)}, TypeError, "targets must be"),
])
def test_bad_arguments_raise_and_leave_model_untouched(kwargs, error, match):
    model = make_model("bert")
    with pytest.raises(error, match=match):
        apply_lora(model, **kwargs)
    assert not lora_layers(model)
    assert all(p.requires_grad for p in model.parameters())


def test_bad_calls_on_model_state_raise():
    model = make_model("bert")
    with pytest.raises(ValueError, match="no LoRA layers to merge"):
        merge_lora(model)
    apply_lora(model)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model)
    merge_lora(model)
    with pytest.raises(ValueError, match="no LoRA layers"):
        unmerge_lora(model)


def test_all_linear_targets_every_encoder_linear_but_not_the_head(arch):
    model = apply_lora(make_model(arch), rank=4, targets="all-linear")
    for i in range(L):
        prefix = f"encoder.encoder.layer.{i}."
        assert {n.removeprefix(prefix) for n in lora_layers(model) if n.startswith(prefix)} == ALL_KINDS
    assert len(lora_layers(model)) == L * len(ALL_KINDS)
    assert type(model.classifier) is nn.Linear and model.classifier.weight.requires_grad
    assert count_parameters(model.encoder).trainable == L * 4 * (4 * 2 * H + 2 * (H + FFN))


def test_targets_are_module_name_suffixes():
    model = apply_lora(make_model("bert"), targets="layer.1.attention.self.value")
    assert list(lora_layers(model)) == ["encoder.encoder.layer.1.attention.self.value"]


def test_bare_encoder_works_too(batch, tmp_path):
    peft = pytest.importorskip("peft")
    encoder = randomize_b(apply_lora(make_encoder("bert").eval(), rank=2, alpha=4))  # eval: no dropout
    assert sorted(lora_layers(encoder))[0] == "encoder.layer.0.attention.self.query"
    theirs = peft.PeftModel.from_pretrained(make_encoder("bert"), export_peft(encoder, tmp_path))
    torch.testing.assert_close(hidden(theirs, batch), hidden(encoder, batch), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_minilm_query_value_count_matches_closed_form_and_peft(minilm):
    model, _ = minilm
    bare = copy.deepcopy(model.encoder)
    apply_lora(model, rank=8, targets=("query", "value"))
    assert count_parameters(model.encoder).trainable == 6 * 2 * 8 * (384 + 384) == 73_728
    peft = pytest.importorskip("peft")
    theirs = peft.get_peft_model(bare, peft.LoraConfig(r=8, target_modules=["query", "value"]))
    assert count_parameters(theirs).trainable == 73_728


def test_unmerge_is_exact_only_up_to_the_rounding_bound(arch):
    """merge then unmerge: |W' - W| <= eps (1 + eps) (|W| + |dW|) per weight (two float roundings), not 0."""
    model = apply_lora(make_model(arch))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(std=0.5)  # a large update, so the rounding shows
    before = {n: layer.base.weight.detach().clone() for n, layer in lora_layers(model).items()}
    unmerge_lora(merge_lora(model, replace=False))
    eps = torch.finfo(torch.float32).eps
    worst = 0.0
    for name, layer in lora_layers(model).items():
        err = (layer.base.weight - before[name]).abs()
        bound = eps * (1 + eps) * (before[name].abs() + layer.delta_weight().abs())
        assert (err <= bound).all(), name
        worst = max(worst, err.max().item())
    assert worst > 0  # not bit-exact: the docstring says "up to rounding" for a reason
    assert "up to rounding" in unmerge_lora.__doc__


def test_a_has_peft_distribution_but_not_peft_draws():
    """The init comment used to claim 'the same random draws as PEFT': one seed gives different A."""
    peft = pytest.importorskip("peft")
    ours = apply_lora(make_encoder("bert"), rank=8)  # make_encoder seeds torch (seed 0) before building
    theirs = peft.get_peft_model(make_encoder("bert"), peft.LoraConfig(r=8, lora_alpha=16,
                                                                        target_modules=["query", "value"]))
    a_ours = lora_layers(ours)["encoder.layer.0.attention.self.query"].lora_A.detach().T  # (r, in)
    a_theirs = dict(theirs.named_parameters())[
        "base_model.model.encoder.layer.0.attention.self.query.lora_A.default.weight"].detach()
    bound = 1 / math.sqrt(a_ours.shape[1])  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in)) in both
    assert a_ours.shape == a_theirs.shape and a_ours.abs().max() <= bound and a_theirs.abs().max() <= bound
    assert not torch.equal(a_ours, a_theirs)
