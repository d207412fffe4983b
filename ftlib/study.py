"""A study: many cached runs (strategies x seeds x learning rates x training-set sizes) and baselines.

Every run becomes one record (ftlib.results); a study only computes what is missing, so it can be
stopped and resumed. What varies with what:
- `seed` sets the initialisation of what trains and the order of the training data;
- `data_seed` picks the stratified training (and validation) subset, fixed per profile unless asked;
- `train_size` overrides the profile's training-set size (learning curves). A smaller set trains for
  more epochs, so that every size gets at least the profile's step budget (at most MAX_EPOCHS epochs).

    python -m ftlib study --profile quick --seeds 5 --results docs/results/quick-<machine>
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .baselines import TfidfLogReg, majority_predictions
from .data import TextDataset, load_movie_reviews, load_out_of_domain, make_loader, take_stratified
from .deployment import deployment
from .device import describe, get_device, set_seed
from .forgetting import RetentionProbe
from .models import build_classifier
from .params import count_parameters, training_memory
from .profiles import Profile, get_profile
from .results import RunKey, has_record, load_record, save_record
from .spectrum import singular_values, weight_updates
from .strategies import STRATEGIES, get_recipe
from .train import fit, predict

MAX_EPOCHS = 40  # learning curves: a 100-example set would otherwise need hundreds of epochs on `full`
LR_FACTORS = (1 / 3, 1.0, 3.0)  # the default grid around a recipe's rate: half a decade each way
EDGE_STEPS = 1  # a sweep whose best rate is on the grid's edge tries this many more rates past it
CURVE_STRATEGIES = ("full", "feature-extraction", "lora", "adapters")
CURVE_SIZES = (100, 300, 1000, 3000, None)  # None = all 8,058


def strategy_names() -> list[str]:
    """Every strategy in the registry, in its order: read at call time, so added strategies are included."""
    return list(STRATEGIES)


def check_strategies(names: Iterable[str]) -> list[str]:
    """The names, each checked against the registry before any work (typos fail fast)."""
    names = list(names)
    for name in names:
        get_recipe(name)
    if not names:
        raise ValueError("no strategies given; name at least one, e.g. --strategies full,lora")
    return names


@dataclass
class Context:
    """What every run of a study shares, loaded once."""

    profile: Profile
    device: torch.device
    model_name: str | None
    splits: dict[str, TextDataset]
    ood: dict[str, TextDataset]
    tokenizer: object
    probe: RetentionProbe | None
    base: nn.Module  # the untouched base model + a head: inference reference and 'what is shared'
    base_total: int  # parameters of base model + head: the one denominator of every share

    def train_set(self, train_size: int | None = None, data_seed: int = 0) -> TextDataset:
        n = self.profile.max_train if train_size is None else train_size
        return take_stratified(self.splits["train"], n, data_seed)

    def test_set(self) -> TextDataset:
        return take_stratified(self.splits["test"], self.profile.max_test)  # the same for every run

    def val_set(self, data_seed: int = 0) -> TextDataset:
        return take_stratified(self.splits["validation"], self.profile.max_eval, data_seed)

    def epochs_for(self, key: RunKey) -> int:
        """The profile's epochs; a smaller training set gets at least the profile's number of steps."""
        if key.epochs is not None:
            return key.epochs
        prof = self.profile
        if key.train_size is None:
            return prof.epochs
        per_epoch = lambda n: math.ceil(n / prof.batch_size)  # noqa: E731
        budget = prof.epochs * per_epoch(len(self.train_set(None, key.data_seed)))
        return min(MAX_EPOCHS, max(prof.epochs, math.ceil(budget / per_epoch(len(self.train_set(key.train_size))))))


def load_context(profile: str | None = None, device: str | None = None, model_name: str | None = None,
                 probe: bool = True) -> Context:
    """Data, tokenizer, the retention probe fitted on the untouched encoder, and the base model."""
    dev = get_device(device)
    prof = get_profile(profile, dev)
    splits = load_movie_reviews()
    ood = {k: take_stratified(v, prof.max_eval) for k, v in load_out_of_domain().items()}
    base, tokenizer = build_classifier(model_name, num_labels=splits["train"].num_labels)
    base.to(dev).eval()
    retention = None
    if probe:
        retention = RetentionProbe.build(base, tokenizer, take_stratified(splits["test"], prof.max_eval).texts,
                                         n_train=prof.max_train, n_test=prof.max_eval, max_length=prof.max_length,
                                         device=dev)
    return Context(prof, dev, model_name, splits, ood, tokenizer, retention, base, count_parameters(base).total)


def train_model(name: str, model: nn.Module, train: TextDataset, val: TextDataset, tokenizer, prof: Profile, *,
                seed: int, lr: float, epochs: int, device, progress: bool = False):
    """Apply the recipe `name` to `model` and train it as ftlib.experiment.run_strategy does: the History."""
    recipe = get_recipe(name)
    recipe.apply(model)
    train_loader = make_loader(train, tokenizer, prof.batch_size, prof.max_length, shuffle=True, seed=seed)
    val_loader = make_loader(val, tokenizer, prof.batch_size, prof.max_length) if val is not None else None
    total_steps = epochs * math.ceil(len(train) / prof.batch_size)
    return fit(model, train_loader, val_loader, epochs=epochs, lr=lr,
               groups=recipe.groups(model, lr) if recipe.groups else None, schedule=recipe.schedule,
               callbacks=recipe.callbacks(model, total_steps), seed=seed, device=device, progress=progress)


# --- one run -------------------------------------------------------------------------------------------


def _labels(ds: TextDataset) -> list[int]:
    return list(ds.labels)


def _metrics(pred: np.ndarray, ds: TextDataset) -> dict[str, float]:
    from .train import classification_metrics

    m = classification_metrics(torch.as_tensor(pred), torch.tensor(ds.labels), ds.num_labels)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def evaluation_sets(ctx: Context) -> dict[str, TextDataset]:
    """Every set a record holds predictions for: the test split and each out-of-domain set."""
    return {"test": ctx.test_set(), **{f"ood_{k}": v for k, v in ctx.ood.items()}}


def run_record(ctx: Context, key: RunKey, progress: bool = False) -> dict:
    """Train one strategy as `key` says, measure it, and return its record (not yet saved)."""
    t0 = time.perf_counter()
    prof, dev = ctx.profile, ctx.device
    train, val = ctx.train_set(key.train_size, key.data_seed), ctx.val_set(key.data_seed)
    epochs = ctx.epochs_for(key)
    set_seed(key.seed)  # the head's initialisation depends on it
    model, _ = build_classifier(ctx.model_name, num_labels=train.num_labels)
    before = {n: p.detach().cpu().clone() for n, p in model.named_parameters()} if key.strategy == "full" else None
    history = train_model(key.strategy, model, train, val, ctx.tokenizer, prof, seed=key.seed, lr=key.lr,
                          epochs=epochs, device=dev, progress=progress)
    count, memory = count_parameters(model), training_memory(model)
    predictions, metrics = {}, {"val_accuracy": history.best("val_accuracy")}
    for set_name, ds in evaluation_sets(ctx).items():
        logits, _ = predict(model, make_loader(ds, ctx.tokenizer, prof.batch_size, prof.max_length), dev)
        pred = logits.argmax(-1).cpu().numpy()
        predictions[set_name] = pred.tolist()
        metrics.update({f"{set_name}_{k}": v for k, v in _metrics(pred, ds).items()})
    if ctx.probe is not None:
        probe = ctx.probe.measure(model, ctx.tokenizer, dev, correct=True)
        predictions["probe_correct"] = probe.pop("probe_correct")
        metrics.update(probe)
    record = {"metrics": metrics, "predictions": predictions, "epochs": epochs, "train_examples": len(train),
              "device": describe(dev), "history": {"step_loss": history.step_loss, "epochs": history.epochs,
                                                   "best_epoch": history.best_epoch},
              "seconds_per_step": history.seconds_per_step, "train_seconds": history.total_seconds,
              "trainable": count.trainable, "total": count.total, "memory_bytes": memory.total,
              "deployment": deployment(ctx, model, count.trainable, key.strategy)}
    if before is not None and key.seed == 0:
        record["spectra"] = {n: singular_values(d).tolist() for n, d in weight_updates(before, model).items()}
    record["wall_seconds"] = time.perf_counter() - t0
    return record


def baseline_record(ctx: Context, key: RunKey) -> dict:
    """The majority class of each scored set, or TF-IDF + logistic regression on the training subset."""
    train = ctx.train_set(key.train_size, key.data_seed)
    model = TfidfLogReg().fit(train) if key.strategy == "tfidf-logreg" else None
    predictions, metrics = {}, {}
    sets = {"val": ctx.val_set(key.data_seed), **evaluation_sets(ctx)}
    for set_name, ds in sets.items():
        pred = model.predict(ds) if model is not None else majority_predictions(ds)
        m = _metrics(pred, ds)
        if set_name == "val":
            metrics["val_accuracy"] = m["accuracy"]
            continue
        predictions[set_name] = pred.tolist()
        metrics.update({f"{set_name}_{k}": v for k, v in m.items()})
    return {"metrics": metrics, "predictions": predictions, "train_examples": len(train), "device": "cpu"}


def labels_record(ctx: Context) -> dict[str, list[int]]:
    return {name: _labels(ds) for name, ds in evaluation_sets(ctx).items()}


# --- many runs, cached ---------------------------------------------------------------------------------


def ensure(ctx: Context, keys: Sequence[RunKey], root: str | Path, log=print, run: bool = True) -> list[dict]:
    """The record of every key: loaded when it exists, else run and saved at once (resumable).

    `log` gets one line per run (a bounded number of messages, also in Jupyter); None is silent.
    With run=False nothing is trained: only the records on disk come back (to summarise a partial study)."""
    progress = log is not None
    out, todo = [], [k for k in keys if not has_record(root, k)]
    if progress and keys:
        log(f"{len(keys) - len(todo)} of {len(keys)} runs cached under {root}; "
            f"{len(todo)} {'to run' if run else 'missing, left out'}")
    done = 0
    for key in keys:
        path = key.path(root)
        if path.is_file():
            out.append(load_record(path))
            continue
        if not run:
            continue
        t0 = time.perf_counter()
        record = baseline_record(ctx, key) if key.lr is None else run_record(ctx, key)
        record["labels"] = labels_record(ctx)
        save_record(root, key, record)
        out.append(load_record(path))
        done += 1
        if progress:
            m = record["metrics"]
            log(f"[{done}/{len(todo)}] {key.strategy} seed {key.seed} lr {key.lr or '-'} "
                f"n {key.train_size or 'profile'}: test acc {m['test_accuracy']:.3f} "
                f"({time.perf_counter() - t0:.0f} s)")
            sys.stdout.flush()
    return out


def run_keys(ctx: Context, strategies: Sequence[str], seeds: int | Sequence[int] = 1,
             lrs: dict[str, float] | None = None, data_seeds: int = 1, train_size: int | None = None) -> list[RunKey]:
    """Keys for strategies x seeds x data seeds at each strategy's chosen (or recipe) rate, plus the baselines."""
    seeds = range(seeds) if isinstance(seeds, int) else seeds
    lrs = lrs or {}
    keys = []
    for d in range(data_seeds):
        keys += [RunKey(b, ctx.profile.name, 0, None, d, train_size, ctx.model_name) for b in ("majority", "tfidf-logreg")]
        keys += [RunKey(name, ctx.profile.name, s, lrs.get(name, get_recipe(name).lr), d, train_size, ctx.model_name)
                 for s in seeds for name in strategies]
    return keys


