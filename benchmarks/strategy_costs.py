"""What each fine-tuning strategy costs, measured side by side in one run on the embedded MiniLM.

1. Training step (forward + backward + AdamW step) of full fine-tuning, LoRA (r=8, query+value),
   prefix tuning (P=20) and adapters (Houlsby, bottleneck 64), and feature extraction's head-only step
   on cached features. Strategies take turns round-robin (the starting one rotates every round), so
   drift in machine load hits all alike; medians are reported, with the ratio to full fine-tuning, the
   accounted training memory (ftlib.params.training_memory) and, on CUDA, the measured peak memory.
2. Inference (eval mode, no_grad): base model, LoRA unmerged and merged, prefix unbaked and baked,
   adapters; interleaved the same way, ratios to the base model. Merged LoRA must give the unmerged
   outputs and the baked prefix the unbaked ones (checked in fp32, before any timing).
3. Feature extraction vs full fine-tuning per epoch through ftlib.train.fit (epochs=2) on real movie
   reviews: FE epoch 1 (encode every example + head), FE epoch 2 (cached features, head only) and a
   full fine-tuning epoch, from History.epochs[i]["seconds"]; runs alternate FE/full when repeated.

On a busy or shared machine quote the ratios, not the milliseconds. Exits non-zero when a sanity
check fails (merged/baked outputs differ, a loss is not finite, feature caching did not happen).

    python benchmarks/strategy_costs.py             # about 2 minutes on a 2-core CPU (1 thread)
    python benchmarks/strategy_costs.py --quick     # smoke run, well under a minute
    python benchmarks/strategy_costs.py --device cuda --threads 0 --batch-size 32 --seq-len 128
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import ftlib
from ftlib.adapters import adapter_modules, apply_adapters
from ftlib.data import load_movie_reviews, make_loader, take_stratified
from ftlib.device import autocast, describe, get_device
from ftlib.feature_extraction import apply_feature_extraction
from ftlib.full import apply_full
from ftlib.lora import apply_lora, lora_layers, merge_lora
from ftlib.models import build_classifier
from ftlib.params import count_parameters, training_memory
from ftlib.prefix_tuning import apply_prefix_tuning, bake_prefix
from ftlib.train import fit, param_groups, uses_feature_cache

LORA = {"rank": 8, "alpha": 16, "targets": ("query", "value")}
PREFIX = {"prefix_length": 20}
ADAPTERS = {"bottleneck": 64, "placement": "houlsby"}
STRATEGIES = {  # name -> how a fresh copy of the base classifier becomes that strategy
    "full": apply_full,
    "lora": lambda m: apply_lora(m, **LORA),
    "prefix-tuning": lambda m: apply_prefix_tuning(m, **PREFIX),
    "adapters": lambda m: apply_adapters(m, **ADAPTERS),
    "feature-extraction": apply_feature_extraction,
}
LABELS = {"full": "full", "lora": "lora (r=8, q+v)", "prefix-tuning": "prefix-tuning (P=20)",
          "adapters": "adapters (houlsby, 64)", "feature-extraction": "feature-extraction (cached head)"}
MERGE_TOL = 1e-4  # max |logit difference| allowed between merged/baked and unmerged/unbaked (fp32)
DEFAULTS = {"steps": 8, "warmup": 1, "batch_size": 32, "seq_len": 64, "fit_examples": 256, "fit_repeats": 1}
QUICK = {"steps": 3, "warmup": 1, "batch_size": 8, "seq_len": 32, "fit_examples": 32, "fit_repeats": 1}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, help=f"timed rounds per strategy/model (default {DEFAULTS['steps']})")
    ap.add_argument("--warmup", type=int, help=f"untimed rounds first (default {DEFAULTS['warmup']})")
    ap.add_argument("--batch-size", type=int, help=f"sequences per batch (default {DEFAULTS['batch_size']})")
    ap.add_argument("--seq-len", type=int,
                    help=f"tokens per sequence; also fit's max_length (default {DEFAULTS['seq_len']})")
    ap.add_argument("--fit-examples", type=int,
                    help=f"movie reviews per fit epoch in part 3 (default {DEFAULTS['fit_examples']})")
    ap.add_argument("--fit-repeats", type=int,
                    help=f"fit runs per strategy in part 3, alternating, medians (default {DEFAULTS['fit_repeats']})")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: steadiest on a shared machine; 0 = torch's choice)")
    ap.add_argument("--device", default=None, help="cpu, cuda, mps (default: ftlib.device.get_device())")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items())
                    + " (explicit options still win)")
    args = ap.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for name in ("steps", "batch_size", "seq_len", "fit_examples", "fit_repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.threads < 0:
        ap.error("--warmup and --threads must be >= 0")
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def interleaved(fns: dict[str, Callable[[int], object]], steps: int, warmup: int,
                device: torch.device) -> dict[str, list[float]]:
    """Milliseconds of each call, round-robin; round i starts with function i mod n (ABC BCA CAB ...)."""
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for i in range(warmup + steps):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            t0 = time.perf_counter()
            fns[name](i)
            sync(device)
            if i >= warmup:
                times[name].append(1000 * (time.perf_counter() - t0))
    return times


def make_training(name: str, base, batch: dict, device: torch.device, seed: int):
    """(model, step): a fresh copy of `base` under strategy `name` and a closure doing one training step.

    The step is what fit does per batch minus clipping and the LR schedule: forward under ftlib's
    autocast (bf16 on CUDA, fp32 elsewhere), cross-entropy, backward, AdamW on param_groups(model).
    Feature extraction's step runs the head only, on features encoded once (fit's cache)."""
    model = STRATEGIES[name](copy.deepcopy(base)).to(device).train()
    opt = torch.optim.AdamW(param_groups(model), lr=1e-5)
    losses: list[torch.Tensor] = []
    if name == "feature-extraction":
        assert uses_feature_cache(model), "feature extraction must leave a frozen, eval-mode encoder"
        with torch.no_grad(), autocast(device):
            feats = model.features(batch["input_ids"], batch["attention_mask"]).float()  # (B, H): the cache

        def forward():
            return model.head(feats)  # (B, C)
    else:
        def forward():
            return model(batch["input_ids"], batch["attention_mask"])  # (B, C)

    def step(i: int) -> None:
        torch.manual_seed(seed + i)  # the same dropout masks for a strategy at the same round
        opt.zero_grad(set_to_none=True)
        with autocast(device):
            loss = F.cross_entropy(forward().float(), batch["labels"])
        loss.backward()
        opt.step()
        losses.append(loss.detach())

    step.losses = losses
    return model, step


def cuda_peak_bytes(name: str, base, batch: dict, device: torch.device, seed: int) -> int:
    """Peak CUDA memory a strategy adds, measured alone: its weights (a copy of base), gradients,
    AdamW state and activations of two steps (the second has optimizer state from the first)."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize(device)
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    model, step = make_training(name, base, batch, device, seed)
    step(0)
    step(1)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - start
    del model, step
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def inference_models(base, device: torch.device, seed: int) -> dict:
    """Base, LoRA unmerged/merged, prefix unbaked/baked and adapters, all eval mode.

    LoRA's B and the adapters' up-projections start at zero (the model is unchanged until it trains);
    they get small random values so merging and the adapters have a real update to carry."""
    torch.manual_seed(seed)
    lora = apply_lora(copy.deepcopy(base), **LORA).eval()
    adapters = apply_adapters(copy.deepcopy(base), **ADAPTERS).eval()
    with torch.no_grad():
        for layer in lora_layers(lora).values():
            layer.lora_B.normal_(0, 0.02)
        for adapter in adapter_modules(adapters):
            adapter.up_proj.weight.normal_(0, 0.02)
    prefix = apply_prefix_tuning(copy.deepcopy(base), **PREFIX).eval()
    models = {"base": base, "lora unmerged": lora, "lora merged": merge_lora(copy.deepcopy(lora)),
              "prefix unbaked": prefix, "prefix baked": bake_prefix(copy.deepcopy(prefix)), "adapters": adapters}
    return {k: m.to(device).eval() for k, m in models.items()}


