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
