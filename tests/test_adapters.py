"""Properties of ftlib.adapters on tiny BERT/RoBERTa, for both Houlsby and Pfeiffer placement."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, make_model
from transformers import DistilBertConfig, DistilBertModel

from ftlib.adapters import (
    HOULSBY,
    PFEIFFER,
    AdaptedOutput,
    Adapter,
    adapter_modules,
    apply_adapters,
    is_adapter_param,
    remove_adapters,
)
from ftlib.models import encoder_layers
from ftlib.params import count_parameters, load_trainable, save_trainable, trainable_names

PER_LAYER = {"houlsby": 2, "pfeiffer": 1}
H, L, C = TINY["hidden_size"], TINY["num_hidden_layers"], 3


@pytest.fixture(params=sorted(PER_LAYER))
def placement(request) -> str:
    return request.param


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"])


def randomize(model, seed: int = 0, std: float = 0.3):
    """Give every adapter non-zero weights so it is no longer the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_adapter_param(name):
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def expected_trainable(m: int, placement: str, hidden=H, layers=L, labels=C) -> int:
    """Closed form: per adapter H*m + m (down) + m*H + H (up); plus the linear head."""
    return PER_LAYER[placement] * layers * (hidden * m + m + m * hidden + hidden) + hidden * labels + labels


def test_adapter_module_is_identity_at_init_and_has_the_bottleneck_shape():
    adapter = Adapter(H, 8)
    x = torch.randn(2, 5, H)
    assert torch.equal(adapter(x), x)
    assert adapter.down_proj.weight.shape == (8, H) and adapter.up_proj.weight.shape == (H, 8)
    assert adapter.down_proj.weight.abs().max() > 0  # only the up-projection starts at zero


def test_output_unchanged_after_apply_and_changes_once_adapters_are_nonzero(arch, placement, batch):
    model = make_model(arch)
    before = logits(model, batch)
    assert apply_adapters(model, bottleneck=8, placement=placement) is model
    assert torch.equal(logits(model, batch), before)
    randomize(model)
    assert not torch.allclose(logits(model, batch), before, atol=1e-3)  # adapters are in the forward path


def test_adapter_count_per_layer_and_each_runs_once_per_forward(arch, placement, batch):
    model = apply_adapters(make_model(arch), bottleneck=8, placement=placement)
    for layer in encoder_layers(model):
        assert len(adapter_modules(layer)) == PER_LAYER[placement]
        assert isinstance(layer.output, AdaptedOutput)
        assert isinstance(layer.attention.output, AdaptedOutput) == (placement == "houlsby")
    calls = []
    for a in adapter_modules(model):
        a.register_forward_hook(lambda mod, args, out: calls.append(mod))
    logits(model, batch)
    assert len(calls) == PER_LAYER[placement] * L and len({id(c) for c in calls}) == len(calls)


# AdapterHub's definitions (adapter-hub/adapters, src/adapters/configuration/adapter_config.py): Pfeiffer is
# SeqBnConfig, Houlsby is DoubleSeqBnConfig; scaling 1.0, no extra LayerNorms, dropout 0 in both.
ADAPTERHUB = {
    "houlsby": dict(mh_adapter=True, output_adapter=True, original_ln_before=False, original_ln_after=True,
                    residual_before_ln=True, non_linearity=F.silu),  # "swish"
    "pfeiffer": dict(mh_adapter=False, output_adapter=True, original_ln_before=True, original_ln_after=True,
                     residual_before_ln=True, non_linearity=F.relu),
}


def adapterhub_sublayer(h, inp, mod, original_ln_before, original_ln_after, residual_before_ln, non_linearity, **_):
    """One adapted BERT sub-layer as AdapterHub computes it, written out by hand.

    Source: adapter-hub/adapters, src/adapters/methods/bottleneck.py (BottleneckLayer.bottleneck_layer_forward)
    and src/adapters/methods/modeling.py (Adapter.pre_forward, Adapter.forward, Adapter.post_forward);
    h = dropout(dense(x)) is the sub-layer output, inp its residual input, mod the AdaptedOutput whose
    weights are used (its LayerNorm is the layer's own).
    """
    norm, a = mod.LayerNorm, mod.adapter

    def ln(z):
        return F.layer_norm(z, (H,), norm.weight, norm.bias, norm.eps)

    def down(z):
        return F.linear(z, a.down_proj.weight, a.down_proj.bias)

    def up(z):
        return F.linear(z, a.up_proj.weight, a.up_proj.bias)

    residual = h if residual_before_ln is True else None  # pre_forward
    x = ln(h + inp) if original_ln_before else h
    if not residual_before_ln:
        residual = x
    out = up(non_linearity(down(x))) + residual  # Adapter.forward: scaling 1.0, no ln_after, dropout 0
    return ln(out + inp) if original_ln_after else out  # post_forward


