"""Precision by capability: bf16 where the GPU computes it natively, else fp16 with loss scaling (CPU: fp32)."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from ftlib import device


@pytest.mark.parametrize("bf16, dtype, scaler", [(True, torch.bfloat16, False), (False, torch.float16, True)],
                         ids=["A100-like", "T4-like"])
def test_cuda_precision_follows_bf16_support(monkeypatch, bf16, dtype, scaler):
    """T4/V100 emulate bf16 (slowly): fp16 there, which needs a GradScaler against underflowing gradients."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # this CPU build disables the CUDA context it creates, and says so
        assert device.autocast("cuda").fast_dtype is dtype
    assert device.autocast_dtype("cuda") is dtype
    assert device.needs_grad_scaler("cuda") is scaler


@pytest.mark.parametrize("name", ["cpu", "mps"])
def test_other_devices_run_in_full_precision(name):
    assert device.autocast_dtype(name) is None
    assert not device.needs_grad_scaler(name)
    assert isinstance(device.autocast(name), contextlib.nullcontext)
    assert not device.grad_scaler(name).is_enabled()
