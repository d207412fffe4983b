"""Time one LoRA training step (forward + backward + AdamW step): ftlib's LoRA vs PEFT's, on the embedded MiniLM.

Both models start from the same encoder and head, use rank 8, alpha 16, targets query+value and no LoRA
dropout, and get identical lora_A matrices (copied from ftlib into PEFT), so their losses must agree
step for step; the script checks that, and the initial loss, alongside the timings. Steps are
interleaved, ftlib and PEFT taking turns (AB BA AB ...: each goes first every other round), so drift in
machine load hits both alike; the medians are reported.

    python benchmarks/lora_vs_peft.py                       # defaults: well under a minute on 2 CPU cores
    python benchmarks/lora_vs_peft.py --steps 50 --threads 4 --batch-size 32 --seq-len 128
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
from ftlib.lora import apply_lora, lora_layers
from ftlib.models import SequenceClassifier, build_classifier
from ftlib.params import count_parameters

RANK, ALPHA, TARGETS = 8, 16, ("query", "value")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per implementation (default 10)")
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per batch (default 8)")
    ap.add_argument("--seq-len", type=int, default=32, help="tokens per sequence (default 32)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per implementation first (default 2)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: steadiest on a shared machine; 0 = torch's choice)")
    ap.add_argument("--device", default=None, help="cpu, cuda, mps (default: ftlib.device.get_device())")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name in ("steps", "batch_size", "seq_len"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.threads < 0:
        ap.error("--warmup and --threads must be >= 0")
    return args


def build_pair(device: torch.device, seed: int):
    """(ftlib model, PEFT model): same MiniLM, same head, same LoRA init; both SequenceClassifiers."""
    import peft

    base, _ = build_classifier()
    torch.manual_seed(seed)
    base.classifier.reset_parameters()
    ours = apply_lora(copy.deepcopy(base), rank=RANK, alpha=ALPHA, targets=TARGETS)
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(TARGETS), lora_dropout=0.0)
    theirs_encoder = peft.get_peft_model(copy.deepcopy(base.encoder), config)
    theirs = SequenceClassifier(theirs_encoder, base.num_labels, pooling=base.pooling)
    theirs.classifier.load_state_dict(base.classifier.state_dict())
    # Same A in both (B is zero in both), so the two runs compute the same numbers
    peft_layers = {n: m for n, m in theirs_encoder.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}
    with torch.no_grad():
        for name, layer in lora_layers(ours.encoder).items():
            target = peft_layers[f"base_model.model.{name}"]
            target.lora_A["default"].weight.copy_(layer.lora_A.T)
            target.lora_B["default"].weight.copy_(layer.lora_B.T)
    assert count_parameters(ours) == count_parameters(theirs), (count_parameters(ours), count_parameters(theirs))
    return ours.to(device).train(), theirs.to(device).train()


def make_step(model, batch, device: torch.device):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step(seed: int) -> float:
        torch.manual_seed(seed)  # the same dropout masks in both models at the same step
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return loss.item()

    return step


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    ours, theirs = build_pair(device, args.seed)
    vocab = ours.config.vocab_size
    g = torch.Generator().manual_seed(args.seed)
    batch = {
        "input_ids": torch.randint(1000, vocab, (args.batch_size, args.seq_len), generator=g).to(device),
        "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long, device=device),
        "labels": torch.randint(0, 2, (args.batch_size,), generator=g).to(device),
    }
    with torch.no_grad():
        ours.eval(), theirs.eval()
        initial = [F.cross_entropy(m(batch["input_ids"], batch["attention_mask"]), batch["labels"]).item()
                   for m in (ours, theirs)]
        ours.train(), theirs.train()
    if abs(initial[0] - initial[1]) > 1e-5:
        raise SystemExit(f"initial losses differ: ftlib {initial[0]:.6f} vs peft {initial[1]:.6f}")

    steps = {"ftlib": make_step(ours, batch, device), "peft": make_step(theirs, batch, device)}
    times: dict[str, list[float]] = {"ftlib": [], "peft": []}
    losses: dict[str, list[float]] = {"ftlib": [], "peft": []}
    for i in range(args.warmup + args.steps):
        for name in ("ftlib", "peft") if i % 2 == 0 else ("peft", "ftlib"):  # AB BA AB ...: neither always goes first
            t0 = time.perf_counter()
            loss = steps[name](args.seed + i)
            elapsed = time.perf_counter() - t0
            losses[name].append(loss)
            if i >= args.warmup:
                times[name].append(elapsed)
    drift = max(abs(a - b) for a, b in zip(losses["ftlib"], losses["peft"], strict=True))
    med = {name: 1000 * statistics.median(t) for name, t in times.items()}
    spread = {name: (1000 * min(t), 1000 * max(t)) for name, t in times.items()}

    import peft
    import transformers

    print(f"machine: {describe(device)}; {platform.processor() or platform.machine()}, {platform.system()}")
    print(f"versions: ftlib {getattr(ftlib, '__version__', '?')}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, peft {peft.__version__}, python {platform.python_version()}")
    print(f"model: embedded all-MiniLM-L6-v2 + 2-class head; LoRA r={RANK}, alpha={ALPHA}, "
          f"targets {'+'.join(TARGETS)}; trainable {count_parameters(ours).trainable:,} of "
          f"{count_parameters(ours).total:,}")
    print(f"batch {args.batch_size} x {args.seq_len} tokens; {args.warmup} warm-up + {args.steps} timed steps "
          f"each, interleaved\n")
    print(f"initial loss: ftlib {initial[0]:.6f}, peft {initial[1]:.6f}; "
          f"max |loss difference| over {len(losses['ftlib'])} steps: {drift:.2e}\n")
    print("| implementation | median ms/step | min–max ms |")
    print("|---|---:|---:|")
    for name in ("ftlib", "peft"):
        print(f"| {name} | {med[name]:.1f} | {spread[name][0]:.1f}–{spread[name][1]:.1f} |")
    print(f"\nratio ftlib/peft (median): {med['ftlib'] / med['peft']:.3f}")
    if drift > 1e-3:
        raise SystemExit(f"the two implementations diverged (max loss difference {drift:.2e})")


if __name__ == "__main__":
    main()
