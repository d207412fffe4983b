"""NF4 from scratch (ftlib.quant) and QLoRA (ftlib.qlora): codebook, packing, parity with bitsandbytes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_model
from torch import nn

from ftlib.lora import LoRALinear, apply_lora, lora_layers, merge_lora
from ftlib.params import count_parameters, trainable_names
from ftlib.qlora import QLoRALinear, apply_qlora, dequantize
from ftlib.quant import (
    DYNAMIC,
    NF4,
    PUBLISHED_NF4,
    QuantLinear,
    _nearest,
    dequantize_absmax,
    dequantize_nf4,
    nf4_code,
    pack,
    quant_layers,
    quant_memory,
    quantize,
    quantize_absmax,
    quantize_nf4,
    unpack,
)


def logits(model, batch):
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"])


def weight(out=96, inp=128, seed=0, std=0.05):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed)) * std


def bnb_functional():
    """bitsandbytes.functional, or a skip that says why (it needs its native library for this platform)."""
    pytest.importorskip("bitsandbytes", reason="bitsandbytes (a dev dependency) is needed for the parity checks")
    try:
        import bitsandbytes.functional as bf

        bf.quantize_4bit(torch.zeros(64), blocksize=64, quant_type="nf4")
    except Exception as e:  # noqa: BLE001 - any load failure means: no reference on this machine
        pytest.skip(f"bitsandbytes cannot quantise on this machine: {e}")
    return bf


# --- the codebook -----------------------------------------------------------------------------------


def test_nf4_code_derived_from_normal_quantiles_equals_the_published_table():
    assert NF4.shape == (16,) and NF4[0] == -1 and NF4[7] == 0 and NF4[15] == 1
    assert torch.all(NF4[1:] > NF4[:-1])  # sorted, no duplicates
    torch.testing.assert_close(NF4, torch.tensor(PUBLISHED_NF4), atol=2e-7, rtol=0)
    assert (NF4 > 0).sum() == 8 and (NF4 < 0).sum() == 7  # asymmetric: an exact zero and one more positive
    assert not torch.allclose(nf4_code(offset=0.99), NF4, atol=1e-3)  # the offset matters


def test_nf4_beats_an_evenly_spaced_4bit_grid_on_normal_weights():
    """Quantile codes spend their 16 values where normal weights are: more even use, smaller error."""
    w = weight(512, 512, std=1.0).view(-1, 64)
    scaled = (w / w.abs().amax(dim=1, keepdim=True)).view(-1)
    results = {}
    for name, code in {"nf4": NF4, "even": torch.linspace(-1, 1, 16)}.items():
        idx = _nearest(scaled, code).long()
        share = torch.bincount(idx, minlength=16).float() / idx.numel()
        entropy = -(share[share > 0] * share[share > 0].log2()).sum()
        results[name] = (entropy, (code[idx] - scaled).square().mean())
    assert results["nf4"][0] > results["even"][0] and results["nf4"][1] < results["even"][1]
    assert 1 / 64 == pytest.approx(float((_nearest(scaled, NF4) == 15).float().mean()), abs=0.01)  # ~ one max per block


def test_dynamic_code_has_256_sorted_values_in_minus_one_one():
    assert DYNAMIC.shape == (256,) and DYNAMIC[0] > -1 and DYNAMIC[-1] == 1 and (DYNAMIC == 0).sum() == 1
    assert torch.all(DYNAMIC[1:] > DYNAMIC[:-1])


# --- quantise, pack, dequantise ---------------------------------------------------------------------


def test_pack_puts_two_codes_per_byte_high_nibble_first():
    idx = torch.tensor([1, 2, 15, 0, 7, 9], dtype=torch.uint8)
    assert pack(idx).tolist() == [0x12, 0xF0, 0x79]
    assert torch.equal(unpack(pack(idx)), idx)


def test_quantize_nf4_rounds_each_value_to_the_nearest_code_times_its_block_absmax():
    w = weight()
    packed, absmax = quantize_nf4(w, 64)
    assert packed.dtype == torch.uint8 and packed.numel() == w.numel() // 2 and absmax.numel() == w.numel() // 64
    torch.testing.assert_close(absmax, w.view(-1, 64).abs().amax(dim=1))
    scaled = (w.view(-1, 64) / absmax[:, None]).view(-1)
    nearest = (scaled[:, None] - NF4[None]).abs().argmin(dim=1)  # brute force over the 16 codes
    assert torch.equal(unpack(packed).long(), nearest)
    deq = dequantize_nf4(packed, absmax, w.shape)
    assert torch.equal(deq.view(-1, 64).abs().amax(dim=1), absmax)  # each block's largest value is exact
    assert (deq - w).abs().max() <= absmax.max() * (NF4[1:] - NF4[:-1]).max() / 2 + 1e-7  # half a gap at most


def test_double_quantisation_of_the_scales_is_close_and_small():
    absmax = weight(1, 64 * 300, std=1.0).abs().view(-1, 64).amax(dim=1)  # 300 scales: one short block
    s = quantize_absmax(absmax, 256)
    assert s.q.dtype == torch.uint8 and s.scale.numel() == 2 and s.offset == absmax.mean()
    back = dequantize_absmax(s)
    assert (back - absmax).abs().max() < 0.02 * absmax.max()


def test_quantlinear_stores_about_half_a_byte_per_weight_and_computes_with_the_dequantised_weight():
    lin = nn.Linear(128, 96)
    lin.weight.data = weight()
    q = QuantLinear(lin)
    assert not list(q.parameters(recurse=False))[0].requires_grad  # the bias is frozen
    assert [n for n, _ in q.named_parameters()] == ["bias"]  # the weight is gone: buffers only
    mem = quant_memory(nn.Sequential(q))
    n = 128 * 96
    assert mem.weights == n and mem.quantized_bytes == n // 2 + n // 64 + 4 * -(-(n // 64) // 256) + 4
    assert 0.5158 <= mem.bytes_per_weight < 0.53
    x = torch.randn(3, 128)
    torch.testing.assert_close(q(x), F.linear(x, q.dequantize(), lin.bias))
    half_gap = (NF4[1:] - NF4[:-1]).max() / 2  # the worst rounding, as a fraction of a block's absmax
    assert (q.dequantize() - lin.weight).abs().max() < 1.02 * half_gap * lin.weight.abs().max()
    plain = QuantLinear(lin, double_quant=False)
    assert quant_memory(nn.Sequential(plain)).bytes_per_weight == pytest.approx(0.5 + 4 / 64)


# --- parity with bitsandbytes -----------------------------------------------------------------------


def test_codebook_and_packed_codes_match_bitsandbytes():
    bf = bnb_functional()
    torch.testing.assert_close(bf.get_4bit_type("nf4", device="cpu")[:16], NF4, atol=2e-7, rtol=0)
    torch.testing.assert_close(bf.create_dynamic_map(signed=True), DYNAMIC, atol=0, rtol=0)
    for shape in [(96, 128), (384, 384), (384, 1536), (1536, 384)]:  # MiniLM's shapes
        w = weight(*shape, std=0.04)
        theirs, state = bf.quantize_4bit(w, blocksize=64, quant_type="nf4")
        packed, absmax = quantize_nf4(w, 64)
        assert torch.equal(theirs.view(-1), packed)
        assert torch.equal(state.absmax, absmax)
        torch.testing.assert_close(dequantize_nf4(packed, absmax, w.shape), bf.dequantize_4bit(theirs, state),
                                   atol=1e-7, rtol=0)


def test_rows_shorter_than_a_block_match_bitsandbytes_reference_path():
    """Same codes; for rows shorter than a block (here 32 < 64) bitsandbytes 0.50's CPU C kernel decodes
    with the wrong block scales (error 0.097 vs 0.02 measured), so compare with its pure-torch path."""
    bf = bnb_functional()
    try:
        from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    except ImportError:
        pytest.skip("this bitsandbytes has no pure-torch 4-bit path to compare with")
    w = weight(37 * 64, 32, std=0.04)
    theirs, state = bf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    packed, absmax = quantize_nf4(w, 64)
    assert torch.equal(theirs.view(-1), packed) and torch.equal(state.absmax, absmax)
    reference = _dequantize_4bit_compute(theirs.view(-1), state.absmax, bf.get_4bit_type("nf4", device="cpu"), 64,
                                         w.shape, torch.float32)
    torch.testing.assert_close(dequantize_nf4(packed, absmax, w.shape), reference, atol=1e-7, rtol=0)


def test_double_quantisation_matches_bitsandbytes_up_to_its_rounding_at_near_ties():
    """bitsandbytes' CPU kernel picks a neighbour of the nearest 8-bit code for a few scales; ours is nearest."""
    bf = bnb_functional()
    w = weight(384, 1536, std=0.04)
    theirs, state = bf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    q = QuantLinear(_linear(w))
    assert torch.equal(theirs.view(-1), q.codes)
    assert torch.equal(state.offset, q.absmax_offset)
    torch.testing.assert_close(state.state2.absmax, q.absmax_scale, atol=0, rtol=0)
    same = state.absmax == q.absmax_q
    assert same.float().mean() > 0.99 and (state.absmax.int() - q.absmax_q.int()).abs().max() <= 1
    target = (w.view(-1, 64).abs().amax(dim=1) - q.absmax_offset)
    ours_err = (DYNAMIC[q.absmax_q.long()] * q.absmax_scale.repeat_interleave(256) - target).abs()
    their_err = (DYNAMIC[state.absmax.long()] * q.absmax_scale.repeat_interleave(256) - target).abs()
    assert torch.all(ours_err <= their_err + 1e-9)  # where they differ, ours is the nearer code
    theirs_w = bf.dequantize_4bit(theirs, state).view(-1, 64)
    ours_w = q.dequantize().view(-1, 64)
    torch.testing.assert_close(ours_w[same], theirs_w[same], atol=1e-6, rtol=0)


