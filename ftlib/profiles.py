"""Run sizes: `quick` trains each strategy in well under a minute on a 2-core CPU, `full` is for a GPU.

`smoke` is for CI only (`make test` runs every chapter under nbval with FTLIB_PROFILE=smoke): 96
training, 96 validation and 96 test examples (three batches each), one epoch, so a chapter checks that its
code and its asserts hold in a few seconds per training run (testing all 1,008 reviews took longer than the
training; 200 of each meant 7 batches per pass where 96 needs 3, for the same check). Same shapes as quick
(batch 32, 64 tokens), less data. Its accuracies mean nothing; chapters assert properties (equalities,
counts, shapes), never accuracy levels, so they pass on every profile. Committed chapter outputs come
from `quick` (`make notebooks`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from .device import get_device


@dataclass(frozen=True)
class Profile:
    name: str
    max_train: int | None  # training examples kept (stratified); None = all 8,058
    max_eval: int | None  # validation examples kept (and per out-of-domain set)
    max_test: int | None  # test examples kept (stratified, the same for every run); None = all 1,008
    epochs: int  # passes over the training subset
    max_length: int  # tokens after truncation; 64 truncates 5 of the 10,072 snippets (median 26, longest 79)
    batch_size: int  # 32 fits any laptop and keeps CPU steps short
    timed_batches: int = field(default=3, repr=False)  # test batches timed per model for a study's inference ratio


PROFILES = {
    "quick": Profile("quick", max_train=1000, max_eval=500, max_test=None, epochs=2, max_length=64, batch_size=32),
    "smoke": Profile("smoke", max_train=96, max_eval=96, max_test=96, epochs=1, max_length=64, batch_size=32,
                     timed_batches=1),
    "full": Profile("full", max_train=None, max_eval=None, max_test=None, epochs=4, max_length=128, batch_size=32),
}


def get_profile(name: str | None = None, device: torch.device | str | None = None) -> Profile:
    """The named profile, else FTLIB_PROFILE, else `full` on CUDA and `quick` anywhere else."""
    name = name or os.environ.get("FTLIB_PROFILE")
    if name is None:
        name = "full" if torch.device(device or get_device()).type == "cuda" else "quick"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)} (or set FTLIB_PROFILE)")
    return PROFILES[name]