def inference_checks(models: dict, batch: dict, base, device: torch.device) -> tuple[list[str], list[str]]:
    """(report lines, failures): outputs compared in fp32, no autocast."""
    with torch.no_grad():
        out = {k: m(batch["input_ids"], batch["attention_mask"]).float() for k, m in models.items()}  # (B, C)
        fresh = apply_adapters(copy.deepcopy(base), **ADAPTERS).to(device).eval()
        fresh_diff = (fresh(batch["input_ids"], batch["attention_mask"]).float() - out["base"]).abs().max().item()

    def diff(a: str, b: str) -> float:
        return (out[a] - out[b]).abs().max().item()

    rows = [("lora merged vs unmerged", diff("lora merged", "lora unmerged"), "<=", MERGE_TOL),
            ("prefix baked vs unbaked", diff("prefix baked", "prefix unbaked"), "<=", MERGE_TOL),
            ("fresh adapters vs base (identity at init)", fresh_diff, "<=", MERGE_TOL),
            ("lora merged vs base (the update is real)", diff("lora merged", "base"), ">", 10 * MERGE_TOL)]
    lines, failures = [], []
    for label, value, op, tol in rows:
        ok = value <= tol if op == "<=" else value > tol
        lines.append(f"- {label}: max |logit diff| {value:.2e} (want {op} {tol:.0e}) {'ok' if ok else 'FAILED'}")
        if not ok:
            failures.append(f"{label}: max |logit diff| {value:.2e}, want {op} {tol:.0e}")
    if lora_layers(models["lora merged"]):
        failures.append("merge_lora left LoRALinear modules in the model")
    if not models["prefix baked"].prefix_encoder.baked:
        failures.append("bake_prefix left the prefix unbaked")
    return lines, failures