def _linear(w: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin


# --- quantize / apply_qlora / dequantize on tiny models ----------------------------------------------


def test_quantize_replaces_every_encoder_linear_but_not_the_head(arch, batch):
    model = make_model(arch)
    before = logits(model, batch)
    quantize(model, blocksize=32)
    assert len(quant_layers(model)) == 2 * 6 and isinstance(model.classifier, nn.Linear)
    assert not any(type(m) is nn.Linear for n, m in model.encoder.named_modules())
    after = logits(model, batch)
    assert not torch.equal(after, before) and torch.allclose(after, before, atol=0.1)  # 4-bit: close, not equal


def test_apply_qlora_is_lora_on_the_quantised_base_and_only_lora_and_head_train(arch, batch):
    reference = quantize(make_model(arch), blocksize=32)
    model = apply_qlora(make_model(arch), blocksize=32)
    assert torch.equal(logits(model, batch), logits(reference, batch))  # B = 0: exactly the quantised base
    assert all(isinstance(m, QLoRALinear) and isinstance(m.base, QuantLinear) for m in lora_layers(model).values())
    assert set(trainable_names(model)) == {n for n in trainable_names(apply_lora(make_model(arch)))}
    plain = apply_lora(make_model(arch))
    assert count_parameters(model).trainable == count_parameters(plain).trainable


def test_qlora_trains_a_and_b_through_the_dequantised_base(batch):
    model = apply_qlora(make_model(), blocksize=32).train()
    frozen = {n: b.clone() for n, b in model.named_buffers()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(b, frozen[n]) for n, b in model.named_buffers())  # codes and scales never move
    assert all(layer.lora_B.abs().sum() > 0 for layer in lora_layers(model).values())


def test_merge_on_a_quantised_base_is_refused_and_dequantize_gives_a_plain_mergeable_model(arch, batch):
    model = apply_qlora(make_model(arch), blocksize=32)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(std=0.1)
    before = logits(model, batch)
    with pytest.raises(ValueError, match="cannot merge LoRA into a 4-bit NF4 base.*dequantize\\(model\\) first"):
        merge_lora(model)
    assert torch.equal(logits(model, batch), before)
    dequantize(model)
    assert not quant_layers(model) and all(type(m) is LoRALinear for m in lora_layers(model).values())
    torch.testing.assert_close(logits(model, batch), before, atol=1e-5, rtol=0)
    assert set(trainable_names(model)) == set(trainable_names(apply_lora(make_model(arch))))
    merge_lora(model)
    torch.testing.assert_close(logits(model, batch), before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("call, match", [
    (lambda m: quantize(quantize(m, 32), 32), "already quantised"),
    (lambda m: apply_qlora(apply_qlora(m, blocksize=32), blocksize=32), "already quantised"),
    (lambda m: apply_qlora(m, blocksize=64), r"blocksize=64 does not divide the weight of .*1,184 values.*16, 32"),
    (lambda m: quantize(m, blocksize=3), "blocksize must be an even int"),
    (lambda m: apply_qlora(apply_lora(m), blocksize=32), "already has LoRA layers"),
    (lambda m: dequantize(m), "no quantised layers"),
])
def test_bad_inputs_raise_clearly(call, match):
    with pytest.raises(ValueError, match=match):
        call(make_model())


def test_a_failed_apply_qlora_leaves_the_model_untouched():
    model = make_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="does not divide"):
        apply_qlora(model, blocksize=64)
    assert not quant_layers(model) and not lora_layers(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.slow
def test_minilm_base_bytes_after_apply_qlora():
    from ftlib.models import build_classifier

    model, _ = build_classifier()
    linear_weights = sum(m.weight.numel() for n, m in model.encoder.named_modules()
                         if isinstance(m, nn.Linear))
    apply_qlora(model)
    mem = quant_memory(model)
    assert mem.weights == linear_weights == 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    shapes = [(384, 384)] * 24 + [(384, 1536)] * 12
    assert mem.quantized_bytes == sum(o * i // 2 + o * i // 64 + 4 * -(-(o * i // 64) // 256) + 4 for o, i in shapes)
    assert mem.bytes_per_weight == pytest.approx(0.5 + 1 / 64 + 4 / (64 * 256), abs=2e-5)  # 0.5159 vs fp32's 4
