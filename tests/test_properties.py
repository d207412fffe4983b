"""One property table for all sixteen strategies of the registry, on tiny BERT/RoBERTa (and MiniLM, slow).

Each strategy is applied with the defaults its Recipe uses (STRATEGIES[name].apply), and the same
properties are checked for every one of them: what trains (and how many parameters, in closed form),
output unchanged right after applying, one optimisation step, save/load, merge/bake, parameter and
memory accounting, and clear errors on bad inputs. Strategy-specific behaviour lives in the
test_<strategy>.py files.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, make_model
from torch import nn

from ftlib.discriminative_lr import layerwise_param_groups
from ftlib.ia3 import merge_ia3
from ftlib.lora import apply_lora, merge_lora
from ftlib.lora_plus import lora_plus_groups
from ftlib.params import (
    ParamCount,
    TrainingMemory,
    count_parameters,
    load_trainable,
    save_trainable,
    trainable_names,
    training_memory,
)
from ftlib.prefix_tuning import bake_prefix, prefix_disabled
from ftlib.prompt_tuning import prompt_disabled
from ftlib.qlora import apply_qlora
from ftlib.quant import quantize
from ftlib.strategies import STRATEGIES, get_recipe
from ftlib.train import param_groups

H, L, C = TINY["hidden_size"], TINY["num_hidden_layers"], 3  # make_model's head has 3 classes
FF = TINY["intermediate_size"]  # the feed-forward width (I): BitFit and (IA)^3 counts depend on it
R, P, D, M = 8, 20, 512, 64  # the registry's defaults: LoRA rank, prefix/prompt length and projection, adapter bottleneck
NAMES = sorted(STRATEGIES)


def head(n: str) -> bool:
    return n.startswith("classifier.")


def lora_param(n: str) -> bool:
    return n.endswith((".lora_A", ".lora_B")) and (".attention.self.query." in n or ".attention.self.value." in n)


def dora_param(n: str) -> bool:
    return lora_param(n) or (n.endswith(".lora_magnitude") and (".query." in n or ".value." in n))


def ffn(hidden: int) -> int:
    """Intermediate size: the tiny models' odd 37, MiniLM's 4 * 384."""
    return TINY["intermediate_size"] if hidden == TINY["hidden_size"] else 4 * hidden


def adapter_param(n: str) -> bool:
    return ".adapter_attn." in n or ".adapter_ffn." in n


@dataclass(frozen=True)
class Expect:
    """What applying a strategy with its registry defaults must do to a SequenceClassifier."""

    trains: Callable[[str], bool]  # parameter names that must be trainable (the head always is)
    added: Callable[[int, int, int], int]  # (hidden size H, layers L, FFN width FF) -> parameters the strategy adds
    selected: Callable[[int, int, int], int] = lambda H, L, FF: 0  # the model's own parameters it trains (selective)
    everything_trains: bool = False  # full / discriminative: the trainable count is the total
    zero_grad_at_init: Callable[[str], bool] = lambda n: False  # trainable tensors whose first gradient is exactly 0
    masked: Callable[[nn.Module], contextlib.AbstractContextManager] = lambda m: contextlib.nullcontext()
    merge: Callable[[nn.Module], nn.Module] | None = None  # merged/baked form with the same outputs
    removed: Callable[[int, int], int] = lambda H, L: 0  # parameters that stop being parameters (quantised)
    tiny: dict = field(default_factory=dict)  # apply() arguments the tiny models need (not MiniLM)
    baseline: Callable[..., nn.Module] = lambda model, **kwargs: model  # what the applied model starts equal to


EXPECT: dict[str, Expect] = {
    "full": Expect(trains=lambda n: True, added=lambda H, L, FF: 0, everything_trains=True),
    "feature-extraction": Expect(trains=head, added=lambda H, L, FF: 0),
    "gradual-unfreezing": Expect(trains=head, added=lambda H, L, FF: 0),  # head only at the start
    "discriminative-lr": Expect(trains=lambda n: True, added=lambda H, L, FF: 0, everything_trains=True),
    # B starts at zero: the update is zero, and A's first gradient (through B) is exactly zero
    "lora": Expect(trains=lora_param, added=lambda H, L, FF: L * 2 * R * (H + H),
                   zero_grad_at_init=lambda n: n.endswith(".lora_A"), merge=merge_lora),
    # the prefix is only "no change" when masked out; the MLP bakes into plain tensors
    "prefix-tuning": Expect(trains=lambda n: n.startswith("prefix_encoder."),
                            added=lambda H, L, FF: P * H + H * D + D + D * 2 * L * H + 2 * L * H,
                            masked=prefix_disabled, merge=bake_prefix),
    # up_proj starts at zero: identity at init, and down_proj's first gradient is exactly zero
    "adapters": Expect(trains=adapter_param, added=lambda H, L, FF: 2 * L * (2 * H * M + M + H),
                       zero_grad_at_init=lambda n: ".down_proj." in n),
    # beyond the reference text, part 2: the LoRA family, same shapes as lora
    "lora-rs": Expect(trains=lora_param, added=lambda H, L, FF: L * 2 * R * (H + H),
                      zero_grad_at_init=lambda n: n.endswith(".lora_A"), merge=merge_lora),
    "lora-plus": Expect(trains=lora_param, added=lambda H, L, FF: L * 2 * R * (H + H),
                        zero_grad_at_init=lambda n: n.endswith(".lora_A"), merge=merge_lora),
    # PiSSA: A and B both start non-zero (W's top singular directions), so both get a gradient at once
    "pissa": Expect(trains=lora_param, added=lambda H, L, FF: L * 2 * R * (H + H), merge=merge_lora),
    # DoRA: one magnitude per output feature on top of LoRA; B = 0 still zeroes A's first gradient
    "dora": Expect(trains=dora_param, added=lambda H, L, FF: L * 2 * (R * (H + H) + H),
                   zero_grad_at_init=lambda n: n.endswith(".lora_A"), merge=merge_lora),
    # QLoRA: every encoder weight becomes 4-bit buffers (no longer parameters); 64 divides none of the tiny
    # models' 32 x 37 weights, so they use 32; at init it equals the quantised base, not the fp32 one
    "qlora": Expect(trains=lora_param, added=lambda H, L, FF: L * 2 * R * (H + H),
                    removed=lambda H, L: L * (4 * H * H + 2 * H * ffn(H)),
                    zero_grad_at_init=lambda n: n.endswith(".lora_A"), tiny={"blocksize": 32},
                    baseline=lambda model, blocksize=64: quantize(model, blocksize)),
    # beyond the reference text, part 1
    # every bias: the embedding LayerNorm's H, then per layer q/k/v 3H, attention output H, its LayerNorm H,
    # intermediate FF, output H, its LayerNorm H
    "bitfit": Expect(trains=lambda n: n.startswith("encoder.") and n.endswith(".bias"), added=lambda H, L, FF: 0,
                     selected=lambda H, L, FF: H + L * (7 * H + FF)),
    # gain and bias of the embedding LayerNorm and of the two per layer
    "ln-tuning": Expect(trains=lambda n: ".LayerNorm." in n, added=lambda H, L, FF: 0,
                        selected=lambda H, L, FF: (2 * L + 1) * 2 * H),
    # key H, value H, attention output (input side) H, FFN output (input side) FF; ones init: identity
    "ia3": Expect(trains=lambda n: n.endswith(".ia3_l"), added=lambda H, L, FF: L * (3 * H + FF), merge=merge_ia3),
    # the prompt changes outputs (it is new input), so "unchanged" holds with it disabled
    "prompt-tuning": Expect(trains=lambda n: n.startswith("prompt_encoder."), added=lambda H, L, FF: P * H,
                            masked=prompt_disabled),
}


def expected_count(name: str, base_total: int, hidden: int = H, layers: int = L, labels: int = C,
                   ff: int = FF) -> ParamCount:
    e = EXPECT[name]
    total = base_total + e.added(hidden, layers, ff) - e.removed(hidden, layers)
    own = e.added(hidden, layers, ff) + e.selected(hidden, layers, ff)
    trainable = total if e.everything_trains else own + hidden * labels + labels
    return ParamCount(trainable, total)


def applied(name: str, arch: str = "bert", seed: int = 0) -> nn.Module:
    """A tiny seeded classifier (eval mode) with the strategy applied as the registry applies it."""
    return STRATEGIES[name].apply(make_model(arch, seed=seed), **EXPECT[name].tiny)


def logits(model: nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"])


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def perturb(model: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Move every trainable tensor off its initial value (as training would), so a lost tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def no_dropout(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


@pytest.fixture(params=NAMES)
def name(request) -> str:
    return request.param


def test_the_table_covers_every_registered_strategy():
    assert set(EXPECT) == set(STRATEGIES) and len(STRATEGIES) == 16
    for n, recipe in STRATEGIES.items():
        assert recipe.name == n and recipe.lr > 0 and get_recipe(n) is recipe


def test_output_unchanged_right_after_applying(name, arch, batch):
    expected = logits(EXPECT[name].baseline(make_model(arch), **EXPECT[name].tiny), batch)  # same seeded model
    model = applied(name, arch)
    with EXPECT[name].masked(model):
        torch.testing.assert_close(logits(model, batch), expected, atol=1e-6, rtol=0)


def test_only_the_intended_parameters_train_and_the_count_has_a_closed_form(name, arch):
    base_total = count_parameters(make_model(arch)).total
    model = applied(name, arch)
    names = [n for n, _ in model.named_parameters()]
    intended = {n for n in names if EXPECT[name].trains(n) or head(n)}
    assert set(trainable_names(model)) == intended
    assert count_parameters(model) == expected_count(name, base_total)


def test_count_parameters_and_training_memory_report_each_strategy(name, arch):
    model = applied(name, arch)
    count = count_parameters(model)
    # fp32: 4 bytes per weight; a gradient per trainable weight; AdamW's two moments per trainable weight
    assert training_memory(model) == TrainingMemory(4 * count.total, 4 * count.trainable, 8 * count.trainable)
    assert training_memory(model).total == 4 * count.total + 12 * count.trainable
    assert count.percent == pytest.approx(100 * count.trainable / count.total)


def test_one_optimisation_step_lowers_the_loss_and_changes_exactly_the_trainable_tensors(name, arch, batch):
    recipe, expect = STRATEGIES[name], EXPECT[name]
    model = no_dropout(applied(name, arch)).train()  # train mode, but deterministic
    groups = recipe.groups(model, recipe.lr) if recipe.groups is not None else param_groups(model)
    opt = torch.optim.AdamW(groups, lr=recipe.lr)  # every tensor goes in; frozen ones never get a .grad
    before = snapshot(model)
    trainable = set(trainable_names(model))

    def loss() -> torch.Tensor:
        return F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    def step() -> float:
        value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        return value.item()

    first = loss()
    first.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert {n for n, g in grads.items() if g is not None} == trainable  # frozen tensors get no gradient at all
    # A key bias adds q.b to every score of a query, which softmax ignores: its gradient is zero in exact
    # arithmetic and rounding noise (~1e-12) in floats, so whether AdamW moves it is left unasserted.
    inert = {n for n in trainable if n.endswith(".attention.self.key.bias")}
    assert all(grads[n].abs().max() < 1e-8 for n in inert)
    zero = {n for n in trainable - inert if not grads[n].any()}
    assert zero == {n for n in trainable if expect.zero_grad_at_init(n)}  # zero-init paths: exactly these
    opt.step()
    with torch.no_grad():
        assert loss().item() < first.item()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert trainable - zero - inert <= changed <= trainable
    # Second step: the zero-initialised half is no longer zero, so the other half gets its gradient too
    step()
    with torch.no_grad():
        assert loss().item() < first.item()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable and changed | inert == trainable  # everything frozen is bit-identical


def test_save_then_load_into_a_fresh_model_reproduces_outputs(name, arch, batch, tmp_path):
    model = perturb(applied(name, arch))
    path = save_trainable(model, tmp_path / f"{name}.safetensors")
    fresh = applied(name, arch)  # same seed, same strategy
    assert not torch.allclose(logits(fresh, batch), logits(model, batch), atol=1e-4)
    assert load_trainable(fresh, path) is fresh
    assert torch.equal(logits(fresh, batch), logits(model, batch))
    for n, p in fresh.named_parameters():
        assert torch.equal(p, dict(model.named_parameters())[n]), n


@pytest.mark.parametrize("name", [n for n in NAMES if EXPECT[n].merge is not None])
def test_merged_or_baked_equals_unmerged(name, arch, batch):
    model = perturb(applied(name, arch))  # off the zero-update init, so merging has something to fold in
    before = logits(model, batch)
    assert not torch.allclose(before, logits(make_model(arch), batch), atol=1e-3)
    EXPECT[name].merge(model)
    torch.testing.assert_close(logits(model, batch), before, atol=1e-5, rtol=0)


# --- bad inputs -------------------------------------------------------------------------------------


class NoEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.classifier = nn.Linear(4, 2)


def apply(name: str, **kwargs) -> Callable[[nn.Module], object]:
    return lambda model: STRATEGIES[name].apply(model, **kwargs)


def groups(**kwargs) -> Callable[[nn.Module], object]:
    return lambda model: layerwise_param_groups(model, **kwargs)


def twice(name: str, **kwargs) -> Callable[[], nn.Module]:
    return lambda: STRATEGIES[name].apply(make_model(), **kwargs)


BAD_INPUTS = [  # (id, make the model, what to call on it, error, message)
    ("lora-rank-0", make_model, apply("lora", rank=0), ValueError, "rank must be a positive int"),
    ("lora-rank-too-large", make_model, apply("lora", rank=33), ValueError, r"rank=33 exceeds min\(in, out\)=32"),
    ("lora-alpha-0", make_model, apply("lora", alpha=0), ValueError, "alpha must be a number > 0"),
    ("lora-no-target", make_model, apply("lora", targets=("qkv",)), ValueError,
     r"target 'qkv' matches no nn.Linear in the encoder.*attention\.self\.query"),
    ("lora-twice", twice("lora"), apply("lora"), ValueError, "already has LoRA layers"),
    ("prefix-length-0", make_model, apply("prefix-tuning", prefix_length=0), ValueError,
     "prefix_length must be a positive int"),
    ("prefix-twice", twice("prefix-tuning"), apply("prefix-tuning"), ValueError, "already applied"),
    ("adapters-bottleneck-0", make_model, apply("adapters", bottleneck=0), ValueError,
     "bottleneck must be a positive int"),
    ("adapters-placement", make_model, apply("adapters", placement="middle"), ValueError,
     r"unknown placement 'middle'; valid: \['houlsby', 'pfeiffer'\]"),
    ("adapters-twice", twice("adapters"), apply("adapters"), ValueError, "already applied.*remove_adapters"),
    ("feature-extraction-no-encoder", NoEncoder, apply("feature-extraction"), TypeError,
     r"needs a model with \.encoder and \.classifier.*got NoEncoder"),
    ("gradual-unfreezing-no-layers", lambda: nn.Sequential(nn.Linear(4, 4)), apply("gradual-unfreezing"),
     ValueError, "has no transformer layers"),
    ("gradual-unfreezing-zero-layers", lambda: make_model(num_hidden_layers=0), apply("gradual-unfreezing"),
     ValueError, "BertModel has no transformer layers"),
    ("discriminative-decay-0", make_model, groups(base_lr=1e-4, decay=0.0), ValueError,
     r"decay must be in \(0, 1\]"),
    ("discriminative-decay-above-1", make_model, groups(base_lr=1e-4, decay=1.5), ValueError,
     r"decay must be in \(0, 1\]"),
    ("bitfit-no-target", make_model, apply("bitfit", targets=("qkv",)), ValueError,
     "target 'qkv' matches no module with a bias"),
    ("bitfit-twice", twice("bitfit"), apply("bitfit"), ValueError, r"already applied.*remove_bitfit"),
    ("bitfit-after-lora", twice("lora"), apply("bitfit"), ValueError, "lora_\\* parameters .* silently stop training"),
    ("ln-tuning-no-target", make_model, apply("ln-tuning", targets=("ln_f",)), ValueError,
     "target 'ln_f' matches no nn.LayerNorm"),
    ("ln-tuning-twice", twice("ln-tuning"), apply("ln-tuning"), ValueError, r"already applied.*remove_ln_tuning"),
    ("ia3-no-target", make_model, apply("ia3", targets=("qkv",), feedforward=()), ValueError,
     "target 'qkv' matches no nn.Linear"),
    ("ia3-twice", twice("ia3"), apply("ia3"), ValueError, "already applied.*merge_ia3 or remove_ia3"),
    ("ia3-after-adapters", twice("adapters"), apply("ia3"), ValueError, "adapter_\\* parameters"),
    ("prompt-zero-tokens", make_model, apply("prompt-tuning", num_tokens=0), ValueError,
     "num_tokens must be a positive int"),
    ("prompt-twice", twice("prompt-tuning"), apply("prompt-tuning"), ValueError,
     r"already applied.*remove_prompt_tuning"),
    ("prompt-after-feature-extraction", twice("feature-extraction"), apply("prompt-tuning"), ValueError,
     "cannot follow feature extraction"),
    ("discriminative-base-lr-0", make_model, groups(base_lr=0.0), ValueError, "base_lr must be positive"),
    ("pissa-rank-too-large", make_model, apply("pissa", rank=33), ValueError, r"rank=33 exceeds min\(in, out\)=32"),
    ("dora-twice", twice("dora"), apply("dora"), ValueError, "already has LoRA layers"),
    ("lora-plus-ratio-below-1", lambda: apply_lora(make_model()), lambda m: lora_plus_groups(m, 1e-3, ratio=0.5),
     ValueError, r"ratio must be a number >= 1"),
    ("qlora-twice", lambda: apply_qlora(make_model(), blocksize=32), apply("qlora", blocksize=32), ValueError,
     "already quantised"),
    ("qlora-blocksize-does-not-divide", make_model, apply("qlora"), ValueError,
     r"blocksize=64 does not divide the weight of .*choose one that does \(16, 32\)"),
    ("qlora-merge", lambda: apply_qlora(make_model(), blocksize=32), merge_lora, ValueError,
     r"cannot merge LoRA into a 4-bit NF4 base.*dequantize\(model\) first"),
    ("discriminative-base-lr-negative", make_model,
     lambda model: STRATEGIES["discriminative-lr"].groups(model, -1e-4), ValueError, "base_lr must be positive"),
]


def structure(model: nn.Module) -> list:
    """Parameter names, flags and module types: what a failed call must leave as it was."""
    return ([(n, p.requires_grad, tuple(p.shape)) for n, p in model.named_parameters()]
            + [type(m).__name__ for m in model.modules()])


@pytest.mark.parametrize("make, call, error, match", [row[1:] for row in BAD_INPUTS],
                         ids=[row[0] for row in BAD_INPUTS])
def test_bad_inputs_raise_clearly_and_leave_the_model_as_it_was(make, call, error, match):
    model = make()
    before, weights = structure(model), snapshot(model)
    with pytest.raises(error, match=match):
        call(model)
    assert structure(model) == before
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())


def test_unknown_strategy_lists_the_names():
    with pytest.raises(ValueError, match="unknown strategy 'nope'; choose one of: ") as info:
        get_recipe("nope")
    assert all(n in str(info.value) for n in STRATEGIES)


# --- the embedded MiniLM ----------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_minilm_every_strategy_counts_and_starts_unchanged(minilm):
    base, tokenizer = minilm
    base.eval()
    cfg = base.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, base.num_labels) == (384, 6, 2)
    enc = tokenizer(["the same property table, on the real model", "short"], padding=True, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    expected, base_total = logits(base, batch), count_parameters(base).total
    for name in NAMES:
        model = STRATEGIES[name].apply(copy.deepcopy(base))
        count = count_parameters(model)
        assert count == expected_count(name, base_total, 384, 6, 2, 1536), name
        start = expected if name != "qlora" else logits(EXPECT[name].baseline(copy.deepcopy(base)), batch)
        with EXPECT[name].masked(model):
            torch.testing.assert_close(logits(model, batch), start, atol=1e-5, rtol=0, msg=name)
        own = {"bitfit": 25_728, "ln-tuning": 9_984, "ia3": 16_128, "prompt-tuning": 7_680}  # PEFT's counts for
        if name in own:  # the last three (tests/test_ln_tuning.py, test_ia3.py, test_prompt_tuning.py)
            assert count.trainable == own[name] + 770, name
        if name == "lora":
            assert count_parameters(model.encoder).trainable == 6 * 2 * 8 * (384 + 384) == 73_728
            assert count.trainable == 73_728 + 384 * 2 + 2 == 73_728 + 770
            peft = pytest.importorskip("peft")
            theirs = peft.get_peft_model(copy.deepcopy(base.encoder),
                                         peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"]))
            assert count_parameters(theirs) == count_parameters(model.encoder)  # trainable and total
        if name == "dora":
            assert count_parameters(model.encoder).trainable == 78_336  # PEFT's count for use_dora=True, q+v, r=8
        del model
