"""Train one strategy end to end on the course data: the unit that the CLI, notebooks and compare share."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .data import load_movie_reviews, make_loader, take_stratified
from .device import describe, get_device, set_seed
from .history import History
from .models import build_classifier
from .params import count_parameters, training_memory
from .profiles import get_profile
from .strategies import get_recipe
from .train import evaluate, fit


@dataclass
class Result:
    strategy: str
    profile: str
    device: str
    seed: int
    trainable: int
    total: int
    trainable_percent: float
    memory_bytes: int  # accounted: weights + gradients + AdamW state
    seconds_per_step: float
    train_seconds: float
    val_accuracy: float
    test_accuracy: float
    test_macro_f1: float


def run_strategy(name: str, *, profile: str | None = None, model_name: str | None = None, seed: int = 0,
                 device: str | None = None, progress: bool = True, lr: float | None = None,
                 epochs: int | None = None, splits: dict | None = None, **fit_kwargs):
    """Apply strategy `name` to a fresh model, train it on the movie reviews, test it: (model, History, Result).

    Extra keyword arguments (grad_accum, checkpoint_dir, resume, patience, ...) go to ftlib.train.fit."""
    recipe = get_recipe(name)
    dev = get_device(device)
    prof = get_profile(profile, dev)
    splits = splits or load_movie_reviews()
    train = take_stratified(splits["train"], prof.max_train, seed)
    val = take_stratified(splits["validation"], prof.max_eval, seed)
    set_seed(seed)  # the head's initialisation depends on it
    model, tokenizer = build_classifier(model_name, num_labels=train.num_labels)
    recipe.apply(model)
    loaders = [make_loader(ds, tokenizer, prof.batch_size, prof.max_length, shuffle=(ds is train), seed=seed)
               for ds in (train, val, splits["test"])]
    lr = lr or recipe.lr
    epochs = epochs or prof.epochs
    total_steps = epochs * math.ceil(len(train) / prof.batch_size)
    history: History = fit(
        model, loaders[0], loaders[1], epochs=epochs, lr=lr,
        groups=recipe.groups(model, lr) if recipe.groups else None, schedule=recipe.schedule,
        callbacks=recipe.callbacks(model, total_steps), seed=seed, device=dev, progress=progress, **fit_kwargs)
    test = evaluate(model, loaders[2], dev, progress)
    count, memory = count_parameters(model), training_memory(model)
    result = Result(name, prof.name, describe(dev), seed, count.trainable, count.total, count.percent, memory.total,
                    history.seconds_per_step, history.total_seconds, history.best("val_accuracy"),
                    test["accuracy"], test["macro_f1"])
    return model, history, result