def lr_grid(name: str, factors: Sequence[float] = LR_FACTORS) -> list[float]:
    """A log-spaced grid around the recipe's learning rate (3 significant digits)."""
    base = get_recipe(name).lr
    return sorted({float(f"{base * f:.3g}") for f in factors})


def beyond_edge(grid: Sequence[float], best: float) -> float | None:
    """The next rate past the grid's edge when the best rate sits on it (same log step), else None."""
    grid = sorted(grid)
    if len(grid) < 2 or best not in (grid[0], grid[-1]):
        return None
    if best == grid[-1]:
        return float(f"{grid[-1] * grid[-1] / grid[-2]:.3g}")
    return float(f"{grid[0] * grid[0] / grid[1]:.3g}")


def _val_by_lr(ctx: Context, name: str, grid: Sequence[float], seeds: int, root, log, run: bool) -> dict[float, float]:
    """Mean validation accuracy at each rate of `grid` that has (or gets) its runs."""
    keys = [RunKey(name, ctx.profile.name, s, lr, 0, None, ctx.model_name) for lr in grid for s in range(seeds)]
    recs = ensure(ctx, keys, root, log, run)
    found = [lr for lr in grid if any(r["key"]["lr"] == lr for r in recs)]  # all of them unless run=False
    return {lr: float(np.mean([r["metrics"]["val_accuracy"] for r in recs if r["key"]["lr"] == lr])) for lr in found}


