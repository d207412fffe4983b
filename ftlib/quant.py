"""NF4: 4-bit NormalFloat quantisation with double-quantised scales, from scratch (Dettmers et al. 2023,
"QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314).

A weight is cut into blocks of 64 values; each block is divided by its absolute maximum (absmax), so
it lies in [-1, 1], and each value is replaced by the index of the nearest of 16 code values. The code
values are quantiles of a standard normal, because pre-trained weights are roughly normal: every code
is then used about equally often. Two 4-bit indices share one byte. The absmax constants (one fp32 per
64 weights, 0.5 bit per weight) are quantised again: minus their mean, in blocks of 256, to the 8-bit
dynamic code, which costs 8/64 + 32/(64*256) = 0.127 bit per weight. Total: 4.127 bits, 0.516 bytes.
The layout follows bitsandbytes (high nibble first), so the packed bytes can be compared with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ftlib.models import SequenceClassifier, base_encoder

# Table 8 of the QLoRA paper (also bitsandbytes' NF4 table), to check the derivation against.
PUBLISHED_NF4 = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0)


def nf4_code(offset: float = 0.5 * ((1 - 1 / 30) + (1 - 1 / 32))) -> torch.Tensor:
    """The 16 NF4 values: normal quantiles, 8 positive and 7 negative plus an exact zero, scaled to [-1, 1].

    The outermost quantile cannot be 1 (it would be infinite): the paper takes the mean of the
    1 - 1/(2*15) and 1 - 1/(2*16) quantiles, offset = 0.9677.
    """
    half = torch.tensor(0.5, dtype=torch.float64)
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])  # 8 values
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])  # 7 values
    values = torch.cat([positive, torch.special.ndtri(half)[None], negative]).sort().values  # (16,)
    return (values / values.abs().max()).float()


def dynamic_code() -> torch.Tensor:
    """The 256-value signed 8-bit dynamic-tree code (Dettmers 2015) used for the second quantisation.

    Each exponent e in 10^-6 .. 10^0 gets 2^(e+6) evenly spaced fractions in (0.1, 1), both signs; plus 0 and 1.
    """
    values = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = ((edges[:-1] + edges[1:]) / 2 * 10 ** (i - 6)).tolist()
        values += means + [-m for m in means]
    return torch.tensor(sorted(values), dtype=torch.float32)  # (256,)


NF4 = nf4_code()
DYNAMIC = dynamic_code()


def _nearest(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code value (code sorted); a value on a midpoint goes to the lower one."""
    code = code.to(x.device)  # the codebooks live on the CPU; a weight may be on a GPU (tests/test_gpu.py)
    return torch.bucketize(x, (code[:-1] + code[1:]) / 2).to(torch.uint8)


def _check_blocksize(numel: int, blocksize: int, what: str = "weight") -> None:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 2 or blocksize % 2:
        raise ValueError(f"blocksize must be an even int >= 2 (64 is QLoRA's), got {blocksize!r}")
    if numel % blocksize:
        divisors = [b for b in (16, 32, 64, 128, 256) if numel % b == 0]
        raise ValueError(f"blocksize={blocksize} does not divide the {what}'s {numel:,} values; choose one that "
                         f"does ({', '.join(map(str, divisors)) or 'none of 16..256 does'})")


@dataclass(frozen=True)
class Blockwise8bit:
    """absmax values quantised to the dynamic 8-bit code: value = DYNAMIC[q] * scale[block] + offset."""

    q: torch.Tensor  # (n,) uint8
    scale: torch.Tensor  # (ceil(n / blocksize),) float32: each block's absmax
    offset: torch.Tensor  # () float32: the mean subtracted first, so both signs of the code are used
    blocksize: int


def quantize_absmax(absmax: torch.Tensor, blocksize: int = 256) -> Blockwise8bit:
    """Second quantisation: centre the scales, then 8-bit blocks of 256 (the last block may be short)."""
    offset = absmax.mean()
    x = absmax - offset  # (n,)
    n, full = x.numel(), x.numel() // blocksize * blocksize
    scales = [x[:full].view(-1, blocksize).abs().amax(dim=1)] + ([x[full:].abs().amax()[None]] if full < n else [])
    scale = torch.cat(scales).clamp(min=1e-38)  # (blocks,)
    per_value = scale.repeat_interleave(blocksize)[:n]  # (n,)
    return Blockwise8bit(_nearest((x / per_value).clamp(-1, 1), DYNAMIC), scale, offset, blocksize)


def dequantize_absmax(s: Blockwise8bit) -> torch.Tensor:
    per_value = s.scale.repeat_interleave(s.blocksize)[: s.q.numel()]  # (n,)
    return DYNAMIC.to(s.q.device)[s.q.long()] * per_value + s.offset


def pack(idx: torch.Tensor) -> torch.Tensor:
    """Two 4-bit indices per byte, the first in the high nibble (bitsandbytes' order)."""
    return (idx[0::2] << 4) | idx[1::2]  # (n,) -> (n/2,)