def fmt_ms(times: list[float]) -> str:
    return f"{statistics.median(times):.1f} | {min(times):.1f}–{max(times):.1f}"


def ratio(x: float) -> str:
    return f"{x:.3f}" if x >= 0.01 else f"{x:.1e}"  # feature extraction's head step is ~1e-3 of a full one


def mb(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.0f}"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    failures: list[str] = []
    started = time.perf_counter()

    import transformers

    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"machine: {describe(device)}; {platform.processor() or platform.machine()}, {platform.system()}; "
          f"load average at start {load}")
    print(f"versions: ftlib {ftlib.__version__}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, python {platform.python_version()}")
    print(f"model: embedded all-MiniLM-L6-v2 + 2-class head (mean pooling); batch {args.batch_size} x "
          f"{args.seq_len} tokens (random ids, no padding); {args.warmup} warm-up + {args.steps} timed "
          f"rounds, round-robin, medians; autocast: {'bf16' if device.type == 'cuda' else 'none (fp32)'}")

    torch.manual_seed(args.seed)  # the head's initialisation: the same numbers every run
    base, tokenizer = build_classifier()
    base.to(device).eval()
    g = torch.Generator().manual_seed(args.seed)
    vocab = base.config.vocab_size
    batch = {"input_ids": torch.randint(1000, vocab, (args.batch_size, args.seq_len), generator=g).to(device),
             "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long, device=device),
             "labels": (torch.arange(args.batch_size) % 2).to(device)}

    # 1. Training step
    built = {name: make_training(name, base, batch, device, args.seed) for name in STRATEGIES}
    train_ms = interleaved({k: step for k, (_, step) in built.items()}, args.steps, args.warmup, device)
    for name, (_, step) in built.items():
        bad = [x.item() for x in step.losses if not math.isfinite(x.item())]
        if bad:
            failures.append(f"{name}: non-finite training loss {bad[0]}")
    peaks = {}
    if device.type == "cuda":
        peaks = {name: cuda_peak_bytes(name, base, batch, device, args.seed) for name in STRATEGIES}
    full_med = statistics.median(train_ms["full"])
    print(f"\n### 1. Training step (forward + backward + AdamW), batch {args.batch_size} x {args.seq_len}\n")
    header = ("| strategy | trainable params | median ms/step | min–max ms | vs full (median) | vs full (min) "
              "| accounted MB (w + g + adam) |")
    sep = "|---|---:|---:|---:|---:|---:|---:|"
    full_min = min(train_ms["full"])
    if peaks:
        header, sep = header + " CUDA peak MB (alone, 2 steps) |", sep + "---:|"
    print(header + "\n" + sep)
    for name, (model, _) in built.items():
        mem, count = training_memory(model), count_parameters(model)
        row = (f"| {LABELS[name]} | {count.trainable:,} | {fmt_ms(train_ms[name])} | "
               f"{ratio(statistics.median(train_ms[name]) / full_med)} | {ratio(min(train_ms[name]) / full_min)} | "
               f"{mb(mem.total)} "
               f"({mb(mem.parameters)} + {mb(mem.gradients)} + {mb(mem.optimizer)}) |")
        print(row + (f" {mb(peaks[name])} |" if peaks else ""))
    print("\nvs full (min): ratio of the fastest steps, the steadier figure when load comes in bursts. "
          "Accounted memory excludes activations; feature extraction's step excludes encoding, done once "
          "per example in epoch 1 (part 3)." + ("" if peaks else " CUDA peak memory: not measured (not CUDA)."))
    del built
    gc.collect()

    # 2. Inference
    models = inference_models(base, device, args.seed)
    lines, failed = inference_checks(models, batch, base, device)
    failures += failed

    def forward_of(model):
        def call(_i: int) -> None:
            with torch.no_grad(), autocast(device):
                model(batch["input_ids"], batch["attention_mask"])
        return call

    infer_ms = interleaved({k: forward_of(m) for k, m in models.items()}, args.steps, args.warmup, device)
    med = {k: statistics.median(v) for k, v in infer_ms.items()}
    print(f"\n### 2. Inference (eval, no_grad), batch {args.batch_size} x {args.seq_len}\n")
    low = {k: min(v) for k, v in infer_ms.items()}
    print("| model | median ms/batch | min–max ms | vs base (median) | vs base (min) |\n|---|---:|---:|---:|---:|")
    for name, times in infer_ms.items():
        print(f"| {name} | {fmt_ms(times)} | {med[name] / med['base']:.3f} | {low[name] / low['base']:.3f} |")
    print(f"\nlora merged / unmerged: {med['lora merged'] / med['lora unmerged']:.3f}; "
          f"prefix baked / unbaked: {med['prefix baked'] / med['prefix unbaked']:.3f}; "
          f"adapters / base: {med['adapters'] / med['base']:.3f}")
    print("\nChecks (fp32, before timing):\n" + "\n".join(lines))
    del models
    gc.collect()

    # 3. Feature extraction vs full fine-tuning, per epoch, through fit
    train = take_stratified(load_movie_reviews()["train"], args.fit_examples)
    epochs: dict[str, list[list[float]]] = {"feature-extraction": [], "full": []}
    for r in range(args.fit_repeats):
        for name in ("feature-extraction", "full") if r % 2 == 0 else ("full", "feature-extraction"):
            model = STRATEGIES[name](copy.deepcopy(base))
            if name == "feature-extraction" and not uses_feature_cache(model):
                failures.append("feature extraction: fit would not cache features")
            loader = make_loader(train, tokenizer, args.batch_size, args.seq_len, shuffle=True, seed=args.seed)
            history = fit(model, loader, epochs=2, lr=1e-3 if name == "feature-extraction" else 5e-5,
                          device=device, progress=False, seed=args.seed)
            epochs[name].append([e["seconds"] for e in history.epochs])
            bad = [e["train_loss"] for e in history.epochs if not math.isfinite(e["train_loss"])]
            if bad:
                failures.append(f"fit {name}: non-finite training loss {bad[0]}")
            del model, history
    fe1, fe2 = (statistics.median(run[i] for run in epochs["feature-extraction"]) for i in range(2))
    full1, full2 = (statistics.median(run[i] for run in epochs["full"]) for i in range(2))
    full = statistics.median([full1, full2])
    n = len(train)
    print(f"\n### 3. One epoch over {n} movie reviews (fit, epochs=2, batch {args.batch_size}, "
          f"max_length {args.seq_len}, dynamic padding; median of {args.fit_repeats} run(s) each)\n")
    print("| run | seconds | reviews/s | full epoch / this |\n|---|---:|---:|---:|")
    for label, sec in (("full fine-tuning, epoch 1", full1), ("full fine-tuning, epoch 2", full2),
                       ("feature extraction, epoch 1 (encode all + head)", fe1),
                       ("feature extraction, epoch 2 (cached features, head only)", fe2)):
        print(f"| {label} | {sec:.3f} | {n / sec:,.0f} | {full / sec:.1f} |")
    print(f"\nfull epoch (median of both) / FE epoch 2: {full / fe2:.0f}x; full / FE epoch 1: {full / fe1:.1f}x; "
          f"FE epoch 1 / FE epoch 2: {fe1 / fe2:.0f}x")

    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average at end {load}")
    if failures:
        print("\nSANITY CHECKS FAILED:\n" + "\n".join(f"- {f}" for f in failures))
        raise SystemExit(1)
    print("all sanity checks passed")


if __name__ == "__main__":
    main()
