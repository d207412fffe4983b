"""Two CPU processes (DDP over gloo) train and evaluate exactly like one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_fit.py")
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def _run(cmd: list[str], out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd + ["--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """Per-process batch 32 x 2 processes = one batch of 64: same updates, same metrics, every example once."""
    one = _run([sys.executable, str(SCRIPT), "--batch-size", "64"], tmp_path / "one.json")
    two = _run(LAUNCH + [str(SCRIPT), "--batch-size", "32"], tmp_path / "two.json")
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["before"]["n"] == two["before"]["n"] == two["after"]["n"] == 101  # no duplicates, none dropped
    assert two["before"]["accuracy"] == one["before"]["accuracy"]
    assert two["steps"] == one["steps"]
    assert two["val_accuracy"] == pytest.approx(one["val_accuracy"], abs=1e-6)
    assert two["after"]["loss"] == pytest.approx(one["after"]["loss"], abs=1e-4)
    assert two["after"]["accuracy"] > two["before"]["accuracy"]  # it did learn


@pytest.mark.slow
def test_a_killed_ddp_run_resumes_exactly_with_each_process_random_state(tmp_path):
    """Dropout on, seeded per process (seed + rank): a resumed run matches only if each rank gets its own state back."""
    args = LAUNCH + [str(SCRIPT), "--batch-size", "32", "--dropout"]
    ref = _run(args + ["--checkpoint-dir", str(tmp_path / "ref")], tmp_path / "ref.json")
    crashed = _run(args + ["--checkpoint-dir", str(tmp_path / "run"), "--crash-at-epoch", "3"], tmp_path / "c.json")
    assert crashed["crashed"] and (tmp_path / "run" / "latest").read_text() == "epoch-0002"
    resumed = _run(args + ["--checkpoint-dir", str(tmp_path / "run"), "--resume"], tmp_path / "resumed.json")
    assert ref["processes"] == resumed["processes"] == 2
    assert resumed["step_loss"] == pytest.approx(ref["step_loss"], abs=1e-6)
    assert resumed["val_accuracy"] == ref["val_accuracy"]
    assert resumed["after"]["loss"] == pytest.approx(ref["after"]["loss"], abs=1e-6)
