"""ftlib train|predict|compare: fine-tune a strategy on the course data or on your own CSV, classify texts
with a saved task, or compare strategies side by side."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from .profiles import PROFILES
from .strategies import STRATEGIES

EXAMPLES = """\
your own data (a CSV with a header row):
  {prog} train --strategy lora --data reviews.csv --text-column text --label-column label --output runs/x
  {prog} predict --task runs/x "text one" "text two"
"""


PURPOSE = {"quick": "for a CPU: about a minute per strategy on 2 cores", "full": "for a GPU: the real thing",
           "smoke": "for CI: proves everything runs, says nothing about accuracy"}


def _profile_help() -> str:
    """What each profile means, read from the profiles themselves (so a new one shows up here)."""
    lines = ["profiles (--profile, or FTLIB_PROFILE; default: full on CUDA, else quick):"]
    for p in PROFILES.values():
        train = "all training examples" if p.max_train is None else f"{p.max_train:,} training examples"
        purpose = f" ({PURPOSE[p.name]})" if p.name in PURPOSE else ""
        lines.append(f"  {p.name:<6} {train}, {p.epochs} epoch{'s' * (p.epochs != 1)}, max_length {p.max_length}, "
                     f"batch {p.batch_size}{purpose}")
    lines.append("  (with --data, every training example is used unless --max-train; the profile sets the rest)")
    return "\n".join(lines)


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text} (leave the option out for the default)")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated numbers such as 0.8,0.1,0.1") from None


def _common(p: argparse.ArgumentParser, output: str | None = "results") -> None:
    p.add_argument("--model", default=None, help="hub name or local folder (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--profile", default=None, help=f"one of {sorted(PROFILES)}; see the profiles below")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--output", type=Path, default=None if output is None else Path(output),
                   help="folder for results (default: results/; with --data: runs/<file>-<strategy>/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")


def parser(prog: str = "ftlib") -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=fmt,
                                epilog=f"{_profile_help()}\n\n{EXAMPLES.format(prog=prog)}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="fine-tune with one strategy (course data, or yours with --data)",
                       formatter_class=fmt, epilog=f"{_profile_help()}\n\n{EXAMPLES.format(prog=prog)}")
    t.add_argument("--strategy", required=True, help=f"one of: {', '.join(STRATEGIES)}")
    t.add_argument("--lr", type=_positive(float), default=None, help="peak learning rate (default: the strategy's)")
    t.add_argument("--epochs", type=_positive(int), default=None, help="default: the profile's")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--grad-accum", type=_positive(int), default=1, help="batches per optimizer step")
    t.add_argument("--checkpoint-dir", type=Path, default=None, help="save a crash-safe checkpoint every epoch")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    d = t.add_argument_group("your own data")
    d.add_argument("--data", type=Path, default=None, help="CSV/TSV file with a header row (instead of the course data)")
    d.add_argument("--text-column", default="text", help="column holding the texts (default: text)")
    d.add_argument("--label-column", default="label", help="column holding the labels (default: label)")
    d.add_argument("--encoding", default="utf-8", help="the files' text encoding (default: utf-8; e.g. latin-1)")
    d.add_argument("--split", type=_fractions, default=None,
                   help="fractions to split --data into train,validation,test (default 0.8,0.1,0.1); "
                        "train,validation with only --test, train,test with only --validation")
    d.add_argument("--validation", type=Path, default=None, help="a separate validation file")
    d.add_argument("--test", type=Path, default=None, help="a separate test file")
    d.add_argument("--max-train", type=_positive(int), default=None, metavar="N", help="keep a class-balanced subset of N")
    d.add_argument("--max-length", type=_positive(int), default=None, help="tokens per text (default: the profile's)")
    d.add_argument("--overwrite", action="store_true", help="replace a task already in --output")
    d.add_argument("--no-save", action="store_true", help="do not save the trained task")
    _common(t, output=None)
    r = sub.add_parser("predict", help="labels and probabilities for texts, from a task saved by train --data")
    r.add_argument("texts", nargs="*", help="texts to classify")
    r.add_argument("--task", type=Path, required=True, help="the --output folder of train --data")
    r.add_argument("--file", type=Path, default=None, help="a text file, one text per line")
    r.add_argument("--csv", type=Path, default=None, help="a CSV/TSV file; texts from --text-column")
    r.add_argument("--text-column", default="text", help="with --csv (default: text)")
    r.add_argument("--encoding", default="utf-8", help="of --file/--csv (default: utf-8)")
    r.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    r.add_argument("--batch-size", type=_positive(int), default=32)
    r.add_argument("--json", action="store_true", help="one JSON object per text, with every probability")
    # --- begin: compare / sweep / study (issue 12; owned by ftlib/compare.py) ---
    from .study_cli import register_cli

    register_cli(sub, _common)
    # --- end: compare / sweep / study ---
    return p


def _check_model_folder(model: str | None) -> None:
    """A local folder must hold a saved model (config.json); say so before anything loads."""
    if model is None:
        return
    path = Path(model)
    if path.is_dir() and not (path / "config.json").is_file():
        raise ValueError(f"--model {model} holds no config.json, so no model; pass a folder written by "
                         "save_pretrained, a hub name, or leave --model out for the embedded model")
    if not path.exists() and (model.startswith((".", "/", "~")) or os.sep + os.sep in model or model.count("/") > 1):
        raise FileNotFoundError(f"--model {model}: no such folder; check the path")


def _train_course(args, kwargs) -> None:
    from .experiment import run_strategy
    from .task import check_checkpoint, writable_folder
    from .train import end_distributed

    output = writable_folder(args.output or Path("results"))  # before training, not after it
    if args.resume and args.checkpoint_dir is not None:
        check_checkpoint(args.checkpoint_dir)
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
    (output / f"train_{args.strategy}.json").write_text(json.dumps(asdict(result), indent=1))
    history.to_json(output / f"history_{args.strategy}.json")
    print(f"\nwritten: {output}/train_{args.strategy}.json, history_{args.strategy}.json")


def _train(args, kwargs) -> None:
    from .strategies import get_recipe

    get_recipe(args.strategy)
    _check_model_folder(args.model)
    if args.data is None:
        for option in ("validation", "test", "split", "max_train", "max_length", "no_save"):
            if getattr(args, option):
                raise ValueError(f"--{option.replace('_', '-')} needs --data (your own CSV); without it the "
                                 "course data and its fixed split are used")
        return _train_course(args, kwargs)
    _train_file(args, kwargs)


class _EpochLine:
    """Prints one line per epoch: train loss and the validation metrics (a fit callback, duck-typed so that
    `ftlib --help` need not import torch)."""

    def on_train_begin(self, state): ...
    def on_epoch_begin(self, state): ...
    def on_step_end(self, state): ...
    def on_train_end(self, state): ...
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...
    def state_tensors(self) -> dict:
        return {}

    def load_state_tensors(self, tensors: dict) -> None: ...

    def on_epoch_end(self, state) -> None:
        row = state.history.epochs[-1]
        print(f"epoch {row['epoch']}/{state.epochs}  train loss {row['train_loss']:.4f}  "
              f"val loss {row.get('val_loss', float('nan')):.4f}  accuracy {row.get('val_accuracy', float('nan')):.4f}  "
              f"macro-F1 {row.get('val_macro_f1', float('nan')):.4f}  ({row['seconds']:.1f} s)", flush=True)


def load_user_splits(args) -> tuple[dict, dict]:
    """train/validation/test from --data (split as --split says) and the optional --validation/--test files."""
    from .data import from_csv, split_dataset

    read = dict(text_column=args.text_column, label_column=args.label_column, encoding=args.encoding)
    full = from_csv(args.data, **read)
    given = {k: getattr(args, k) for k in ("validation", "test") if getattr(args, k) is not None}
    parts = ("train", *(k for k in ("validation", "test") if k not in given))
    fractions = None
    if len(parts) == 1:
        if args.split is not None:
            raise ValueError("--split has nothing to split when both --validation and --test are given; drop it")
        splits = {"train": full}
    else:
        fractions = args.split or ((0.8, 0.1, 0.1) if len(parts) == 3 else (0.9, 0.1))
        if len(fractions) != len(parts):
            raise ValueError(f"--split needs {len(parts)} fractions here ({', '.join(parts)}), got {len(fractions)}: "
                             f"e.g. --split {'0.8,0.1,0.1' if len(parts) == 3 else '0.9,0.1'}")
        splits = split_dataset(full, fractions, seed=args.seed, names=parts)
    for k, path in given.items():
        splits[k] = from_csv(path, **read, label_names=full.label_names)
    from .task import file_sha256

    files = {"train": args.data, **given}
    card = {"files": {k: {"path": str(p), "sha256": file_sha256(p)} for k, p in files.items()},
            "text_column": args.text_column, "label_column": args.label_column, "encoding": args.encoding,
            "split": dict(zip(parts, fractions, strict=True)) if fractions else None, "seed": args.seed}
    return {k: splits[k] for k in ("train", "validation", "test")}, card


def _train_file(args, kwargs) -> None:
    """The user's path: load and split the CSV, train with the strategy's recipe, report, save the task."""
    from .experiment import train_strategy
    from .task import check_checkpoint, prepare_output, save_task
    from .train import end_distributed

    rank0 = int(os.environ.get("RANK", "0")) == 0
    output = args.output or Path("runs") / f"{args.data.stem}-{args.strategy}"
    if not args.no_save and rank0:
        prepare_output(output, args.overwrite)  # before training, not after it
    if args.resume and args.checkpoint_dir is not None:
        check_checkpoint(args.checkpoint_dir)
    splits, data_card = load_user_splits(args)
    names = splits["train"].label_names
    if rank0:
        print(f"data: {args.data} -> " + ", ".join(f"{k} {len(v):,}" for k, v in splits.items()))
        print("classes (id: label value): " + ", ".join(f"{i}: {n}" for i, n in enumerate(names)))
    try:
        run = train_strategy(args.strategy, splits, lr=args.lr, epochs=args.epochs, seed=args.seed,
                             max_train=args.max_train, max_length=args.max_length, grad_accum=args.grad_accum,
                             checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                             callbacks=[_EpochLine()] if rank0 else [], **kwargs)
    finally:
        end_distributed()
    if not rank0:
        return
    r, test = run.result, run.test
    metrics = {"val_accuracy": r.val_accuracy, "val_macro_f1": run.history.best("val_macro_f1"),
               "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"], "test_loss": test["loss"],
               "test_n": test["n"], "best_epoch": run.history.best_epoch, "train_seconds": r.train_seconds}
    epochs = f"{run.epochs} epoch{'s' * (run.epochs != 1)}"
    print(f"\nresult: {r.strategy} on {r.device}, profile {r.profile}, lr {run.lr:g}, {epochs}, "
          f"max_length {run.max_length}")
    print(f"  trained {r.trainable:,} of {r.total:,} parameters ({r.trainable_percent:.3f}%) in {r.train_seconds:.1f} s")
    print(f"  validation accuracy {r.val_accuracy:.4f} (best epoch {run.history.best_epoch})")
    print(f"  test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f} on {test['n']:,} examples")
    if args.no_save:
        return
    sizes = {k: len(v) for k, v in run.data.items()}
    training = {"lr": run.lr, "epochs": run.epochs, "seed": args.seed, "profile": r.profile,
                "batch_size": run.profile.batch_size, "recipe": _recipe_summary(args.strategy)}
    card = save_task(output, run.model, strategy=args.strategy, label_names=names, model_name=args.model,
                     max_length=run.max_length, metrics=metrics, data={**data_card, "sizes": sizes},
                     training=training)
    print(f"\nsaved: {output}/ ({card.name}, {json.loads(card.read_text())['weights']})")
    print(f"predict: ftlib predict --task {output} \"some text\"")


def _recipe_summary(name: str) -> str:
    from .strategies import get_recipe

    return get_recipe(name).summary


def _predict(args) -> None:
    from .data import read_table
    from .task import load_task

    sources = [bool(args.texts), args.file is not None, args.csv is not None]
    if sum(sources) != 1:
        raise ValueError("give the texts one way: as arguments, with --file (one per line) or with --csv")
    if args.file is not None:
        try:
            texts = [ln for ln in args.file.read_text(encoding=args.encoding).splitlines() if ln.strip()]
        except UnicodeDecodeError:
            raise ValueError(f"{args.file} is not valid {args.encoding}; pass its encoding with --encoding") from None
    elif args.csv is not None:
        rows = read_table(args.csv, args.encoding)
        if args.text_column not in rows.columns:
            raise ValueError(f"{args.csv} has no column {args.text_column!r}; columns are {list(rows.columns)}")
        texts = list(rows[args.text_column])
    else:
        texts = args.texts
    if not texts:
        raise ValueError(f"{args.file or args.csv} holds no texts")
    from .device import get_device

    task = load_task(args.task, device=get_device(args.device))
    for p in task.predict(texts, batch_size=args.batch_size):
        if args.json:
            print(json.dumps(asdict(p), ensure_ascii=False))
        else:
            print(f"{p.label}\t{p.probability:.3f}\t{p.text}")


def _one_line(e: BaseException) -> str:
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(text).split())


def main(argv: list[str] | None = None, prog: str = "ftlib") -> int:
    from safetensors import SafetensorError

    args = parser(prog).parse_args(argv)
    try:
        if args.command == "predict":
            _predict(args)
        else:
            from .device import get_device

            get_device(args.device)  # an unknown or absent device fails before any work
            kwargs = dict(profile=args.profile, model_name=args.model, device=args.device,
                          progress=not args.no_progress)
            (_train if args.command == "train" else args.handler)(args, kwargs)  # handler: see register_cli
    except (ValueError, TypeError, KeyError, OSError, ModuleNotFoundError, SafetensorError) as e:
        if os.environ.get("FTLIB_TRACEBACK"):
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0
