"""What each strategy costs per step, side by side in one run on the embedded MiniLM.

1. Training step (forward + backward + AdamW step) of full, LoRA, prefix tuning and adapters, and the
   head-only step feature extraction takes on cached features; interleaved round-robin, medians.
2. Inference: base model vs LoRA unmerged vs LoRA merged, prefix unbaked vs baked, adapters.
3. Feature extraction's epochs (1: encode + head, 2: cached head only) vs a full fine-tuning epoch.
Report ratios: on a shared machine they are steadier than milliseconds.

    python benchmarks/strategy_costs.py             # ~1-2 minutes on 2 CPU cores
    python benchmarks/strategy_costs.py --quick     # a smoke run
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

import ftlib
from ftlib.adapters import apply_adapters
from ftlib.data import load_movie_reviews, make_loader, take_stratified
from ftlib.device import describe, get_device
from ftlib.feature_extraction import apply_feature_extraction
from ftlib.full import apply_full
from ftlib.lora import apply_lora, merge_lora
from ftlib.models import build_classifier
from ftlib.params import training_memory
from ftlib.prefix_tuning import apply_prefix_tuning, bake_prefix
from ftlib.train import fit, param_groups

TRAINING = {"full": apply_full, "lora": apply_lora, "prefix-tuning": apply_prefix_tuning, "adapters": apply_adapters}


def median_ms(fn, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return times


def interleaved(fns: dict, steps: int, warmup: int) -> dict[str, float]:
    """Median ms per call of each function, taking turns so load drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(steps):
        for k, fn in fns.items():
            times[k] += median_ms(fn, 1, 0)
    return {k: statistics.median(v) for k, v in times.items()}


def train_step(model, opt, batch):
    def step():
        loss = F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's choice)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--quick", action="store_true", help="smaller numbers for a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.batch_size = 2, 1, 8
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    print(f"machine: {describe(device)}; ftlib {ftlib.__version__}, torch {torch.__version__}")
    base, tokenizer = build_classifier()
    base.to(device).eval()
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 30000, (args.batch_size, args.seq_len), generator=g).to(device),
             "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long, device=device),
             "labels": (torch.arange(args.batch_size) % 2).to(device)}

    models = {name: apply(copy.deepcopy(base)).train() for name, apply in TRAINING.items()}
    for m in models.values():  # dropout off: the same work every step
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
    steps = {name: train_step(m, torch.optim.AdamW(param_groups(m), lr=1e-5), batch) for name, m in models.items()}
    head = apply_feature_extraction(copy.deepcopy(base))
    with torch.no_grad():
        feats = head.features(batch["input_ids"], batch["attention_mask"])  # (B, H): the cache
    head_opt = torch.optim.AdamW(head.classifier.parameters(), lr=1e-3)

    def head_step():
        loss = F.cross_entropy(head.head(feats), batch["labels"])
        head_opt.zero_grad(set_to_none=True)
        loss.backward()
        head_opt.step()
    steps["feature-extraction (cached)"] = head_step
    train_ms = interleaved(steps, args.steps, args.warmup)
    print(f"\n### Training step, batch {args.batch_size} x {args.seq_len} tokens (median of {args.steps})\n")
    print("| strategy | ms/step | vs full | accounted memory MB |\n|---|---:|---:|---:|")
    for name, ms in train_ms.items():
        m = models.get(name.split(" ")[0], head)
        print(f"| {name} | {ms:.1f} | {ms / train_ms['full']:.3f} | {training_memory(m).total / 2**20:.0f} |")

    lora = apply_lora(copy.deepcopy(base)).eval()
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.02)  # a trained-looking update, so merging has something to fold
    merged = merge_lora(copy.deepcopy(lora))
    prefix = apply_prefix_tuning(copy.deepcopy(base)).eval()
    baked = bake_prefix(copy.deepcopy(prefix))
    adapters = apply_adapters(copy.deepcopy(base)).eval()
    infer = {"base": base, "lora unmerged": lora, "lora merged": merged, "prefix unbaked": prefix,
             "prefix baked": baked, "adapters": adapters}
    with torch.no_grad():
        outs = {k: m(batch["input_ids"], batch["attention_mask"]) for k, m in infer.items()}
        assert (outs["lora merged"] - outs["lora unmerged"]).abs().max() < 1e-4, "merged LoRA differs"
        assert (outs["prefix baked"] - outs["prefix unbaked"]).abs().max() < 1e-4, "baked prefix differs"
        calls = {k: (lambda m=m: m(batch["input_ids"], batch["attention_mask"])) for k, m in infer.items()}
        infer_ms = interleaved(calls, args.steps, args.warmup)
    print(f"\n### Inference, batch {args.batch_size} x {args.seq_len} tokens, no_grad (median of {args.steps})\n")
    print("| model | ms/batch | vs base |\n|---|---:|---:|")
    for name, ms in infer_ms.items():
        print(f"| {name} | {ms:.1f} | {ms / infer_ms['base']:.3f} |")

    train = take_stratified(load_movie_reviews()["train"], 64 if args.quick else 256)
    epochs = {}
    for name, apply in (("feature-extraction", apply_feature_extraction), ("full", apply_full)):
        model = apply(copy.deepcopy(base))
        loader = make_loader(train, tokenizer, args.batch_size, args.seq_len, shuffle=True)
        history = fit(model, loader, epochs=2, lr=1e-4, device=device, progress=False)
        epochs[name] = [e["seconds"] for e in history.epochs]
    fe1, fe2 = epochs["feature-extraction"]
    full = statistics.mean(epochs["full"])
    print(f"\n### One epoch over {len(train)} reviews (fit, batch {args.batch_size}, length <= {args.seq_len})\n")
    print("| run | seconds | full epoch / this |\n|---|---:|---:|")
    for name, sec in (("full fine-tuning (mean of 2 epochs)", full), ("feature extraction epoch 1 (encode)", fe1),
                      ("feature extraction epoch 2 (cached)", fe2)):
        print(f"| {name} | {sec:.3f} | {full / sec:.1f} |")


if __name__ == "__main__":
    main()
