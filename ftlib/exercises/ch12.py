"""Checks for chapter 12 (QLoRA): a QuantLinear's bytes, an NF4 block decoded by hand, NF4 vs a uniform 4-bit code."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from . import expect, is_int

CODE_VERDICTS = ("nf4 better", "uniform better")
DISTRIBUTIONS = ("MiniLM", "uniform")
CODES = ("nf4", "uniform")
BLOCKSIZE = 64



def check_quant_bytes(n_bytes: int, out_features: int = 4096, in_features: int = 4096) -> None:
    """Exercise 1: the bytes a QuantLinear (NF4, blocks of 64, double quantisation in blocks of 256) stores."""
    from ..quant import QuantLinear, quant_memory

    expect(is_int(n_bytes), "the number of bytes must be an int")
    linear = nn.utils.skip_init(nn.Linear, in_features, out_features, bias=False)
    with torch.no_grad():
        linear.weight.zero_()  # what is stored does not depend on the values; zeros skip a 16M-value init
    layer = QuantLinear(linear)
    expect(n_bytes == quant_memory(nn.Sequential(layer)).quantized_bytes,
           "wrong count: half a byte per weight for the codes, one byte per block of 64 for the 8-bit scales, "
           "four bytes per started block of 256 scales, and four bytes for the offset")


def check_decode_block(block: torch.Tensor, layer: nn.Module, index: int = 1) -> None:
    """Exercise 2: the dequantised weights of block `index` (64 values) of a QuantLinear, decoded by hand."""
    expect(isinstance(block, torch.Tensor), "the block must be a tensor")
    expect(tuple(block.shape) == (BLOCKSIZE,), f"a block holds {BLOCKSIZE} weights: return a tensor of shape "
           f"({BLOCKSIZE},)")
    flat = layer.dequantize().flatten()
    want = flat[BLOCKSIZE * index: BLOCKSIZE * (index + 1)]
    if torch.allclose(block.detach().float(), want, rtol=1e-5, atol=1e-7):
        return
    swapped = want.view(-1, 2).flip(1).flatten()
    expect(not torch.allclose(block.detach().float(), swapped, rtol=1e-5, atol=1e-7),
           "the two codes of each byte are in the wrong order: the first code is in the high nibble")
    others = [flat[BLOCKSIZE * k: BLOCKSIZE * (k + 1)] for k in range(flat.numel() // BLOCKSIZE) if k != index]
    expect(not any(torch.allclose(block.detach().float(), o, rtol=1e-5, atol=1e-7) for o in others[:8]),
           "that is another block: count blocks from 0, 64 weights (32 bytes) each")
    expect(False, "the values differ from the layer's: unpack each byte into its two codes, look them up in NF4 "
           "and multiply by the block's decoded scale")


def uniform_code(levels: int = 15) -> torch.Tensor:
    """The symmetric uniform 4-bit code: `levels` evenly spaced values in [-1, 1], zero among them."""
    return torch.linspace(-1, 1, levels)


def blockwise_error(w: torch.Tensor, code: torch.Tensor, blocksize: int = BLOCKSIZE) -> float:
    """||w - Q(w)|| / ||w|| with blocks of `blocksize`, absmax scaling, nearest code value (ftlib's rounding)."""
    from ..quant import _nearest

    w = w.detach().float()
    blocks = w.reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1, keepdim=True).clamp(min=1e-38)
    q = code[_nearest((blocks / absmax).clamp(-1, 1), code).long()] * absmax
    return ((q.reshape(w.shape) - w).norm() / w.norm()).item()


def nf4_error(w: torch.Tensor) -> float:
    """The same error for NF4, through ftlib's own quantiser (no double quantisation)."""
    from ..quant import dequantize_nf4, quantize_nf4

    w = w.detach().float()
    return ((dequantize_nf4(*quantize_nf4(w, BLOCKSIZE), w.shape) - w).norm() / w.norm()).item()


def check_nf4_vs_uniform(errors: Mapping[str, Mapping[str, float]], verdicts: Mapping[str, str],
                         weights: Mapping[str, torch.Tensor]) -> None:
    """Exercise 3: NF4 against the symmetric 15-level uniform code on real weights and on uniform ones.

    weights: {"MiniLM": W, "uniform": U} (U drawn uniformly from [-a, a], a = W's absmax);
    errors: distribution -> {"nf4": relative error, "uniform": relative error};
    verdicts: distribution -> "nf4 better" or "uniform better", judged against the student's own errors."""
    expect(set(weights) == set(DISTRIBUTIONS), f"weights must map {list(DISTRIBUTIONS)} to a weight tensor")
    expect(set(errors) == set(DISTRIBUTIONS) and all(set(e) == set(CODES) for e in errors.values()),
           f"errors must map each of {list(DISTRIBUTIONS)} to {{'nf4': error, 'uniform': error}}")
    expect(set(verdicts) == set(DISTRIBUTIONS), f"verdicts must give one verdict for each of {list(DISTRIBUTIONS)}")
    expect(all(v in CODE_VERDICTS for v in verdicts.values()), f"each verdict must be one of {CODE_VERDICTS}")
    values = [float(e) for per_code in errors.values() for e in per_code.values()]
    expect(all(math.isfinite(v) and v >= 0 for v in values), "a relative error is a finite number >= 0")
    for dist in DISTRIBUTIONS:
        want = "nf4 better" if errors[dist]["nf4"] < errors[dist]["uniform"] else "uniform better"
        expect(verdicts[dist] == want, f"your verdict for {dist!r} does not follow from your own errors: the "
               "better code is the one with the lower relative error")
    real, unif = (weights[d].detach().float() for d in DISTRIBUTIONS)
    expect(real.numel() % BLOCKSIZE == 0 and unif.shape == real.shape,
           "the uniform weights must have the shape of W")
    a = real.abs().max()
    expect(bool(torch.isclose(unif.abs().max(), a, rtol=1e-2)),
           "the uniform weights must share W's absmax: draw them from [-a, a] with a = W.abs().max()")
    expect(abs((unif.abs().mean() / a).item() - 0.5) < 0.02 and abs((unif.mean() / a).item()) < 0.02,
           "these weights are not uniform on [-a, a]: use torch.rand, shifted and scaled")
    for dist in DISTRIBUTIONS:
        w = weights[dist]
        for code, reference in (("nf4", nf4_error(w)), ("uniform", blockwise_error(w, uniform_code()))):
            expect(abs(float(errors[dist][code]) - reference) < 1e-4,
                   f"errors[{dist!r}][{code!r}] is not that code's relative error ||w - Q(w)|| / ||w|| on those "
                   "weights (blocks of 64, each block divided by its absmax, the nearest level)")
