"""Chapter 03's exercise checks: each right answer passes, each injected wrong answer fails without the answer."""

from __future__ import annotations

import pytest
from conftest import fails_quietly

from ftlib.callbacks import Callback
from ftlib.exercises import ch03
from ftlib.params import count_parameters


def top_down_names(num_layers):
    return [f"encoder.encoder.layer.{i}" for i in reversed(range(num_layers))] + ["encoder.embeddings"]


def test_top_down_names_right_passes_and_wrong_fails():
    assert ch03.check_top_down_names(top_down_names) is None
    assert ch03.check_top_down_names(top_down_names, 3) is None
    fails_quietly(lambda: ch03.check_top_down_names(lambda n: top_down_names(n)[::-1]), "encoder.encoder.layer.11")
    fails_quietly(lambda: ch03.check_top_down_names(lambda n: top_down_names(n)[:-1]))  # embeddings forgotten
    fails_quietly(lambda: ch03.check_top_down_names(lambda n: [s.replace("encoder.encoder", "encoder") for s in
                                                        top_down_names(n)]))  # the sketch's path


@pytest.mark.parametrize("fast, slow, noise, verdict", [
    (0.30, 0.10, 0.05, "fast thaw drifts more"),
    (0.10, 0.30, 0.05, "slow thaw drifts more"),
    (0.12, 0.10, 0.05, "within seed noise"),
    (0.10, 0.12, 0.05, "within seed noise"),
])
def test_thaw_interval_verdicts(fast, slow, noise, verdict):
    assert ch03.check_thaw_interval(verdict, fast, slow, noise) is None
    for wrong in set(ch03.THAW_VERDICTS) - {verdict}:
        fails_quietly(lambda wrong=wrong: ch03.check_thaw_interval(wrong, fast, slow, noise), verdict)
    fails_quietly(lambda: ch03.check_thaw_interval("fast", fast, slow, noise))


def test_thaw_interval_refuses_negative_noise():
    fails_quietly(lambda: ch03.check_thaw_interval("within seed noise", 0.1, 0.1, -1.0))


def thaw(block, optimizer):
    block.requires_grad_(True)
    optimizer.add_param_group({"params": list(block.parameters())})


def test_thaw_right_passes_and_wrong_fails():
    assert ch03.check_thaw(thaw) is None
    fails_quietly(lambda: ch03.check_thaw(lambda block, opt: block.requires_grad_(True)))  # the sketch: never applied
    fails_quietly(lambda: ch03.check_thaw(lambda block, opt: opt.add_param_group({"params": list(block.parameters())})))

    def twice(block, opt):
        thaw(block, opt)
        opt.param_groups[-1]["params"].append(next(block.parameters()))
    with pytest.raises((AssertionError, ValueError)):
        ch03.check_thaw(twice)


class EpochCount(Callback):
    def __init__(self):
        self.counts = []

    def on_epoch_begin(self, state):
        self.counts.append(count_parameters(state.model).trainable)


class EveryStep(EpochCount):  # wrong hook: one count per step
    def on_epoch_begin(self, state):
        pass

    def on_step_end(self, state):
        self.counts.append(count_parameters(state.model).trainable)


class TotalCount(EpochCount):  # wrong number: all parameters, not the trainable ones
    def on_epoch_begin(self, state):
        self.counts.append(count_parameters(state.model).total)


class BeforeThaw(EpochCount):  # counts at the previous epoch's end: one stage late
    def on_epoch_begin(self, state):
        pass

    def on_train_begin(self, state):
        self.counts.append(count_parameters(state.model).trainable)

    def on_epoch_end(self, state):
        if len(self.counts) < 3:
            self.counts.append(count_parameters(state.model).trainable - 1)


def test_epoch_count_right_passes_and_wrong_fails():
    assert ch03.check_epoch_count(EpochCount) is None
    for wrong in (EveryStep, TotalCount, BeforeThaw):
        fails_quietly(lambda wrong=wrong: ch03.check_epoch_count(wrong))
