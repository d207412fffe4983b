"""Records: one file per run key, written atomically, found again by key."""

from __future__ import annotations

import json
import os

import pytest

from ftlib.results import RunKey, has_record, load_records, save_record, write_json


def test_each_part_of_the_key_gives_a_different_file(tmp_path):
    base = RunKey("lora", "quick", seed=0, lr=1e-3)
    variants = [base, RunKey("lora", "quick", seed=1, lr=1e-3), RunKey("lora", "quick", seed=0, lr=3e-3),
                RunKey("lora", "quick", seed=0, lr=1e-3, data_seed=1), RunKey("lora", "quick", lr=1e-3, train_size=100),
                RunKey("lora", "quick", lr=1e-3, model="prajjwal1/bert-tiny"), RunKey("lora", "full", lr=1e-3),
                RunKey("full", "quick", lr=1e-3), RunKey("lora", "quick", lr=1e-3, epochs=8)]
    paths = {k.path(tmp_path) for k in variants}
    assert len(paths) == len(variants)
    assert base.path(tmp_path) == RunKey("lora", "quick", seed=0, lr=0.001).path(tmp_path)


def test_saved_records_are_found_again_and_filtered(tmp_path):
    k1, k2 = RunKey("full", "quick", seed=0, lr=5e-5), RunKey("full", "quick", seed=1, lr=5e-5)
    assert not has_record(tmp_path, k1)
    save_record(tmp_path, k1, {"metrics": {"test_accuracy": 0.8}})
    save_record(tmp_path, k2, {"metrics": {"test_accuracy": 0.7}})
    assert has_record(tmp_path, k1)
    recs = load_records(tmp_path, profile="quick")
    assert [r["key"]["seed"] for r in recs] == [0, 1]
    assert load_records(tmp_path, seed=1)[0]["metrics"]["test_accuracy"] == 0.7
    assert {"machine", "versions", "created"} <= set(recs[0])
    assert load_records(tmp_path / "nothing") == []


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_json(path, {"ok": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_json(path, {"ok": 2})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_bad_keys_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="positive"):
        RunKey("lora", "quick", lr=0.0)
    with pytest.raises(ValueError, match="plain name"):
        RunKey("a/b", "quick")
    with pytest.raises(ValueError, match="train_size"):
        RunKey("lora", "quick", train_size=1)
