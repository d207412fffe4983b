"""Properties of ftlib.train and ftlib.history on a separable toy task (tiny BERT, word-level tokenizer, CPU)."""

from __future__ import annotations

import copy
import json
import math
import random
import time

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from conftest import Rows, make_encoder, make_model, rows_loader
from ddp_fit import Toy
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerFast

from ftlib import batches, models
from ftlib.data import from_lists, make_loader
from ftlib.discriminative_lr import apply_discriminative_lr, layerwise_param_groups
from ftlib.feature_extraction import apply_feature_extraction
from ftlib.full import apply_full
from ftlib.history import History
from ftlib.models import SequenceClassifier
from ftlib.params import freeze_except
from ftlib.strategy_tag import tag_strategy
from ftlib.train import (
    Callback,
    classification_metrics,
    evaluate,
    fit,
    linear_warmup_decay,
    param_groups,
    predict,
    uses_feature_cache,
)

matplotlib.use("Agg")

POS = ["good", "great", "nice", "love", "fine"]
NEG = ["bad", "awful", "poor", "hate", "dull"]
FILLER = ["the", "movie", "film", "was", "plot", "a", "it", "and", "really", "cast"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *POS, *NEG, *FILLER]
BATCH = 16
FIT = dict(device="cpu", progress=False)


@pytest.fixture(scope="module")
def tokenizer():
    """A word-level tokenizer over the toy vocabulary: pad id 0, no special tokens added."""
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def toy(n: int, seed: int, label_names=("neg", "pos")):
    """Balanced sentiment toy data: 2-6 filler words and one word that decides the label."""
    r = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        y = i % 2
        words = r.choices(FILLER, k=r.randint(2, 6)) + [r.choice(POS if y else NEG)]
        r.shuffle(words)
        texts.append(" ".join(words))
        labels.append(y)
    return from_lists(texts, labels, list(label_names))


def tiny(seed: int = 0, num_labels: int = 2):
    return make_model("bert", num_labels=num_labels, seed=seed, vocab_size=len(VOCAB))


def loaders(tokenizer, seed: int = 0, n_train: int = 64, n_val: int = 32):
    train = make_loader(toy(n_train, 0), tokenizer, BATCH, shuffle=True, seed=seed)
    return train, make_loader(toy(n_val, 1), tokenizer, 32)


def state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Record(Callback):
    """Logs every hook call with the state's counters; optionally runs `action(state)` at each hook."""

    def __init__(self, name: str = "cb", log: list | None = None):
        self.name, self.log = name, log if log is not None else []

    def _add(self, hook, s):
        self.log.append((self.name, hook, s.epoch, s.step, len(s.history.epochs)))

    def on_train_begin(self, s):
        self._add("train_begin", s)

    def on_epoch_begin(self, s):
        self._add("epoch_begin", s)

    def on_step_end(self, s):
        self._add("step_end", s)

    def on_epoch_end(self, s):
        self._add("epoch_end", s)


class Snapshots(Callback):
    """The model's weights at the end of every epoch."""

    def __init__(self):
        self.at = {}

    def on_epoch_end(self, s):
        self.at[s.epoch] = copy.deepcopy(s.model.state_dict())


class OptimizerSpy(Callback):
    """Sees each step just before optimizer.step(): learning rate and (clipped) gradient norm."""

    def __init__(self):
        self.lrs, self.grad_norms = [], []

    def on_train_begin(self, s):
        def pre_step(optimizer, args, kwargs):
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            self.grad_norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
            self.lrs.append(optimizer.param_groups[0]["lr"])

        s.optimizer.register_step_pre_hook(pre_step)


# --- learning --------------------------------------------------------------------------------------------


def test_fit_learns_the_toy_task(tokenizer):
    model = tiny()
    train, val = loaders(tokenizer)
    before = evaluate(model, train)
    history = fit(model, train, val, epochs=8, lr=1e-2, **FIT)
    losses = [e["train_loss"] for e in history.epochs]
    assert losses[-1] < losses[0] / 4
    after = evaluate(model, train)
    assert after["loss"] < before["loss"] and after["accuracy"] >= 0.95
    assert history.best("val_accuracy") >= 0.9
    assert len(history.step_loss) == len(history.step_seconds) == 8 * math.ceil(64 / BATCH)
    assert not model.training  # fit leaves the model ready for inference


