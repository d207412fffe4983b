"""What a trained model costs once deployed: the tensors a task stores beside the shared base model, their file
size, and the inference time of its serving form (LoRA merged, a prefix baked) against the base model's."""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file
from torch import nn

from .data import make_loader
from .device import autocast
from .params import count_parameters
from .strategies import get_recipe

if TYPE_CHECKING:
    from .study import Context


def storage_form(model: nn.Module) -> nn.Module:
    """Drop what exists only for training (prefix tuning's MLP: bake it); LoRA stays factored. In place."""
    source = getattr(model, "prefix_encoder", None)
    if source is not None and not getattr(source, "baked", True):
        from .prefix_tuning import bake_prefix

        bake_prefix(model)
    return model


def inference_form(model: nn.Module, name: str | None = None) -> nn.Module:
    """What serves predictions: the recipe's own `deploy(model)` when it has one, else the storage form with
    LoRA merged into its weights. In place."""
    from .lora import lora_layers, merge_lora

    deploy = getattr(get_recipe(name), "deploy", None) if name else None
    if deploy is not None:
        return deploy(model) or model
    storage_form(model)
    from .quant import quant_layers

    if lora_layers(model) and not quant_layers(model):  # a 4-bit base cannot absorb LoRA (ftlib.qlora says why)
        merge_lora(model)
    return model


def stored_tensors(model: nn.Module, base: nn.Module) -> dict[str, torch.Tensor]:
    """Tensors a task must store beside the shared base model: every parameter not bit-identical to a base one."""
    pool: dict[tuple, list[torch.Tensor]] = {}
    for p in base.parameters():
        pool.setdefault(tuple(p.shape), []).append(p.detach())
    out, seen = {}, set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        t = p.detach()
        if not any(q.device == t.device and q.dtype == t.dtype and torch.equal(q, t) for q in pool.get(tuple(t.shape), [])):
            out[name] = t
    return out


@torch.no_grad()
def _time_forward(model: nn.Module, batches: list[dict], device) -> float:
    """Median seconds of one eval forward pass over the batches (after one untimed warm-up pass)."""
    model.eval()
    times = []
    for i, batch in enumerate([batches[0], *batches]):
        inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast(device):
            model(**inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def deployment(ctx: Context, model: nn.Module, trained: int, name: str | None = None) -> dict:
    """Parameters trained and stored per task (shares of one denominator), disk bytes, inference time."""
    deployed = storage_form(copy.deepcopy(model))
    stored = stored_tensors(deployed, ctx.base)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "task.safetensors"
        save_file({n: t.contiguous().cpu() for n, t in stored.items()}, str(path))
        disk = path.stat().st_size
    deployed = inference_form(deployed, name)
    loader = make_loader(ctx.test_set(), ctx.tokenizer, ctx.profile.batch_size, ctx.profile.max_length)
    batches = [b for _, b in zip(range(ctx.profile.timed_batches), loader, strict=False)]  # best of 2 rounds
    base_s, ours_s = [], []
    for _ in range(2):  # interleaved, so a change of machine load hits both
        base_s.append(_time_forward(ctx.base, batches, ctx.device))
        ours_s.append(_time_forward(deployed, batches, ctx.device))
    n_stored = sum(t.numel() for t in stored.values())
    return {"trained": trained, "stored": n_stored, "denominator": ctx.base_total,
            "trained_percent": 100 * trained / ctx.base_total, "stored_percent": 100 * n_stored / ctx.base_total,
            "disk_bytes": disk, "stored_names": sorted(stored)[:50],
            "inference_params": count_parameters(deployed).total,  # == denominator: nothing added at inference
            "inference_seconds": min(ours_s), "base_inference_seconds": min(base_s),
            "inference_ratio": min(ours_s) / min(base_s)}