def _best(by_lr: dict[float, float], default: float) -> float:
    """The rate with the best validation accuracy; a tie goes to the recipe's rate."""
    return max(by_lr, key=lambda lr: (by_lr[lr], lr == default))


def sweep(ctx: Context, strategies: Sequence[str], root: str | Path, lrs: Sequence[float] | None = None,
          factors: Sequence[float] = LR_FACTORS, seeds: int = 1, log=print, run: bool = True,
          extend: int = EDGE_STEPS):
    """Try each strategy at every rate of its grid; pick the best mean validation accuracy (ties: the recipe's).

    A best rate on the grid's edge says nothing about the rates past it, so the grid grows one step that way
    (at most `extend` times) until the best rate is inside it.
    Returns (chosen {strategy: lr}, frame of strategy, lr, val_accuracy mean, chosen)."""
    rows, chosen = [], {}
    for name in strategies:
        default = get_recipe(name).lr
        grid = sorted(lrs) if lrs else lr_grid(name, factors)
        by_lr = _val_by_lr(ctx, name, grid, seeds, root, log, run)
        if not by_lr:
            chosen[name] = default
            continue
        for _ in range(extend):
            nxt = beyond_edge(list(by_lr), _best(by_lr, default))
            more = _val_by_lr(ctx, name, [nxt], seeds, root, log, run) if nxt else {}
            if not more:
                break
            by_lr.update(more)
        best = chosen[name] = _best(by_lr, default)
        rows += [{"strategy": name, "lr": lr, "val_accuracy": v, "chosen": lr == best, "recipe": lr == default}
                 for lr, v in sorted(by_lr.items())]
    return chosen, pd.DataFrame(rows)


