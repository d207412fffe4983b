"""Runs are results: one JSON record per (strategy, profile, seed, lr, training subset, model), cached.

A study is many runs. Each finished run is written to its own file at once, atomically (a temporary
file in the same folder, then os.replace), so an interrupted study loses at most the run in progress and
the next call skips every record that exists. A record holds the metrics, the training history, the
predictions on every evaluated set (so paired tests need no retraining), the machine and the versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_RESULTS = Path("results")
BASELINES = ("majority", "tfidf-logreg")  # records without training; majority is per scored set


@dataclass(frozen=True)
class RunKey:
    """What makes two runs the same run; the record's file name is derived from it."""

    strategy: str
    profile: str
    seed: int = 0  # initialisation of what trains, and the order of the training data
    lr: float | None = None  # peak learning rate (None: baselines, which have none)
    data_seed: int = 0  # which stratified training subset (fixed per profile unless asked)
    train_size: int | None = None  # training examples; None = the profile's
    model: str | None = None  # hub name or path; None = the embedded MiniLM
    epochs: int | None = None  # None = the profile's (or the learning-curve rule)

    def __post_init__(self):
        if not self.strategy or "/" in self.strategy:
            raise ValueError(f"strategy must be a plain name, got {self.strategy!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.train_size is not None and self.train_size < 2:
            raise ValueError(f"train_size must be >= 2 (or None for the profile's), got {self.train_size!r}")

    def filename(self) -> str:
        size = "all" if self.train_size is None else str(self.train_size)
        parts = [f"n{size}", f"d{self.data_seed}", f"s{self.seed}"]
        if self.lr is not None:
            parts.append(f"lr{self.lr:.3g}")
        if self.epochs is not None:
            parts.append(f"e{self.epochs}")
        if self.model is not None:  # a path or hub name: a short stable digest keeps the name portable
            parts.append("m" + hashlib.sha256(str(self.model).encode()).hexdigest()[:8])
        return "-".join(parts) + ".json"

    def path(self, root: str | Path) -> Path:
        return Path(root) / self.profile / self.strategy / self.filename()


def versions() -> dict[str, str]:
    """Versions of what decides the numbers."""
    import numpy
    import sklearn
    import torch
    import transformers

    import ftlib

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": numpy.__version__, "scikit-learn": sklearn.__version__, "ftlib": ftlib.__version__}


def machine(device=None) -> dict:
    """Where the numbers were measured: CPU, cores, accelerator."""
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    if device is not None:
        info["device"] = str(device)
    return info


def machine_name(device=None) -> str:
    """A short slug for folder names: the CUDA card, else 'cpu<cores>'."""
    import torch

    if torch.cuda.is_available() and str(device or "cuda").startswith("cuda"):
        name = torch.cuda.get_device_name(0).lower()
        return "".join(c if c.isalnum() else "-" for c in name).strip("-")
    return f"cpu{os.cpu_count()}"


def update_json(path: str | Path, entries: dict) -> dict:
    """Add `entries` to the JSON object in `path` (created if missing) and return the whole: processes sharing
    a results folder each add their own strategies without dropping the others'."""
    path = Path(path)
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.update(entries)
    write_json(path, current)
    return current


def write_json(path: str | Path, obj) -> Path:
    """Write JSON atomically: a temporary file beside the target, flushed, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, separators=(",", ":"), default=str)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; records are shared and committed
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_record(root: str | Path, key: RunKey, record: dict) -> Path:
    """Write one run's record under root; the key, the time, the machine and the versions are added."""
    full = {"key": asdict(key), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(record.get("device")), "versions": versions(), **record}
    return write_json(key.path(root), full)


def has_record(root: str | Path, key: RunKey) -> bool:
    return key.path(root).is_file()


def load_record(path: str | Path) -> dict:
    with open(path) as f:
        return json.load(f)


def load_records(root: str | Path, **where) -> list[dict]:
    """Every record under root whose key matches `where` (e.g. profile="quick", train_size=None)."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.glob("*/*/*.json")):
        rec = load_record(path)
        if all(rec["key"].get(k) == v for k, v in where.items()):
            out.append(rec)
    return out
