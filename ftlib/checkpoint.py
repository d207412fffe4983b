"""Checkpoints that survive a crash and never unpickle: safetensors for tensors, JSON for the rest.

A checkpoint folder holds one sub-folder per save (`epoch-0003/`) and a `latest` file naming the
newest complete one. A save writes and fsyncs the new sub-folder first and only then replaces `latest`
atomically (os.replace), so a crash or a power cut in the middle leaves the previous checkpoint loadable.
A run's checkpoint also names the strategy the model carries and its config (ftlib.strategy_tag), and
holds every process's own random state.
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
from .params import ADDED_PREFIXES
from .strategy_tag import describe_tags, strategy_tags, tags_from_json

STRATEGY_MARKERS = {p: s for s, p in ADDED_PREFIXES.items()}  # the one list of added-parameter prefixes


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
    """Every random state this process depends on: torch (CPU and each CUDA device), Python, NumPy, generators."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    tensors.update({f"gen.{k}": g.get_state() for k, g in (generators or {}).items()})
    np_state = np.random.get_state()
    meta = {"python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict, generators: dict | None = None) -> None:
    """Restore what rng_state saved (CUDA states only where CUDA is available: a GPU run resumed on CPU skips them)."""
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    for k, g in (generators or {}).items():
        if f"gen.{k}" in tensors:
            g.set_state(tensors[f"gen.{k}"])
    v, internal, gauss = meta["python"]
    random.setstate((v, tuple(internal), gauss))
    np.random.set_state((meta["numpy"][0], np.array(meta["numpy"][1], dtype=np.uint32), *meta["numpy"][2:]))


def pack_ranks(states: list[tuple[dict[str, torch.Tensor], dict]]) -> tuple[dict[str, torch.Tensor], dict]:
    """One (tensors, meta) per process -> one of each, keyed by rank: each DDP process keeps its own dropout stream."""
    tensors = {f"rank{r}.{k}": t for r, (ts, _) in enumerate(states) for k, t in ts.items()}
    return tensors, {"ranks": [meta for _, meta in states]}


def unpack_rank(tensors: dict[str, torch.Tensor], meta: dict, rank: int, world: int):
    """This process's (tensors, meta) from pack_ranks' output; refuses another number of processes."""
    if "ranks" not in meta:  # saved by one process before ranks were kept
        meta = {"ranks": [meta]}
        tensors = {f"rank0.{k}": t for k, t in tensors.items()}
    saved = len(meta["ranks"])
    if saved != world:
        raise ValueError(f"this checkpoint was saved by {saved} processes, but this run has {world}; "
                         f"resume with {saved} (the data shards and the schedule depend on it)")
    prefix = f"rank{rank}."
    return {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}, meta["ranks"][rank]


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk: os.replace alone orders nothing on a power cut."""
    if path.is_dir() and os.name != "posix":
        return  # folders cannot be opened for fsync on Windows
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(folder: str | Path, tag: str, tensors: dict[str, dict[str, torch.Tensor]], meta: dict,
                    keep: int = 1) -> Path:
    """Write folder/tag/{name}.safetensors + state.json, fsync them, then point folder/latest at it atomically."""
    folder = Path(folder)
    target = folder / tag
    tmp = folder / f".{tag}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, group in tensors.items():
        save_file({k: v.detach().cpu().clone() for k, v in group.items()}, str(tmp / f"{name}.safetensors"))  # own storage
    (tmp / "state.json").write_text(json.dumps(meta))
    for path in [*tmp.iterdir(), tmp]:
        _fsync(path)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    _fsync(folder)  # the folder's new entry is on disk before anything points at it
    pointer = folder / ".latest.partial"
    pointer.write_text(tag)
    _fsync(pointer)
    os.replace(pointer, folder / "latest")  # the commit point: before it, the old checkpoint is the latest
    _fsync(folder)
    for old in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))[:-keep]:
        if old.name != tag:
            shutil.rmtree(old, ignore_errors=True)
    return target


def read_meta(folder: str | Path) -> dict:
    """state.json of the newest complete checkpoint (no tensors loaded)."""
    return json.loads((_latest(folder) / "state.json").read_text())


def _latest(folder: str | Path) -> Path:
    folder = Path(folder)
    latest = folder / "latest"
    if not latest.is_file():
        raise FileNotFoundError(f"no checkpoint in {folder} (no 'latest' file)")
    return folder / latest.read_text().strip()


def load_checkpoint(folder: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """(tensors by file name, state.json) of the newest complete checkpoint; never unpickles."""
    target = _latest(folder)
    tensors = {p.stem: load_file(str(p)) for p in target.glob("*.safetensors")}
    return tensors, json.loads((target / "state.json").read_text())


def check_compatible(model: nn.Module, meta: dict) -> None:
    """Refuse a checkpoint from another architecture or strategy (name and config), naming both."""
    mine, theirs = (architecture_of(model), strategy_of(model)), (meta.get("architecture"), meta.get("strategy"))
    if mine != theirs:
        raise ValueError(f"checkpoint was saved from {theirs[0]} with {theirs[1]}, "
                         f"but this model is {mine[0]} with {mine[1]}; apply the same strategy to the same model")
    if "strategies" in meta:  # checkpoints written before strategies were tagged lack it
        saved, carried = tags_from_json(meta["strategies"]), strategy_tags(model)
        if saved != carried:
            raise ValueError(f"checkpoint was saved with strategy {describe_tags(saved)}, but this model carries "
                             f"{describe_tags(carried)}; apply the same strategy with the same config before "
                             "resuming, or train into a new checkpoint_dir")


# Saving and resuming a training run (ftlib.checkpointing.Checkpointing calls these for fit)

def peak_lr(meta: dict) -> float:
    """The highest initial learning rate of a saved run's optimizer groups."""
    return max(g.get("initial_lr", g["lr"]) for g in meta["optimizer"]["param_groups"])


STATE_KEYS = ("epoch", "step", "stop", "history", "optimizer", "scheduler", "rng", "trainable", "callbacks",
              "architecture", "strategies")  # what state.json must hold for a resume (checked before one)


def _run_snapshot(state, rng: tuple[dict[str, torch.Tensor], dict]):
    """Tensors and JSON that let a run continue exactly where it stopped; `rng` is pack_ranks' output."""
    opt_tensors, opt_meta = _flatten_optimizer(state.optimizer)
    tensors = {"model": state.model.state_dict(), "optimizer": opt_tensors, "rng": rng[0]}
    kept = {f"{i}.{k}": t for i, cb in enumerate(state.callbacks) for k, t in cb.state_tensors().items()}
    if kept:
        tensors["callbacks"] = kept
    scaler = state.scaler.state_dict() if state.scaler is not None and state.scaler.is_enabled() else None
    meta = {"epoch": state.epoch, "step": state.step, "stop": state.stop,
            "history": dataclasses.asdict(state.history), "optimizer": opt_meta,
            "scheduler": state.scheduler.state_dict(), "scaler": scaler, "rng": rng[1],
            "trainable": [n for n, p in state.model.named_parameters() if p.requires_grad],
            "callbacks": [{"type": type(cb).__name__, "state": cb.state_dict()} for cb in state.callbacks],
            "architecture": architecture_of(state.model), "strategy": strategy_of(state.model),
            "strategies": [t.to_json() for t in strategy_tags(state.model)]}
    return tensors, meta


def save_run(folder, state, rng: tuple[dict[str, torch.Tensor], dict]) -> Path:
    """Checkpoint the run after an epoch (see the top of this module for the crash-safe layout)."""
    tensors, meta = _run_snapshot(state, rng)
    return save_checkpoint(folder, f"epoch-{state.epoch:04d}", tensors, meta)


def resume_from(folder, state) -> int:
    """Restore model, optimizer, scheduler, RNG, history and callbacks into `state`; returns the last finished epoch.

    Everything is checked before anything changes: a refused checkpoint leaves the model as it was."""
    tensors, meta = load_checkpoint(folder)
    check_compatible(state.model, meta)
    saved_types = [c["type"] for c in meta["callbacks"]]
    if saved_types != [type(cb).__name__ for cb in state.callbacks]:
        raise ValueError(f"the checkpoint holds the state of callbacks {saved_types}, but this run has "
                         f"{[type(cb).__name__ for cb in state.callbacks]}; resume with the same callbacks, "
                         "validation loader and checkpoint_dir as the interrupted run")
    rng = unpack_rank(tensors["rng"], meta["rng"], state.rank, state.world_size)
    trainable = set(meta["trainable"])
    for n, p in state.model.named_parameters():
        p.requires_grad_(n in trainable)
    state.model.load_state_dict(tensors["model"])
    state.optimizer.load_state_dict(_unflatten_optimizer(tensors["optimizer"], meta["optimizer"]))
    state.scheduler.load_state_dict(meta["scheduler"])
    if meta["scaler"] is not None and state.scaler is not None:
        state.scaler.load_state_dict(meta["scaler"])
    state.history = History(**meta["history"])
    state.step, state.stop = meta["step"], meta["stop"]
    kept = tensors.get("callbacks", {})
    for i, (cb, saved) in enumerate(zip(state.callbacks, meta["callbacks"], strict=True)):
        cb.load_state_dict(saved["state"])
        cb.load_state_tensors({k.split(".", 1)[1]: t for k, t in kept.items() if k.split(".", 1)[0] == str(i)})
    set_rng_state(*rng, state.generators)
    return meta["epoch"]
