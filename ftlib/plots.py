"""The comparison's figures: people would rather look at these than read the table."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from .spectrum import energy_kept


def plot_accuracy_vs_trainable(df: pd.DataFrame):
    """Test accuracy against the share of parameters trained (log scale), one point per strategy."""
    g = df.groupby("strategy", sort=False)
    mean, std = g[["trainable_percent", "test_accuracy"]].mean(), g["test_accuracy"].std().fillna(0)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.errorbar(mean["trainable_percent"], mean["test_accuracy"], yerr=std, fmt="o", capsize=3)
    for name, r in mean.iterrows():
        ax.annotate(name, (r["trainable_percent"], r["test_accuracy"]), textcoords="offset points", xytext=(5, 4))
    ax.set(xscale="log", xlabel="trainable parameters (%)", ylabel="test accuracy",
           title="accuracy against the share of parameters trained")
    fig.tight_layout()
    return fig


def plot_forgetting(df: pd.DataFrame):
    """Drop in retention-probe accuracy (TREC-6) and representation drift (1 - CKA) per strategy."""
    g = df.groupby("strategy", sort=False)[["forgetting", "drift"]].mean()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.bar(g.index, g["forgetting"], color="tab:red")
    a.set(ylabel="probe accuracy before - after", title="forgetting (TREC-6 linear probe)")
    b.bar(g.index, g["drift"], color="tab:purple")
    b.set(ylabel="1 - linear CKA", title="representation drift")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=35)
        ax.axhline(0, color="black", linewidth=0.8)
    fig.tight_layout()
    return fig


def plot_training_curves(curves: dict, smooth: int = 8):
    """Moving-average training loss per strategy (first seed)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for (name, seed), loss in curves.items():
        if seed != min(s for (n, s) in curves if n == name) or len(loss) < smooth:
            continue
        avg = [sum(loss[i - smooth:i]) / smooth for i in range(smooth, len(loss) + 1)]
        ax.plot(range(smooth, len(loss) + 1), avg, label=name)
    ax.set(xlabel="step", ylabel=f"training loss (mean of {smooth})", title="training curves")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_spectra(spectra: dict, lora_rank: int = 8, max_rank: int = 64):
    """Energy of the full fine-tuning update kept by a rank-r approximation, per attention matrix."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ranks = range(1, max_rank + 1)
    for name, s in spectra.items():
        short = name.replace("encoder.encoder.layer.", "L").replace(".attention.self.", " ").replace(".weight", "")
        ax.plot(ranks, [energy_kept(s, r) for r in ranks], label=short, alpha=0.8)
    ax.axvline(lora_rank, color="black", linestyle=":", label=f"LoRA rank {lora_rank}")
    ax.set(xlabel="rank r", ylabel="energy of dW kept", ylim=(0, 1.02),
           title="intrinsic rank of full fine-tuning's update")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def plot_accuracy_ci(table: pd.DataFrame):
    """Test accuracy per strategy with its 95% t-interval over seeds; the baselines as horizontal lines."""
    base = [b for b in ("majority", "tfidf-logreg") if b in table.index]
    rows = table.drop(index=base).sort_values("test_accuracy")
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.6))
    y = range(len(rows))
    low = (rows["test_accuracy"] - rows["test_t_low"]).fillna(0)
    high = (rows["test_t_high"] - rows["test_accuracy"]).fillna(0)
    ax.errorbar(rows["test_accuracy"], y, xerr=[low, high], fmt="o", capsize=3)
    for name, style in zip(base, (":", "--"), strict=False):
        ax.axvline(table.loc[name, "test_accuracy"], color="grey", linestyle=style, label=name)
    ax.set_yticks(list(y), rows.index)
    ax.set(xlabel="test accuracy (mean, 95% t-interval over seeds)", title="accuracy with its uncertainty")
    if base:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_learning_curves(curves: pd.DataFrame, crossings: pd.DataFrame | None = None):
    """Mean test accuracy against training-set size (log scale), min-max over seeds shaded; crossings marked."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, g in curves.groupby("strategy", sort=False):
        stats = g.groupby("n")["test_accuracy"].agg(["mean", "min", "max"])
        style = {"linestyle": ":"} if name in ("majority", "tfidf-logreg") else {"marker": "o"}
        line, = ax.plot(stats.index, stats["mean"], label=name, **style)
        ax.fill_between(stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.15)
    if crossings is not None:
        for r in crossings.itertuples():
            ax.axvline(r.n, color="black", alpha=0.25, linewidth=0.8)
    ax.set(xscale="log", xlabel="training examples", ylabel="test accuracy",
           title="learning curves (lines: mean over seeds; shade: min-max)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_memory(table: pd.DataFrame):
    """Accounted (weights + gradients + AdamW) against measured peak training memory, per strategy."""
    rows = table.dropna(subset=["accounted_mb"])
    fig, ax = plt.subplots(figsize=(7, 3.8))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], rows["accounted_mb"], width=0.4, label="accounted")
    if "measured_mb" in rows:
        ax.bar([i + 0.2 for i in x], rows["measured_mb"], width=0.4, label="measured peak (activations included)")
    ax.set_xticks(list(x), rows.index, rotation=35, ha="right")
    ax.set(ylabel="MB", title="training memory")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