def test_each_placement_computes_adapterhubs_architecture(arch, placement, batch):
    """Houlsby = AdapterHub's DoubleSeqBnConfig, Pfeiffer = SeqBnConfig (adapter-hub/adapters,
    src/adapters/configuration/adapter_config.py; forward pass from methods/bottleneck.py and methods/modeling.py),
    checked sub-layer by sub-layer against the hand-written adapterhub_sublayer above, in eval mode."""
    spec = ADAPTERHUB[placement]
    model = randomize(apply_adapters(make_model(arch), bottleneck=8, placement=placement))
    layer = encoder_layers(model)[0]
    assert isinstance(layer.attention.output, AdaptedOutput) == spec["mh_adapter"]
    assert isinstance(layer.output, AdaptedOutput) == spec["output_adapter"]
    seen = []
    for m in model.modules():
        if isinstance(m, AdaptedOutput):
            m.register_forward_hook(lambda mod, args, out: seen.append((mod, args, out)))
    logits(model, batch)
    assert len(seen) == PER_LAYER[placement] * L
    for mod, (hidden, inp), out in seen:
        h = F.linear(hidden, mod.dense.weight, mod.dense.bias)  # (B, T, H); dropout is off in eval
        torch.testing.assert_close(out, adapterhub_sublayer(h, inp, mod, **spec), atol=1e-6, rtol=0)
        other = {**spec, "original_ln_before": not spec["original_ln_before"]}  # the other architecture's wiring
        wrong = adapterhub_sublayer(h, inp, mod, **other)
        assert not torch.allclose(out, wrong, atol=1e-3)  # the check tells the two architectures apart


