"""Checks for chapter 03 (gradual unfreezing): the top-down order, thaw speed vs drift, add_param_group, a callback."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import expect, gap_verdict

THAW_VERDICTS = ("fast thaw drifts more", "slow thaw drifts more", "within seed noise")


def tiny_classifier(num_layers: int, seed: int = 0) -> nn.Module:
    """A SequenceClassifier around a random BERT with `num_layers` layers of width 32 (no download)."""
    from transformers import BertConfig, BertModel

    from ..models import SequenceClassifier

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=4,
                     intermediate_size=37)
    return SequenceClassifier(BertModel(cfg, add_pooling_layer=False), num_labels=2)


def check_top_down_names(top_down_names: Callable, num_layers: int = 12) -> None:
    """Exercise 1: the module names in unfreezing order, for a classifier with `num_layers` layers."""
    from ..gradual_unfreezing import unfreezing_order

    model = tiny_classifier(num_layers)
    names = {id(m): n for n, m in model.named_modules()}
    want = [names[id(b)] for b in unfreezing_order(model)]
    got = list(top_down_names(num_layers))
    expect(len(got) == len(want), f"there are {num_layers} layers plus the embeddings to thaw")
    expect(set(got) == set(want), "some names are not module names of the classifier: "
           "print [n for n, _ in model.named_modules()] of a SequenceClassifier")
    expect(got == want, "the names are right but the order is not: the top layer comes first")


def check_thaw_interval(verdict: str, drift_fast: float, drift_slow: float, seed_noise: float) -> None:
    """Exercise 2: compare the drift (1 - CKA) of a fast and a slow thaw against the seed-to-seed spread."""
    expect(verdict in THAW_VERDICTS, f"verdict must be one of {THAW_VERDICTS}")
    expect(seed_noise >= 0, "seed_noise is a spread: a non-negative number")
    want = gap_verdict(drift_fast - drift_slow, seed_noise, THAW_VERDICTS)
    expect(verdict == want, "your verdict does not follow from your numbers: compare the gap between the "
           "two drifts with the drift's spread across seeds")


def check_thaw(thaw: Callable) -> None:
    """Exercise 3: thaw(block, optimizer) makes the next step update a block the optimizer did not hold."""
    from ..gradual_unfreezing import apply_gradual_unfreezing
    from ..models import encoder_layers

    model = tiny_classifier(2)
    apply_gradual_unfreezing(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    top, bottom = encoder_layers(model)[-1], encoder_layers(model)[0]
    before = [p.detach().clone() for p in [*top.parameters(), *bottom.parameters()]]
    thaw(top, opt)
    expect(all(p.requires_grad for p in top.parameters()), "thaw must set requires_grad on the block")
    held = [p for g in opt.param_groups for p in g["params"]]
    expect(len(held) == len({id(p) for p in held}), "a tensor is in the optimizer twice")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 99, (4, 7), generator=g)
    loss = F.cross_entropy(model(input_ids=ids, attention_mask=torch.ones_like(ids)), torch.tensor([0, 1, 0, 1]))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    after = [*top.parameters(), *bottom.parameters()]
    n_top = len(list(top.parameters()))
    expect(all(not torch.equal(b, p) for b, p in zip(before[:n_top], after[:n_top], strict=True)),
           "the thawed block did not move: the optimizer must also hold its parameters (add_param_group)")
    expect(all(torch.equal(b, p) for b, p in zip(before[n_top:], after[n_top:], strict=True)),
           "a block you did not thaw moved: thaw only the block you are given")


def check_epoch_count(callback_cls: type) -> None:
    """Exercise 4: a callback that records the trainable count at each epoch's start, after the thaw."""
    from ..gradual_unfreezing import GradualUnfreezing, apply_gradual_unfreezing
    from ..history import History
    from ..models import encoder_layers
    from ..params import count_parameters
    from ..train import TrainState

    model = apply_gradual_unfreezing(tiny_classifier(2))
    unfreezer, recorder = GradualUnfreezing(every=1, unit="epoch"), callback_cls()
    state = TrainState(model, None, None, History(), epochs=3, total_steps=6)
    for cb in (unfreezer, recorder):
        cb.on_train_begin(state)
    for epoch in (1, 2, 3):  # fit's order: each hook of the unfreezer, then of the recorder
        state.epoch = epoch
        for cb in (unfreezer, recorder):
            cb.on_epoch_begin(state)
        for _ in range(2):
            state.step += 1
            for cb in (unfreezer, recorder):
                cb.on_step_end(state)
        for cb in (unfreezer, recorder):
            cb.on_epoch_end(state)
    head = count_parameters(model.classifier).total
    layer = count_parameters(encoder_layers(model)[0]).total
    counts = list(getattr(recorder, "counts", []))
    expect(len(counts) == 3, "record one count per epoch, in on_epoch_begin")
    expect(counts == [head, head + layer, head + 2 * layer],
           "the counts are not the trainable parameters at each epoch's start: use "
           "count_parameters(state.model).trainable")
