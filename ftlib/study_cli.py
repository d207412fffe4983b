"""The command line of the comparison: `python -m ftlib compare | sweep | study` (registered by ftlib.cli).

Each handler parses its options and calls the library (ftlib.compare, ftlib.study); it refuses a bad option
before any training starts."""

from __future__ import annotations

from pathlib import Path

from . import compare as comparison
from .results import write_json


def _names(text: str | None) -> list[str] | None:
    """Strategy names from --strategies; an empty list is refused before any work."""
    if text is None:
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        from .strategies import STRATEGIES

        raise ValueError(f"--strategies is empty; give comma-separated names from: {', '.join(STRATEGIES)}")
    return names


def _writable(args) -> None:
    """The results folder is checked before training, not after it."""
    if args.output is not None:
        from .task import writable_folder

        writable_folder(args.output)


def _floats(text: str | None) -> list[float] | None:
    return [float(s) for s in text.split(",") if s.strip()] if text else None


def register_cli(sub, common) -> None:
    """Add the compare, sweep and study subcommands; each sets `args.handler(args, kwargs)`."""
    from .cli import _positive
    from .strategies import STRATEGIES

    def results_arg(p, default):
        p.add_argument("--results", dest="output", type=Path, default=default,
                       help="results folder: one JSON record per run, reused when it exists (default: "
                            f"{default or 'results/<profile>-<machine>'}; --output is the same)")

    c = sub.add_parser("compare", help="train several strategies on the same data: statistics, baselines, verdicts")
    c.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated names (default: all)")
    c.add_argument("--seeds", type=_positive(int), default=1, help="seeds 0..N-1: initialisation and data order only")
    c.add_argument("--data-seeds", type=_positive(int), default=None, help="also vary the training subset (default: 1, fixed)")
    c.add_argument("--lr-grid", action="store_true", help="choose each strategy's rate on validation accuracy first")
    c.add_argument("--lrs", default=None, help="comma-separated rates for the grid (default: recipe x 1/3, 1, 3)")
    common(c)  # its --output is the results folder; --results is the same option
    c.set_defaults(handler=_compare_cli)
    s = sub.add_parser("sweep", help="pick each strategy's learning rate from a small grid by validation accuracy")
    s.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated names (default: all)")
    s.add_argument("--lrs", default=None, help="comma-separated rates (default: recipe x 1/3, 1, 3)")
    s.add_argument("--seeds", type=_positive(int), default=1)
    common(s)
    s.set_defaults(handler=_sweep_cli)
    st = sub.add_parser("study", help="the committed study: LR sweep, seeds, baselines, learning curves, memory")
    st.add_argument("--strategies", default=None, help="comma-separated names (default: every registered one)")
    st.add_argument("--seeds", type=_positive(int), default=5)
    st.add_argument("--data-seeds", type=_positive(int), default=1)
    st.add_argument("--curve-seeds", type=_positive(int), default=None, help="seeds per learning-curve point (default: --seeds)")
    st.add_argument("--curve-sizes", default="100,300,1000,3000,all", help="training-set sizes ('all' = 8,058)")
    st.add_argument("--no-sweep", action="store_true", help="use each recipe's learning rate")
    st.add_argument("--no-curves", action="store_true")
    st.add_argument("--no-memory", action="store_true")
    st.add_argument("--bootstrap", type=_positive(int), default=10_000, help="bootstrap resamples (default 10,000)")
    st.add_argument("--summarise-only", action="store_true",
                    help="train nothing: write the summary from the records already in the results folder "
                         "(after several processes shared it, or after an interruption)")
    common(st)
    results_arg(st, None)
    st.set_defaults(handler=_study_cli)
    for p in (c, s):
        results_arg(p, Path("results"))


def _compare_cli(args, kwargs) -> None:
    names = _names(args.strategies)
    _writable(args)
    extra = {}
    if args.data_seeds is not None:
        extra["data_seeds"] = args.data_seeds
    if args.lr_grid or args.lrs:
        extra.update(lr_grid=True, lrs=_floats(args.lrs))
    df = comparison.compare(names, seeds=args.seeds, output=args.output, **kwargs, **extra)
    r = df.iloc[0]
    print(f"\nprofile {r['profile']} on {r['device']}, seeds {args.seeds}; "
          f"TREC-6 probe accuracy before fine-tuning {df.attrs['probe_base_accuracy']:.3f}\n")
    records = df.attrs.get("records")
    print(comparison.format_report(records) if records else comparison.format_table(df))
    print(f"\nrecords: {args.output}/<profile>/<strategy>/*.json (existing ones are reused)")


def _sweep_cli(args, kwargs) -> None:
    from .study import check_strategies, load_context, sweep

    names = check_strategies(_names(args.strategies))
    ctx = load_context(kwargs["profile"], kwargs["device"], kwargs["model_name"])
    chosen, grid = sweep(ctx, names, args.output, lrs=_floats(args.lrs), seeds=args.seeds)
    write_json(comparison.chosen_lrs_path(args.output, ctx.profile.name), chosen)
    print(grid.to_string(index=False))
    print("\nchosen: " + ", ".join(f"{k} {v:.3g}" for k, v in chosen.items()))


def _study_cli(args, kwargs) -> None:
    from .study import run_study

    sizes = [None if s.strip() == "all" else int(s) for s in args.curve_sizes.split(",") if s.strip()]
    default = args.output is None or args.output == Path("results")  # the study's own default folder
    run_study(kwargs["profile"], args.seeds, None if default else args.output, _names(args.strategies), kwargs["device"],
              kwargs["model_name"], sweep_lrs=not args.no_sweep, curves=not args.no_curves,
              curve_seeds=args.curve_seeds, curve_sizes=sizes, memory=not args.no_memory,
              data_seeds=args.data_seeds, n_boot=args.bootstrap, run_missing=not args.summarise_only)
