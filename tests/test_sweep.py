"""The learning-rate sweep: picks by validation accuracy and widens its grid when the best rate is on an edge."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from ftlib import study
from ftlib.study import beyond_edge, sweep

GRID = [1e-3, 3e-3, 9e-3]
CTX = SimpleNamespace(profile=SimpleNamespace(name="quick"), model_name=None)


def fake_training(monkeypatch, peak: float) -> list[float]:
    """Replace training by a validation accuracy that falls with log-distance from `peak`; returns the rates run."""
    ran = []

    def run_record(ctx, key, progress=False):
        ran.append(key.lr)
        return {"metrics": {"val_accuracy": 0.9 - 0.05 * abs(math.log(key.lr / peak)), "test_accuracy": 0.5}}

    monkeypatch.setattr(study, "run_record", run_record)
    monkeypatch.setattr(study, "labels_record", lambda ctx: {})
    return ran


def test_the_next_rate_past_an_edge_keeps_the_grid_step():
    assert beyond_edge(GRID, 9e-3) == pytest.approx(0.027)
    assert beyond_edge(GRID, 1e-3) == pytest.approx(3.33e-4)
    assert beyond_edge(GRID, 3e-3) is None  # inside: nothing to add
    assert beyond_edge([1e-3], 1e-3) is None  # one rate has no step


@pytest.mark.parametrize("peak, chosen, ran", [
    (0.02, 0.027, GRID + [0.027]),  # best on the top edge: one step up, and it wins
    (0.0095, 9e-3, GRID + [0.027]),  # best on the top edge: the step up loses, the edge stays
    (4e-4, 3.33e-4, GRID + [3.33e-4]),  # bottom edge: one step down
    (3e-3, 3e-3, GRID),  # inside the grid: no extra run
])
def test_a_best_rate_on_the_edge_widens_the_grid_once(monkeypatch, tmp_path, peak, chosen, ran):
    runs = fake_training(monkeypatch, peak)
    picked, frame = sweep(CTX, ["lora"], tmp_path, lrs=GRID, log=None)
    assert picked["lora"] == pytest.approx(chosen)
    assert runs == pytest.approx(ran)
    assert frame.loc[frame.chosen, "lr"].tolist() == pytest.approx([chosen])
    assert list(frame.lr) == sorted(frame.lr)  # the table reads in rate order


def test_extend_bounds_the_extra_runs_and_zero_keeps_the_plain_grid(monkeypatch, tmp_path):
    runs = fake_training(monkeypatch, 1.0)  # far above every rate: each new edge wins
    assert sweep(CTX, ["lora"], tmp_path / "a", lrs=GRID, log=None, extend=0)[0]["lora"] == 9e-3
    assert runs == GRID
    runs.clear()
    assert sweep(CTX, ["lora"], tmp_path / "b", lrs=GRID, log=None, extend=2)[0]["lora"] == pytest.approx(0.081)
    assert runs == pytest.approx(GRID + [0.027, 0.081])


def test_records_on_disk_are_reused_and_nothing_trains_without_run(monkeypatch, tmp_path):
    fake_training(monkeypatch, 0.02)
    sweep(CTX, ["lora"], tmp_path, lrs=GRID, log=None)
    runs = fake_training(monkeypatch, 0.02)
    assert sweep(CTX, ["lora"], tmp_path, lrs=GRID, log=None)[0]["lora"] == pytest.approx(0.027)
    assert runs == []  # every record, the extension's included, came from disk
    picked, _ = sweep(CTX, ["lora"], tmp_path / "empty", lrs=GRID, log=None, run=False)
    assert runs == [] and picked["lora"] == study.get_recipe("lora").lr  # nothing measured: the recipe's rate
