"""Properties of the command line (ftlib.cli), run profiles (ftlib.profiles) and the device helper (ftlib.device)."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_task import save_tiny_model, write_reviews

from ftlib import cli, experiment
from ftlib import compare as compare_module
from ftlib.device import autocast, get_device, set_seed
from ftlib.experiment import Result
from ftlib.history import History
from ftlib.predict import predict_texts
from ftlib.profiles import PROFILES, get_profile
from ftlib.strategies import STRATEGIES
from ftlib.task import load_task, save_task


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
    assert "usage: ftlib " in capsys.readouterr().err  # the installed console script's name


def test_train_help_lists_strategies(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in STRATEGIES)


def test_module_help_exits_zero():
    proc = subprocess.run([sys.executable, "-m", "ftlib", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m ftlib ")  # run as a module, it names itself so
    assert "train" in proc.stdout and "compare" in proc.stdout and "predict" in proc.stdout


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


def test_smoke_profile_is_a_small_subset_of_quick():
    smoke, quick = PROFILES["smoke"], PROFILES["quick"]
    assert (smoke.max_train, smoke.max_eval, smoke.max_test, smoke.epochs) == (96, 96, 96, 1)  # 3 batches each
    assert quick.max_test is None and PROFILES["full"].max_test is None  # committed numbers test all 1,008
    assert (smoke.max_length, smoke.batch_size) == (quick.max_length, quick.batch_size)  # same shapes, less data
    assert get_profile("smoke", device="cuda") is smoke


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


# --- your own data: train -> predict end to end on a tiny model ------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


def one_line_error(capsys, argv) -> str:
    """Run the CLI; it must exit 2 with exactly one 'error: ...' line and no traceback."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_train_on_a_csv_then_predict(tiny_dir, tmp_path, capsys):
    data = write_reviews(tmp_path / "reviews.csv", n=80)
    out = tmp_path / "runs" / "x"
    argv = ["train", "--strategy", "lora", "--data", str(data), "--text-column", "text", "--label-column", "label",
            "--model", str(tiny_dir), "--output", str(out), "--epochs", "2", "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "train 64, validation 8, test 8" in printed
    assert "classes (id: label value): 0: negative, 1: positive" in printed
    epoch_lines = [ln for ln in printed.splitlines() if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in epoch_lines] == ["1/2", "2/2"]
    assert all("train loss" in ln and "val loss" in ln and "macro-F1" in ln for ln in epoch_lines)
    assert "test accuracy" in printed and "lr 0.001" in printed  # LoRA's recipe rate
    card = json.loads((out / "task.json").read_text())
    assert card["data"]["files"]["train"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert card["labels"] == {"names": ["negative", "positive"], "mapping": {"negative": 0, "positive": 1}}
    assert card["strategy"]["name"] == "lora" and card["strategy"]["config"]["rank"] == 8
    assert card["strategy"]["lr"] == 1e-3 and card["strategy"]["epochs"] == 2
    assert card["data"]["sizes"] == {"train": 64, "validation": 8, "test": 8}
    assert card["metrics"]["test_n"] == 8 and 0 <= card["metrics"]["test_accuracy"] <= 1
    assert card["model"]["source"] == str(tiny_dir.resolve()) and card["weights"] == "lora.safetensors"
    assert set(card["versions"]) == {"python", "torch", "transformers", "ftlib"}
    assert sorted(p.name for p in out.iterdir()) == ["lora.safetensors", "task.json"]

    texts = ["the movie was good", "a dull plot"]
    assert cli.main(["predict", "--task", str(out), *texts, "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    task = load_task(out)
    expected = predict_texts(task.model, task.tokenizer, texts)
    assert lines == [f"{p.label}\t{p.probability:.3f}\t{p.text}" for p in expected]
    (tmp_path / "texts.txt").write_text("the movie was good\n\na dull plot\n")
    assert cli.main(["predict", "--task", str(out), "--file", str(tmp_path / "texts.txt"), "--json"]) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == texts and set(rows[0]["probabilities"]) == {"negative", "positive"}
    assert cli.main(["predict", "--task", str(out), "--csv", str(data), "--text-column", "text"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 80
    err = one_line_error(capsys, argv)  # the same --output again: refused before training
    assert "already holds a trained task; choose another --output or pass --overwrite" in err


def test_only_test_file_splits_validation_off_training(tiny_dir, tmp_path, capsys):
    data = tmp_path / "stars.csv"
    rows = [f"the movie {w},{s}" for s, w in [(1, "awful"), (3, "dull"), (5, "great")] for _ in range(20)]
    data.write_text("text,stars\n" + "\n".join(rows) + "\n")
    test = tmp_path / "test.csv"
    test.write_text("text,stars\ngood,5\nbad,1\nmeh,3\ngreat,5\n")
    argv = ["train", "--strategy", "full", "--data", str(data), "--label-column", "stars", "--test", str(test),
            "--model", str(tiny_dir), "--output", str(tmp_path / "run"), "--epochs", "1", "--device", "cpu",
            "--no-progress"]
    assert cli.main(argv) == 0
    assert "classes (id: label value): 0: 1, 1: 3, 2: 5" in capsys.readouterr().out  # ratings by value
    card = json.loads((tmp_path / "run" / "task.json").read_text())
    assert card["data"]["sizes"] == {"train": 54, "validation": 6, "test": 4}
    assert card["data"]["split"] == {"train": 0.9, "validation": 0.1}
    assert card["weights"] == "model.safetensors"
    assert load_task(tmp_path / "run").label_names == ("1", "3", "5")
    both = argv[:-7] + ["--validation", str(test), "--output", str(tmp_path / "both"), "--epochs", "1",
                        "--device", "cpu", "--no-progress"]
    assert cli.main(both) == 0
    card = json.loads((tmp_path / "both" / "task.json").read_text())
    assert card["data"]["sizes"] == {"train": 60, "validation": 4, "test": 4} and card["data"]["split"] is None
    assert set(card["data"]["files"]) == {"train", "validation", "test"}
    test.write_text("text,stars\ngood,5\nbad,2\n")  # a class the training data lacks
    err = one_line_error(capsys, both[:-7] + ["--output", str(tmp_path / "o3"), "--device", "cpu"])
    assert "labels ['2'] are not among label_names ['1', '3', '5'] in 'test.csv'; fix those labels" in err


# --- bad input on the command line: exit 2, one line naming the fix ------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["train", "--strategy", "lora", "--epochs", "0"], "argument --epochs: must be > 0, got 0"),
    (["train", "--strategy", "lora", "--lr", "0"], "argument --lr: must be > 0, got 0"),
    (["train", "--strategy", "lora", "--lr=-1e-3"], "argument --lr: must be > 0"),
    (["train", "--strategy", "lora", "--lr", "nan"], "argument --lr: must be > 0"),
    (["train", "--strategy", "lora", "--epochs", "1.5"], "argument --epochs: '1.5' is not an integer"),
    (["train", "--strategy", "lora", "--max-train", "0"], "argument --max-train: must be > 0"),
    (["train", "--strategy", "lora", "--split", "0.8,x"], "is not comma-separated numbers"),
    (["compare", "--seeds", "0"], "argument --seeds: must be > 0"),
])
def test_zero_and_negative_options_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture
def no_training(monkeypatch):
    """Any of these cases must fail before a model is built or trained."""
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the input was checked")

    for name in ("run_strategy", "train_strategy"):
        monkeypatch.setattr(experiment, name, no_work)
    monkeypatch.setattr(compare_module, "compare", no_work)


@pytest.mark.parametrize("strategies", ["", " , ,"])
def test_empty_strategies(capsys, no_training, strategies):
    err = one_line_error(capsys, ["compare", "--strategies", strategies, "--device", "cpu"])
    assert "--strategies is empty; give comma-separated names from: full," in err


@pytest.mark.parametrize("env, argv, message", [
    ("cuda", [], "FTLIB_DEVICE='cuda' but this machine has no CUDA device"),
    (None, ["--device", "cuda:0"], "device='cuda:0' but this machine has no CUDA device"),
    (None, ["--device", "gpu"], "device='gpu' is not a device; use cpu, cuda, cuda:N or mps"),
])
def test_unknown_or_absent_device(capsys, monkeypatch, no_training, env, argv, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if env:
        monkeypatch.setenv("FTLIB_DEVICE", env)
    err = one_line_error(capsys, ["train", "--strategy", "lora", *argv])
    assert message in err and "use cpu" in err


def test_folder_without_a_model(capsys, tmp_path, no_training):
    err = one_line_error(capsys, ["train", "--strategy", "lora", "--model", str(tmp_path), "--device", "cpu"])
    assert f"--model {tmp_path} holds no config.json, so no model; pass a folder written by save_pretrained" in err


@pytest.mark.parametrize("argv", [["train", "--strategy", "lora", "--data", "{data}"], ["train", "--strategy", "lora"],
                                  ["compare", "--strategies", "lora"]], ids=["own data", "course data", "compare"])
def test_output_checked_before_training(capsys, tmp_path, no_training, argv):
    data = write_reviews(tmp_path / "reviews.csv")
    (tmp_path / "taken").write_text("a file")
    err = one_line_error(capsys, [a.format(data=data) for a in argv] + ["--output", str(tmp_path / "taken"),
                                                                        "--device", "cpu"])
    assert f"--output {tmp_path / 'taken'} is a file, not a folder; choose a folder path" in err


@pytest.mark.parametrize("extra, message", [
    (["--split", "0.5,0.5"], "--split needs 3 fractions here (train, validation, test), got 2: e.g. --split 0.8,0.1,0.1"),
    (["--test", "{data}", "--split", "0.8,0.1,0.1"], "--split needs 2 fractions here (train, validation), got 3"),
    (["--test", "{data}", "--validation", "{data}", "--split", "0.9,0.1"], "--split has nothing to split"),
    (["--encoding", "ascii"], "is not valid ascii (byte 0xc3 on line 2); pass the file's encoding: --encoding"),
    (["--label-column", "stars"], "has no column 'stars'; columns are ['text', 'label']"),
])
def test_data_option_errors(capsys, tmp_path, no_training, extra, message):
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\ncafé,pos\nbad,neg\n" * 20, encoding="utf-8")
    argv = ["train", "--strategy", "lora", "--data", str(data), "--output", str(tmp_path / "o"), "--device", "cpu"]
    err = one_line_error(capsys, argv + [x.format(data=data) for x in extra])
    assert message in err


def test_data_options_need_data(capsys, no_training):
    err = one_line_error(capsys, ["train", "--strategy", "lora", "--test", "t.csv", "--device", "cpu"])
    assert "--test needs --data (your own CSV)" in err


def test_damaged_checkpoint_before_resume(capsys, tmp_path, no_training):
    from conftest import make_model, rows_loader

    from ftlib.full import apply_full
    from ftlib.train import fit

    fit(apply_full(make_model()), rows_loader(8), epochs=1, device="cpu", progress=False, checkpoint_dir=tmp_path)
    model_file = tmp_path / "epoch-0001" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:200])
    err = one_line_error(capsys, ["train", "--strategy", "full", "--checkpoint-dir", str(tmp_path), "--resume",
                                  "--device", "cpu"])
    assert f"{model_file} is not a readable safetensors file" in err and "train without --resume" in err


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "task.json").write_text("{"), "task.json is not valid JSON"),
    (lambda f: (f / "task.json").unlink(), "holds no task.json, so it is not a saved task"),
    (lambda f: (f / "lora.safetensors").write_bytes(b"junk"), "lora.safetensors is not a readable safetensors"),
])
def test_predict_with_a_damaged_task(capsys, tiny_dir, tmp_path, damage, message):
    from test_task import trained

    model, _ = trained(tiny_dir, "lora")
    save_task(tmp_path / "t", model, strategy="lora", label_names=["a", "b", "c"], model_name=str(tiny_dir))
    damage(tmp_path / "t")
    assert message in one_line_error(capsys, ["predict", "--task", str(tmp_path / "t"), "some text"])


