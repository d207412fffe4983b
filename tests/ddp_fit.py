"""Train and evaluate a tiny model with ftlib.train.fit under `accelerate launch` (tests/test_distributed.py).

With 2 CPU processes (gloo) and half the per-process batch, DDP's averaged gradient equals the
single-process gradient (the test runs `train_once` at batch 64 in its own process), so both must report
the same numbers. Then a crashed DDP run with dropout must resume exactly: each process must get back its
own random state (its own dropout masks). All scenarios run in one launch: starting the processes costs
more than the training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(__file__))
from conftest import make_model  # noqa: E402

from ftlib.train import Callback, evaluate, fit, launched_accelerator  # noqa: E402


class Crash(Exception):
    pass


class CrashAtEpoch(Callback):
    """A killed job, on every process at once: raises when `epoch` begins (its predecessor is checkpointed)."""

    def __init__(self, epoch: int | None):
        self.epoch = epoch

    def on_epoch_begin(self, state):
        if state.epoch == self.epoch:
            raise Crash


class Toy(torch.utils.data.Dataset):
    """Label 1 when token 5 appears: learnable in a few steps."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(6, 99, (n, 8), generator=g)
        self.labels = (torch.arange(n) % 2).tolist()
        self.ids[torch.tensor(self.labels) == 1, 3] = 5

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long),
                "labels": torch.tensor(self.labels[i])}


def train_once(batch_size: int, accelerator=None, dropout: bool = False, checkpoint_dir=None,
               crash_at_epoch: int | None = None, resume: bool = False) -> dict:
    """One fresh model trained 3 epochs with fit; what the tests compare (None for a crashed run's history)."""
    if dropout:
        model = make_model(num_labels=2)
    else:
        model = make_model(num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        model.dropout.p = 0.0
    train = DataLoader(Toy(128, 0), batch_size=batch_size)
    val = DataLoader(Toy(101, 1), batch_size=batch_size)  # odd: the last shard is padded by the sampler
    before = evaluate(model, accelerator.prepare_data_loader(val) if accelerator else val, accelerator=accelerator)
    try:
        history = fit(model, train, val, epochs=3, lr=1e-3, seed=0, progress=False, accelerator=accelerator,
                      checkpoint_dir=checkpoint_dir, resume=resume, callbacks=[CrashAtEpoch(crash_at_epoch)])
    except Crash:
        history = None
    after = evaluate(model, accelerator.prepare_data_loader(val) if accelerator else val, accelerator=accelerator)
    return {"processes": accelerator.num_processes if accelerator else 1, "before": before, "after": after,
            "crashed": history is None,
            "val_accuracy": [e["val_accuracy"] for e in history.epochs] if history else None,
            "step_loss": history.step_loss if history else None,
            "steps": len(history.step_loss) if history else None}


def suite(accelerator, workdir: str) -> dict:
    """Every DDP scenario in one launch (process start-up dominates these tests): match, then crash and resume.

    match: no dropout, per-process batch 32 (the tests compare it with one process at batch 64).
    ref / crashed / resumed: dropout on, seeded per process (seed + rank); `crashed` stops when epoch 3 begins
    (epoch 2 is checkpointed), `resumed` continues it with a fresh model, so it equals `ref` only if each
    rank gets its own random state back from the checkpoint (fit re-seeds every generator when it starts, so
    nothing of the crashed run carries over but what the checkpoint holds)."""
    out = {"match": train_once(32, accelerator)}
    out["ref"] = train_once(32, accelerator, dropout=True, checkpoint_dir=os.path.join(workdir, "ref"))
    run_dir = os.path.join(workdir, "run")
    out["crashed"] = train_once(32, accelerator, dropout=True, checkpoint_dir=run_dir, crash_at_epoch=3)
    accelerator.wait_for_everyone()
    out["crashed"]["latest"] = open(os.path.join(run_dir, "latest")).read()  # the checkpoint it resumes from
    out["resumed"] = train_once(32, accelerator, dropout=True, checkpoint_dir=run_dir, resume=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True, help="checkpoints go under it")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    accelerator = launched_accelerator()
    if accelerator is None:
        raise SystemExit("run me under `accelerate launch --num_processes 2` (tests/test_distributed.py does)")
    result = suite(accelerator, args.workdir)
    if accelerator.is_main_process:
        with open(args.out, "w") as f:
            json.dump(result, f)
    accelerator.end_training()  # destroys the process group: gloo threads left at exit abort the process


if __name__ == "__main__":
    main()
