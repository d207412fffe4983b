"""What the LoRA variants and QLoRA cost, measured on the embedded MiniLM (ftlib, issue 14).

1. Training step (forward + backward + AdamW) of LoRA, DoRA and QLoRA (r=8, query+value), taking turns
   round-robin so machine-load drift hits all alike; medians, with the ratio to LoRA. rsLoRA, PiSSA and
   LoRA+ compute exactly what LoRA computes (another constant, another init, other learning rates), so
   their step is LoRA's and is not timed separately.
2. Memory of the frozen base after apply_qlora: the 36 encoder weight matrices as NF4 codes plus
   double-quantised scales, bytes per weight, against fp32; and the whole model (embeddings, LayerNorms and
   biases stay fp32).
3. Quantisation error per layer: ||W - dequant(W)||_F / ||W||_F for every encoder linear layer, and what
   it does to the encoder's output on a real batch (cosine similarity of the pooled features).

Exits non-zero if a sanity check fails (a loss is not finite; DoRA/QLoRA start from a different loss than
they should). On a shared machine quote the ratios, not the milliseconds.

    python benchmarks/lora_variants.py                 # about a minute on a 2-core CPU (1 thread)
    python benchmarks/lora_variants.py --steps 3 --warmup 1    # smoke run
    python benchmarks/lora_variants.py --device cuda --threads 0 --batch-size 32 --seq-len 128
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import ftlib
from ftlib.device import describe, get_device
from ftlib.dora import apply_dora
from ftlib.lora import apply_lora
from ftlib.models import build_classifier
from ftlib.params import count_parameters
from ftlib.qlora import apply_qlora
from ftlib.quant import quant_layers, quant_memory, quantize


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per strategy")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's choice)")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    if min(args.steps, args.batch_size, args.seq_len) < 1 or args.warmup < 0 or args.threads < 0:
        ap.error("--steps, --batch-size, --seq-len must be >= 1; --warmup, --threads >= 0")
    return args


def make_step(model, batch):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        loss.backward()
        opt.step()
        if batch["labels"].device.type == "cuda":
            torch.cuda.synchronize()
        return loss.item()

    return step


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    base, tokenizer = build_classifier()
    base.eval()  # no dropout: the initial losses must be comparable
    models = {"lora": apply_lora(copy.deepcopy(base)), "dora": apply_dora(copy.deepcopy(base)),
              "qlora": apply_qlora(copy.deepcopy(base))}
    for m in models.values():
        m.to(device)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, base.config.vocab_size, (args.batch_size, args.seq_len), generator=g),
             "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long),
             "labels": torch.randint(0, 2, (args.batch_size,), generator=g)}
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad():
        first = {n: F.cross_entropy(m(batch["input_ids"], batch["attention_mask"]), batch["labels"]).item()
                 for n, m in models.items()}
    if abs(first["dora"] - first["lora"]) > 1e-5:  # DoRA starts exactly where LoRA does (m = ||W||, B = 0)
        print(f"FAIL: DoRA's initial loss {first['dora']:.6f} != LoRA's {first['lora']:.6f}")
        return 1
    steps = {n: make_step(m, batch) for n, m in models.items()}
    times: dict[str, list[float]] = {n: [] for n in models}
    order = list(models)
    for i in range(args.warmup + args.steps):
        for name in order[i % 3:] + order[: i % 3]:  # rotate who goes first
            t0 = time.perf_counter()
            loss = steps[name]()
            if not torch.isfinite(torch.tensor(loss)):
                print(f"FAIL: {name} loss {loss}")
                return 1
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    med = {n: 1000 * statistics.median(t) for n, t in times.items()}

    print(f"machine: {describe(device)}; {platform.processor() or platform.machine()}; threads "
          f"{torch.get_num_threads()}; torch {torch.__version__}; ftlib {getattr(ftlib, '__version__', '?')}")
    print(f"batch {args.batch_size} x {args.seq_len} tokens; {args.warmup} warm-up + {args.steps} timed steps each, "
          "round-robin\n")
    print("## 1. Training step (r=8, query+value)\n")
    print("| strategy | trainable | median ms/step | x LoRA | initial loss |")
    print("|---|---:|---:|---:|---:|")
    for n, m in models.items():
        print(f"| {n} | {count_parameters(m).trainable:,} | {med[n]:.1f} | {med[n] / med['lora']:.2f} | {first[n]:.4f} |")

    q = models["qlora"]
    mem = quant_memory(q)
    fp32_model = sum(p.numel() * p.element_size() for p in base.parameters())
    params = {id(p): p for p in q.parameters()}.values()
    q_model = sum(p.numel() * p.element_size() for p in params if not p.requires_grad) + mem.quantized_bytes
    print("\n## 2. Memory of the frozen base after apply_qlora\n")
    print("| what | fp32 bytes | after apply_qlora | bytes per weight |")
    print("|---|---:|---:|---:|")
    print(f"| 36 encoder weight matrices ({mem.weights:,} weights) | {mem.fp32_bytes:,} | {mem.quantized_bytes:,} | "
          f"4 -> {mem.bytes_per_weight:.4f} |")
    print(f"| whole frozen model (embeddings, LayerNorms, biases stay fp32) | {fp32_model:,} | {q_model:,} | "
          f"{q_model / fp32_model:.3f} of fp32 |")

    print("\n## 3. Quantisation error per layer: ||W - Q(W)|| / ||W||\n")
    originals = dict(base.named_modules())
    errors = {}
    for name, layer in quant_layers(q).items():
        w = originals[name.removesuffix(".base")].weight.detach().to(device)
        errors[name.removesuffix(".base").split("encoder.layer.")[1]] = ((layer.dequantize() - w).norm() / w.norm()).item()
    kinds = sorted({k.split(".", 1)[1] for k in errors})
    print("| layer | " + " | ".join(kinds) + " |")
    print("|---|" + "---:|" * len(kinds))
    for i in range(base.config.num_hidden_layers):
        print(f"| {i} | " + " | ".join(f"{errors[f'{i}.{k}']:.4f}" for k in kinds) + " |")
    print(f"\nmean {statistics.mean(errors.values()):.4f}, max {max(errors.values()):.4f}")
    texts = ["a gripping, beautifully acted film", "dull and far too long", "the best thing I have seen this year",
             "a mess from start to finish", "I laughed, I cried, I bought the DVD"]
    enc = {k: v.to(device) for k, v in tokenizer(texts, padding=True, return_tensors="pt").items()}
    fresh = quantize(copy.deepcopy(base)).to(device).eval()  # q has trained: compare the untrained NF4 base
    with torch.no_grad():
        cos = F.cosine_similarity(base.to(device).features(**enc), fresh.features(**enc), dim=-1)
    print(f"pooled features, fp32 vs NF4 base, on {len(texts)} reviews: cosine similarity min {cos.min():.4f}, "
          f"mean {cos.mean():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
