"""Chapter 07's exercise checks: the right answer passes, an injected wrong one fails without naming the answer."""

from __future__ import annotations

import copy

import pytest
import torch.nn.functional as F
from conftest import fails_quietly, make_model

from ftlib.adapters import Adapter, apply_adapters
from ftlib.exercises import ch07
from ftlib.models import encoder_layers


def forward_right(adapter, x):
    z = x @ adapter.down_proj.weight.T + adapter.down_proj.bias
    return x + F.gelu(z) @ adapter.up_proj.weight.T + adapter.up_proj.bias


def forward_no_skip(adapter, x):
    return forward_right(adapter, x) - x


def forward_no_biases(adapter, x):
    return x + F.gelu(x @ adapter.down_proj.weight.T) @ adapter.up_proj.weight.T


def forward_relu(adapter, x):
    z = x @ adapter.down_proj.weight.T + adapter.down_proj.bias
    return x + F.relu(z) @ adapter.up_proj.weight.T + adapter.up_proj.bias


def test_adapter_forward_right_and_wrong():
    assert ch07.check_adapter_forward(forward_right) is None
    for wrong in (forward_no_skip, forward_no_biases, forward_relu, lambda adapter, x: x, "not a function"):
        fails_quietly(lambda wrong=wrong: ch07.check_adapter_forward(wrong))


def test_pfeiffer_layers_right_and_wrong():
    base = make_model()
    pfeiffer = apply_adapters(copy.deepcopy(base), bottleneck=32, placement="pfeiffer")
    n = len(encoder_layers(pfeiffer))
    assert ch07.check_pfeiffer_layers([1] * n, pfeiffer) is None
    fails_quietly(lambda: ch07.check_pfeiffer_layers([2] * n, pfeiffer))  # Houlsby's count
    fails_quietly(lambda: ch07.check_pfeiffer_layers([1] * (n + 1), pfeiffer))
    houlsby = apply_adapters(copy.deepcopy(base), bottleneck=32, placement="houlsby")
    fails_quietly(lambda: ch07.check_pfeiffer_layers([2] * n, houlsby))  # the wrong placement, counted right
    narrow = apply_adapters(copy.deepcopy(base), bottleneck=8, placement="pfeiffer")
    fails_quietly(lambda: ch07.check_pfeiffer_layers([1] * n, narrow))  # the wrong width
    assert sum(isinstance(m, Adapter) for m in pfeiffer.modules()) == n


def _results(cos_ref, acc_ftlib, acc_ref, cos_ftlib=1.0):
    return {"ftlib": {"cosine": cos_ftlib, "losses": [0.7, 0.6], "accuracy": acc_ftlib},
            "reference": {"cosine": cos_ref, "losses": [0.7, 0.65], "accuracy": acc_ref}}


HINT_BETTER = "better_after: which arm had the higher held-out accuracy after the few steps in YOUR run (or 'tie')?"


@pytest.mark.parametrize("results, changed, better", [
    (_results(0.76, 0.70, 0.67), {"reference"}, "ftlib"),
    (_results(0.76, 0.60, 0.67), {"reference"}, "reference"),
    (_results(0.76, 0.625, 0.625), {"reference"}, "tie"),
    (_results(0.99999, 0.70, 0.67), set(), "ftlib"),  # an init so small that the features did not move
])
def test_init_experiment_judged_on_the_students_own_numbers(results, changed, better):
    assert ch07.check_init_experiment(changed, better, results) is None
    wrong_sets = [{"ftlib", "reference"}, {"ftlib"}, {"reference"} if not changed else set()]
    for wrong in wrong_sets:
        if wrong != changed:
            fails_quietly(lambda wrong=wrong: ch07.check_init_experiment(wrong, better, results), str(changed))
    for wrong in ("ftlib", "reference", "tie"):
        if wrong != better:
            hint = fails_quietly(lambda wrong=wrong: ch07.check_init_experiment(changed, wrong, results),
                                  results["ftlib"]["accuracy"], results["reference"]["accuracy"])
            assert str(hint) == HINT_BETTER  # the same words whatever the right answer: it names no arm as the winner
    fails_quietly(lambda: ch07.check_init_experiment(list(changed), better, results))


def test_init_experiment_refuses_swapped_or_malformed_arms():
    swapped = _results(0.76, 0.7, 0.6, cos_ftlib=0.8)  # the wrong arm re-initialised
    fails_quietly(lambda: ch07.check_init_experiment({"ftlib", "reference"}, "ftlib", swapped))
    fails_quietly(lambda: ch07.check_init_experiment({"reference"}, "ftlib", {"ftlib": _results(0.7, 0.7, 0.6)["ftlib"]}))
    missing = _results(0.76, 0.7, 0.6)
    del missing["reference"]["accuracy"]
    fails_quietly(lambda: ch07.check_init_experiment({"reference"}, "ftlib", missing))
