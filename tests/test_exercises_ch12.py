"""Chapter 12's exercise checks: each right answer passes, each injected wrong answer fails without the answer."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import fails_quietly
from torch import nn

from ftlib.exercises import ch12
from ftlib.quant import NF4, QuantLinear


@pytest.mark.parametrize("out_features, in_features", [(512, 256), (64, 96)])  # 2,048 blocks; 96 blocks (< 256)
def test_quant_bytes(out_features, in_features):
    n = out_features * in_features
    blocks = n // 64
    right = n // 2 + blocks + 4 * math.ceil(blocks / 256) + 4
    assert ch12.check_quant_bytes(right, out_features, in_features) is None
    wrongs = (right - 4,  # the offset forgotten
              n // 2 + 4 * blocks + 4 * math.ceil(blocks / 256) + 4,  # scales kept in fp32
              n + blocks + 4 * math.ceil(blocks / 256) + 4,  # one byte per code
              n // 2 + blocks + 4,  # no second-level scales
              n // 2 + blocks + 4 * (blocks // 256) + 4,  # floor: the short last block of scales forgotten
              float(right))
    for wrong in set(wrongs) - {right}:
        fails_quietly(lambda wrong=wrong: ch12.check_quant_bytes(wrong, out_features, in_features), right)


def test_quant_bytes_the_chapters_layer():
    n = 4096 * 4096
    right = n // 2 + n // 64 + 4 * math.ceil(n // 64 / 256) + 4
    assert ch12.check_quant_bytes(right) is None  # the default shape, 4096 x 4096 (about 1 s)


def quant_layer():
    torch.manual_seed(0)
    return QuantLinear(nn.Linear(128, 64))


def decode(layer, index, swap=False):
    block_bytes = layer.codes[32 * index: 32 * (index + 1)]
    high, low = block_bytes >> 4, block_bytes & 0xF
    pairs = [low, high] if swap else [high, low]
    return NF4[torch.stack(pairs, dim=1).flatten().long()] * layer.scales()[index]


def test_decode_block():
    layer = quant_layer()
    assert ch12.check_decode_block(decode(layer, 1), layer) is None
    assert ch12.check_decode_block(decode(layer, 3), layer, 3) is None
    raw_absmax = layer.dequantize().flatten()[64:128] / layer.scales()[1] * (layer.scales()[1] * 1.01)
    wrongs = {"high nibble": decode(layer, 1, swap=True),  # the nibbles swapped
              "another block": decode(layer, 0),  # block 0, not 1
              "differ": raw_absmax,  # a scale 1% off (e.g. not the decoded 8-bit one)
              "differ ": NF4[torch.stack([layer.codes[32:64] >> 4, layer.codes[32:64] & 0xF],
                                         dim=1).flatten().long()],  # the scale forgotten
              "shape": decode(layer, 1)[:32]}
    for hint, wrong in wrongs.items():
        with pytest.raises(AssertionError, match=hint.strip()):
            ch12.check_decode_block(wrong, layer)
    fails_quietly(lambda: ch12.check_decode_block(decode(layer, 1).tolist(), layer))  # a list, not a tensor


def code_weights(seed=0):
    """Normal weights with a few outliers (like a trained layer) and uniform ones with the same absmax."""
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(64, 128, generator=g) * 0.05
    a = real.abs().max()
    return {"MiniLM": real, "uniform": (torch.rand(64, 128, generator=g) * 2 - 1) * a}


def measure(weights):
    return {d: {"nf4": ch12.nf4_error(w), "uniform": ch12.blockwise_error(w, ch12.uniform_code())}
            for d, w in weights.items()}


def by_hand(w, code, blocksize=64):
    """The student's computation, independent of ch12: argmin over the levels."""
    b = w.reshape(-1, blocksize)
    m = b.abs().amax(dim=1, keepdim=True)
    q = code[((b / m)[..., None] - code).abs().argmin(dim=-1)] * m
    return ((q.reshape(w.shape) - w).norm() / w.norm()).item()


def test_nf4_vs_uniform_right_answers_pass():
    weights = code_weights()
    errors = {d: {"nf4": by_hand(w, NF4), "uniform": by_hand(w, torch.linspace(-1, 1, 15))}
              for d, w in weights.items()}
    assert errors["MiniLM"]["nf4"] < errors["MiniLM"]["uniform"]  # the test's data behave like the chapter's
    assert errors["uniform"]["uniform"] < errors["uniform"]["nf4"]
    verdicts = {"MiniLM": "nf4 better", "uniform": "uniform better"}
    assert ch12.check_nf4_vs_uniform(errors, verdicts, weights) is None


