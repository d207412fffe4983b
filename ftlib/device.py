"""One place that decides where tensors live and which precision runs there."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch


def get_device(name: str | None = None) -> torch.device:
    """cuda -> mps -> cpu, unless `name` or FTLIB_DEVICE says otherwise."""
    given = name or os.environ.get("FTLIB_DEVICE")
    if given:
        source = "device" if name else "FTLIB_DEVICE"
        try:
            device = torch.device(given)
        except RuntimeError:
            raise ValueError(f"{source}={given!r} is not a device; use cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available() or device.type == "mps" and not (
                getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise ValueError(f"{source}={given!r} but this machine has no {device.type.upper()} device "
                             f"(torch {torch.__version__}); use cpu, or unset it to pick the best available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """bf16 on a CUDA card that computes it natively (Ampere and later); fp16 on older ones; None elsewhere.

    T4 and V100 (classroom and Colab GPUs) only emulate bf16, slowly; their tensor cores run fp16."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def needs_grad_scaler(device: torch.device | str) -> bool:
    """fp16 gradients underflow to zero without loss scaling; bf16 has fp32's range and needs none."""
    return autocast_dtype(device) is torch.float16


def grad_scaler(device: torch.device | str) -> torch.amp.GradScaler:
    """A GradScaler, enabled only where needs_grad_scaler says so (disabled it passes everything through)."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(device))


def autocast(device: torch.device | str):
    """Mixed precision where it pays: autocast_dtype(device) on CUDA, full fp32 elsewhere."""
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch so the same seed gives the same metrics on CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def describe(device: torch.device | str | None = None) -> str:
    """A one-line description of the device, for notebooks' first cells and results files."""
    device = torch.device(device) if device is not None else get_device()
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"
