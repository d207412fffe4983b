"""Checks for chapter 09 (BitFit, LayerNorm tuning, (IA)^3): BitFit's count for bert-base, folding an output
scale into a linear layer, and the bias kind that gets no gradient (an experiment)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

from . import expect, is_int

INERT_SHARE = 1e-4  # "numerically no gradient": a summed norm below this share of the largest kind's



def check_bitfit_count(bitfit_bert_base) -> None:
    """Exercise 1: the biases BitFit trains in bert-base's encoder (L=12, H=768, I=3072; head excluded).

    The reference is apply_bitfit on bert-base built on the meta device (no weights, no download)."""
    import transformers

    from ..bitfit import apply_bitfit
    from ..params import count_parameters

    expect(is_int(bitfit_bert_base), "give the count as an int (a number of trained values)")
    with torch.device("meta"):
        bert_base = transformers.BertModel(transformers.BertConfig(), add_pooling_layer=False)
    counted = count_parameters(apply_bitfit(bert_base)).trainable
    expect(bitfit_bert_base <= counted,
           "too many: only biases train (a LayerNorm's beta, not its gain gamma), and the head is excluded")
    expect(bitfit_bert_base == counted,
           "too few: list every bias of one layer (section 2 prints them), size each with bert-base's H and I, "
           "and remember the LayerNorm that follows the embeddings")


def _call_fold(fold: Callable, layer: nn.Linear, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        out = fold(layer, scale)
    except Exception as e:  # a shape error is a wrong answer, not a crash of the check
        raise AssertionError(f"fold_output_scale raised {type(e).__name__} on a layer with d_in = "
                             f"{layer.in_features}, d_out = {layer.out_features} and l of size {scale.numel()}: "
                             "nn.Linear stores its weight as (d_out, d_in); which axis does l scale?") from None
    expect(isinstance(out, tuple | list) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out),
           "return a pair of tensors: (weight, bias)")
    return out[0], out[1]


def check_fold_output_scale(fold_output_scale: Callable) -> None:
    """Exercise 2: fold_output_scale(linear, l) gives the (weight, bias) of ftlib's merge of a plain target.

    Two random layers: a square one (where scaling the wrong axis still has the right shape) and a
    rectangular one, each against IA3Linear(..., feedforward=False).merged() (assert_close's float32
    tolerances); the layer itself must be left unchanged."""
    from ..ia3 import IA3Linear

    for d_in, d_out, seed in ((4, 4, 0), (6, 4, 1)):
        torch.manual_seed(seed)
        layer = IA3Linear(nn.Linear(d_in, d_out), feedforward=False)
        with torch.no_grad():
            layer.ia3_l.copy_(torch.randn(d_out))
            folded = layer.merged()
            before = (layer.base.weight.clone(), layer.base.bias.clone())
            weight, bias = _call_fold(fold_output_scale, layer.base, layer.ia3_l)
        expect(torch.equal(layer.base.weight, before[0]) and torch.equal(layer.base.bias, before[1]),
               "your function changed the layer it was given: return new tensors, do not scale in place")
        expect(tuple(weight.shape) == tuple(folded.weight.shape),
               "the weight has the wrong shape: it stays (d_out, d_in), as nn.Linear stores it")
        expect(tuple(bias.shape) == tuple(folded.bias.shape), "the bias has the wrong shape: one value per output")
        expect(torch.allclose(weight.detach(), folded.weight, rtol=1.3e-6, atol=1e-5),
               "the weight differs from ftlib's merge: output feature i is l_i * (x . W[i] + b_i); which axis of "
               "W indexes the output features?")
        expect(torch.allclose(bias.detach(), folded.bias, rtol=1.3e-6, atol=1e-5),
               "the bias differs from ftlib's merge: l multiplies the whole of xW^T + b")


def bias_kinds(model: nn.Module) -> set[str]:
    """The kinds of bias in a BERT layer: 'attention.self.key', 'output.dense', ... (between 'layer.N.' and '.bias')."""
    kinds = set()
    for name, _ in model.named_parameters():
        head, sep, rest = name.partition(".layer.")
        if sep and name.endswith(".bias") and rest.split(".", 1)[0].isdigit():
            kinds.add(rest.split(".", 1)[1].removesuffix(".bias"))
    return kinds


def check_inert_bias(inert_kind, norms: Mapping[str, float], model: nn.Module) -> None:
    """Exercise 3: the kind named inert must be, in the student's OWN measured norms (kind -> gradient norm
    summed over the layers), the smallest, and numerically zero: below INERT_SHARE of the largest kind's."""
    kinds = bias_kinds(model)
    expect(isinstance(norms, Mapping) and set(norms) == kinds,
           f"norms must map every kind of bias in a layer to its summed gradient norm; the kinds are {sorted(kinds)}")
    values = list(norms.values())
    expect(all(isinstance(v, int | float) and math.isfinite(v) and v >= 0 for v in values),
           "each norm is a finite non-negative number (p.grad.norm().item(), summed over the layers)")
    expect(max(values) > 0, "every norm is zero: run one backward pass before reading the gradients")
    expect(inert_kind in kinds, "inert_kind must be one of the kinds, e.g. 'attention.output.dense' (the name "
                                "between 'layer.N.' and '.bias')")
    expect(min(values) < INERT_SHARE * max(values),
           f"no kind in your norms is numerically zero (below {INERT_SHARE:g} of the largest): measure the "
           "gradients of every layer on the review batch after one backward pass of the BitFit model")
    expect(norms[inert_kind] == min(values),
           "not the kind with the smallest gradient in your own norms")