def learning_curve_keys(ctx: Context, strategies: Sequence[str] | None = None, sizes=CURVE_SIZES, seeds: int = 1,
                        lrs: dict[str, float] | None = None) -> list[RunKey]:
    """Keys for a learning curve: each size x seed x strategy (default: those of CURVE_STRATEGIES registered)."""
    strategies = [s for s in (strategies or CURVE_STRATEGIES) if s in STRATEGIES]
    n_all, own = len(ctx.splits["train"]), ctx.profile.max_train or len(ctx.splits["train"])
    # None = all; the profile's own size is the main study's run (train_size None), so it is reused
    sizes = [None if min(s or n_all, n_all) == own else min(s or n_all, n_all) for s in sizes]
    keys = []
    for size in dict.fromkeys(sizes):
        keys += [RunKey(b, ctx.profile.name, 0, None, 0, size, ctx.model_name) for b in ("majority", "tfidf-logreg")]
        for s in range(seeds):
            keys += [RunKey(n, ctx.profile.name, s, (lrs or {}).get(n, get_recipe(n).lr), 0, size, ctx.model_name)
                     for n in strategies]
    return keys


# --- learning curves -----------------------------------------------------------------------------------


def with_main_runs(curve_records: Sequence[dict], main: Sequence[dict]) -> list[dict]:
    """The curve's runs plus every main-study run of its strategies (all seeds at the profile's size), once each."""
    names = {r["key"]["strategy"] for r in curve_records}
    out = {RunKey(**r["key"]): r for r in curve_records}  # a run's identity is its key
    for r in main:
        if r["key"]["strategy"] in names and r["key"]["train_size"] is None:
            out.setdefault(RunKey(**r["key"]), r)
    return list(out.values())


