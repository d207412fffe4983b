"""Train and evaluate a tiny model with ftlib.train.fit; run plainly or under `accelerate launch`.

Used by tests/test_distributed.py: with 2 CPU processes (gloo) and half the per-process batch, DDP's
averaged gradient equals the single-process gradient, so both runs must report the same numbers.
With --dropout --checkpoint-dir [--crash-at-epoch N | --resume] it checks that a killed DDP run resumes
exactly: each process must get back its own random state (its own dropout masks).
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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dropout", action="store_true", help="keep the model's dropout (default: none)")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--crash-at-epoch", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.dropout:
        model = make_model(num_labels=2)
    else:
        model = make_model(num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        model.dropout.p = 0.0
    train = DataLoader(Toy(128, 0), batch_size=args.batch_size)
    val = DataLoader(Toy(101, 1), batch_size=args.batch_size)  # odd: the last shard is padded by the sampler
    accelerator = launched_accelerator()
    before = evaluate(model, accelerator.prepare_data_loader(val) if accelerator else val, accelerator=accelerator)
    try:
        history = fit(model, train, val, epochs=3, lr=1e-3, seed=0, progress=False, accelerator=accelerator,
                      checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                      callbacks=[CrashAtEpoch(args.crash_at_epoch)])
    except Crash:
        history = None
    after = evaluate(model, accelerator.prepare_data_loader(val) if accelerator else val, accelerator=accelerator)
    if accelerator is None or accelerator.is_main_process:
        with open(args.out, "w") as f:
            json.dump({"processes": accelerator.num_processes if accelerator else 1, "before": before, "after": after,
                       "crashed": history is None,
                       "val_accuracy": [e["val_accuracy"] for e in history.epochs] if history else None,
                       "step_loss": history.step_loss if history else None,
                       "steps": len(history.step_loss) if history else None}, f)
    if accelerator is not None:
        accelerator.end_training()  # destroys the process group: gloo threads left at exit abort the process


if __name__ == "__main__":
    main()