def test_nf4_vs_uniform_each_wrong_verdict_fails():
    weights = code_weights()
    errors = measure(weights)
    right = {"MiniLM": "nf4 better", "uniform": "uniform better"}
    for dist in right:
        for wrong in set(ch12.CODE_VERDICTS) - {right[dist]}:
            fails_quietly(lambda dist=dist, wrong=wrong: ch12.check_nf4_vs_uniform(errors, {**right, dist: wrong}, weights), right[dist])
    fails_quietly(lambda: ch12.check_nf4_vs_uniform(errors, {**right, "MiniLM": "nf4"}, weights))


def test_nf4_vs_uniform_judges_the_students_own_numbers():
    weights = code_weights()
    uniform_as_real = {"MiniLM": weights["uniform"], "uniform": weights["uniform"]}  # no normal weights at all
    errors = measure(uniform_as_real)
    assert ch12.check_nf4_vs_uniform(errors, {"MiniLM": "uniform better", "uniform": "uniform better"},
                                     uniform_as_real) is None
    fails_quietly(lambda: ch12.check_nf4_vs_uniform(errors, {"MiniLM": "nf4 better", "uniform": "uniform better"}, uniform_as_real))


def test_nf4_vs_uniform_wrong_errors_fail():
    weights = code_weights()
    errors = measure(weights)
    sixteen = {d: {**e, "uniform": by_hand(weights[d], torch.linspace(-1, 1, 16))} for d, e in errors.items()}
    one_scale = {d: {**e, "nf4": by_hand(weights[d], NF4, weights[d].numel())}  # one scale per matrix
                 for d, e in errors.items()}
    absolute = {d: {c: v * weights[d].norm().item() for c, v in e.items()} for d, e in errors.items()}  # ||w - Q(w)||
    for wrong in (sixteen, one_scale, absolute):
        wrong_verdicts = {d: "nf4 better" if e["nf4"] < e["uniform"] else "uniform better" for d, e in wrong.items()}
        with pytest.raises(AssertionError, match="not that code's relative error"):
            ch12.check_nf4_vs_uniform(wrong, wrong_verdicts, weights)
    swapped = {d: {"nf4": e["uniform"], "uniform": e["nf4"]} for d, e in errors.items()}  # the codes' columns swapped
    fails_quietly(lambda: ch12.check_nf4_vs_uniform(swapped, {"MiniLM": "uniform better", "uniform": "nf4 better"}, weights))


def test_nf4_vs_uniform_wrong_weights_fail():
    weights = code_weights()
    a = weights["MiniLM"].abs().max()
    g = torch.Generator().manual_seed(1)
    bad = {"share W's absmax": torch.rand(64, 128, generator=g) * 2 - 1,  # on [-1, 1], not [-a, a]
           "not uniform": weights["MiniLM"].flip(0),  # the real weights again
           "not uniform ": torch.rand(64, 128, generator=g) * a,  # on [0, a]: right absmax and mean |u|, one sign
           "shape": weights["uniform"][:32]}
    for hint, unif in bad.items():
        w = {"MiniLM": weights["MiniLM"], "uniform": unif}
        errors = measure(w)  # the errors are right for these weights: only the weights are wrong
        verdicts = {d: "nf4 better" if e["nf4"] < e["uniform"] else "uniform better" for d, e in errors.items()}
        with pytest.raises(AssertionError, match=hint.strip()):
            ch12.check_nf4_vs_uniform(errors, verdicts, w)


def test_nf4_vs_uniform_refuses_malformed_answers():
    weights = code_weights()
    errors = measure(weights)
    verdicts = {"MiniLM": "nf4 better", "uniform": "uniform better"}
    fails_quietly(lambda: ch12.check_nf4_vs_uniform({"MiniLM": errors["MiniLM"]}, verdicts, weights))
    fails_quietly(lambda: ch12.check_nf4_vs_uniform({d: {"nf4": e["nf4"]} for d, e in errors.items()}, verdicts, weights))
    fails_quietly(lambda: ch12.check_nf4_vs_uniform(errors, {"MiniLM": "nf4 better"}, weights))
    fails_quietly(lambda: ch12.check_nf4_vs_uniform(errors, verdicts, {"MiniLM": weights["MiniLM"]}))
    nan = {**errors, "MiniLM": {"nf4": float("nan"), "uniform": errors["MiniLM"]["uniform"]}}
    fails_quietly(lambda: ch12.check_nf4_vs_uniform(nan, verdicts, weights))