def curve_frame(records: Sequence[dict]):
    """One row per run: strategy, training examples, seed, test accuracy (baselines included)."""
    return pd.DataFrame([{"strategy": r["key"]["strategy"], "n": r["train_examples"], "seed": r["key"]["seed"],
                          "test_accuracy": r["metrics"]["test_accuracy"]} for r in records])


def crossing_points(curves: pd.DataFrame) -> pd.DataFrame:
    """Where two mean learning curves cross: training-set size by log-linear interpolation between sizes.

    Returns rows (a, b, n, below, above): below n the `below` strategy is ahead, above it `above` is."""
    mean = curves.groupby(["strategy", "n"])["test_accuracy"].mean().unstack("n")  # (strategies, sizes)
    rows = []
    names = list(mean.index)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d = (mean.loc[a] - mean.loc[b]).dropna()  # a - b at each size both have
            sizes, gaps = list(d.index), list(d.values)
            for (n0, g0), (n1, g1) in zip(zip(sizes, gaps, strict=True), zip(sizes[1:], gaps[1:], strict=True),
                                          strict=False):
                if g0 == 0 or g0 * g1 >= 0:
                    continue
                t = g0 / (g0 - g1)  # where the straight line between the gaps meets 0, in log(n)
                n = math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0)))
                rows.append({"a": a, "b": b, "n": n, "below": a if g0 > 0 else b, "above": b if g0 > 0 else a})
    return pd.DataFrame(rows, columns=["a", "b", "n", "below", "above"])


# --- the study command ---------------------------------------------------------------------------------


def run_study(profile: str | None = None, seeds: int = 5, results: str | Path | None = None,
              strategies: Sequence[str] | None = None, device: str | None = None, model_name: str | None = None,
              sweep_lrs: bool = True, curves: bool = True, curve_seeds: int | None = None,
              curve_sizes: Sequence[int | None] = CURVE_SIZES, memory: bool = True, data_seeds: int = 1,
              n_boot: int = 10_000, log=print, run_missing: bool = True) -> Path:
    """Sweep learning rates, run every strategy for `seeds` seeds at its chosen rate, the learning curves and
    the memory measurements, then write the summary: resumable, each finished run is kept on disk.

    Several processes may share one results folder (e.g. one per strategy on a large GPU); run_missing=False
    then writes the summary from what they left, training nothing."""
    from .compare import chosen_lrs_path
    from .results import machine, machine_name, update_json, versions, write_json

    t0 = time.perf_counter()
    names = check_strategies(strategies or strategy_names())
    ctx = load_context(profile, device, model_name)
    root = Path(results or Path("results") / f"{ctx.profile.name}-{machine_name(ctx.device)}")
    log(f"study: profile {ctx.profile.name}, {len(names)} strategies, {seeds} seeds, on {describe(ctx.device)}; "
        f"results in {root}")
    chosen = {}
    if sweep_lrs:
        log("1/4 learning-rate sweep (seed 0, validation accuracy)")
        chosen, grid = sweep(ctx, names, root, log=log, run=run_missing)
        update_json(chosen_lrs_path(root, ctx.profile.name), chosen)
        grid.to_csv(root / "lr_sweep.csv", index=False)
    log("2/4 every strategy, every seed, at its chosen rate; baselines")
    main = ensure(ctx, run_keys(ctx, names, seeds, chosen, data_seeds), root, log, run_missing)
    curve_records = []
    if curves:
        log("3/4 learning curves")
        keys = learning_curve_keys(ctx, [n for n in CURVE_STRATEGIES if n in names], sizes=curve_sizes,
                                   seeds=curve_seeds or seeds, lrs=chosen)
        curve_records = with_main_runs(ensure(ctx, keys, root, log, run_missing) if keys else [], main)
    mem = {}
    if memory:
        log("4/4 measured training memory")
        mem = measure_all(names, root / "memory.json", ctx, log, run_missing)
    write_study(root, main, curve_records, mem, chosen, n_boot)
    previous = json.loads((root / "machine.json").read_text()) if (root / "machine.json").is_file() else {}
    wall = time.perf_counter() - t0
    info = {"profile": ctx.profile.name, "seeds": seeds, "data_seeds": data_seeds, "strategies": names,
            "chosen_lrs": chosen, "command": "python -m ftlib " + " ".join(sys.argv[1:]),
            "wall_seconds_this_call": wall, "wall_seconds_total": previous.get("wall_seconds_total", 0) + wall,
            "device": describe(ctx.device), "machine": machine(ctx.device), "versions": versions()}
    write_json(root / "machine.json", info)
    log(f"done in {time.perf_counter() - t0:.0f} s: {root}/summary.md")
    return root


