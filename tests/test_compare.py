"""Forgetting, drift and intrinsic-rank measurements, and the comparison's table and plots."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import make_model  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from ftlib.compare import format_table, summary, write_results  # noqa: E402
from ftlib.feature_extraction import apply_feature_extraction  # noqa: E402
from ftlib.forgetting import RetentionProbe, linear_cka, linear_probe_accuracy  # noqa: E402
from ftlib.full import apply_full  # noqa: E402
from ftlib.models import embedded_model_path  # noqa: E402
from ftlib.spectrum import energy_kept, rank_for_energy, singular_values, weight_updates  # noqa: E402


def test_cka_is_one_for_the_same_geometry_and_lower_for_unrelated():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0, abs=1e-9)  # rotation, scale, shift
    assert linear_cka(x, torch.randn(200, 16, generator=g)) < 0.3


def test_linear_probe_learns_separable_classes_and_not_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    x = torch.randn(300, 8, generator=g) + 4 * torch.nn.functional.one_hot(y, 8).float()
    assert linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:]) > 0.95
    noise = torch.randn(300, 8, generator=g)
    assert linear_probe_accuracy(noise[:200], y[:200], noise[200:], y[200:]) < 0.6


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(embedded_model_path())


def _probe(model, tokenizer):
    texts = ["a fine film", "dull and long", "what a mess", "quietly moving"] * 10
    return RetentionProbe.build(model, tokenizer, texts, n_train=120, n_test=60, max_length=16)


def test_feature_extraction_has_zero_drift_and_zero_forgetting_by_construction(tokenizer):
    """A frozen encoder in eval mode gives bit-identical features, so nothing is forgotten."""
    model = make_model(vocab_size=tokenizer.vocab_size, num_labels=2)
    probe = _probe(model, tokenizer)
    apply_feature_extraction(model).train()
    with torch.no_grad():  # what training does: only the head moves
        model.classifier.weight.add_(1.0)
    out = probe.measure(model, tokenizer)
    assert out["forgetting"] == 0.0
    assert out["drift"] == pytest.approx(0.0, abs=1e-12)


def test_a_changed_encoder_shows_drift(tokenizer):
    model = make_model(vocab_size=tokenizer.vocab_size, num_labels=2)
    probe = _probe(model, tokenizer)
    apply_full(model)
    with torch.no_grad():
        for p in model.encoder.encoder.layer[-1].parameters():
            p.add_(torch.randn_like(p))
    assert probe.measure(model, tokenizer)["drift"] > 1e-3


def test_energy_of_a_rank_r_update_is_all_in_r_directions():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(40, 3, generator=g) @ torch.randn(3, 30, generator=g)  # rank 3
    s = singular_values(delta)
    assert energy_kept(s, 3) == pytest.approx(1.0, abs=1e-9)
    assert energy_kept(s, 2) < 1.0
    assert rank_for_energy(s, 0.999999) == 3


def test_weight_updates_pick_the_named_matrices():
    model = make_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model.encoder.encoder.layer[0].attention.self.query.weight.add_(1.0)
    deltas = weight_updates(before, model)
    assert sorted(deltas) == sorted(n for n in before if n.endswith(("query.weight", "value.weight")))
    q0 = "encoder.encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(deltas[q0], torch.ones_like(deltas[q0]))  # (w + 1) - w, up to rounding
    assert all(d.abs().max() == 0 for n, d in deltas.items() if n != q0)


def _fake_results(seeds: int = 2) -> pd.DataFrame:
    rows = []
    for seed in range(seeds):
        for i, name in enumerate(["full", "lora"]):
            rows.append(dict(strategy=name, seed=seed, profile="quick", device="cpu", trainable=[100, 10][i],
                             trainable_percent=[100.0, 10.0][i], memory_mb=1.0, seconds_per_step=0.1,
                             train_seconds=1.0, test_accuracy=0.8 + 0.01 * seed + 0.05 * i, test_macro_f1=0.8,
                             ood_tweets=0.7, ood_amazon=0.7, ood_nyt=0.7, forgetting=0.05 - 0.05 * i,
                             drift=0.1, disk_mb=1.0))
    return pd.DataFrame(rows)


def test_summary_gives_mean_and_spread_over_seeds():
    s = summary(_fake_results())
    assert list(s.index) == ["full", "lora"]
    assert s.loc["full", "test_accuracy"] == pytest.approx(0.805)
    assert s.loc["full", "test_accuracy_std"] == pytest.approx(pd.Series([0.8, 0.81]).std())
    table = format_table(_fake_results())
    assert "±" in table and table.splitlines()[2].startswith("full")


def test_write_results_writes_tables_and_plots(tmp_path):
    spectra = {"encoder.encoder.layer.0.attention.self.query.weight": torch.tensor([3.0, 2.0, 1.0])}
    write_results(_fake_results(1), {("full", 0): [1.0] * 20, ("lora", 0): [0.5] * 20}, spectra, tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"results.csv", "summary.csv", "results.json", "accuracy_vs_trainable.png", "forgetting.png",
            "training_curves.png", "intrinsic_rank.png"} <= names
    assert len(pd.read_csv(tmp_path / "results.csv")) == 2
