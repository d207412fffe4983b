"""CUDA checks, run where a GPU is lent (`pytest -m gpu`); skipped everywhere else, never needed by CI.

Each one proves on the card what the CPU tests prove on the CPU: the same numbers in fp32, the precision
the card should use, training touching only the intended tensors, merging and quantising unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_batch, make_model, rows_loader

from ftlib.device import autocast_dtype
from ftlib.lora import apply_lora, merge_lora
from ftlib.quant import dequantize_nf4, quantize_nf4
from ftlib.train import fit

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (pytest -m gpu on a GPU machine)")]


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 matmuls round to 10 mantissa bits: switch them off so fp32 on the card compares with the CPU."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_fp32_forward_on_the_card_equals_the_cpu(arch):
    model, batch = make_model(arch), make_batch()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    cpu = model(**inputs)
    gpu = copy.deepcopy(model).cuda()(**{k: v.cuda() for k, v in inputs.items()})
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-4)


def test_the_card_gets_the_precision_it_computes_natively():
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert autocast_dtype("cuda") is expected
    assert autocast_dtype("cpu") is None


def test_lora_training_on_the_card_moves_only_lora_and_the_head():
    model = apply_lora(make_model(), rank=4, alpha=8, targets=("query", "value"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, rows_loader(16), epochs=1, lr=1e-2, device="cuda", progress=False)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach().cpu(), before[n])}
    assert moved and all(".lora_" in n or n.startswith("classifier.") for n in moved), sorted(moved)
    assert next(model.parameters()).device.type == "cuda"


def test_merged_lora_equals_unmerged_on_the_card():
    model = apply_lora(make_model(), rank=4, alpha=8).cuda()
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)  # B starts at zero: perturb it so the merge matters
    inputs = {k: v.cuda() for k, v in make_batch().items() if k != "labels"}
    unmerged = model(**inputs)
    merged = merge_lora(model)(**inputs)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-4)


def test_nf4_on_the_card_equals_nf4_on_the_cpu():
    w = torch.randn(96, 64, generator=torch.Generator().manual_seed(0))
    packed_cpu, absmax_cpu = quantize_nf4(w)
    packed_gpu, absmax_gpu = quantize_nf4(w.cuda())
    assert torch.equal(packed_gpu.cpu(), packed_cpu)
    torch.testing.assert_close(dequantize_nf4(packed_gpu, absmax_gpu, w.shape).cpu(),
                               dequantize_nf4(packed_cpu, absmax_cpu, w.shape))
