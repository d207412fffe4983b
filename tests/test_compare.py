"""Forgetting, drift and intrinsic-rank measurements, and the comparison's table and plots."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import make_model  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from ftlib.compare import format_table, summary, verdicts, write_results  # noqa: E402
from ftlib.feature_extraction import apply_feature_extraction  # noqa: E402
from ftlib.forgetting import RetentionProbe, linear_cka, linear_probe_accuracy  # noqa: E402
from ftlib.full import apply_full  # noqa: E402
from ftlib.models import embedded_model_path  # noqa: E402
from ftlib.spectrum import energy_kept, rank_for_energy, singular_values, weight_updates  # noqa: E402
from ftlib.strategies import get_recipe  # noqa: E402


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


# --- verdicts from fabricated records: each rule on cases either side of its threshold --------------------

N_TEST = 2000
TEST_LABELS = [i % 2 for i in range(N_TEST)]
OOD_LABELS = [1] * 70 + [0] * 30  # the majority class (1) is right 70% of the time


def _preds(labels, right):
    return [y if ok else 1 - y for y, ok in zip(labels, right, strict=True)]


def _record(strategy, seed=0, wrong=(), probe_wrong=(), ood_right=None, trained=100.0, memory=100, forgetting=0.01,
            drift=0.1, lr=1e-3):
    """A record whose test predictions are right except at `wrong`, probe right except at `probe_wrong`."""
    right = [i not in set(wrong) for i in range(N_TEST)]
    ood = ood_right if ood_right is not None else [True] * 100
    preds = {"test": _preds(TEST_LABELS, right), "probe_correct": [i not in set(probe_wrong) for i in range(500)]}
    metrics = {"test_accuracy": sum(right) / N_TEST, "test_macro_f1": sum(right) / N_TEST,
               "forgetting": forgetting, "drift": drift, "val_accuracy": 0.5}
    labels = {"test": TEST_LABELS}
    for dom in ("tweets", "amazon", "nyt"):
        preds[f"ood_{dom}"] = _preds(OOD_LABELS, ood)
        labels[f"ood_{dom}"] = OOD_LABELS
        metrics[f"ood_{dom}_accuracy"] = sum(ood) / len(ood)
        metrics[f"ood_{dom}_macro_f1"] = 0.5
    rec = {"key": {"strategy": strategy, "profile": "quick", "seed": seed, "lr": lr, "data_seed": 0,
                   "train_size": None, "model": None, "epochs": None},
           "metrics": metrics, "predictions": preds, "labels": labels}
    if strategy not in ("majority", "tfidf-logreg"):
        rec.update(memory_bytes=memory, seconds_per_step=0.1, train_seconds=1.0, trainable=1,
                   deployment={"trained_percent": trained, "stored_percent": trained / 2, "disk_bytes": 1000,
                               "inference_ratio": 1.0})
    else:
        rec["key"]["lr"] = None
    return rec


def _majority():
    rec = _record("majority", ood_right=[y == 1 for y in OOD_LABELS])
    rec["predictions"]["test"] = [1] * N_TEST  # always 'positive': right on half the test set
    rec["metrics"]["test_accuracy"] = 0.5
    return rec


def _verdict(ver, strategy, aspect, contains=""):
    rows = ver[(ver.strategy == strategy) & (ver.aspect == aspect) & ver.claim.str.contains(contains)]
    assert len(rows) == 1, rows
    return rows.iloc[0]["verdict"]


def test_interval_verdict_on_either_side_of_the_claims_edge():
    from ftlib.compare import PERFORMANCE, interval_verdict

    near = PERFORMANCE["Near-best"]  # d >= -0.01
    assert interval_verdict(-0.009, 0.02, *near) == "agrees"
    assert interval_verdict(-0.011, 0.02, *near) == "not resolved"
    assert interval_verdict(-0.05, -0.0101, *near) == "disagrees"
    good = PERFORMANCE["Good"]  # -0.03 <= d <= -0.01
    assert interval_verdict(-0.029, -0.011, *good) == "agrees"
    assert interval_verdict(-0.031, -0.011, *good) == "not resolved"
    assert interval_verdict(-0.009, 0.01, *good) == "disagrees"


def test_trainable_and_memory_rules_either_side_of_the_threshold():
    from ftlib.compare import memory_word, trainable_range

    lo, hi = trainable_range("~0.1%")
    assert lo <= 0.29 <= hi and not lo <= 0.31 <= hi and not lo <= 0.03 <= hi
    assert trainable_range("~1-5%") == (1.0, 5.0) and trainable_range("100%")[0] == 99.9
    lo, hi = trainable_range("<1%")
    assert lo <= 0.99 <= hi and not lo <= 1.0 <= hi
    assert [memory_word(r) for r in (0.49, 0.5, 0.8, 0.81)] == ["Low", "Moderate", "Moderate", "High"]
    records = [_record("full", memory=1000), _record("lora", trained=0.29, memory=490),
               _record("adapters", trained=0.99, memory=510)]
    ver = verdicts(records, n_boot=500)
    assert _verdict(ver, "lora", "trainable") == "agrees"
    assert _verdict(ver, "adapters", "trainable") == "disagrees"  # 0.99% is below ~1-5%
    assert _verdict(ver, "lora", "memory") == "agrees"  # 49% of full: Low
    assert _verdict(ver, "adapters", "memory") == "agrees"  # 51%: Moderate
    assert _verdict(ver, "full", "memory") == "agrees"
    measured = {"full": {"measured_bytes": 1000}, "lora": {"measured_bytes": 510}, "adapters": {"measured_bytes": 900}}
    ver = verdicts(records, memory=measured, n_boot=500)
    assert _verdict(ver, "lora", "memory") == "disagrees"  # measured 51%: Moderate, not Low
    assert _verdict(ver, "adapters", "memory") == "disagrees"  # 90%: High
    assert "measured" in ver[(ver.strategy == "lora") & (ver.aspect == "memory")].iloc[0]["measured"]


def test_performance_rule_uses_the_paired_interval_against_full():
    full = _record("full", wrong=range(0, 200))
    same = _record("lora", wrong=range(0, 200))  # identical predictions: d = 0, interval [0, 0]
    worse = _record("prefix-tuning", wrong=range(0, 400))  # 10 points below full
    close = _record("adapters", wrong=[*range(4, 204), *range(1000, 1010)])  # d = -0.005 with wide noise
    ver = verdicts([full, same, worse, close], n_boot=2000)
    assert _verdict(ver, "lora", "performance") == "agrees"  # Near-best: d >= -0.01
    assert _verdict(ver, "prefix-tuning", "performance") == "disagrees"  # Good: -0.03..-0.01, measured -0.10
    assert _verdict(ver, "adapters", "performance") == "disagrees"  # Good, but d = -0.005 lies above -0.01 ...
    row = ver[(ver.strategy == "adapters") & (ver.aspect == "performance")].iloc[0]
    assert row.low > -0.01  # ... and the whole interval does
    assert _verdict(ver, "full", "performance") == "agrees"  # the best other (lora) is level, never above
    better = _record("lora", wrong=range(0, 100))  # 5 points above full
    assert _verdict(verdicts([full, better], n_boot=500), "full", "performance") == "disagrees"
    level = _record("lora", wrong=[*range(0, 196), *range(1000, 1006)])  # d = -0.001, 6 discordant pairs
    assert _verdict(verdicts([full, level], n_boot=2000), "lora", "performance") == "agrees"
    slightly = _record("lora", wrong=[*range(10, 200), *range(1000, 1030)])  # d = -0.01 with noise
    assert _verdict(verdicts([full, slightly], n_boot=2000), "lora", "performance") == "not resolved"


def test_forgetting_rules():
    fe = _record("feature-extraction", trained=0.003, forgetting=0.0, drift=0.0)
    ver = verdicts([_record("full"), fe], n_boot=500)
    assert _verdict(ver, "feature-extraction", "forgetting") == "agrees"
    leaky = _record("feature-extraction", trained=0.003, forgetting=0.002, drift=0.0)
    assert _verdict(verdicts([_record("full"), leaky], n_boot=500), "feature-extraction", "forgetting") == "disagrees"
    full = _record("full", probe_wrong=range(100))
    lora = _record("lora", probe_wrong=range(20))  # keeps 80 more TREC questions right: full forgot more
    adapters = _record("adapters", probe_wrong=range(150))  # forgets more than full
    prefix = _record("prefix-tuning", probe_wrong=[*range(2, 100), *range(200, 202)])  # level with full
    ver = verdicts([full, lora, adapters, prefix], n_boot=2000)
    assert _verdict(ver, "full", "forgetting", "lora") == "agrees"
    assert _verdict(ver, "full", "forgetting", "adapters") == "disagrees"
    assert _verdict(ver, "full", "forgetting", "prefix-tuning") == "not resolved"


def test_out_of_domain_and_baseline_rules():
    tfidf = _record("tfidf-logreg", wrong=range(0, 300))
    at_majority = _record("lora", wrong=range(0, 300), ood_right=[y == 1 for y in OOD_LABELS])
    above = _record("adapters", wrong=range(0, 100), ood_right=[True] * 95 + [False] * 5)
    ver = verdicts([_majority(), tfidf, at_majority, above], n_boot=2000)
    assert _verdict(ver, "lora", "out-of-domain", "tweets") == "disagrees"  # exactly the majority's answers
    assert _verdict(ver, "adapters", "out-of-domain", "nyt") == "agrees"
    assert _verdict(ver, "lora", "baseline") == "disagrees"  # the same errors as TF-IDF: not better
    assert _verdict(ver, "adapters", "baseline") == "agrees"


def test_strategy_table_statistics_over_seeds():
    from ftlib.compare import format_report, strategy_table
    from ftlib.stats import mcnemar, t_interval

    records = [_record("full", seed=s, wrong=range(0, 200 + 10 * s)) for s in range(3)]
    records += [_record("lora", seed=s, wrong=range(0, 150 + 20 * s), trained=0.3) for s in range(3)]
    records += [_majority(), _record("tfidf-logreg", wrong=range(0, 500))]
    t = strategy_table(records, n_boot=1000)
    accs = [1 - (150 + 20 * s) / N_TEST for s in range(3)]
    assert t.loc["lora", "test_accuracy"] == pytest.approx(np.mean(accs))
    assert t.loc["lora", "test_std"] == pytest.approx(np.std(accs, ddof=1))
    assert (t.loc["lora", "test_t_low"], t.loc["lora", "test_t_high"]) == pytest.approx(t_interval(accs))
    assert t.loc["lora", "vs_full"] == pytest.approx(np.mean(accs) - np.mean([1 - (200 + 10 * s) / N_TEST
                                                                             for s in range(3)]))
    assert t.loc["lora", "vs_low"] < t.loc["lora", "vs_full"] < t.loc["lora", "vs_high"]
    right = lambda w: np.arange(N_TEST) >= w  # noqa: E731
    assert t.loc["lora", "p_mcnemar"] == max(mcnemar(right(150 + 20 * s), right(200 + 10 * s)) for s in range(3))
    assert t.loc["majority", "test_accuracy"] == 0.5 and t.loc["majority", "tweets_acc"] == 0.7
    assert {"majority", "tfidf-logreg"} <= set(t.index)
    text = format_report(records, n_boot=500)
    assert "±" in text and "majority" in text and "tfidf-logreg" in text and "McNemar" in text


# --- what gets deployed: stored per task, beside the shared base model -----------------------------------


def test_stored_tensors_are_what_differs_from_the_base_model():
    import copy

    from ftlib.deployment import inference_form, storage_form, stored_tensors
    from ftlib.lora import apply_lora

    base = make_model(num_labels=2)
    model = apply_lora(copy.deepcopy(base), rank=4, targets=("query", "value"))
    with torch.no_grad():
        model.classifier.weight.add_(1.0)  # the head trained
        model.classifier.bias.add_(1.0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)  # and the updates
    stored = stored_tensors(storage_form(model), base)
    h, layers, r = 32, 2, 4
    assert sum(t.numel() for t in stored.values()) == layers * 2 * r * (h + h) + (h * 2 + 2)
    assert all("lora_" in n or n.startswith("classifier.") for n in stored)
    merged = inference_form(copy.deepcopy(model))  # merged: the query/value weights now differ instead
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert sum(t.numel() for t in stored_tensors(merged, base).values()) == layers * 2 * h * h + (h * 2 + 2)


def test_stored_prefix_is_the_baked_prefix_not_the_training_mlp():
    import copy

    from ftlib.deployment import storage_form, stored_tensors
    from ftlib.prefix_tuning import apply_prefix_tuning

    base = make_model(num_labels=2)
    model = apply_prefix_tuning(copy.deepcopy(base), prefix_length=5, projection_dim=16)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stored = stored_tensors(storage_form(model), base)  # head unchanged: only the prefix differs
    assert sum(t.numel() for t in stored.values()) == 5 * 2 * 2 * 32  # P * 2 (keys, values) * L * H
    assert sum(t.numel() for t in stored.values()) < trainable


def test_full_fine_tuning_stores_only_the_tensors_that_moved():
    import copy

    from ftlib.deployment import stored_tensors

    base = make_model(num_labels=2)
    model = copy.deepcopy(base)
    with torch.no_grad():
        model.encoder.encoder.layer[0].attention.self.query.bias.add_(1e-3)
    assert list(stored_tensors(model, base)) == ["encoder.encoder.layer.0.attention.self.query.bias"]


@pytest.mark.parametrize("profile, batches", [("quick", 3), ("smoke", 1)])
def test_deployment_times_the_profiles_batches_interleaved_with_the_base(monkeypatch, profile, batches):
    """quick times 3 test batches per model, smoke (CI) 1; two rounds, base and deployed model in turn."""
    import copy
    import types

    from ftlib import deployment
    from ftlib.profiles import get_profile

    base = make_model(num_labels=2)
    timed = []
    monkeypatch.setattr(deployment, "make_loader", lambda *a, **k: iter([{"input_ids": torch.ones(2, 3)}] * 5))
    monkeypatch.setattr(deployment, "_time_forward", lambda m, b, d: timed.append((m is base, len(b))) or 1.0 + (m is base))
    ctx = types.SimpleNamespace(profile=get_profile(profile), base=base, base_total=7, tokenizer=None,
                                device=torch.device("cpu"), test_set=lambda: None)
    out = deployment.deployment(ctx, copy.deepcopy(base), trained=7)
    assert timed == [(True, batches), (False, batches)] * 2
    assert out["inference_ratio"] == 0.5 and out["stored"] == 0


def test_crossing_points_are_computed_on_a_log_scale():
    from ftlib.study import crossing_points

    rows = []
    for n, a, b in [(100, 0.6, 0.7), (1000, 0.8, 0.7), (10000, 0.9, 0.75)]:
        rows += [{"strategy": "a", "n": n, "seed": 0, "test_accuracy": a},
                 {"strategy": "b", "n": n, "seed": 0, "test_accuracy": b},
                 {"strategy": "c", "n": n, "seed": 0, "test_accuracy": a + 0.5}]
    cross = crossing_points(pd.DataFrame(rows))
    ab = cross[(cross.a == "a") & (cross.b == "b")].iloc[0]
    assert ab.n == pytest.approx(10 ** 2.5)  # gaps -0.1 at 100 and +0.1 at 1000: halfway in log10
    assert (ab.below, ab.above) == ("b", "a")
    assert len(cross) == 1  # c is ahead of both everywhere: no crossing


def test_learning_curve_epochs_give_every_size_the_profiles_step_budget():
    from ftlib.data import from_lists
    from ftlib.profiles import PROFILES
    from ftlib.results import RunKey
    from ftlib.study import MAX_EPOCHS, Context

    train = from_lists([f"review {i}" for i in range(8058)], [i % 2 for i in range(8058)], ["neg", "pos"])
    ctx = Context(PROFILES["quick"], torch.device("cpu"), None, {"train": train}, {}, None, None, None, 1)
    key = lambda n: RunKey("full", "quick", lr=1e-3, train_size=n)  # noqa: E731
    assert ctx.epochs_for(key(None)) == 2  # the profile's own run: 2 epochs x 32 steps = 64 steps
    assert ctx.epochs_for(key(100)) == 16  # 4 steps an epoch -> 16 epochs = 64 steps
    assert ctx.epochs_for(key(3000)) == 2  # never fewer than the profile's epochs
    assert ctx.epochs_for(key(10)) == MAX_EPOCHS  # capped
    assert ctx.epochs_for(RunKey("full", "quick", lr=1e-3, train_size=100, epochs=3)) == 3  # explicit wins
    assert len(ctx.train_set(100)) == 100 and ctx.train_set(100) == ctx.train_set(100, data_seed=0)
    assert ctx.train_set(100).texts != ctx.train_set(100, data_seed=1).texts  # data_seed picks the subset


def _tiny_context():
    from ftlib.data import from_lists
    from ftlib.profiles import PROFILES
    from ftlib.study import Context

    train = from_lists([f"review {i}" for i in range(300)], [i % 2 for i in range(300)], ["neg", "pos"])
    return Context(PROFILES["quick"], torch.device("cpu"), None, {"train": train, "test": train}, {}, None, None,
                   None, 1)


def test_seeds_vary_initialisation_only_and_data_seeds_the_subset():
    from ftlib.study import run_keys

    keys = run_keys(_tiny_context(), ["full", "lora"], seeds=3)
    trained = [k for k in keys if k.lr is not None]
    assert {k.data_seed for k in keys} == {0} and sorted({k.seed for k in trained}) == [0, 1, 2]
    assert {k.strategy for k in keys} == {"full", "lora", "majority", "tfidf-logreg"}
    more = run_keys(_tiny_context(), ["full"], seeds=1, data_seeds=2)
    assert {k.data_seed for k in more} == {0, 1}
    assert {k.lr for k in trained if k.strategy == "lora"} == {get_recipe("lora").lr}


def test_ensure_runs_only_missing_records_so_a_study_resumes(tmp_path, monkeypatch):
    from ftlib import study
    from ftlib.results import RunKey

    calls = []

    def fake_run(ctx, key, progress=False):
        calls.append(key)
        return {"metrics": {"test_accuracy": 0.5}, "predictions": {}}

    monkeypatch.setattr(study, "run_record", fake_run)
    monkeypatch.setattr(study, "labels_record", lambda ctx: {})
    ctx = _tiny_context()
    keys = [RunKey("full", "quick", s, 1e-3) for s in range(3)]
    study.ensure(ctx, keys[:2], tmp_path, log=None)
    assert len(calls) == 2
    recs = study.ensure(ctx, keys, tmp_path, log=None)  # the first two exist: only seed 2 runs
    assert [k.seed for k in calls] == [0, 1, 2] and [r["key"]["seed"] for r in recs] == [0, 1, 2]


def test_ensure_without_running_returns_only_what_is_on_disk(tmp_path, monkeypatch):
    """--summarise-only: the records other processes left are summarised; nothing missing is trained."""
    from ftlib import study
    from ftlib.results import RunKey

    calls = []
    monkeypatch.setattr(study, "run_record", lambda ctx, key, progress=False: calls.append(key) or
                        {"metrics": {"test_accuracy": 0.5}, "predictions": {}})
    monkeypatch.setattr(study, "labels_record", lambda ctx: {})
    ctx = _tiny_context()
    keys = [RunKey("full", "quick", s, 1e-3) for s in range(3)]
    study.ensure(ctx, keys[:1], tmp_path, log=None)
    recs = study.ensure(ctx, keys, tmp_path, log=None, run=False)
    assert len(calls) == 1 and [r["key"]["seed"] for r in recs] == [0]


def test_update_json_keeps_what_other_processes_wrote(tmp_path):
    from ftlib.results import update_json

    path = tmp_path / "memory.json"
    update_json(path, {"full": 1})
    assert update_json(path, {"lora": 2}) == {"full": 1, "lora": 2}


def test_write_study_writes_the_summary_tables_and_plots(tmp_path):
    from ftlib.study import write_study

    records = [_record("full", seed=s, wrong=range(0, 200 + 10 * s)) for s in range(2)]
    records += [_record("lora", seed=s, wrong=range(0, 210), trained=0.3) for s in range(2)]
    records += [_majority(), _record("tfidf-logreg", wrong=range(0, 500))]
    curves = []
    for n, (wf, wl) in {100: (900, 700), 1000: (200, 400)}.items():  # lora ahead on little data, full on more
        for name, wrong in (("full", wf), ("lora", wl)):
            rec = _record(name, wrong=range(wrong))
            rec["train_examples"] = n
            curves.append(rec)
    memory = {"full": {"measured_bytes": 3e8, "accounted_bytes": 1e8}, "lora": {"measured_bytes": 2e8,
                                                                              "accounted_bytes": 3e7}}
    write_study(tmp_path, records, curves, memory, {"full": 5e-5, "lora": 1e-3}, n_boot=300)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"summary.md", "table.csv", "verdicts.csv", "accuracy.png", "memory.png", "learning_curves.csv",
            "crossings.csv", "learning_curves.png"} <= names
    cross = pd.read_csv(tmp_path / "crossings.csv")
    assert cross[["below", "above"]].values.tolist() == [["lora", "full"]] and 100 < cross.n[0] < 1000
    text = (tmp_path / "summary.md").read_text()
    assert "| full |" in text and "Chosen learning rates: full 5e-05, lora 0.001" in text
    assert pd.read_csv(tmp_path / "table.csv", index_col=0).loc["full", "measured_mb"] == pytest.approx(3e8 / 2**20)


def test_cli_study_sweep_and_compare_pass_their_options(monkeypatch, tmp_path):
    from ftlib import cli, study
    from ftlib import compare as compare_module

    calls = {}
    monkeypatch.setattr(study, "run_study", lambda *a, **k: calls.update(study=(a, k)))
    argv = ["study", "--seeds", "3", "--strategies", "full, lora", "--no-memory", "--curve-sizes", "100,all",
            "--results", str(tmp_path), "--device", "cpu", "--profile", "quick"]
    assert cli.main(argv) == 0
    a, k = calls["study"]
    assert a[:5] == ("quick", 3, tmp_path, ["full", "lora"], "cpu")
    assert k["memory"] is False and k["curves"] is True and k["curve_sizes"] == [100, None]
    assert cli.main(["study", "--device", "cpu", "--strategies", "full"]) == 0  # default folder: the study's own
    assert calls["study"][0][2] is None  # -> results/<profile>-<machine>

    def fake_compare(names, **kwargs):
        calls["compare"] = (names, kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(compare_module, "compare", fake_compare)
    assert cli.main(["compare", "--strategies", "full,lora", "--lr-grid", "--lrs", "1e-4,1e-3",
                     "--results", str(tmp_path), "--device", "cpu"]) == 2
    names, kwargs = calls["compare"]
    assert names == ["full", "lora"] and kwargs["lr_grid"] is True and kwargs["lrs"] == [1e-4, 1e-3]
    assert kwargs["output"] == tmp_path
    assert cli.main(["sweep", "--strategies", "nope", "--device", "cpu"]) == 2  # typo: fails before any work


def test_the_learning_curve_uses_every_seed_of_the_main_study_at_its_size():
    from ftlib.study import with_main_runs

    def rec(strategy, seed, size):
        return {"key": {"strategy": strategy, "profile": "quick", "seed": seed, "train_size": size,
                        "lr": None if strategy == "majority" else 1e-3}}

    curve = [rec("lora", s, n) for s in range(2) for n in (100, None)] + [rec("majority", 0, None)]
    main = [rec(name, s, None) for s in range(5) for name in ("lora", "prefix-tuning")] + [rec("majority", 0, None)]
    merged = with_main_runs(curve, main)
    at_profile = sorted(r["key"]["seed"] for r in merged if r["key"]["strategy"] == "lora" and r["key"]["train_size"] is None)
    assert at_profile == [0, 1, 2, 3, 4]  # the two curve seeds once each, plus the main study's other three
    assert {r["key"]["strategy"] for r in merged} == {"lora", "majority"}  # no strategy the curve left out
    assert len(merged) == len({json.dumps(r["key"], sort_keys=True) for r in merged})