def test_adapterhub_presets_use_reduction_factor_16(arch, placement):
    """HOULSBY / PFEIFFER: AdapterHub's reduction_factor=16 (bottleneck = hidden // 16) and activations."""
    preset = {"houlsby": HOULSBY, "pfeiffer": PFEIFFER}[placement]
    assert preset.activation == {"houlsby": "silu", "pfeiffer": "relu"}[placement]
    model = apply_adapters(make_model(arch), config=preset)
    assert {a.down_proj.out_features for a in adapter_modules(model)} == {H // 16}
    assert count_parameters(model).trainable == expected_trainable(H // 16, placement)


@pytest.mark.parametrize("m", [1, 8])
def test_only_adapters_and_head_train_and_the_count_has_a_closed_form(arch, placement, m):
    model = make_model(arch)
    old = {n for n, _ in model.named_parameters()}
    apply_adapters(model, bottleneck=m, placement=placement)
    new = {n for n, _ in model.named_parameters()} - old
    assert new == {n for n, _ in model.named_parameters() if is_adapter_param(n)}  # the filter is exact
    assert all("adapter_" in n for n in new) and not any(is_adapter_param(n) for n in old)
    assert set(trainable_names(model)) == new | {"classifier.weight", "classifier.bias"}
    assert count_parameters(model).trainable == expected_trainable(m, placement)


def test_train_layer_norm_adds_the_layers_layernorms(arch, placement):
    model = apply_adapters(make_model(arch), bottleneck=8, placement=placement, train_layer_norm=True)
    extra = {n for n in trainable_names(model) if ".LayerNorm." in n}
    assert len(extra) == 4 * L and all(".layer." in n for n in extra)  # two LayerNorms per block, not embeddings
    assert count_parameters(model).trainable == expected_trainable(8, placement) + 2 * L * 2 * H


def test_one_adamw_step_lowers_loss_and_changes_exactly_the_trainable_tensors(arch, placement, batch):
    model = apply_adapters(make_model(arch), bottleneck=8, placement=placement)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def step() -> float:
        loss = F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    loss0 = step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    # up_proj starts at zero, so down_proj's first gradient is exactly zero and AdamW leaves it alone
    assert changed == {n for n in trainable_names(model) if "down_proj" not in n}
    assert step() < loss0
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(trainable_names(model))  # second step: down_proj moves too, frozen still frozen


def test_save_then_load_into_a_fresh_model_reproduces_outputs(arch, placement, batch, tmp_path):
    model = randomize(apply_adapters(make_model(arch), bottleneck=8, placement=placement))
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    path = save_trainable(model, tmp_path / "adapters.safetensors")
    fresh = apply_adapters(make_model(arch), bottleneck=8, placement=placement)
    assert not torch.allclose(logits(fresh, batch), logits(model, batch), atol=1e-3)
    load_trainable(fresh, path)
    assert torch.equal(logits(fresh, batch), logits(model, batch))


def test_remove_adapters_restores_the_original_model(arch, placement, batch):
    model = make_model(arch)
    names, before = [n for n, _ in model.named_parameters()], logits(model, batch)
    randomize(apply_adapters(model, bottleneck=8, placement=placement))
    assert remove_adapters(model) is model
    assert [n for n, _ in model.named_parameters()] == names and not adapter_modules(model)
    assert torch.equal(logits(model, batch), before)
    apply_adapters(model, bottleneck=4, placement=placement)  # can be applied again after removal
    with pytest.raises(ValueError, match="no adapters to remove"):
        remove_adapters(make_model(arch))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bottleneck=0), "bottleneck must be a positive int, got 0"),
        (dict(bottleneck=-4), "bottleneck must be a positive int"),
        (dict(bottleneck=8.0), "bottleneck must be a positive int, got 8.0"),
        (dict(bottleneck=True), "bottleneck must be a positive int"),
        (dict(placement="lora"), r"unknown placement 'lora'; valid: \['houlsby', 'pfeiffer'\]"),
        (dict(activation="swish"), r"unknown activation 'swish'; valid: \['gelu', 'relu', 'silu', 'tanh'\]"),
    ],
)
def test_bad_arguments_raise_and_leave_the_model_untouched(kwargs, match):
    model = make_model("bert")
    names = [n for n, _ in model.named_parameters()]
    with pytest.raises(ValueError, match=match):
        apply_adapters(model, **kwargs)
    assert [n for n, _ in model.named_parameters()] == names


def test_applying_twice_is_refused(placement):
    model = apply_adapters(make_model("bert"), bottleneck=8, placement=placement)
    with pytest.raises(ValueError, match="already applied.*remove_adapters"):
        apply_adapters(model, bottleneck=8, placement=placement)
    assert len(adapter_modules(model)) == PER_LAYER[placement] * L


def test_non_bert_layers_are_refused_with_what_was_expected_and_found():
    distil = DistilBertModel(DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37))
    names = [n for n, _ in distil.named_parameters()]
    with pytest.raises(ValueError, match=r"no BERT-style 'attention.output'.*found children \[.*'out_lin'"):
        apply_adapters(distil, bottleneck=8)
    with pytest.raises(ValueError, match=r"no BERT-style 'output'.*found children \[.*'ffn'"):
        apply_adapters(distil, bottleneck=8, placement="pfeiffer")
    assert [n for n, _ in distil.named_parameters()] == names


def test_adapter_rejects_bad_sizes_and_activations():
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        Adapter(0, 8)
    with pytest.raises(ValueError, match="unknown activation 'bogus'"):
        Adapter(H, 8, activation="bogus")


@pytest.mark.slow
def test_embedded_minilm_identity_at_init_and_closed_form_count(minilm):
    model, tok = minilm
    model.eval()
    enc = tok(["adapters keep the backbone frozen", "a second, longer sentence for padding"],
              padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(enc["input_ids"], enc["attention_mask"])
        apply_adapters(model, bottleneck=64)
        after = model(enc["input_ids"], enc["attention_mask"])
    assert torch.equal(after, before)
    assert count_parameters(model).trainable == expected_trainable(64, "houlsby", hidden=384, layers=6, labels=2)
