"""`python -m ftlib train|compare`: the course's experiments from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .profiles import PROFILES
from .strategies import STRATEGIES


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="hub name or local path (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--profile", default=None, help=f"one of {sorted(PROFILES)} (default: full on CUDA, else quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--output", type=Path, default=Path("results"), help="folder for JSON results")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ftlib", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="fine-tune with one strategy and report test accuracy")
    t.add_argument("--strategy", required=True, help=f"one of: {', '.join(STRATEGIES)}")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the strategy's)")
    t.add_argument("--epochs", type=int, default=None, help="default: the profile's")
    _common(t)
    c = sub.add_parser("compare", help="train several strategies on the same data and print one table")
    c.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated names (default: all)")
    _common(c)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .experiment import compare, format_table, results_dicts, run_strategy  # heavy imports after --help

    kwargs = dict(profile=args.profile, model_name=args.model, seed=args.seed, device=args.device,
                  progress=not args.no_progress)
    try:
        if args.command == "train":
            _, history, result = run_strategy(args.strategy, lr=args.lr, epochs=args.epochs, **kwargs)
            results = [result]
        else:
            names = [s.strip() for s in args.strategies.split(",") if s.strip()]
            results = compare(names, **kwargs)
    except (ValueError, OSError, ModuleNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\nprofile {results[0].profile} on {results[0].device}, seed {args.seed}\n")
    print(format_table(results))
    args.output.mkdir(parents=True, exist_ok=True)
    out = args.output / f"{args.command}.json"
    out.write_text(json.dumps(results_dicts(results), indent=1))
    print(f"\nwritten: {out}")
    return 0
