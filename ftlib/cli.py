"""`python -m ftlib train|compare`: the course's experiments from the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from .profiles import PROFILES
from .strategies import STRATEGIES


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="hub name or local path (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--profile", default=None, help=f"one of {sorted(PROFILES)} (default: full on CUDA, else quick)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--output", type=Path, default=Path("results"), help="folder for results (default: results/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ftlib", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="fine-tune with one strategy and report test accuracy")
    t.add_argument("--strategy", required=True, help=f"one of: {', '.join(STRATEGIES)}")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the strategy's)")
    t.add_argument("--epochs", type=int, default=None, help="default: the profile's")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--grad-accum", type=int, default=1, help="batches per optimizer step (a larger effective batch)")
    t.add_argument("--checkpoint-dir", type=Path, default=None, help="save a crash-safe checkpoint every epoch")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    _common(t)
    # --- begin: compare / sweep / study (issue 12; owned by ftlib/compare.py) ---
    from .compare import register_cli

    register_cli(sub, _common)
    # --- end: compare / sweep / study ---
    return p


def _train(args, kwargs) -> None:
    from .experiment import run_strategy
    from .train import end_distributed

    try:
        model, history, result = run_strategy(args.strategy, lr=args.lr, epochs=args.epochs, seed=args.seed,
                                              grad_accum=args.grad_accum, checkpoint_dir=args.checkpoint_dir,
                                              resume=args.resume, **kwargs)
    finally:
        end_distributed()
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch, one process reports
        return
    for key, value in asdict(result).items():
        print(f"{key:>18}: {value:,.4f}" if isinstance(value, float) else f"{key:>18}: {value}")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"train_{args.strategy}.json").write_text(json.dumps(asdict(result), indent=1))
    history.to_json(args.output / f"history_{args.strategy}.json")
    print(f"\nwritten: {args.output}/train_{args.strategy}.json, history_{args.strategy}.json")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    kwargs = dict(profile=args.profile, model_name=args.model, device=args.device, progress=not args.no_progress)
    try:
        (_train if args.command == "train" else args.handler)(args, kwargs)  # handler: see register_cli
    except (ValueError, OSError, ModuleNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
