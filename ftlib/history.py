"""What a training run leaves behind: per-step losses and timings, per-epoch metrics, and a plot."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class History:
    # One entry per optimizer step: with grad_accum=k a step covers k batches (the last window of an epoch
    # may cover fewer), its loss is the mean of theirs and its time their forwards+backwards plus the update.
    step_loss: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)  # one dict per epoch: train_loss, val_*, seconds, ...
    best_epoch: int | None = None  # epoch whose weights the model holds at the end (early stopping)

    @property
    def seconds_per_step(self) -> float:
        """Median time per optimizer step: robust to the first, slower step and to a noisy machine."""
        s = sorted(self.step_seconds)
        return s[len(s) // 2] if s else float("nan")

    @property
    def total_seconds(self) -> float:
        return sum(e["seconds"] for e in self.epochs)

    def best(self, key: str = "val_accuracy") -> float | None:
        vals = [e[key] for e in self.epochs if key in e]
        return max(vals) if vals else None

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    def plot(self, title: str = "", smooth: int = 10):
        """Training loss per step (with a moving average) and validation metrics per epoch."""
        import matplotlib.pyplot as plt
        import pandas as pd

        fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.5))
        steps = range(1, len(self.step_loss) + 1)
        ax_loss.plot(steps, self.step_loss, alpha=0.35, label="step loss")
        if len(self.step_loss) >= smooth:
            avg = pd.Series(self.step_loss, index=steps).rolling(smooth).mean().dropna()  # mean of the last `smooth`
            ax_loss.plot(avg.index, avg.to_numpy(), label=f"mean of {smooth}")
        ax_loss.set(xlabel="step", ylabel="cross-entropy", title="training loss")
        ax_loss.legend()
        ep = [e["epoch"] for e in self.epochs]
        for key in ("val_accuracy", "val_macro_f1"):
            if any(key in e for e in self.epochs):
                ax_val.plot(ep, [e.get(key) for e in self.epochs], marker="o", label=key.removeprefix("val_"))
        if self.best_epoch is not None:
            ax_val.axvline(self.best_epoch, color="grey", linestyle=":", label="best (kept)")
        ax_val.set(xlabel="epoch", title="validation")
        ax_val.legend()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return fig
