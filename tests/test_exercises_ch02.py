"""Chapter 02's exercise checks: each right answer passes, each injected wrong answer fails without the answer."""

from __future__ import annotations

import torch
from conftest import TINY, fails_quietly, make_model
from torch import nn
from transformers import BertConfig

from ftlib.exercises import ch02
from ftlib.history import History

HYPER = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, wd=0.01)


def adam_l2_step(w, g, t=1, lr=HYPER["lr"], betas=HYPER["betas"], eps=HYPER["eps"], wd=HYPER["wd"]):
    b1, b2 = betas
    g = g + wd * w
    m, v = (1 - b1) * g, (1 - b2) * g**2
    return w - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)


def adamw_step(w, g, t=1, lr=HYPER["lr"], betas=HYPER["betas"], eps=HYPER["eps"], wd=HYPER["wd"]):
    b1, b2 = betas
    m, v = (1 - b1) * g, (1 - b2) * g**2
    return w - lr * wd * w - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)


def bert_parameters(cfg):
    V, P, S = cfg.vocab_size, cfg.max_position_embeddings, cfg.type_vocab_size
    H, Inter, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    return (V + P + S) * H + 2 * H + L * (4 * (H * H + H) + 2 * H * Inter + Inter + H + 4 * H)


def no_decay_by_type(model):
    return [f"{m}.{p}" if m else p for m, mod in model.named_modules()
            for p, _ in mod.named_parameters(recurse=False) if p == "bias" or isinstance(mod, nn.LayerNorm)]




def test_adam_l2_right_passes_and_wrong_fails():
    torch.manual_seed(0)
    w0, g = torch.randn(3, 4), torch.randn(3, 4)
    assert ch02.check_adam_l2(adam_l2_step, w0, g, **HYPER) is None
    fails_quietly(lambda: ch02.check_adam_l2(adamw_step, w0, g, **HYPER))  # decoupled decay: that is AdamW
    fails_quietly(lambda: ch02.check_adam_l2(lambda w, g, t=1: adam_l2_step(w, g, t, wd=0.0), w0, g, **HYPER))


def test_bert_parameters_right_passes_and_wrong_fails():
    configs = (BertConfig(), BertConfig(**TINY))  # bert-base and a tiny one
    assert ch02.check_bert_parameters(bert_parameters, *configs) is None
    no_layernorms = lambda cfg: bert_parameters(cfg) - cfg.num_hidden_layers * 4 * cfg.hidden_size  # noqa: E731
    fails_quietly(lambda: ch02.check_bert_parameters(no_layernorms, *configs), bert_parameters(configs[0]))


def test_no_decay_right_passes_and_wrong_fails():
    model = make_model()
    assert ch02.check_no_decay(no_decay_by_type, model) is None
    fails_quietly(lambda: ch02.check_no_decay(lambda m: [n for n, _ in m.named_parameters() if n.endswith("bias")], model))
    fails_quietly(lambda: ch02.check_no_decay(lambda m: [n for n, _ in m.named_parameters()], model))
    fails_quietly(lambda: ch02.check_no_decay(lambda m: no_decay_by_type(m) * 2, model))


def history(val_losses, best_epoch):
    return History(epochs=[{"val_loss": v, "val_accuracy": 0.5} for v in val_losses], best_epoch=best_epoch)


def test_early_stopping_stopped_run():
    h = history([0.6, 0.5, 0.55, 0.58], best_epoch=2)  # patience 2, max 6 epochs: stopped after epoch 4
    args = dict(max_epochs=6, patience=2, metric="loss")
    assert ch02.check_early_stopping(h, **args, best_epoch=2, epochs_after_best=2, verdict="stopped early") is None
    fails_quietly(lambda: ch02.check_early_stopping(h, **args, best_epoch=4, epochs_after_best=0, verdict="stopped early"))
    fails_quietly(lambda: ch02.check_early_stopping(h, **args, best_epoch=1, epochs_after_best=3, verdict="stopped early"))
    fails_quietly(lambda: ch02.check_early_stopping(h, **args, best_epoch=2, epochs_after_best=2, verdict="ran every epoch"))
    fails_quietly(lambda: ch02.check_early_stopping(h, **args, best_epoch=2, epochs_after_best=4, verdict="stopped early"))
    fails_quietly(lambda: ch02.check_early_stopping(h, **args, best_epoch=2, epochs_after_best=2, verdict="no idea"))


def test_early_stopping_full_run_and_ties():
    h = history([0.6, 0.5, 0.5], best_epoch=2)  # a tie keeps the earlier epoch; ran all 3 epochs
    args = dict(max_epochs=3, patience=2, metric="loss")
    assert ch02.check_early_stopping(h, **args, best_epoch=2, epochs_after_best=1, verdict="ran every epoch") is None
    fails_quietly(lambda: ch02.check_early_stopping(h, **args, best_epoch=3, epochs_after_best=0, verdict="ran every epoch"))
    fails_quietly(lambda: ch02.check_early_stopping(h, **args, best_epoch=2, epochs_after_best=1, verdict="stopped early"))
    acc = History(epochs=[{"val_accuracy": a} for a in (0.7, 0.8, 0.75)], best_epoch=2)
    assert ch02.check_early_stopping(acc, 3, 2, "accuracy", 2, 1, "ran every epoch") is None
    fails_quietly(lambda: ch02.check_early_stopping(acc, 3, 2, "accuracy", 1, 2, "ran every epoch"))  # min, not max
