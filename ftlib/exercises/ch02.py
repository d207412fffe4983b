"""Checks for chapter 02 (full fine-tuning): Adam + L2, bert-base's parameter count, no-decay names, early stopping."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import expect

VERDICTS = ("stopped early", "ran every epoch")


def check_adam_l2(adam_l2_step: Callable, w0: torch.Tensor, g: torch.Tensor, lr: float, betas, eps: float,
                  wd: float) -> None:
    """Exercise 1: the hand-written Adam + L2 step equals torch.optim.Adam(weight_decay=wd), not AdamW."""
    def torch_step(cls, w, grad):
        p = nn.Parameter(w.clone())
        p.grad = grad.clone()
        cls([p], lr=lr, betas=betas, eps=eps, weight_decay=wd).step()
        return p.detach()

    # At step 1 Adam moves by lr * sign(g + wd * w): the decay only shows where it flips a small gradient's
    # sign, so the check adds a weight whose decay term dominates its gradient.
    strong = (10 * w0.abs() + 1) * w0.sign(), g * 1e-3 * wd
    for w, grad in ((w0, g), strong):
        mine = adam_l2_step(w.clone(), grad.clone(), 1)
        expect(isinstance(mine, torch.Tensor) and mine.shape == w.shape,
               "adam_l2_step must return the new weight tensor, with the shape of w")
        expect(torch.allclose(mine, torch_step(torch.optim.Adam, w, grad), rtol=1e-5, atol=1e-7),
               "your step differs from torch.optim.Adam(weight_decay=wd): add wd * w to the gradient before "
               "the moments, and apply no separate decay term")
        expect(not torch.allclose(mine, torch_step(torch.optim.AdamW, w, grad), rtol=1e-5, atol=1e-7),
               "your step equals AdamW's: with L2 the decay goes through m and v, not straight onto w")


def check_bert_parameters(bert_parameters: Callable, *configs) -> None:
    """Exercise 2: the closed-form count equals BertModel's (no pooler) for each config, and 16 bytes each."""
    from transformers import BertModel

    from ..params import count_parameters, training_memory

    expect(len(configs) > 0, "pass at least one BertConfig to check against")
    for cfg in configs:
        with torch.device("meta"):  # shapes only: nothing is allocated
            bert = BertModel(cfg, add_pooling_layer=False)
        n = bert_parameters(cfg)
        expect(n == count_parameters(bert).total,
               f"bert_parameters is wrong for hidden_size={cfg.hidden_size}, {cfg.num_hidden_layers} layers: "
               "count the three embedding tables and their LayerNorm, then per layer four H x H projections "
               "with biases, two feed-forward matrices with biases and two LayerNorms")
        expect(16 * n == training_memory(bert).total, "training memory is 16 bytes per fp32 parameter")


def check_no_decay(no_decay_by_type: Callable, model: nn.Module) -> None:
    """Exercise 3: the no-decay names found by module type equal param_groups' second group."""
    from ..train import param_groups

    names = no_decay_by_type(model)
    expect(len(names) == len(set(names)), "your list has duplicates: visit each parameter once "
           "(module.named_parameters(recurse=False))")
    no_decay = param_groups(model)[1]["params"]
    from_groups = [n for n, p in model.named_parameters() if any(p is q for q in no_decay)]
    missing, extra = set(from_groups) - set(names), set(names) - set(from_groups)
    expect(not missing, f"{len(missing)} no-decay parameters are missing: every bias, and every parameter "
           "of an nn.LayerNorm")
    expect(not extra, f"{len(extra)} of your names should be decayed (weight matrices, embedding tables), "
           "or are not full parameter names (join the module name and the parameter name with '.')")


def check_early_stopping(history, max_epochs: int, patience: int, metric: str, best_epoch: int,
                         epochs_after_best: int, verdict: str) -> None:
    """Exercise 4: read the best epoch and the epochs trained past it off your own run's History."""
    expect(verdict in VERDICTS, f"verdict must be one of {VERDICTS}")
    key, sign = f"val_{metric}", (-1 if metric == "loss" else 1)  # sign makes higher better
    rows = history.epochs
    expect(len(rows) > 0 and all(key in r for r in rows), f"every epoch row of the history needs {key!r}: "
           "train with a val_loader and the metric you gave")
    scores = [sign * r[key] for r in rows]
    best = 1 + max(range(len(scores)), key=lambda i: (scores[i], -i))  # the first epoch with the best score
    expect(best_epoch == best, f"best_epoch is not the epoch with the best {key} (epochs count from 1; on a "
           "tie the earlier epoch stays best)")
    expect(epochs_after_best == len(rows) - best_epoch,
           "epochs_after_best counts the epochs trained after the best one, up to where training stopped")
    stopped = len(rows) < max_epochs
    expect((verdict == "stopped early") == stopped,
           "compare the number of epochs the history holds with the number you asked for")
    if stopped:
        expect(epochs_after_best == patience, "a run that stopped early trained exactly `patience` epochs "
               "past its best one: check your reading of the history")
    expect(getattr(history, "best_epoch", best) == best, "the History's best_epoch disagrees with its rows: "
           "was the metric passed to fit the one you checked?")