def test_predict_needs_one_source_of_texts(capsys, tmp_path):
    err = one_line_error(capsys, ["predict", "--task", str(tmp_path)])
    assert "give the texts one way: as arguments, with --file (one per line) or with --csv" in err
    err = one_line_error(capsys, ["predict", "--task", str(tmp_path / "nope"), "hi"])
    assert "no task folder" in err and "pass the --output folder" in err


def test_help_says_what_profiles_mean(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for p in PROFILES.values():
        n = "all training examples" if p.max_train is None else f"{p.max_train:,} training examples"
        assert f"{p.name:<6} {n}, {p.epochs} epoch" in out
    assert "--data" in out and "ftlib predict --task" in out


# --- the README's "Your own data" section runs as written (on the tiny model) ----------------------------


def readme_blocks(language: str) -> list[str]:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text.split("## Your own data", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def test_readme_own_data_runs(tiny_dir, tmp_path, monkeypatch, capsys):
    from ftlib import models

    load = models.load_encoder
    monkeypatch.setattr(models, "load_encoder", lambda name=None, **kw: load(str(tiny_dir) if name is None else name))
    monkeypatch.chdir(tmp_path)
    write_reviews(tmp_path / "reviews.csv")
    (commands,) = readme_blocks("bash")
    lines = [ln for ln in commands.splitlines() if ln.strip()]
    assert len(lines) == 2 and all(ln.startswith("python -m ftlib ") for ln in lines)
    for line in lines:
        assert cli.main(shlex.split(line)[3:]) == 0, capsys.readouterr().err
    assert (tmp_path / "runs" / "reviews" / "task.json").is_file()
    assert len(capsys.readouterr().out.splitlines()[-2:]) == 2  # one line per text
    (code,) = readme_blocks("python")
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "{0: 'negative', 1: 'positive'}"
    assert all(ln.split()[0] in ("negative", "positive") for ln in out[-2:])
    assert (tmp_path / "runs" / "reviews-py" / "lora.safetensors").is_file()


class _Tested(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("profile, expected", [("smoke", 96), ("quick", 1008)])
def test_run_strategy_tests_the_profiles_test_subset_whatever_the_seed(monkeypatch, profile, expected):
    """smoke tests a stratified 96 of the 1,008 test reviews (evaluation dominated its runs), the same for every
    seed so that runs stay paired; other profiles test all of them."""
    from ftlib.data import load_movie_reviews

    seen = []

    def evaluated(model, loader, device, progress=False):
        seen.append(list(loader.dataset.ds.texts))
        raise _Tested

    monkeypatch.setattr(experiment, "fit", lambda *a, **k: None)
    monkeypatch.setattr(experiment, "evaluate", evaluated)
    splits = load_movie_reviews()
    for seed in (0, 1):
        with pytest.raises(_Tested):
            experiment.run_strategy("feature-extraction", profile=profile, seed=seed, splits=splits, progress=False)
    assert len(seen[0]) == expected and seen[0] == seen[1]
    test = splits["test"]
    labels = [test.labels[test.texts.index(t)] for t in seen[0]]
    assert abs(sum(labels) / len(labels) - sum(test.labels) / len(test)) < 0.01  # class-balanced like the split
