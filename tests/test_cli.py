"""Properties of the command line (ftlib.cli), run profiles (ftlib.profiles) and the device helper (ftlib.device)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

import pandas as pd
import pytest
import torch

from ftlib import cli, experiment
from ftlib import compare as compare_module
from ftlib.device import autocast, get_device, set_seed
from ftlib.experiment import Result
from ftlib.history import History
from ftlib.profiles import PROFILES, get_profile
from ftlib.strategies import STRATEGIES


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Each test starts without the user's overrides."""
    monkeypatch.delenv("FTLIB_PROFILE", raising=False)
    monkeypatch.delenv("FTLIB_DEVICE", raising=False)


# --- errors are exit code 2 with the valid names ---------------------------------------------------------


def test_unknown_strategy(capsys):
    assert cli.main(["train", "--strategy", "nope", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown strategy 'nope'" in err
    assert all(name in err for name in STRATEGIES)


def test_unknown_strategy_in_compare_fails_before_any_work(capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("compare started working before checking every name")

    for name in ("run_strategy", "load_movie_reviews", "build_classifier"):
        monkeypatch.setattr(compare_module, name, no_work)
    assert cli.main(["compare", "--strategies", "full, nope", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown strategy 'nope'" in err and "feature-extraction" in err


def test_unknown_profile(capsys):
    assert cli.main(["train", "--strategy", "full", "--profile", "huge", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown profile 'huge'" in err and "'full'" in err and "'quick'" in err


def test_missing_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
    assert "usage: python -m ftlib" in capsys.readouterr().err


def test_train_help_lists_strategies(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in STRATEGIES)


def test_module_help_exits_zero():
    proc = subprocess.run([sys.executable, "-m", "ftlib", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout and "compare" in proc.stdout


# --- a successful run, with the training replaced by a stub ----------------------------------------------


def fake_result(name: str, seed: int = 7) -> Result:
    return Result(name, "quick", "cpu (test)", seed, 10, 100, 10.0, 4096, 0.01, 1.5, 0.8, 0.75, 0.7)


def test_train_passes_options_and_writes_json(monkeypatch, tmp_path, capsys):
    calls = []
    history = History(step_loss=[0.7, 0.5], step_seconds=[0.1, 0.1], epochs=[{"epoch": 1, "seconds": 0.2}])

    def stub(name, **kwargs):
        calls.append((name, kwargs))
        return None, history, fake_result(name)

    monkeypatch.setattr(experiment, "run_strategy", stub)
    out_dir = tmp_path / "out"
    argv = ["train", "--strategy", "lora", "--lr", "0.002", "--epochs", "3", "--profile", "quick", "--seed", "7",
            "--device", "cpu", "--model", "some/model", "--output", str(out_dir), "--no-progress",
            "--grad-accum", "2", "--checkpoint-dir", str(tmp_path / "ck"), "--resume"]
    assert cli.main(argv) == 0
    assert calls == [("lora", dict(lr=0.002, epochs=3, profile="quick", model_name="some/model", seed=7,
                                   device="cpu", progress=False, grad_accum=2, checkpoint_dir=tmp_path / "ck",
                                   resume=True))]
    assert json.loads((out_dir / "train_lora.json").read_text()) == asdict(fake_result("lora"))
    assert History(**json.loads((out_dir / "history_lora.json").read_text())) == history
    out = capsys.readouterr().out
    assert "lora" in out and "0.7500" in out


def test_compare_passes_names_and_seeds(monkeypatch, tmp_path, capsys):
    calls = []

    def stub(names, **kwargs):
        calls.append((names, kwargs))
        df = pd.DataFrame([asdict(fake_result(n, seed)) for seed in range(2) for n in names])
        df.attrs["probe_base_accuracy"] = 0.5
        return df

    monkeypatch.setattr(compare_module, "compare", stub)
    argv = ["compare", "--strategies", "full, lora,", "--seeds", "2", "--output", str(tmp_path), "--device", "cpu"]
    assert cli.main(argv) == 0
    assert calls == [(["full", "lora"], dict(seeds=2, output=tmp_path, profile=None, model_name=None,
                                              device="cpu", progress=True))]
    out = capsys.readouterr().out
    assert "full" in out and "lora" in out


# --- profiles --------------------------------------------------------------------------------------------


def test_get_profile_defaults_by_device():
    assert get_profile(device="cpu") is PROFILES["quick"]
    assert get_profile(device="cuda") is PROFILES["full"]
    assert get_profile("full", device="cpu") is PROFILES["full"]


def test_get_profile_honours_env(monkeypatch):
    monkeypatch.setenv("FTLIB_PROFILE", "full")
    assert get_profile(device="cpu") is PROFILES["full"]
    assert get_profile("quick", device="cpu") is PROFILES["quick"]  # an explicit name wins
    monkeypatch.setenv("FTLIB_PROFILE", "nope")
    with pytest.raises(ValueError, match=r"unknown profile 'nope'; choose one of \['full', 'quick', 'smoke'\]"):
        get_profile(device="cpu")


def test_get_profile_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown profile 'Quick'"):
        get_profile("Quick")


def test_profiles_are_what_they_say():
    quick, full = PROFILES["quick"], PROFILES["full"]
    assert (quick.max_train, quick.max_eval, quick.epochs) == (1000, 500, 2)
    assert full.max_train is None and full.max_eval is None and full.max_length >= quick.max_length
    with pytest.raises(AttributeError):
        quick.epochs = 5  # frozen: a profile cannot drift during a run


# --- device ----------------------------------------------------------------------------------------------


def test_get_device_by_name():
    assert get_device("cpu") == torch.device("cpu")
    assert get_device("meta") == torch.device("meta")


def test_get_device_env_override(monkeypatch):
    monkeypatch.setenv("FTLIB_DEVICE", "meta")  # a device the automatic choice never picks
    assert get_device() == torch.device("meta")
    assert get_device("cpu") == torch.device("cpu")  # an explicit name wins


def test_get_device_default_without_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert get_device() == torch.device("cpu")


def test_cpu_runs_in_full_precision():
    with autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_set_seed_repeats_random_draws():
    set_seed(3)
    a = torch.rand(3)
    set_seed(3)
    assert torch.equal(torch.rand(3), a)
