"""A trained task on disk: the strategy's own small weights file plus a model-card JSON, and back.

A task folder holds `task.json` (labels, strategy and its settings, metrics, data hash, versions, base
model) and one safetensors file: LoRA -> `lora.safetensors` (adapter + head, ftlib.lora.save_lora);
feature extraction, prefix tuning, adapters -> `trainable.safetensors` (what trained, with the head);
full, gradual unfreezing, discriminative LR -> `model.safetensors` (the whole model's state). Loading
rebuilds the base model, applies the strategy with the saved settings and loads the file; every damaged
or missing piece is a ValueError/FileNotFoundError that names the file and what to do.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .checkpoint import STATE_KEYS
from .lora import apply_lora, load_lora, lora_settings, save_lora
from .models import EMBEDDED_NAME, build_classifier
from .params import load_trainable, save_trainable
from .strategies import STRATEGIES, get_recipe

CARD = "task.json"
FORMAT = "ftlib-task/1"
WHOLE_MODEL = ("full", "gradual-unfreezing", "discriminative-lr")  # every weight may have changed
CARD_KEYS = ("format", "strategy", "model", "labels", "weights")
RETRAIN = "train the task again (python -m ftlib train ... --output FOLDER)"


def file_sha256(path: str | Path) -> str:
    """Hash of a data file, so a card says exactly which data trained the task."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "ftlib": __version__}


def prepare_output(folder: str | Path, overwrite: bool = False) -> Path:
    """Check (before any training) that a task can be written to `folder`."""
    folder = Path(folder)
    if (folder / CARD).exists() and not overwrite:
        raise ValueError(f"{folder} already holds a trained task; choose another --output or pass --overwrite")
    return writable_folder(folder)


def writable_folder(folder: str | Path) -> Path:
    """Create `folder` if needed and prove it can be written to, or say which --output to choose."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--output {folder} is a file, not a folder; choose a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".ftlib-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to {folder} ({e.strerror}); choose another --output") from None
    return folder


def _strategy_config(name: str, model: nn.Module) -> dict:
    """The settings a fresh model needs to carry the same strategy again."""
    if name == "lora":
        return lora_settings(model)
    apply = get_recipe(name).apply
    defaults = {k: p.default for k, p in inspect.signature(apply).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {"apply": f"{apply.__module__}.{apply.__name__}", "defaults": json.loads(json.dumps(defaults, default=str))}


def _model_source(model_name: str | None) -> str | None:
    """None for the embedded model; an absolute path for a local folder (so predict works from anywhere)."""
    if model_name is None:
        return None
    return str(Path(model_name).resolve()) if Path(model_name).exists() else str(model_name)


def save_task(folder: str | Path, model: nn.Module, *, strategy: str, label_names, model_name: str | None = None,
              max_length: int = 64, metrics: dict | None = None, data: dict | None = None,
              training: dict | None = None) -> Path:
    """Write the strategy's weights file and task.json into `folder`; returns the card's path."""
    get_recipe(strategy)
    label_names = [str(n) for n in label_names]
    if getattr(model, "num_labels", len(label_names)) != len(label_names):
        raise ValueError(f"{len(label_names)} label_names for a {model.num_labels}-class model; one per class")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if strategy == "lora":
        weights = save_lora(model, folder / "lora.safetensors")
    elif strategy in WHOLE_MODEL:
        weights = folder / "model.safetensors"
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(weights),
                  metadata={"format": "pt"})
    else:
        weights = save_trainable(model, folder / "trainable.safetensors")
    card = {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "strategy": {"name": strategy, "config": _strategy_config(strategy, model), **(training or {})},
        "model": {"name": model_name or EMBEDDED_NAME, "source": _model_source(model_name),
                  "pooling": getattr(model, "pooling", "mean"), "max_length": max_length},
        "labels": {"names": label_names, "mapping": {n: i for i, n in enumerate(label_names)}},
        "weights": weights.name,
        "metrics": metrics or {},
        "data": data or {},
        "versions": versions(),
    }
    path = folder / CARD
    tmp = folder / f".{CARD}.partial"
    tmp.write_text(json.dumps(card, indent=1))
    os.replace(tmp, path)  # written last and atomically: a folder with task.json is complete
    return path


# --- loading, with every damaged piece named ------------------------------------------------------------


def read_json(path: Path, keys: tuple[str, ...] = (), fix: str = RETRAIN) -> dict:
    """A JSON object from `path`, with the keys it must have; errors name the file and the fix."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {fix}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the file is damaged: {fix}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a JSON {type(obj).__name__}, not an object; {fix}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(f"{path} lacks {missing}; it is damaged or from another program: {fix}")
    return obj


