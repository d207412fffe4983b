"""Checkpoints that survive a crash and never unpickle: safetensors for tensors, JSON for the rest.

A checkpoint folder holds one sub-folder per save (`epoch-0003/`) and a `latest` file naming the
newest complete one. A save writes the new sub-folder first and only then replaces `latest`
atomically (os.replace), so a crash in the middle leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .history import History

STRATEGY_MARKERS = {"lora_": "lora", "prefix_": "prefix-tuning", "adapter_": "adapters"}


def architecture_of(model: nn.Module) -> str:
    """e.g. 'BertModel(L=6, H=384)': enough to refuse weights from another encoder."""
    encoder = getattr(model, "encoder", model)
    cfg = getattr(encoder, "config", None)
    dims = f"(L={cfg.num_hidden_layers}, H={cfg.hidden_size})" if cfg is not None else ""
    return f"{type(encoder).__name__}{dims}"


def strategy_of(model: nn.Module) -> str:
    """Which parameter-adding strategy a model carries, read from its parameter names."""
    names = [n for n, _ in model.named_parameters()]
    found = sorted({s for marker, s in STRATEGY_MARKERS.items() if any(marker in n for n in names)})
    return "+".join(found) or "no added parameters"


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {f"state.{i}.{k}": v.contiguous() for i, s in sd["state"].items() for k, v in s.items()
               if torch.is_tensor(v)}
    return tensors, {"param_groups": sd["param_groups"], "states": sorted(sd["state"])}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {i: {} for i in meta["states"]}
    for key, t in tensors.items():
        _, i, k = key.split(".", 2)
        state[int(i)][k] = t
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state(generators: dict[str, torch.Generator] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Every random state a CPU run depends on: torch, Python, NumPy and the given generators."""
    tensors = {"torch": torch.get_rng_state()}
    tensors.update({f"gen.{k}": g.get_state() for k, g in (generators or {}).items()})
    np_state = np.random.get_state()
    meta = {"python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict, generators: dict | None = None) -> None:
    torch.set_rng_state(tensors["torch"])
    for k, g in (generators or {}).items():
        if f"gen.{k}" in tensors:
            g.set_state(tensors[f"gen.{k}"])
    v, internal, gauss = meta["python"]
    random.setstate((v, tuple(internal), gauss))
    np.random.set_state((meta["numpy"][0], np.array(meta["numpy"][1], dtype=np.uint32), *meta["numpy"][2:]))


def save_checkpoint(folder: str | Path, tag: str, tensors: dict[str, dict[str, torch.Tensor]], meta: dict,
                    keep: int = 1) -> Path:
    """Write folder/tag/{name}.safetensors + state.json, then point folder/latest at it atomically."""
    folder = Path(folder)
    target = folder / tag
    tmp = folder / f".{tag}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, group in tensors.items():
        save_file({k: v.detach().cpu().clone() for k, v in group.items()}, str(tmp / f"{name}.safetensors"))  # own storage
    (tmp / "state.json").write_text(json.dumps(meta))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    pointer = folder / ".latest.partial"
    pointer.write_text(tag)
    os.replace(pointer, folder / "latest")  # the commit point: before it, the old checkpoint is the latest
    for old in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))[:-keep]:
        if old.name != tag:
            shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(folder: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """(tensors by file name, state.json) of the newest complete checkpoint; never unpickles."""
    folder = Path(folder)
    latest = folder / "latest"
    if not latest.is_file():
        raise FileNotFoundError(f"no checkpoint in {folder} (no 'latest' file)")
    target = folder / latest.read_text().strip()
    tensors = {p.stem: load_file(str(p)) for p in target.glob("*.safetensors")}
    return tensors, json.loads((target / "state.json").read_text())


def check_compatible(model: nn.Module, meta: dict) -> None:
    """Refuse a checkpoint from another architecture or strategy, naming both."""
    mine, theirs = (architecture_of(model), strategy_of(model)), (meta.get("architecture"), meta.get("strategy"))
    if mine != theirs:
        raise ValueError(f"checkpoint was saved from {theirs[0]} with {theirs[1]}, "
                         f"but this model is {mine[0]} with {mine[1]}; apply the same strategy to the same model")


# Saving and resuming a training run (used by ftlib.train.fit)

def _run_snapshot(state, run: dict, generators: dict, callbacks):
    """Tensors and JSON that let a run continue exactly where it stopped."""
    opt_tensors, opt_meta = _flatten_optimizer(state.optimizer)
    rng_tensors, rng_meta = rng_state(generators)
    tensors = {"model": state.model.state_dict(), "optimizer": opt_tensors, "rng": rng_tensors}
    if run["best_weights"] is not None:
        tensors["best"] = run["best_weights"]
    meta = {"epoch": state.epoch, "step": state.step, "history": dataclasses.asdict(state.history),
            "best": run["best"], "bad_epochs": run["bad_epochs"], "stopped": run["stopped"],
            "optimizer": opt_meta, "scheduler": state.scheduler.state_dict(), "rng": rng_meta,
            "trainable": [n for n, p in state.model.named_parameters() if p.requires_grad],
            "callbacks": [cb.state_dict() for cb in callbacks],
            "architecture": architecture_of(state.model), "strategy": strategy_of(state.model)}
    return tensors, meta


def save_run(folder, state, run: dict, generators: dict, callbacks) -> Path:
    """Checkpoint the run after an epoch (see ftlib.checkpoint for the crash-safe layout)."""
    tensors, meta = _run_snapshot(state, run, generators, callbacks)
    return save_checkpoint(folder, f"epoch-{state.epoch:04d}", tensors, meta)


def resume_from(folder, state, run: dict, generators: dict, callbacks) -> int:
    """Restore model, optimizer, scheduler, RNG, history and callbacks; returns the last finished epoch."""
    tensors, meta = load_checkpoint(folder)
    check_compatible(state.model, meta)
    trainable = set(meta["trainable"])
    for n, p in state.model.named_parameters():
        p.requires_grad_(n in trainable)
    state.model.load_state_dict(tensors["model"])
    state.optimizer.load_state_dict(_unflatten_optimizer(tensors["optimizer"], meta["optimizer"]))
    state.scheduler.load_state_dict(meta["scheduler"])
    state.history = History(**meta["history"])
    state.step = meta["step"]
    run.update(best=meta["best"], bad_epochs=meta["bad_epochs"], stopped=meta["stopped"],
               best_weights=tensors.get("best"))
    for cb, cb_state in zip(callbacks, meta["callbacks"], strict=True):
        cb.load_state_dict(cb_state)
    set_rng_state(tensors["rng"], meta["rng"], generators)
    return meta["epoch"]