def run(tokenizer, seed, global_seed):
    """Same model and data order every time; only fit's seed and the global RNG state before fit vary."""
    model = tiny()
    train, val = loaders(tokenizer, seed=0)
    torch.manual_seed(global_seed)  # whatever ran before fit must not matter: fit seeds dropout itself
    return model, fit(model, train, val, epochs=2, lr=3e-3, seed=seed, **FIT)


def metrics(history):
    timing = {"seconds", "examples_per_second"}
    return [{k: v for k, v in e.items() if k not in timing} for e in history.epochs]


def test_same_seed_same_run(tokenizer):
    model_a, a = run(tokenizer, 0, global_seed=1)
    model_b, b = run(tokenizer, 0, global_seed=2)
    assert a.step_loss == b.step_loss  # exactly, not approximately: CPU runs are deterministic
    assert metrics(a) == metrics(b) and a.best_epoch == b.best_epoch
    assert same_state(model_a.state_dict(), model_b.state_dict())


def test_other_seed_other_run(tokenizer):
    _, a = run(tokenizer, 0, global_seed=1)
    _, b = run(tokenizer, 1, global_seed=1)
    assert a.step_loss != b.step_loss  # dropout masks follow fit's seed


# --- feature extraction ----------------------------------------------------------------------------------


def test_feature_extraction_caches_encoder_outputs(tokenizer):
    model = apply_feature_extraction(tiny())
    assert uses_feature_cache(model)
    encoder_before = state(model.encoder)
    head_before = state(model.classifier)
    calls = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))

    class Watch(Callback):
        def __init__(self):
            self.calls_after_epoch, self.encoder_training = [], []

        def on_step_end(self, s):
            self.encoder_training.append(any(m.training for m in s.model.encoder.modules()))
            assert s.model.classifier.training  # the head still trains with dropout

        def on_epoch_end(self, s):
            self.calls_after_epoch.append(len(calls))

    watch = Watch()
    train, _ = loaders(tokenizer)
    history = fit(model, train, epochs=3, lr=1e-2, callbacks=[watch], **FIT)
    steps = math.ceil(64 / BATCH)
    assert watch.calls_after_epoch == [steps, steps, steps]  # one pass over the data in epoch 1, then none
    assert watch.encoder_training == [False] * 3 * steps
    assert same_state(state(model.encoder), encoder_before)  # bit-identical
    assert not same_state(state(model.classifier), head_before)
    assert len(history.step_loss) == 3 * steps
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]


def test_unfrozen_or_train_mode_encoder_is_not_cached():
    model = tiny()
    assert not uses_feature_cache(model)  # trainable encoder
    freeze_except(model, lambda name: False)
    assert not uses_feature_cache(model)  # frozen but may be in train mode (dropout): features vary
    apply_feature_extraction(model)
    model.encoder.embeddings.LayerNorm.weight.requires_grad_(True)
    assert not uses_feature_cache(model)


# --- early stopping --------------------------------------------------------------------------------------


def test_early_stopping_restores_the_best_epoch(tokenizer):
    train, val = loaders(tokenizer)
    steps = math.ceil(64 / BATCH)

    def ascend_after_two_epochs(step, total):
        return 1.0 if step < 2 * steps else -1.0  # negative lr: gradient ascent, validation must get worse

    model, snaps, patience = tiny(), Snapshots(), 2
    history = fit(model, train, val, epochs=10, lr=1e-2, schedule=ascend_after_two_epochs, patience=patience,
                  callbacks=[snaps], **FIT)
    accs = [e["val_accuracy"] for e in history.epochs]
    best = max(range(len(accs)), key=accs.__getitem__) + 1  # first epoch reaching the maximum
    assert history.best_epoch == best
    assert accs[-1] < accs[best - 1]
    assert len(history.epochs) == best + patience < 10  # stopped early, right after `patience` bad epochs
    assert same_state(model.state_dict(), snaps.at[best])
    assert not same_state(model.state_dict(), snaps.at[len(accs)])
    again = evaluate(model, val)
    assert again["accuracy"] == accs[best - 1]
    assert again["loss"] == history.epochs[best - 1]["val_loss"]