def unpack(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack([packed >> 4, packed & 0xF], dim=1).view(-1)  # (n/2,) -> (n,)


def quantize_nf4(w: torch.Tensor, blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed codes (numel/2,) uint8, absmax (numel/blocksize,) fp32) of a weight, block by block."""
    _check_blocksize(w.numel(), blocksize)
    blocks = w.detach().float().reshape(-1, blocksize)  # (n_blocks, blocksize), row-major like bitsandbytes
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    scaled = (blocks / absmax.clamp(min=1e-38)[:, None]).clamp(-1, 1)  # in [-1, 1]
    return pack(_nearest(scaled.view(-1), NF4)), absmax


def dequantize_nf4(packed: torch.Tensor, absmax: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The fp32 weight the codes stand for: NF4[index] * absmax of its block."""
    values = NF4.to(packed.device)[unpack(packed).long()]  # (numel,)
    return (values.view(absmax.numel(), -1) * absmax[:, None]).view(shape)


class QuantLinear(nn.Module):
    """A frozen nn.Linear stored as NF4 codes with double-quantised scales; dequantised on the fly in forward."""

    def __init__(self, linear: nn.Linear, blocksize: int = 64, double_quant: bool = True, dq_blocksize: int = 256):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"QuantLinear quantises an nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.blocksize, self.double_quant = blocksize, double_quant
        packed, absmax = quantize_nf4(linear.weight, blocksize)
        self.register_buffer("codes", packed)  # (out*in/2,) uint8
        if double_quant:
            s = quantize_absmax(absmax, dq_blocksize)
            self.dq_blocksize = dq_blocksize
            self.register_buffer("absmax_q", s.q)  # (out*in/blocksize,) uint8
            self.register_buffer("absmax_scale", s.scale)  # (ceil(blocks/256),) fp32
            self.register_buffer("absmax_offset", s.offset)  # () fp32
        else:
            self.register_buffer("absmax", absmax)  # (out*in/blocksize,) fp32
        self.bias = linear.bias  # same Parameter: full precision (tiny), frozen like the rest of the base
        if self.bias is not None:
            self.bias.requires_grad_(False)

    def scales(self) -> torch.Tensor:
        """Each block's absmax, decoded from its 8-bit form when double-quantised."""
        if not self.double_quant:
            return self.absmax
        return dequantize_absmax(Blockwise8bit(self.absmax_q, self.absmax_scale, self.absmax_offset, self.dq_blocksize))

    def dequantize(self) -> torch.Tensor:
        """The weight the layer computes with, (out, in) fp32."""
        return dequantize_nf4(self.codes, self.scales(), (self.out_features, self.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype), self.bias)  # (B, T, in) -> (B, T, out)

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear holding the dequantised weight (frozen): what `dequantize` puts back."""
        w = self.dequantize()
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device)
        with torch.no_grad():
            lin.weight.copy_(w)
        lin.weight.requires_grad_(False)
        if self.bias is not None:
            lin.bias = self.bias
        return lin

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, nf4 blocksize={self.blocksize}, "
                f"double_quant={self.double_quant}")


def quant_layers(model: nn.Module) -> dict[str, QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def _encoder_prefix(model: nn.Module) -> str:
    return "encoder" if isinstance(model, SequenceClassifier) else ""


def encoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every plain nn.Linear in the encoder (LoRA's frozen bases included), never the head."""
    return {n: m for n, m in base_encoder(model).named_modules(prefix=_encoder_prefix(model)) if type(m) is nn.Linear}


def check_quantizable(model: nn.Module, blocksize: int) -> dict[str, nn.Linear]:
    """The layers quantize would replace, after checking that blocksize divides every weight."""
    if quant_layers(model):
        raise ValueError("model is already quantised; quantising NF4 codes again would compound the error. "
                         "Call dequantize(model) first if you really mean to re-quantise")
    linears = encoder_linears(model)
    if not linears:
        raise ValueError("the encoder has no nn.Linear layers to quantise")
    for name, lin in linears.items():
        _check_blocksize(lin.weight.numel(), blocksize, f"weight of {name}")
    return linears


def quantize(model: nn.Module, blocksize: int = 64, double_quant: bool = True) -> nn.Module:
    """Replace every encoder nn.Linear (the head stays fp32) by a frozen QuantLinear, in place."""
    for name, lin in check_quantizable(model, blocksize).items():  # every layer checked before any changes
        model.set_submodule(name, QuantLinear(lin, blocksize, double_quant).train(lin.training))
    return model


def dequantize_layers(model: nn.Module) -> nn.Module:
    """Put a plain nn.Linear (the dequantised weight, frozen) back for every QuantLinear, in place."""
    layers = quant_layers(model)
    if not layers:
        raise ValueError("model has no quantised layers; quantize(model) first")
    for name, q in layers.items():
        model.set_submodule(name, q.to_linear().train(q.training))
    return model


@dataclass(frozen=True)
class QuantMemory:
    """Bytes of the quantised linear weights against the same weights in fp32."""

    weights: int  # parameters the QuantLinear layers stand for (out * in each)
    quantized_bytes: int  # codes + 8-bit scales + second-level scales + offsets

    @property
    def bytes_per_weight(self) -> float:
        return self.quantized_bytes / max(self.weights, 1)

    @property
    def fp32_bytes(self) -> int:
        return 4 * self.weights


def quant_memory(model: nn.Module) -> QuantMemory:
    """What the QuantLinear layers store for their weights (the shared code tables are not per layer)."""
    weights = nbytes = 0
    for q in quant_layers(model).values():
        weights += q.in_features * q.out_features
        nbytes += sum(b.numel() * b.element_size() for b in q.buffers(recurse=False))
    return QuantMemory(weights, nbytes)
