"""Train one strategy end to end with its own recipe: the unit the CLI, notebooks and compare share.

`train_strategy` runs on any splits (the course's or yours); `run_strategy` is the course's wrapper that
loads the movie reviews and takes the profile's subset sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .data import TextDataset, check_max_length, load_movie_reviews, make_loader, take_stratified
from .device import describe, get_device, set_seed
from .history import History
from .models import build_classifier
from .params import count_parameters, training_memory
from .profiles import Profile, get_profile
from .strategies import get_recipe
from .train import Callback, evaluate, fit

SPLITS = ("train", "validation", "test")


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


@dataclass
class Run:
    """Everything a finished run leaves: the trained model, what it was trained with, and how it scored."""

    model: object
    tokenizer: object
    history: History
    result: Result
    test: dict  # evaluate() on the test split: loss, accuracy, macro_f1, n
    data: dict[str, TextDataset]  # the train/validation/test sets actually used (after max_train/max_eval)
    profile: Profile
    lr: float
    epochs: int
    max_length: int


def check_splits(splits: dict[str, TextDataset]) -> None:
    """train, validation and test present, with the same classes in the same order."""
    missing = [k for k in SPLITS if k not in splits]
    if missing:
        raise ValueError(f"splits lack {missing}; give {list(SPLITS)} (ftlib.data.split_dataset makes them)")
    names = splits["train"].label_names
    for k in SPLITS[1:]:
        if splits[k].label_names != names:
            raise ValueError(f"the {k} split has classes {list(splits[k].label_names)} but train has {list(names)}; "
                             "load every file with label_names=train.label_names")


def train_strategy(name: str, splits: dict[str, TextDataset], *, profile: str | None = None,
                   model_name: str | None = None, seed: int = 0, device: str | None = None, progress: bool = True,
                   lr: float | None = None, epochs: int | None = None, max_train: int | None = None,
                   max_eval: int | None = None, max_test: int | None = None, max_length: int | None = None,
                   callbacks: Sequence[Callback] = (), **fit_kwargs) -> Run:
    """Apply strategy `name` to a fresh model and train it on `splits` with the strategy's recipe (learning
    rate, optimizer groups, schedule, callbacks); the profile gives epochs, max_length and batch size.

    max_train / max_eval / max_test keep a class-balanced subset (None: all; the test subset does not depend
    on the seed); extra keyword arguments go to fit."""
    recipe = get_recipe(name)
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0):
        raise ValueError(f"lr must be a number > 0, got {lr!r}; leave it out for the strategy's rate ({recipe.lr:g})")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}; leave it out for the profile's")
    check_splits(splits)
    dev = get_device(device)
    prof = get_profile(profile, dev)
    train = take_stratified(splits["train"], max_train, seed)
    val = take_stratified(splits["validation"], max_eval, seed)
    test_set = take_stratified(splits["test"], max_test)
    set_seed(seed)  # the head's initialisation depends on it
    model, tokenizer = build_classifier(model_name, data=train)
    max_length = check_max_length(prof.max_length if max_length is None else max_length, tokenizer, model)
    recipe.apply(model)
    loaders = [make_loader(ds, tokenizer, prof.batch_size, max_length, shuffle=(ds is train), seed=seed)
               for ds in (train, val, test_set)]
    lr = recipe.lr if lr is None else lr
    epochs = prof.epochs if epochs is None else epochs
    total_steps = epochs * math.ceil(len(train) / prof.batch_size)
    history: History = fit(
        model, loaders[0], loaders[1], epochs=epochs, lr=lr,
        groups=recipe.groups(model, lr) if recipe.groups else None, schedule=recipe.schedule,
        callbacks=[*recipe.callbacks(model, total_steps), *callbacks], seed=seed, device=dev, progress=progress,
        **fit_kwargs)
    test = evaluate(model, loaders[2], dev, progress)
    count, memory = count_parameters(model), training_memory(model)
    result = Result(name, prof.name, describe(dev), seed, count.trainable, count.total, count.percent, memory.total,
                    history.seconds_per_step, history.total_seconds, history.best("val_accuracy"),
                    test["accuracy"], test["macro_f1"])
    data = {"train": train, "validation": val, "test": test_set}
    return Run(model, tokenizer, history, result, test, data, prof, lr, epochs, max_length)


def run_strategy(name: str, *, profile: str | None = None, model_name: str | None = None, seed: int = 0,
                 device: str | None = None, progress: bool = True, lr: float | None = None,
                 epochs: int | None = None, splits: dict | None = None, **fit_kwargs):
    """Apply strategy `name` to a fresh model, train it on the movie reviews, test it: (model, History, Result).

    The profile's max_train / max_eval / max_test subsets are used; extra keyword arguments (grad_accum,
    checkpoint_dir, resume, patience, ...) go to ftlib.train.fit."""
    get_recipe(name)  # a typo fails before the data load
    prof = get_profile(profile, get_device(device))
    run = train_strategy(name, splits or load_movie_reviews(), profile=prof.name, model_name=model_name, seed=seed,
                         device=device, progress=progress, lr=lr, epochs=epochs, max_train=prof.max_train,
                         max_eval=prof.max_eval, max_test=prof.max_test, **fit_kwargs)
    return run.model, run.history, run.result