def test_without_validation_the_last_weights_stay(tokenizer):
    model, snaps = tiny(), Snapshots()
    train, _ = loaders(tokenizer)
    history = fit(model, train, epochs=2, lr=1e-2, patience=1, callbacks=[snaps], **FIT)
    assert history.best_epoch is None and len(history.epochs) == 2
    assert same_state(model.state_dict(), snaps.at[2])


def test_metric_loss_keeps_the_lowest_validation_loss(tokenizer):
    """metric='loss' is accepted; lower loss is better, so the kept epoch must have the lowest val_loss."""
    train, val = loaders(tokenizer)
    steps = math.ceil(64 / BATCH)
    model = tiny()
    try:
        history = fit(model, train, val, epochs=4, lr=1e-2, metric="loss",
                      schedule=lambda step, total: 1.0 if step < 2 * steps else -1.0, **FIT)
    except ValueError:
        return  # refusing a metric it cannot rank is fine too
    losses = [e["val_loss"] for e in history.epochs]
    assert history.best_epoch == losses.index(min(losses)) + 1


# --- clipping, schedule, callbacks -----------------------------------------------------------------------


def test_gradient_clipping_caps_the_norm(tokenizer):
    train, _ = loaders(tokenizer)
    clipped, free = OptimizerSpy(), OptimizerSpy()
    fit(tiny(), train, epochs=1, lr=1e-3, max_grad_norm=1e-3, callbacks=[clipped], **FIT)
    fit(tiny(), train, epochs=1, lr=1e-3, max_grad_norm=None, callbacks=[free], **FIT)
    assert len(clipped.grad_norms) == len(free.grad_norms) == math.ceil(64 / BATCH)
    assert min(free.grad_norms) > 1e-2  # without clipping the limit would be exceeded ...
    assert max(clipped.grad_norms) <= 1e-3 * (1 + 1e-4)  # ... with it, every step is capped
    assert clipped.grad_norms[0] == pytest.approx(1e-3, rel=1e-4)


def test_schedule_drives_the_learning_rate(tokenizer):
    train, _ = loaders(tokenizer)
    spy = OptimizerSpy()
    epochs, lr = 3, 1e-3
    history = fit(tiny(), train, epochs=epochs, lr=lr, callbacks=[spy], **FIT)
    total = epochs * math.ceil(64 / BATCH)
    schedule = linear_warmup_decay()
    assert spy.lrs == pytest.approx([lr * schedule(k, total) for k in range(total)], rel=1e-12)
    assert history.epochs[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # decayed to zero at the end


def test_callbacks_called_in_order(tokenizer):
    log = []
    train = make_loader(toy(40, 0), tokenizer, BATCH, shuffle=True)  # 3 steps per epoch, the last one short
    fit(tiny(), train, epochs=2, lr=1e-3, callbacks=[Record("a", log), Record("b", log)], **FIT)
    expected = [("train_begin", 0, 0, 0)]
    step = 0
    for epoch in (1, 2):
        expected.append(("epoch_begin", epoch, step, epoch - 1))
        for _ in range(3):
            step += 1
            expected.append(("step_end", epoch, step, epoch - 1))
        expected.append(("epoch_end", epoch, step, epoch))
    assert log == [(name, *e) for e in expected for name in ("a", "b")]


def test_callbacks_see_the_plan(tokenizer):
    seen = {}

    class Plan(Callback):
        def on_train_begin(self, s):
            seen.update(epochs=s.epochs, total=s.total_steps, lr=s.optimizer.param_groups[0]["lr"])

    train = make_loader(toy(40, 0), tokenizer, BATCH)
    fit(tiny(), train, epochs=2, lr=1e-3, callbacks=[Plan()], **FIT)
    assert seen["epochs"] == 2 and seen["total"] == 6
    assert seen["lr"] == pytest.approx(1e-3 * linear_warmup_decay()(0, 6))


def test_optimizer_holds_frozen_parameters_for_later_unfreezing(tokenizer):
    class ThawAtEpoch2(Callback):
        def on_epoch_begin(self, s):
            if s.epoch == 2:
                freeze_except(s.model, lambda name: True)

    model, snaps = freeze_except(tiny(), lambda name: False), Snapshots()
    start = state(model.encoder)
    train, _ = loaders(tokenizer)
    fit(model, train, epochs=2, lr=1e-2, callbacks=[ThawAtEpoch2(), snaps], **FIT)
    after_epoch1 = {k[len("encoder."):]: v for k, v in snaps.at[1].items() if k.startswith("encoder.")}
    assert same_state(after_epoch1, start)  # frozen: untouched, not even weight-decayed
    assert not same_state(state(model.encoder), start)  # thawed: updated by the same optimizer


# --- errors ----------------------------------------------------------------------------------------------


def bad_labels(tokenizer, position: int):
    """16 toy examples, 2-class head, one example labelled 2 at `position` (no shuffling)."""
    ds = toy(16, 0, label_names=("neg", "pos", "meh"))
    labels = list(ds.labels)
    labels[position] = 2
    ds = from_lists(ds.texts, labels, ds.label_names)
    return make_loader(ds, tokenizer, batch_size=4)


@pytest.mark.parametrize("position", [0, 15], ids=["first-batch", "last-batch"])
def test_labels_outside_head_raise_before_any_update(tokenizer, position):
    model = tiny(num_labels=2)
    before = state(model)
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.1 for a 2-class head, got values \[0, 1, 2\]"):
        fit(model, bad_labels(tokenizer, position), epochs=1, lr=1e-2, **FIT)
    assert same_state(state(model), before)  # no optimisation step was taken


def test_fit_rejects_bad_setups(tokenizer):
    train, _ = loaders(tokenizer)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        fit(tiny(), train, epochs=0, **FIT)
    with pytest.raises(ValueError, match="training set is empty"):
        fit(tiny(), torch.utils.data.DataLoader([], batch_size=4), **FIT)
    frozen = tiny()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="apply a strategy first"):
        fit(frozen, train, **FIT)