def measure_all(names: Sequence[str], path: Path, ctx: Context, log=print, run: bool = True) -> dict:
    """Measured training memory per strategy, cached in one JSON file (a strategy measured once is kept)."""
    from .memory import measure_training_memory
    from .results import update_json

    mem = json.loads(path.read_text()) if path.is_file() else {}
    for name in names:
        if name in mem or not run:
            continue
        mem[name] = measure_training_memory(name, profile=ctx.profile.name, device=str(ctx.device),
                                            model_name=ctx.model_name)
        mem = update_json(path, {name: mem[name]})
        if log is not None:
            log(f"memory {name}: measured {mem[name]['measured_bytes'] / 2**20:.0f} MB, "
                f"accounted {mem[name]['accounted_bytes'] / 2**20:.0f} MB")
    return mem


def write_study(root: Path, records: Sequence[dict], curve_records: Sequence[dict], memory: dict,
                chosen: dict, n_boot: int = 10_000) -> None:
    """summary.md, the tables as CSV and the plots, from records."""
    from .compare import RULES, report_tables, strategy_table, verdicts
    from .plots import plot_accuracy_ci, plot_learning_curves, plot_memory

    table = strategy_table(records, memory, n_boot)
    table.to_csv(root / "table.csv")
    ver = verdicts(records, memory, n_boot)
    ver.to_csv(root / "verdicts.csv", index=False)
    parts = report_tables(table)
    plot_accuracy_ci(table).savefig(root / "accuracy.png", dpi=120)
    lines = [f"# Study: profile {records[0]['key']['profile']}", "",
             "Accuracy (mean±std over seeds; Δ vs full with its 95% paired-bootstrap interval; exact McNemar p):", "",
             parts["accuracy"].pipe(markdown), "", "Cost and deployment (shares of base model + head):", "",
             parts["cost"].pipe(markdown), "", "Verdicts (" + RULES["verdict"] + "):", "",
             ver.drop(columns=["low", "high"]).pipe(markdown, index=False), "", "Rules:", ""]
    lines += [f"- {k}: {v}" for k, v in RULES.items()]
    if chosen:
        lines += ["", "Chosen learning rates: " + ", ".join(f"{k} {v:.3g}" for k, v in chosen.items())]
    if memory:
        plot_memory(table).savefig(root / "memory.png", dpi=120)
    if curve_records:
        curves = curve_frame(curve_records)
        curves.to_csv(root / "learning_curves.csv", index=False)
        cross = crossing_points(curves[~curves.strategy.isin(("majority",))])
        cross.to_csv(root / "crossings.csv", index=False)
        plot_learning_curves(curves, cross).savefig(root / "learning_curves.png", dpi=120)
        lines += ["", "Learning-curve crossings (training examples):", "",
                  cross.round({"n": 0}).pipe(markdown, index=False) if len(cross) else "none"]
    (root / "summary.md").write_text("\n".join(lines) + "\n")


def markdown(df: pd.DataFrame, index: bool = True) -> str:
    """A GitHub-flavoured markdown table (no extra dependency)."""
    frame = df.reset_index() if index else df
    cells = [[str(c) for c in frame.columns]] + [["" if pd.isna(v) else (f"{v:.4g}" if isinstance(v, float) else str(v))
                                                 for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join([lines[0], "|" + "---|" * len(cells[0]), *lines[1:]])
