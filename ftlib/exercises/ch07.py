"""Checks for chapter 07 (adapters): the forward pass, Pfeiffer's placement, the identity-init experiment."""

from __future__ import annotations

import math

import torch
from torch import nn

from ftlib.adapters import AdaptedOutput, Adapter
from ftlib.exercises import expect
from ftlib.models import encoder_layers

INIT_ARMS = ("ftlib", "reference")  # exercise 3: identity-initialised adapters vs the reference text's init
SAME = 0.9999  # cosine similarity above which features count as unchanged


def check_adapter_forward(fn) -> None:
    """Exercise 1: fn(adapter, x) must equal Adapter.forward on an adapter that is not the identity."""
    expect(callable(fn), "adapter_forward must be a function (adapter, x) -> tensor")
    torch.manual_seed(2)
    adapter = Adapter(hidden_size=16, bottleneck=4)
    with torch.no_grad():
        nn.init.normal_(adapter.up_proj.weight)
        nn.init.normal_(adapter.up_proj.bias)
        nn.init.normal_(adapter.down_proj.bias)
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        got, want = fn(adapter, x), adapter(x)
    expect(isinstance(got, torch.Tensor) and got.shape == want.shape, "return a tensor shaped like x, (..., H)")
    expect(not torch.allclose(got, x), "your output equals the input: the adapter here is not the identity")
    expect(torch.allclose(got, want, atol=1e-5, rtol=1e-5),
           "x + up(GELU(down(x))): both projections with their biases, the non-linearity between, the skip added")


def check_pfeiffer_layers(per_layer, model: nn.Module, bottleneck: int = 32) -> None:
    """Exercise 2: one adapter per layer, after the feed-forward, of the asked width."""
    layers = encoder_layers(model)
    expect(isinstance(per_layer, list) and len(per_layer) == len(layers), "per_layer needs one entry per layer")
    found = [sum(isinstance(m, Adapter) for m in layer.modules()) for layer in layers]
    expect(per_layer == found, "count the Adapter modules inside each layer of the model you adapted")
    expect(all(isinstance(layer.output, AdaptedOutput) and layer.output.slot == "adapter_ffn" for layer in layers)
           and not any(isinstance(layer.attention.output, AdaptedOutput) for layer in layers),
           "apply the Pfeiffer placement: one adapter after the feed-forward, none after attention")
    expect(all(layer.output.adapter.down_proj.out_features == bottleneck for layer in layers),
           f"use the bottleneck the exercise asks for (m = {bottleneck})")


def check_init_experiment(changed_at_init, better_after, results) -> None:
    """Exercise 3: the verdicts must agree with the student's own measurements of both arms."""
    expect(isinstance(results, dict) and set(results) == set(INIT_ARMS), f"results needs the arms {list(INIT_ARMS)}")
    for arm, r in results.items():
        expect(isinstance(r, dict) and {"cosine", "losses", "accuracy"} <= set(r),
               f"results[{arm!r}] needs 'cosine', 'losses' and 'accuracy' (what measure() returns)")
        expect(all(math.isfinite(x) for x in [r["cosine"], r["accuracy"], *r["losses"]]), f"{arm}: a value is not finite")
    expect(results["ftlib"]["cosine"] > SAME, "the ftlib arm's features at init should be the pre-trained ones: "
                                              "did you re-initialise the wrong arm?")
    expect(isinstance(changed_at_init, set | frozenset) and changed_at_init <= set(INIT_ARMS),
           f"changed_at_init is a set of arm names out of {list(INIT_ARMS)}")
    expect(changed_at_init == {arm for arm, r in results.items() if r["cosine"] <= SAME},
           f"changed_at_init: which arms' features at init are not the pre-trained ones (cosine <= {SAME})?")
    accuracy = {arm: r["accuracy"] for arm, r in results.items()}
    best = max(accuracy.values())
    winners = [arm for arm in INIT_ARMS if accuracy[arm] == best]
    expect(better_after in (*INIT_ARMS, "tie"), f"better_after is one of {[*INIT_ARMS, 'tie']}")
    expect(better_after == (winners[0] if len(winners) == 1 else "tie"),
           "better_after: which arm had the higher held-out accuracy after the few steps in YOUR run (or 'tie')?")