# --- evaluation ------------------------------------------------------------------------------------------


def test_classification_metrics_by_hand():
    labels = torch.tensor([0] * 8 + [1] * 2)
    preds = torch.tensor([0] * 8 + [0, 1])
    m = classification_metrics(preds, labels, 2)
    # class 0: tp 8, fp 1, fn 0 -> F1 16/17; class 1: tp 1, fp 0, fn 1 -> F1 2/3
    assert m["accuracy"] == pytest.approx(0.9)
    assert m["macro_f1"] == pytest.approx((16 / 17 + 2 / 3) / 2)


def test_macro_f1_exposes_a_weak_class():
    labels = torch.tensor([0] * 90 + [1] * 10)
    majority = classification_metrics(torch.zeros(100, dtype=torch.long), labels, 2)
    assert majority["accuracy"] == pytest.approx(0.9)  # looks good ...
    assert majority["macro_f1"] == pytest.approx((180 / 190 + 0.0) / 2)  # ... but class 1 is never found
    perfect = classification_metrics(labels, labels, 2)
    assert perfect == {"accuracy": 1.0, "macro_f1": 1.0}


def test_macro_f1_three_classes():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 1, 1, 1, 0, 2])
    # class 0: tp1 fp1 fn1 -> 1/2; class 1: tp2 fp1 fn0 -> 4/5; class 2: tp1 fp0 fn1 -> 2/3
    m = classification_metrics(preds, labels, 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)


