"""(IA)^3 on tiny BERT/RoBERTa (and MiniLM, slow): identity at init, merging, parity with peft.IA3Config."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import TINY, make_model
from torch import nn

from ftlib.ia3 import (
    IA3Config,
    IA3Linear,
    apply_ia3,
    ia3_disabled,
    ia3_layers,
    load_ia3,
    merge_ia3,
    remove_ia3,
    save_ia3,
)
from ftlib.lora import apply_lora
from ftlib.params import count_parameters, trainable_names

H, L, FF, C = TINY["hidden_size"], TINY["num_hidden_layers"], TINY["intermediate_size"], 3
peft = pytest.importorskip("peft")


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"])


def hidden(encoder, batch) -> torch.Tensor:
    with torch.no_grad():
        return encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def perturb(model, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in ia3_layers(model).values():
            layer.ia3_l.add_(torch.randn(layer.ia3_l.shape, generator=g) * 0.3)
    return model


def test_one_layer_feedforward_scales_input_plain_scales_output():
    torch.manual_seed(0)
    lin, x = nn.Linear(5, 3), torch.randn(2, 4, 5)  # (B, T, in)
    ff, plain = IA3Linear(copy.deepcopy(lin), feedforward=True), IA3Linear(copy.deepcopy(lin), feedforward=False)
    assert ff.ia3_l.shape == (5,) and plain.ia3_l.shape == (3,)
    with torch.no_grad():
        torch.testing.assert_close(ff(x), lin(x), atol=0, rtol=0)  # ones: the identity
        ff.ia3_l.copy_(torch.arange(1.0, 6.0))
        plain.ia3_l.copy_(torch.tensor([2.0, -1.0, 0.5]))
        torch.testing.assert_close(ff(x), (x * torch.arange(1.0, 6.0)) @ lin.weight.T + lin.bias)
        torch.testing.assert_close(plain(x), (x @ lin.weight.T + lin.bias) * torch.tensor([2.0, -1.0, 0.5]))
        for layer in (ff, plain):
            merged = layer.merged()
            assert type(merged) is nn.Linear and not merged.weight.requires_grad
            torch.testing.assert_close(merged(x), layer(x), atol=1e-6, rtol=0)
        torch.testing.assert_close(ff.merged().bias, lin.bias)  # an input gain leaves the bias alone


def test_sizes_and_count_match_the_closed_form(arch):
    model = apply_ia3(make_model(arch))
    sizes = {n.split("layer.0.")[-1]: m.ia3_l.numel() for n, m in ia3_layers(model).items() if ".layer.0." in n}
    # output.dense also names attention.output.dense (suffix rule), which is then feed-forward too: input H
    assert sizes == {"attention.self.key": H, "attention.self.value": H, "attention.output.dense": H,
                     "output.dense": FF}
    assert count_parameters(model).trainable == L * (3 * H + FF) + H * C + C
    assert set(trainable_names(model)) == {n for n, _ in model.named_parameters()
                                           if n.endswith(".ia3_l") or n.startswith("classifier.")}


def test_identity_at_init_and_disabled(arch, batch):
    expected = logits(make_model(arch), batch)
    model = apply_ia3(make_model(arch))
    torch.testing.assert_close(logits(model, batch), expected, atol=0, rtol=0)
    perturb(model)
    trained = logits(model, batch)
    assert (trained - expected).abs().max() > 1e-3
    with ia3_disabled(model):
        torch.testing.assert_close(logits(model, batch), expected, atol=0, rtol=0)
    assert torch.equal(logits(model, batch), trained)


def test_merge_folds_into_plain_linears(arch, batch):
    model = perturb(apply_ia3(make_model(arch)))
    before = logits(model, batch)
    merge_ia3(model)
    assert not ia3_layers(model) and not any("ia3_" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(logits(model, batch), before, atol=1e-5, rtol=0)
    assert count_parameters(model).total == count_parameters(make_model(arch)).total


def test_remove_gives_back_the_original(arch, batch):
    expected = logits(make_model(arch), batch)
    model = remove_ia3(perturb(apply_ia3(make_model(arch))))
    assert not ia3_layers(model)
    torch.testing.assert_close(logits(model, batch), expected, atol=0, rtol=0)


def peft_ia3(encoder: nn.Module) -> nn.Module:
    cfg = peft.IA3Config(target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"])
    return peft.get_peft_model(copy.deepcopy(encoder), cfg).eval()


def check_parity(base, batch) -> int:
    """Both applied to the same encoder; our perturbed vectors copied into PEFT's; unmerged and merged
    hidden states agree within 1e-5."""
    theirs = peft_ia3(base.encoder)
    model = perturb(apply_ia3(copy.deepcopy(base)))
    their = dict(theirs.named_parameters())
    with torch.no_grad():
        for name, layer in ia3_layers(model.encoder).items():
            target = their[f"base_model.model.{name}.ia3_l.default"]
            assert target.shape == ((1, layer.ia3_l.numel()) if layer.feedforward else (layer.ia3_l.numel(), 1))
            target.copy_(layer.ia3_l.view(target.shape))
    ours = hidden(model.encoder, batch)
    torch.testing.assert_close(ours, hidden(theirs, batch), atol=1e-5, rtol=0)
    n = count_parameters(theirs).trainable
    assert n == sum(p.numel() for name, p in model.named_parameters() if name.endswith(".ia3_l"))
    merge_ia3(model)
    merged = theirs.merge_and_unload()
    torch.testing.assert_close(hidden(model.encoder, batch), ours, atol=1e-5, rtol=0)
    torch.testing.assert_close(hidden(merged, batch), ours, atol=1e-5, rtol=0)
    return n


def test_parity_with_peft_unmerged_and_merged(arch, batch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert check_parity(make_model(arch), batch) == L * (3 * H + FF)


def test_save_load_round_trip(arch, batch, tmp_path):
    model = perturb(apply_ia3(make_model(arch)))
    path = save_ia3(model, tmp_path / "ia3.safetensors")
    fresh = apply_ia3(make_model(arch))
    assert not torch.equal(logits(fresh, batch), logits(model, batch))
    assert torch.equal(logits(load_ia3(fresh, path), batch), logits(model, batch))
    other = apply_ia3(make_model(arch), targets=("key", "value"), feedforward=())
    with pytest.raises(ValueError, match="apply_ia3 with the saved settings"):
        load_ia3(other, path)


@pytest.mark.parametrize("make, kwargs, error, match", [
    (make_model, {"targets": ("qkv",), "feedforward": ()}, ValueError, r"target 'qkv' matches no nn.Linear.*attention\.self\.query"),
    (make_model, {"targets": (), "feedforward": ()}, ValueError, "targets must name at least one nn.Linear"),
    (make_model, {"targets": ("key",), "feedforward": ("output.dense",)}, ValueError,
     r"feedforward \['output.dense'\] must also be listed in targets"),
    (make_model, {"targets": (1,), "feedforward": ()}, TypeError, "module-name suffixes"),
    (lambda: apply_ia3(make_model()), {}, ValueError, "already applied.*merge_ia3 or remove_ia3"),
    (lambda: apply_lora(make_model(), targets=("key",)), {}, ValueError,
     "lora_\\* parameters .* would silently stop training.*fresh model"),
], ids=["no-target", "empty", "feedforward-not-target", "bad-type", "twice", "after-lora"])
def test_bad_inputs_raise_and_leave_the_model(make, kwargs, error, match):
    model = make()
    names = [n for n, _ in model.named_modules()]
    with pytest.raises(error, match=match):
        apply_ia3(model, **kwargs)
    assert names == [n for n, _ in model.named_modules()]


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        IA3Config().targets = ("key",)
    assert IA3Config("key", ()).targets == ("key",)


def test_verbs_need_ia3_first():
    for verb in (merge_ia3, remove_ia3):
        with pytest.raises(ValueError, match=r"call apply_ia3\(model\) first"):
            verb(make_model())


@pytest.mark.slow
def test_embedded_minilm_matches_peft():
    from ftlib.models import build_classifier

    model, tokenizer = build_classifier()
    model.eval()
    enc = tokenizer(["(IA)^3 rescales", "keys, values and feed-forward units"], padding=True, return_tensors="pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert check_parity(model, dict(enc)) == 6 * (384 + 384 + 384 + 1536) == 16_128


def test_param_groups_never_decay_the_vectors():
    from ftlib.ia3 import ia3_param_groups
    from ftlib.strategies import STRATEGIES

    model = apply_ia3(make_model())
    decay, free = ia3_param_groups(model)
    vectors = {id(p) for n, p in model.named_parameters() if n.endswith(".ia3_l")}
    assert vectors and vectors <= {id(p) for p in free["params"]} and free["weight_decay"] == 0.0
    assert not vectors & {id(p) for p in decay["params"]} and decay["weight_decay"] > 0
    assert len(decay["params"]) + len(free["params"]) == len(list(model.parameters()))  # every tensor, once
    assert id(model.classifier.weight) in {id(p) for p in decay["params"]}
    assert STRATEGIES["ia3"].groups is not None
    # with decay and a zero gradient, AdamW would pull a vector from 1 towards 0; in the free group it stays
    opt = torch.optim.AdamW(STRATEGIES["ia3"].groups(model, 1e-2), lr=1e-2)
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    opt.step()
    assert all(torch.equal(layer.ia3_l, torch.ones_like(layer.ia3_l)) for layer in ia3_layers(model).values())
