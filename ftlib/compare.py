"""Every strategy on the same model, data, seed and budget: one table, with forgetting, out-of-domain
accuracy, memory, speed and size on disk, written to a results folder as CSV, JSON and PNG plots."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from .data import load_movie_reviews, load_out_of_domain, make_loader, take_stratified
from .device import get_device
from .experiment import run_strategy
from .forgetting import RetentionProbe
from .lora import lora_layers, merge_lora
from .models import build_classifier
from .params import save_trainable
from .profiles import get_profile
from .quant import quant_layers
from .spectrum import singular_values, weight_updates
from .strategies import get_recipe
from .train import evaluate, progress_bar

COLUMNS = {  # column -> (header, format) for the printed table
    "trainable": ("trainable", "{:,.0f}"), "trainable_percent": ("%", "{:.3f}"),
    "memory_mb": ("mem MB", "{:.0f}"), "seconds_per_step": ("s/step", "{:.3f}"),
    "train_seconds": ("train s", "{:.0f}"), "test_accuracy": ("test acc", "{:.3f}"),
    "test_macro_f1": ("test F1", "{:.3f}"), "ood_tweets": ("tweets", "{:.3f}"), "ood_amazon": ("amazon", "{:.3f}"),
    "ood_nyt": ("nyt", "{:.3f}"), "forgetting": ("forget", "{:+.3f}"), "drift": ("drift", "{:.4f}"),
    "disk_mb": ("disk MB", "{:.3f}"),
}


def _disk_bytes(model) -> int:
    """Bytes of the safetensors file holding what this task must save (the trainable tensors)."""
    with tempfile.TemporaryDirectory() as tmp:
        return save_trainable(model, Path(tmp) / "task.safetensors").stat().st_size


def measure(model, tokenizer, name: str, probe: RetentionProbe, ood: dict, prof, device) -> dict:
    """Everything beyond test accuracy for one trained model."""
    row = {"disk_mb": _disk_bytes(model) / 2**20}
    if lora_layers(model) and not quant_layers(model):  # a 4-bit base cannot be merged (ftlib.qlora)
        merge_lora(model)  # probe the deployed form; merged outputs equal unmerged (tested)
    for key, ds in ood.items():
        loader = make_loader(ds, tokenizer, prof.batch_size, prof.max_length)
        row[f"ood_{key}"] = evaluate(model, loader, device)["accuracy"]
    return {**row, **probe.measure(model, tokenizer, device)}


def compare(strategies: list[str], *, profile: str | None = None, seeds: int = 1, model_name: str | None = None,
            device: str | None = None, output: str | Path | None = "results", progress: bool = True) -> pd.DataFrame:
    """Train each strategy for each seed and return one row per run (also written under `output`).

    progress: one bar over the runs and a line per finished run; the runs' own bars stay off so a long
    comparison in Jupyter sends a bounded number of messages (see `train.progress_bar`)."""
    for name in strategies:
        get_recipe(name)  # fail on a typo before any training
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    dev = get_device(device)
    prof = get_profile(profile, dev)
    splits = load_movie_reviews()
    ood = {k: take_stratified(v, prof.max_eval) for k, v in load_out_of_domain().items()}
    base, tokenizer = build_classifier(model_name)
    base.to(dev)
    probe = RetentionProbe.build(base, tokenizer, take_stratified(splits["test"], prof.max_eval).texts,
                                 n_train=prof.max_train, n_test=prof.max_eval, max_length=prof.max_length, device=dev)
    before = {n: p.detach().cpu().clone() for n, p in base.named_parameters()}
    del base
    rows, curves, spectra = [], {}, {}
    runs = [(seed, name) for seed in range(seeds) for name in strategies]
    bar = progress_bar(runs, desc="compare", progress=progress, unit="run")  # one bar: see progress_bar
    for seed, name in bar:
        bar.set_postfix_str(f"{name} seed {seed}")
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        model, history, result = run_strategy(name, profile=prof.name, model_name=model_name, seed=seed,
                                              device=str(dev), progress=False, splits=splits)
        row = {**asdict(result), "memory_mb": result.memory_bytes / 2**20,
               "peak_cuda_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None}
        if name == "full" and seed == 0:
            spectra = {n: singular_values(d) for n, d in weight_updates(before, model).items()}
        row.update(measure(model, tokenizer, name, probe, ood, prof, dev))
        rows.append(row)
        curves[(name, seed)] = history.step_loss
        if progress:
            bar.write(f"{name} seed {seed}: test accuracy {row['test_accuracy']:.3f}, "
                      f"{row['train_seconds']:.0f} s training")
        del model
    df = pd.DataFrame(rows)
    df.attrs.update(probe_base_accuracy=probe.base_accuracy, profile=prof.name)
    if output is not None:
        write_results(df, curves, spectra, Path(output))
    return df


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean per strategy (and the spread over seeds when there are several), in the order run."""
    cols = [c for c in COLUMNS if c in df]
    g = df.groupby("strategy", sort=False)[cols]
    out = g.mean()
    if df["seed"].nunique() > 1:
        out = out.join(g.std().add_suffix("_std"))
    return out


def format_table(df: pd.DataFrame) -> str:
    """The printed results table: means, with ± spread when several seeds ran."""
    s = summary(df)
    seeds = df["seed"].nunique()
    lines = []
    header = f"{'strategy':<19}" + "".join(f"{h:>{11 if c == 'trainable' else 9}}" for c, (h, _) in COLUMNS.items() if c in s)
    lines += [header, "-" * len(header)]
    for name, r in s.iterrows():
        cells = []
        for c, (_, fmt) in COLUMNS.items():
            if c not in s:
                continue
            text = fmt.format(r[c])
            if seeds > 1 and c in ("test_accuracy", "forgetting") and f"{c}_std" in s:
                text += f"±{r[f'{c}_std']:.3f}"[:6]
            cells.append(f"{text:>{11 if c == 'trainable' else 9}}")
        lines.append(f"{name:<19}" + "".join(cells))
    return "\n".join(lines)


def write_results(df: pd.DataFrame, curves: dict, spectra: dict, out: Path) -> None:
    """results.csv, results.json, summary.csv and the plots."""
    from .plots import plot_accuracy_vs_trainable, plot_forgetting, plot_spectra, plot_training_curves

    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "results.csv", index=False)
    summary(df).to_csv(out / "summary.csv")
    meta = {**df.attrs, "rows": df.to_dict(orient="records")}
    (out / "results.json").write_text(json.dumps(meta, indent=1, default=str))
    plot_accuracy_vs_trainable(df).savefig(out / "accuracy_vs_trainable.png", dpi=120)
    plot_forgetting(df).savefig(out / "forgetting.png", dpi=120)
    plot_training_curves(curves).savefig(out / "training_curves.png", dpi=120)
    if spectra:
        plot_spectra(spectra).savefig(out / "intrinsic_rank.png", dpi=120)
