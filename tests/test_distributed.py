"""Two CPU processes (DDP over gloo) train and evaluate exactly like one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_fit import train_once

SCRIPT = Path(__file__).with_name("ddp_fit.py")
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> dict:
    """One `accelerate launch` of every scenario in tests/ddp_fit.py (its suite): the results by name."""
    work = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = LAUNCH + [str(SCRIPT), "--workdir", str(work), "--out", str(work / "out.json")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"workdir": work, **json.loads((work / "out.json").read_text())}


@pytest.mark.slow
def test_two_processes_match_one_process(ddp):
    """Per-process batch 32 x 2 processes = one batch of 64: same updates, same metrics, every example once."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # as in the launched processes: the same kernels, the same sums
        one = train_once(64)
    finally:
        torch.set_num_threads(threads)
    two = ddp["match"]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["before"]["n"] == two["before"]["n"] == two["after"]["n"] == 101  # no duplicates, none dropped
    assert two["before"]["accuracy"] == one["before"]["accuracy"]
    assert two["steps"] == one["steps"]
    assert two["val_accuracy"] == pytest.approx(one["val_accuracy"], abs=1e-6)
    assert two["after"]["loss"] == pytest.approx(one["after"]["loss"], abs=1e-4)
    assert two["after"]["accuracy"] > two["before"]["accuracy"]  # it did learn


@pytest.mark.slow
def test_a_killed_ddp_run_resumes_exactly_with_each_process_random_state(ddp):
    """Dropout on, seeded per process (seed + rank): a resumed run matches only if each rank gets its own state back."""
    ref, crashed, resumed = ddp["ref"], ddp["crashed"], ddp["resumed"]
    assert crashed["crashed"] and crashed["latest"] == "epoch-0002"
    assert ref["processes"] == resumed["processes"] == 2
    assert resumed["step_loss"] == pytest.approx(ref["step_loss"], abs=1e-6)
    assert resumed["val_accuracy"] == ref["val_accuracy"]
    assert resumed["after"]["loss"] == pytest.approx(ref["after"]["loss"], abs=1e-6)
