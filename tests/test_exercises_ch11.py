"""Chapter 11's exercise checks: each right answer passes, each injected wrong answer fails without the answer."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import fails_quietly, make_model

from ftlib.dora import apply_dora, dora_layers
from ftlib.exercises import ch11

H, FF, LAYERS = 32, 37, 2  # tiny BERT: hidden 32, intermediate 37 (not square), 2 blocks




def test_dora_all_linear_count():
    model = make_model(hidden_size=H, intermediate_size=FF, num_hidden_layers=LAYERS)
    r = 4
    lora = LAYERS * (4 * r * (H + H) + r * (H + FF) + r * (FF + H))
    right = lora + LAYERS * (4 * H + FF + H)  # one magnitude per output feature of each wrapped layer
    assert ch11.check_dora_all_linear_count(right, model, rank=r) is None
    wrongs = (lora,  # LoRA's count: the magnitudes forgotten
              lora + LAYERS * 6 * H,  # every layer taken as d_out = hidden
              lora + LAYERS * (4 * H + FF + FF),  # d_in counted for the magnitudes of the output layer
              right // LAYERS,  # one block
              float(right))
    for wrong in wrongs:
        fails_quietly(lambda wrong=wrong: ch11.check_dora_all_linear_count(wrong, model, r), right)


def dora_value_layer():
    torch.manual_seed(0)
    model = apply_dora(make_model(), rank=4, alpha=8)
    for layer in dora_layers(model).values():
        with torch.no_grad():
            layer.lora_B.normal_(0, 0.05)
            layer.lora_magnitude.mul_(1.1)
    return next(m for n, m in dora_layers(model).items() if n.endswith("value"))


def test_dora_merge():
    v0 = dora_value_layer()
    W_plus = v0.base.weight + (v0.lora_A @ v0.lora_B).T * v0.scaling
    right = v0.lora_magnitude[:, None] * W_plus / W_plus.norm(dim=1, keepdim=True)
    assert ch11.check_dora_merge(right, v0) is None
    wrongs = [v0.lora_magnitude[:, None] * W_plus,  # without the norm: LoRA's merge times m
              W_plus,  # LoRA's merge
              v0.lora_magnitude[:, None] * W_plus / W_plus.norm(dim=0, keepdim=True),  # the column norm
              v0.base.weight.norm(dim=0)[None, :] * W_plus / W_plus.norm(dim=0, keepdim=True),  # wrong axis throughout
              v0.lora_magnitude[:, None] * (v0.base.weight + v0.lora_A @ v0.lora_B * v0.scaling)
              / (v0.base.weight + v0.lora_A @ v0.lora_B * v0.scaling).norm(dim=1, keepdim=True),  # not transposed
              right[:, :5]]  # wrong shape
    for wrong in wrongs:
        fails_quietly(lambda wrong=wrong: ch11.check_dora_merge(wrong, v0))
    merged = copy.deepcopy(v0)
    merged.merge()  # merging the layer itself is refused, even with the right values
    with pytest.raises(AssertionError, match="without merging"):
        ch11.check_dora_merge(merged.base.weight.clone(), merged)
    assert not v0.merged  # the check merged a copy, not the student's layer


def test_residual_share():
    torch.manual_seed(0)
    s = torch.linspace(3.0, 0.1, 16)  # a known spectrum on a 16 x 24 weight
    U, _ = torch.linalg.qr(torch.randn(16, 16))
    V, _ = torch.linalg.qr(torch.randn(24, 16))
    W = U @ torch.diag(s) @ V.T
    right = ((s[8:] ** 2).sum() / (s**2).sum()).item()
    assert ch11.check_residual_share(right, W, rank=8) is None
    assert ch11.check_residual_share(torch.tensor(right).item(), W) is None
    wrongs = (1 - right,  # the share PiSSA's factors take
              (s[8:].sum() / s.sum()).item(),  # singular values, not their squares
              ((s[9:] ** 2).sum() / (s**2).sum()).item(),  # off by one
              ((s[8:] ** 2).sum() / (s**2).sum()).sqrt().item(),  # a norm ratio, not an energy share
              1.5)
    for wrong in wrongs:
        fails_quietly(lambda wrong=wrong: ch11.check_residual_share(wrong, W, 8), f"{right:.3f}")
    fails_quietly(lambda: ch11.check_residual_share(torch.tensor(right), W))  # a tensor, not a number


def losses(lora, plus):
    return {"LoRA": dict(enumerate(lora)), "LoRA+": dict(enumerate(plus))}


@pytest.mark.parametrize("lora, plus, verdict", [
    ((0.66, 0.65, 0.66), (0.47, 0.45, 0.47), "LoRA+ lower"),
    ((0.47, 0.45, 0.47), (0.66, 0.65, 0.66), "LoRA lower"),
    ((0.66, 0.65, 0.66), (0.65, 0.60, 0.70), "within seed noise"),  # LoRA+ lower on average, but LoRA+ varies more
    ((0.60, 0.70), (0.66, 0.65), "within seed noise"),  # two seeds; LoRA's own spread hides the gap
])
def test_lora_plus_verdicts(lora, plus, verdict):
    measured = losses(lora, plus)
    assert ch11.check_lora_plus(verdict, measured) is None
    for wrong in set(ch11.LORA_PLUS_VERDICTS) - {verdict}:
        fails_quietly(lambda wrong=wrong: ch11.check_lora_plus(wrong, measured), verdict)
    fails_quietly(lambda: ch11.check_lora_plus("LoRA+", measured))


def test_lora_plus_refuses_bad_measurements():
    fails_quietly(lambda: ch11.check_lora_plus("LoRA+ lower", losses((0.66,), (0.47,))))  # one seed: no noise estimate
    fails_quietly(lambda: ch11.check_lora_plus("LoRA+ lower", {"LoRA": {0: 0.66, 1: 0.65}, "LoRA+": {0: 0.47, 2: 0.45}}))
    fails_quietly(lambda: ch11.check_lora_plus("LoRA+ lower", {"lora": {0: 0.66, 1: 0.65}, "lora+": {0: 0.47, 1: 0.45}}))
    fails_quietly(lambda: ch11.check_lora_plus("LoRA+ lower", losses((0.66, float("nan")), (0.47, 0.45))))