def test_evaluate_matches_a_manual_pass(tokenizer):
    model = tiny(num_labels=2).train()
    _, val = loaders(tokenizer)
    out = evaluate(model, val)
    assert model.training  # evaluation restores the mode it found
    model.eval()
    logits, labels = [], []
    with torch.no_grad():
        for b in val:
            logits.append(model(b["input_ids"], b["attention_mask"]))
            labels.append(b["labels"])
    logits, labels = torch.cat(logits), torch.cat(labels)
    assert out["n"] == 32
    assert out["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert out["accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    assert {k: out[k] for k in ("accuracy", "macro_f1")} == classification_metrics(logits.argmax(-1), labels, 2)
    got_logits, got_labels = predict(model, val)
    assert torch.equal(got_labels, labels) and torch.allclose(got_logits, logits, atol=1e-6)


# --- schedules and groups --------------------------------------------------------------------------------


def test_linear_warmup_decay_shape():
    schedule, total = linear_warmup_decay(0.1), 100
    values = [schedule(s, total) for s in range(total + 1)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)  # 10 warm-up steps: 0.1 ... 1
    assert all(a < b for a, b in zip(values[:10], values[1:10], strict=False))
    assert all(a >= b for a, b in zip(values[9:], values[10:], strict=False))
    assert values[99] == pytest.approx(1 / 90) and values[100] == 0.0
    assert all(0.0 <= v <= 1.0 for v in values)
    assert linear_warmup_decay(0.5)(0, 10) == pytest.approx(0.2)


def test_param_groups_split_decay(arch):
    model = freeze_except(make_model(arch), lambda name: "layer.1" in name)
    decay, no_decay = param_groups(model, weight_decay=0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert decay_names.isdisjoint(no_decay_names)
    assert decay_names | no_decay_names == set(names.values())  # frozen parameters included
    assert no_decay_names == {n for n in names.values() if n.endswith("bias") or n.endswith("LayerNorm.weight")}
    assert "encoder.embeddings.LayerNorm.weight" in no_decay_names
    assert "encoder.embeddings.word_embeddings.weight" in decay_names and "classifier.weight" in decay_names


def test_param_groups_from_named_subset():
    model = make_model()
    subset = [(n, p) for n, p in model.named_parameters() if n.startswith("classifier.")]
    decay, no_decay = param_groups(model, params=subset)
    assert decay["params"] == [model.classifier.weight] and no_decay["params"] == [model.classifier.bias]


# --- history ---------------------------------------------------------------------------------------------


def history_example() -> History:
    h = History(step_loss=[1.0, 0.8, 0.9, 0.5] * 5, step_seconds=[0.5, 0.1, 0.2, 0.3, 0.1],
                best_epoch=2)
    h.epochs = [{"epoch": 1, "seconds": 2.0, "val_accuracy": 0.7, "val_macro_f1": 0.6},
                {"epoch": 2, "seconds": 3.0, "val_accuracy": 0.8, "val_macro_f1": 0.75},
                {"epoch": 3, "seconds": 1.5, "val_accuracy": 0.75, "val_macro_f1": 0.7}]
    return h


def test_history_summaries(tmp_path):
    h = history_example()
    assert h.seconds_per_step == 0.2  # the median, not the mean (0.24)
    assert h.total_seconds == 6.5
    assert h.best() == 0.8 and h.best("val_macro_f1") == 0.75 and h.best("val_loss") is None
    assert math.isnan(History().seconds_per_step)
    loaded = json.loads(h.to_json(tmp_path / "h.json").read_text())
    assert History(**loaded) == h


def test_history_plot():
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    h = history_example()
    fig = h.plot(title="toy", smooth=10)
    try:
        assert isinstance(fig, Figure)
        ax_loss, ax_val = fig.axes
        assert list(ax_loss.lines[0].get_ydata()) == h.step_loss
        assert len(ax_loss.lines[1].get_ydata()) == len(h.step_loss) - 10 + 1  # the moving average
        val_lines = {line.get_label(): list(line.get_ydata()) for line in ax_val.lines}
        assert val_lines["accuracy"] == [0.7, 0.8, 0.75] and val_lines["macro_f1"] == [0.6, 0.75, 0.7]
        best = ax_val.lines[-1]
        assert best.get_label() == "best (kept)" and list(best.get_xdata()) == [2, 2]
        assert fig.get_suptitle() == "toy"
    finally:
        plt.close(fig)


def test_progress_bars_redraw_at_most_once_a_second(monkeypatch):
    """In Jupyter each redraw is ~3 kernel messages; an unread backlog over ZeroMQ's limit hangs nbval."""
    draws = []

    class CountingBar(batches.tqdm):
        def display(self, *args, **kwargs):
            draws.append(self.desc)
            return super().display(*args, **kwargs)

    monkeypatch.setattr(batches, "tqdm", CountingBar)  # progress_bar lives in ftlib.batches
    model = apply_full(make_model(num_labels=3))
    t0 = time.perf_counter()
    fit(model, rows_loader(400, batch_size=2), rows_loader(8), epochs=2, lr=1e-3, progress=True, device="cpu")
    elapsed = time.perf_counter() - t0
    bars = 4  # two epoch bars and two validation bars, each drawn when opened and when closed
    assert len(draws) <= 2 * bars + elapsed + 2, f"{len(draws)} redraws in {elapsed:.1f} s for 400 steps"


# --- gradient accumulation and what History records (issue 10, item 5) --------------------------------------


def no_dropout_model(num_labels: int = 2):
    model = make_model(num_labels=num_labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.dropout.p = 0.0
    return model


class GradSpy(Callback):
    """The head's gradient just before every optimizer step."""

    def __init__(self):
        self.grads = []

    def on_train_begin(self, s):
        s.optimizer.register_step_pre_hook(
            lambda *_: self.grads.append(s.model.classifier.weight.grad.detach().clone()))


def test_a_last_partial_window_weighs_like_a_full_batch():
    """40 examples: 5 batches of 8 accumulated 4 at a time = a batch of 32, then a window of 1 batch of 8."""
    data = Toy(40, 0)
    grads, states = [], []
    for batch_size, accum in ((32, 1), (8, 4)):
        model, spy = no_dropout_model(), GradSpy()
        fit(model, DataLoader(data, batch_size=batch_size), epochs=1, lr=1e-3, grad_accum=accum, progress=False,
            max_grad_norm=None, callbacks=[spy], device="cpu")
        grads.append(spy.grads)
        states.append(model.state_dict())
    assert len(grads[0]) == len(grads[1]) == 2
    for big, accumulated in zip(*grads, strict=True):
        torch.testing.assert_close(accumulated, big, atol=1e-7, rtol=1e-4)  # the last one: not a quarter of it
    for name, t in states[0].items():
        torch.testing.assert_close(states[1][name], t, atol=1e-5, rtol=1e-4, msg=name)


def test_history_has_one_loss_and_one_time_per_optimizer_step():
    model = no_dropout_model()
    loader = DataLoader(Toy(40, 0), batch_size=8)  # 5 batches; grad_accum 2 -> windows of 2, 2 and 1 batches
    spy = OptimizerSpy()
    history = fit(model, loader, epochs=2, lr=1e-3, grad_accum=2, schedule=lambda step, total: 0.0,
                  callbacks=[spy], progress=False, device="cpu")
    # lr 0: the weights never move, so every batch's loss can be computed again afterwards
    with torch.no_grad():
        losses = [F.cross_entropy(model(b["input_ids"], b["attention_mask"]), b["labels"]).item() for b in loader]
    windows = [losses[0:2], losses[2:4], losses[4:5]]
    assert len(spy.lrs) == len(history.step_loss) == len(history.step_seconds) == 2 * 3
    assert history.step_loss == pytest.approx([sum(w) / len(w) for w in windows] * 2, rel=1e-5)
    assert all(s > 0 for s in history.step_seconds)


def test_the_logged_learning_rate_is_the_heads():
    model = apply_discriminative_lr(make_model(num_labels=3))
    groups = layerwise_param_groups(model, base_lr=1e-3, decay=0.5)
    assert groups[0]["name"] == "embeddings" and groups[0]["lr"] == pytest.approx(1e-3 / 4)
    history = fit(model, rows_loader(8), epochs=1, lr=1e-3, groups=groups, schedule=lambda step, total: 1.0,
                  device="cpu", progress=False)
    assert history.epochs[-1]["lr"] == pytest.approx(1e-3)  # the head's rate, not the embeddings' 2.5e-4


# --- the fit contract for users' own data (issue 11) -------------------------------------------------------


def test_fit_without_lr_uses_the_recipe_rate_of_the_strategy_the_model_carries():
    from ftlib.strategies import get_recipe

    spy = OptimizerSpy()
    model = apply_feature_extraction(make_model())
    fit(model, rows_loader(8), epochs=1, schedule=lambda step, total: 1.0, callbacks=[spy], device="cpu",
        progress=False)
    assert spy.lrs == [get_recipe("feature-extraction").lr] * 2


@pytest.mark.parametrize("tag", [None, "my-own-strategy"])
def test_fit_without_lr_and_without_a_known_strategy_is_refused(tag):
    model = make_model()
    if tag:
        tag_strategy(model, tag)
    before = state(model)
    with pytest.raises(ValueError, match=r"pass lr=, e\.g\. fit\(\.\.\., lr=5e-05\)"):
        fit(model, rows_loader(8), epochs=1, device="cpu", progress=False)
    assert same_state(state(model), before)


@pytest.mark.parametrize("epochs", [1.5, 2.0, "2", True, None])
def test_non_integer_epochs_are_refused_naming_the_fix(epochs):
    with pytest.raises((TypeError, ValueError), match=r"epochs must be a whole number .*e\.g\. epochs=2"):
        fit(make_model(), rows_loader(8), epochs=epochs, lr=1e-3, device="cpu", progress=False)


class Unlabelled(torch.utils.data.Dataset):
    def __init__(self, n: int = 8):
        self.rows = Rows(n)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {k: v for k, v in self.rows[i].items() if k != "labels"}


@pytest.mark.parametrize("which", ["train", "validation"])
def test_a_loader_without_labels_is_refused_before_training(which):
    model = make_model()
    before = state(model)
    unlabelled = DataLoader(Unlabelled(), batch_size=4)
    loaders = (unlabelled, None) if which == "train" else (rows_loader(8), unlabelled)
    with pytest.raises(ValueError, match=rf"the {which} loader's batches have no 'labels'.*make_loader"):
        fit(model, *loaders, epochs=1, lr=1e-3, device="cpu", progress=False)
    assert same_state(state(model), before)


def test_same_seed_same_run_whatever_ran_before_the_model_was_built():
    """build_classifier(seed=s) + fit(seed=s): the head too is a function of the seed, not of the RNG's past."""
    results = []
    for noise in (0, 1000, 1000):
        torch.rand(noise)  # whatever ran before: other code drawing random numbers
        model = SequenceClassifier(make_encoder(), 3, seed=7 if len(results) < 2 else 8)
        head = state(model.classifier)
        fit(model, rows_loader(8), epochs=1, lr=1e-3, seed=3, device="cpu", progress=False)
        results.append((head, state(model)))
    assert same_state(results[0][0], results[1][0]) and same_state(results[0][1], results[1][1])
    assert not same_state(results[1][0], results[2][0])  # another seed, another head


def test_build_classifier_passes_the_seed_to_the_head(monkeypatch):
    encoder = make_encoder()  # seeds torch itself: built once, outside the loop
    monkeypatch.setattr(models, "load_encoder", lambda name=None, **kwargs: (copy.deepcopy(encoder), "tokenizer"))
    heads = []
    for noise in (0, 100):
        torch.rand(noise)
        model, tokenizer = models.build_classifier(num_labels=3, seed=11)
        heads.append(state(model.classifier))
    assert tokenizer == "tokenizer" and same_state(*heads)


# --- mixed precision: a GradScaler is unscaled before clipping (issue 10, item 7) ---------------------------


def test_a_grad_scaler_changes_nothing_but_the_backward_scale(monkeypatch):
    """fp16 needs loss scaling; unscaling before clipping and stepping must give the unscaled run's weights."""
    import ftlib.device

    runs = []
    for scaled in (False, True):
        monkeypatch.setattr(ftlib.device, "needs_grad_scaler", lambda device, scaled=scaled: scaled)
        model, seen = no_dropout_model(), []
        model.classifier.weight.register_hook(lambda g, seen=seen: seen.append(g.abs().max().item()))
        fit(model, DataLoader(Toy(32, 0), batch_size=8), epochs=1, lr=1e-3, max_grad_norm=1e-3, progress=False,
            device="cpu")
        runs.append((seen, model.state_dict()))
    (plain, a), (scaled, b) = runs
    assert scaled[0] == pytest.approx(plain[0] * 2.0**16, rel=1e-5)  # backward ran on the scaled loss
    for name, t in a.items():
        torch.testing.assert_close(b[name], t, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(lr=0), ValueError, r"lr must be a positive number, got 0: e\.g\. lr=5e-05"),
    (dict(lr=-1e-3), ValueError, "lr must be a positive number"),
    (dict(lr=True), ValueError, "lr must be a positive number"),
    (dict(lr=1e-3, patience=0), ValueError, "patience must be None .* or a positive int, got 0"),
])
def test_bad_rates_and_patience_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        fit(make_model(), rows_loader(8), rows_loader(4), epochs=1, device="cpu", progress=False, **kwargs)


def test_batches_that_are_not_dicts_are_refused_naming_make_loader():
    rows = Rows(8)
    tuples = DataLoader(torch.utils.data.TensorDataset(rows.ids, rows.mask, rows.labels), batch_size=4)
    with pytest.raises(TypeError, match=r"the train loader's batches must be dicts .*got list: .*make_loader"):
        fit(make_model(), tuples, epochs=1, lr=1e-3, device="cpu", progress=False)