def check_safetensors(path: Path, fix: str = RETRAIN) -> set[str]:
    """The tensor names in a safetensors file, or an error for a missing, truncated or foreign file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {fix}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return set(f.keys())
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}): truncated or damaged; {fix}") from None


@dataclass
class Task:
    """A loaded task: the model (eval mode, with .label_names), its tokenizer and its card."""

    model: nn.Module
    tokenizer: object
    card: dict
    folder: Path

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(self.card["labels"]["names"])

    def predict(self, texts, batch_size: int = 32):
        """ftlib.predict_texts with this task's labels and max_length."""
        from .predict import predict_texts

        return predict_texts(self.model, self.tokenizer, texts, label_names=self.label_names,
                             batch_size=batch_size, max_length=self.card["model"].get("max_length"))


def _load_weights(model: nn.Module, strategy: str, config: dict, path: Path) -> None:
    names = check_safetensors(path)
    try:
        if strategy == "lora":
            apply_lora(model, rank=config["rank"], alpha=config["alpha"], targets=config["targets"],
                       dropout=config.get("dropout", 0.0))
            load_lora(model, path)
        elif strategy in WHOLE_MODEL:
            own = set(model.state_dict())
            if names != own:
                raise KeyError(f"holds {len(names)} tensors, the model {len(own)} "
                               f"(e.g. missing {sorted(own - names)[:2]}, extra {sorted(names - own)[:2]})")
            model.load_state_dict(load_file(str(path)))
        else:
            get_recipe(strategy).apply(model)
            load_trainable(model, path)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        detail = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ValueError(f"{path} does not fit the {strategy} model in {path.parent / CARD} ({detail}); "
                         f"{RETRAIN}") from None


def load_task(folder: str | Path, device: str | torch.device | None = None) -> Task:
    """Rebuild a saved task: base model + strategy with the saved settings + its weights file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no task folder {folder}; pass the --output folder of `python -m ftlib train`")
    if not (folder / CARD).is_file():
        raise ValueError(f"{folder} holds no {CARD}, so it is not a saved task; pass the --output folder of "
                         "`python -m ftlib train`")
    card = read_json(folder / CARD, CARD_KEYS)
    try:
        strategy, config = card["strategy"]["name"], card["strategy"].get("config", {})
        names = [str(n) for n in card["labels"]["names"]]
        source, pooling = card["model"].get("source"), card["model"].get("pooling", "mean")
        weights = folder / card["weights"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{folder / CARD} lacks {e}; it is damaged: {RETRAIN}") from None
    if strategy not in STRATEGIES:
        raise ValueError(f"{folder / CARD} names strategy {strategy!r}, which this ftlib ({__version__}) does not "
                         f"have; use the ftlib version in its 'versions' or {RETRAIN}")
    if len(names) < 2:
        raise ValueError(f"{folder / CARD} lists {len(names)} label names; a task needs at least 2: {RETRAIN}")
    if source is not None and Path(source).is_absolute() and not Path(source).is_dir():
        raise FileNotFoundError(f"{folder / CARD} was trained on the model in {source}, which is gone; "
                                "restore that folder or retrain")
    check_safetensors(weights)
    model, tokenizer = build_classifier(source, num_labels=len(names), pooling=pooling)
    _load_weights(model, strategy, config, weights)
    model.label_names = tuple(names)
    model.eval()
    if device is not None:
        model.to(device)
    return Task(model, tokenizer, card, folder)




def check_checkpoint(folder: str | Path) -> Path | None:
    """Before resuming: the newest checkpoint in `folder` is complete and readable (names the bad file)."""
    folder = Path(folder)
    fix = f"delete {folder} and train without --resume, or point --checkpoint-dir at an intact checkpoint"
    latest = folder / "latest"
    if not latest.is_file():
        return None  # nothing saved yet: fit itself says so
    target = folder / latest.read_text(encoding="utf-8", errors="replace").strip()
    if not target.is_dir():
        raise FileNotFoundError(f"{latest} points at {target}, which is missing; {fix}")
    read_json(target / "state.json", STATE_KEYS, fix)
    for name in ("model", "optimizer", "rng"):
        check_safetensors(target / f"{name}.safetensors", fix)
    return target
