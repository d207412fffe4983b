"""Every strategy on the same model and data, as a researcher would report it: means and spreads over
seeds, paired tests against full fine-tuning, two baselines, tuned learning rates, and verdicts on the
reference text's claims computed from those statistics (never typed).

`compare` runs (or finds cached) records, see ftlib.study; the functions below turn records into tables.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .data import load_movie_reviews  # noqa: F401  (re-exported: patched by tests that forbid work)
from .experiment import run_strategy  # noqa: F401  (the one-run API, re-exported)
from .models import build_classifier  # noqa: F401
from .results import BASELINES, write_json
from .stats import mcnemar, mean_std, paired_bootstrap, t_interval

REFERENCE = "full"  # the strategy every other is tested against
DOMAINS = ("tweets", "amazon", "nyt")
COLUMNS = {  # column -> (header, format) for the printed legacy table (one row per run)
    "trainable": ("trainable", "{:,.0f}"), "trainable_percent": ("%", "{:.3f}"),
    "memory_mb": ("mem MB", "{:.0f}"), "seconds_per_step": ("s/step", "{:.3f}"),
    "train_seconds": ("train s", "{:.0f}"), "test_accuracy": ("test acc", "{:.3f}"),
    "test_macro_f1": ("test F1", "{:.3f}"), "ood_tweets": ("tweets", "{:.3f}"), "ood_amazon": ("amazon", "{:.3f}"),
    "ood_nyt": ("nyt", "{:.3f}"), "forgetting": ("forget", "{:+.3f}"), "drift": ("drift", "{:.4f}"),
    "disk_mb": ("disk MB", "{:.3f}"),
}

# The reference text's comparison table, verbatim: trainable params, memory, performance.
REFERENCE_TABLE = {
    "full": ("100%", "High", "Best"),
    "feature-extraction": ("<1%", "Low", "Moderate"),
    "lora": ("~0.1%", "Low", "Near-best"),
    "prefix-tuning": ("~0.1%", "Low", "Good"),
    "adapters": ("~1-5%", "Moderate", "Good"),
}
# Performance words as ranges of d = accuracy - full fine-tuning's accuracy (Best: nobody above full).
PERFORMANCE = {"Best": (-math.inf, 0.0), "Near-best": (-0.01, math.inf), "Good": (-0.03, -0.01),
               "Moderate": (-math.inf, -0.03)}
MEMORY_WORDS = ((0.5, "Low"), (0.8 + 1e-12, "Moderate"), (math.inf, "High"))  # share of full fine-tuning's peak
ABOVE = (1e-12, math.inf)  # "better than": the interval must lie above 0
RULES = {
    "trainable": "share of base model + head trained while training; `~x%` = within a factor 3 of x, "
                 "`a-b%` and `<x%` as written (deterministic: agrees/disagrees)",
    "memory": "peak training memory / full fine-tuning's (measured where available, else accounted): "
              "Low < 50%, Moderate 50-80%, High > 80%",
    "performance": "d = accuracy - full's, 95% paired-bootstrap interval over test reviews and seeds; "
                   "Best: no strategy above full (d of the best other <= 0); Near-best: d >= -0.01; "
                   "Good: -0.03 <= d <= -0.01; Moderate: d <= -0.03",
    "forgetting": "feature extraction: zero forgetting and zero drift on every seed (exact); full fine-tuning "
                  "forgets more than a PEFT method: TREC-6 probe accuracy (PEFT - full) > 0, paired bootstrap",
    "out-of-domain": "accuracy - the majority class of that domain > 0, paired bootstrap over its examples and seeds",
    "baseline": "test accuracy - TF-IDF + logistic regression's > 0, paired bootstrap",
    "verdict": "agrees: the whole 95% interval lies inside the claim; disagrees: it lies wholly outside; "
               "not resolved: it straddles an edge of the claim",
}


def interval_verdict(low: float, high: float, claim_low: float, claim_high: float) -> str:
    """agrees if [low, high] lies inside the claim's range, disagrees if wholly outside, else not resolved."""
    if claim_low <= low and high <= claim_high:
        return "agrees"
    if high < claim_low or low > claim_high:
        return "disagrees"
    return "not resolved"


def trainable_range(claim: str) -> tuple[float, float]:
    """A claim like '100%', '<1%', '~0.1%', '~1-5%' as a range of percentages."""
    text = claim.strip().lstrip("~").rstrip("%")
    if claim.strip() == "100%":
        return 99.9, 100.0
    if text.startswith("<"):
        return 0.0, float(text[1:]) - 1e-12
    if "-" in text:
        lo, hi = (float(x) for x in text.split("-"))
        return lo, hi
    return float(text) / 3, float(text) * 3


def memory_word(ratio: float) -> str:
    """Low below 50% of full fine-tuning's peak, Moderate from 50% up to 80%, High above."""
    return next(word for limit, word in MEMORY_WORDS if ratio < limit or limit == math.inf)


# --- records -> arrays and rows --------------------------------------------------------------------------


def by_strategy(records: Sequence[dict]) -> dict[str, list[dict]]:
    """Records grouped by strategy, each group sorted by seed, in first-seen order."""
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(r["key"]["strategy"], []).append(r)
    return {k: sorted(v, key=lambda r: r["key"]["seed"]) for k, v in out.items()}


def correct(recs: Sequence[dict], set_name: str) -> dict[int, np.ndarray]:
    """seed -> right/wrong per example of `set_name` ('test', 'ood_tweets', ..., or 'probe')."""
    if set_name == "probe":
        return {r["key"]["seed"]: np.asarray(r["predictions"]["probe_correct"], bool)
                for r in recs if "probe_correct" in r["predictions"]}
    return {r["key"]["seed"]: np.asarray(r["predictions"][set_name]) == np.asarray(r["labels"][set_name])
            for r in recs if set_name in r["predictions"]}


def paired(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(S, N) arrays over the seeds both have; a baseline with one run is paired with every seed."""
    if len(b) == 1 and len(a) > 1:
        b = dict.fromkeys(a, next(iter(b.values())))
    if len(a) == 1 and len(b) > 1:
        a = dict.fromkeys(b, next(iter(a.values())))
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("the two strategies share no seed; run both with the same --seeds")
    return np.stack([a[s] for s in seeds]), np.stack([b[s] for s in seeds])


def compare_pair(a: dict, b: dict, n_boot: int = 10_000) -> dict[str, float]:
    """diff of accuracies (a - b), its 95% paired-bootstrap interval, and McNemar's p (largest over seeds)."""
    xa, xb = paired(a, b)
    diff, low, high = paired_bootstrap(xa, xb, n=n_boot)
    return {"diff": diff, "low": low, "high": high, "p": max(mcnemar(x, y) for x, y in zip(xa, xb, strict=True))}


def runs_frame(records: Sequence[dict]) -> pd.DataFrame:
    """One row per record: its key and flat metrics."""
    rows = []
    for r in records:
        d = r.get("deployment", {})
        m = r["metrics"]
        row = {**r["key"], **m, "device": r.get("device"), "seconds_per_step": r.get("seconds_per_step"),
               "train_seconds": r.get("train_seconds"), "trainable": r.get("trainable"),
               "memory_mb": r["memory_bytes"] / 2**20 if "memory_bytes" in r else None,
               "trained_percent": d.get("trained_percent"), "stored_percent": d.get("stored_percent"),
               "stored": d.get("stored"), "disk_mb": d["disk_bytes"] / 2**20 if "disk_bytes" in d else None,
               "inference_ratio": d.get("inference_ratio")}
        for dom in DOMAINS:  # the legacy column names
            if f"ood_{dom}_accuracy" in m:
                row[f"ood_{dom}"] = m[f"ood_{dom}_accuracy"]
        row["trainable_percent"] = row["trained_percent"]
        rows.append(row)
    return pd.DataFrame(rows)


def strategy_table(records: Sequence[dict], memory: dict[str, dict] | None = None, n_boot: int = 10_000,
                   reference: str = REFERENCE) -> pd.DataFrame:
    """One row per strategy (baselines included): mean, std and t-interval over seeds, paired statistics
    against `reference`, out-of-domain accuracy and macro-F1, forgetting, cost and deployment."""
    groups = by_strategy(records)
    ref = correct(groups[reference], "test") if reference in groups else None
    rows = {}
    for name, recs in groups.items():
        acc = [r["metrics"]["test_accuracy"] for r in recs]
        mean, std = mean_std(acc)
        low, high = t_interval(acc)
        row = {"lr": recs[0]["key"]["lr"], "seeds": len(recs), "test_accuracy": mean, "test_std": std,
               "test_t_low": low, "test_t_high": high,
               "test_macro_f1": float(np.mean([r["metrics"]["test_macro_f1"] for r in recs]))}
        if ref is not None and name != reference:
            c = compare_pair(correct(recs, "test"), ref, n_boot)
            row.update({f"vs_{reference}": c["diff"], "vs_low": c["low"], "vs_high": c["high"], "p_mcnemar": c["p"]})
        for dom in DOMAINS:
            for metric in ("accuracy", "macro_f1"):
                vals = [r["metrics"].get(f"ood_{dom}_{metric}") for r in recs]
                if all(v is not None for v in vals):
                    row[f"{dom}_{'acc' if metric == 'accuracy' else 'f1'}"] = float(np.mean(vals))
        if name not in BASELINES:
            f_mean, f_std = mean_std([r["metrics"]["forgetting"] for r in recs]) if "forgetting" in recs[0]["metrics"] \
                else (float("nan"), float("nan"))
            d = recs[0].get("deployment", {})
            row.update({"forgetting": f_mean, "forgetting_std": f_std,
                        "drift": float(np.mean([r["metrics"].get("drift", np.nan) for r in recs])),
                        "trained_percent": d.get("trained_percent"), "stored_percent": d.get("stored_percent"),
                        "disk_mb": d["disk_bytes"] / 2**20 if "disk_bytes" in d else None,
                        "accounted_mb": recs[0]["memory_bytes"] / 2**20,
                        "s_per_step": float(np.median([r["seconds_per_step"] for r in recs])),
                        "inference_ratio": float(np.median([r["deployment"]["inference_ratio"] for r in recs]))
                        if d else None})
            if memory and name in memory:
                row["measured_mb"] = memory[name]["measured_bytes"] / 2**20
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("strategy")


# --- verdicts --------------------------------------------------------------------------------------------


def verdicts(records: Sequence[dict], memory: dict[str, dict] | None = None, n_boot: int = 10_000,
             reference_table: dict = REFERENCE_TABLE) -> pd.DataFrame:
    """Each claim checked by its rule (RULES): strategy, aspect, claim, measured, interval, verdict."""
    groups = by_strategy(records)
    rows = []

    def add(strategy, aspect, claim, measured, verdict, low=np.nan, high=np.nan):
        rows.append({"strategy": strategy, "aspect": aspect, "claim": claim, "measured": measured,
                     "low": low, "high": high, "verdict": verdict})

    ref_test = correct(groups[REFERENCE], "test") if REFERENCE in groups else None
    trained = {n: rs[0]["deployment"] for n, rs in groups.items() if "deployment" in rs[0]}
    mem_full = None
    if memory and REFERENCE in memory:
        mem = {n: m["measured_bytes"] for n, m in memory.items()}
        mem_full, mem_kind = mem[REFERENCE], "measured"
    elif REFERENCE in groups:
        mem = {n: rs[0]["memory_bytes"] for n, rs in groups.items() if "memory_bytes" in rs[0]}
        mem_full, mem_kind = mem[REFERENCE], "accounted"
    for name, (c_train, c_mem, c_perf) in reference_table.items():
        if name not in groups:
            continue
        if name in trained:
            pct, stored = trained[name]["trained_percent"], trained[name]["stored_percent"]
            lo, hi = trainable_range(c_train)
            add(name, "trainable", c_train, f"{pct:.3g}% trained, {stored:.3g}% stored",
                "agrees" if lo <= pct <= hi else "disagrees")
        if mem_full and name in mem:
            ratio = mem[name] / mem_full
            add(name, "memory", c_mem, f"{memory_word(ratio)} ({ratio:.0%} of full, {mem_kind})",
                "agrees" if memory_word(ratio) == c_mem else "disagrees")
        if ref_test is None:
            continue
        if name == REFERENCE:
            others = {n: rs for n, rs in groups.items() if n != REFERENCE and n not in BASELINES}
            if others:
                best = max(others, key=lambda n: np.mean([r["metrics"]["test_accuracy"] for r in others[n]]))
                c = compare_pair(correct(others[best], "test"), ref_test, n_boot)
                add(name, "performance", c_perf, f"best other ({best}) - full = {c['diff']:+.3f}",
                    interval_verdict(c["low"], c["high"], *PERFORMANCE[c_perf]), c["low"], c["high"])
        else:
            c = compare_pair(correct(groups[name], "test"), ref_test, n_boot)
            add(name, "performance", c_perf, f"d = {c['diff']:+.3f} vs full",
                interval_verdict(c["low"], c["high"], *PERFORMANCE[c_perf]), c["low"], c["high"])
    if "feature-extraction" in groups and "forgetting" in groups["feature-extraction"][0]["metrics"]:
        fe = groups["feature-extraction"]
        worst_f = max(abs(r["metrics"]["forgetting"]) for r in fe)
        worst_d = max(abs(r["metrics"]["drift"]) for r in fe)
        add("feature-extraction", "forgetting", "none", f"max |forgetting| {worst_f:.3g}, max |drift| {worst_d:.1e}",
            "agrees" if worst_f == 0 and worst_d < 1e-9 else "disagrees")
    if REFERENCE in groups and correct(groups[REFERENCE], "probe"):
        full_probe = correct(groups[REFERENCE], "probe")
        for name in ("lora", "prefix-tuning", "adapters"):
            if name in groups and correct(groups[name], "probe"):
                c = compare_pair(correct(groups[name], "probe"), full_probe, n_boot)
                add(REFERENCE, "forgetting", f"forgets more than {name}", f"probe ({name} - full) {c['diff']:+.3f}",
                    interval_verdict(c["low"], c["high"], *ABOVE), c["low"], c["high"])
    for name, recs in groups.items():
        if name in BASELINES:
            continue
        if "tfidf-logreg" in groups:
            c = compare_pair(correct(recs, "test"), correct(groups["tfidf-logreg"], "test"), n_boot)
            add(name, "baseline", "beats TF-IDF + logistic regression", f"{c['diff']:+.3f}",
                interval_verdict(c["low"], c["high"], *ABOVE), c["low"], c["high"])
        if "majority" in groups:
            for dom in DOMAINS:
                key = f"ood_{dom}"
                if key in recs[0]["predictions"]:
                    c = compare_pair(correct(recs, key), correct(groups["majority"], key), n_boot)
                    add(name, "out-of-domain", f"beats the majority class on {dom}", f"{c['diff']:+.3f}",
                        interval_verdict(c["low"], c["high"], *ABOVE), c["low"], c["high"])
    return pd.DataFrame(rows, columns=["strategy", "aspect", "claim", "measured", "low", "high", "verdict"])


# --- legacy per-run tables (kept for `summary` users) ----------------------------------------------------


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean per strategy (and the spread over seeds when there are several), in the order run."""
    cols = [c for c in COLUMNS if c in df]
    g = df.groupby("strategy", sort=False)[cols]
    out = g.mean()
    if df["seed"].nunique() > 1:
        out = out.join(g.std().add_suffix("_std"))
    return out


def format_table(df: pd.DataFrame) -> str:
    """The printed per-run summary: means, with ± spread when several seeds ran."""
    s = summary(df)
    seeds = df["seed"].nunique()
    lines = []
    cols = [(c, h) for c, (h, _) in COLUMNS.items() if c in s and s[c].notna().any()]
    header = f"{'strategy':<19}" + "".join(f"{h:>{11 if c == 'trainable' else 9}}" for c, h in cols)
    lines += [header, "-" * len(header)]
    for name, r in s.iterrows():
        cells = []
        for c, _ in cols:
            text = COLUMNS[c][1].format(r[c]) if pd.notna(r[c]) else "-"
            if seeds > 1 and c in ("test_accuracy", "forgetting") and f"{c}_std" in s and pd.notna(r[f"{c}_std"]):
                text += f"±{r[f'{c}_std']:.3f}"[:6]
            cells.append(f"{text:>{11 if c == 'trainable' else 9}}")
        lines.append(f"{name:<19}" + "".join(cells))
    return "\n".join(lines)


# --- the report ------------------------------------------------------------------------------------------


def _pm(mean, std) -> str:
    return f"{mean:.3f}" if pd.isna(std) else f"{mean:.3f}±{std:.3f}"


def report_tables(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The strategy table as two printable frames: accuracy (with statistics) and cost (with deployment)."""
    t = table
    acc = pd.DataFrame(index=t.index)
    acc["lr"] = t["lr"].map(lambda v: "-" if pd.isna(v) else f"{v:.3g}")
    acc["seeds"] = t["seeds"]
    acc["test acc"] = [_pm(m, s) for m, s in zip(t["test_accuracy"], t["test_std"], strict=True)]
    acc["test F1"] = t["test_macro_f1"].map("{:.3f}".format)
    if f"vs_{REFERENCE}" in t:
        acc[f"Δ vs {REFERENCE} [95% CI]"] = [
            "-" if pd.isna(d) else f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
            for d, lo, hi in zip(t[f"vs_{REFERENCE}"], t["vs_low"], t["vs_high"], strict=True)]
        acc["p (McNemar)"] = t["p_mcnemar"].map(lambda p: "-" if pd.isna(p) else f"{p:.3g}")
    for dom in DOMAINS:
        if f"{dom}_acc" in t:
            acc[f"{dom} acc/F1"] = [f"{a:.3f}/{f:.3f}" for a, f in zip(t[f"{dom}_acc"], t[f"{dom}_f1"], strict=True)]
    cost_cols = {"trained_percent": ("trained %", "{:.3g}"), "stored_percent": ("stored %", "{:.3g}"),
                 "disk_mb": ("disk MB", "{:.3g}"), "accounted_mb": ("mem acc. MB", "{:.0f}"),
                 "measured_mb": ("mem meas. MB", "{:.0f}"), "s_per_step": ("s/step", "{:.3f}"),
                 "inference_ratio": ("infer ×base", "{:.2f}"), "forgetting": ("forget", "{:+.3f}"),
                 "drift": ("drift", "{:.3g}")}
    rows = t[~t.index.isin(BASELINES)]
    cost = pd.DataFrame(index=rows.index)
    for c, (h, fmt) in cost_cols.items():
        if c in rows:
            cost[h] = rows[c].map(lambda v, f=fmt: "-" if v is None or pd.isna(v) else f.format(v))
    return {"accuracy": acc, "cost": cost}


def format_report(records: Sequence[dict], memory: dict | None = None, n_boot: int = 10_000) -> str:
    """What `python -m ftlib compare` prints: the two tables and the verdicts, with their rules."""
    table = strategy_table(records, memory, n_boot)
    parts = report_tables(table)
    ver = verdicts(records, memory, n_boot)
    with pd.option_context("display.width", 250, "display.max_columns", 50, "display.max_colwidth", 60):
        out = ["accuracy: mean±std over seeds; Δ = accuracy - full's with its 95% paired-bootstrap interval "
               "(test reviews and seeds); p = exact McNemar, largest over seeds", parts["accuracy"].to_string(), "",
               "cost and deployment: shares of one denominator (base model + head)", parts["cost"].to_string(), ""]
        if len(ver):
            out += ["verdicts (rule: " + RULES["verdict"] + ")",
                    ver.drop(columns=["low", "high"]).to_string(index=False)]
    return "\n".join(out)


def chosen_lrs_path(root: str | Path, profile: str) -> Path:
    return Path(root) / profile / "chosen_lrs.json"


def compare(strategies: list[str], *, profile: str | None = None, seeds: int = 1, model_name: str | None = None,
            device: str | None = None, output: str | Path | None = "results", progress: bool = True,
            data_seeds: int = 1, lr_grid: bool = False, lrs: Sequence[float] | None = None) -> pd.DataFrame:
    """Run (or find cached) every strategy x seed x data seed, plus both baselines: one row per record.

    Records go under `output` (the results folder); with `lr_grid`, each strategy's rate is first chosen
    on validation accuracy from a small grid (`lrs`, else around the recipe's) and the runs use it.
    The records are in `df.attrs['records']`; `format_report(df.attrs['records'])` prints the tables."""
    from .study import check_strategies, ensure, load_context, run_keys, sweep

    names = check_strategies(strategies)  # fail on a typo before any training
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an int >= 1, got {seeds!r}")
    if not isinstance(data_seeds, int) or data_seeds < 1:
        raise ValueError(f"data_seeds must be an int >= 1, got {data_seeds!r}")
    root = Path(output if output is not None else "results")
    ctx = load_context(profile, device, model_name)
    chosen = {}
    if lr_grid or lrs:
        chosen, grid = sweep(ctx, names, root, lrs=lrs, log=print if progress else None)
        write_json(chosen_lrs_path(root, ctx.profile.name), chosen)
        grid.to_csv(root / ctx.profile.name / "lr_sweep.csv", index=False)
    records = ensure(ctx, run_keys(ctx, names, seeds, chosen, data_seeds), root, print)  # a line per run
    df = runs_frame(records)
    df.attrs.update(records=records, profile=ctx.profile.name,
                    probe_base_accuracy=ctx.probe.base_accuracy if ctx.probe else float("nan"))
    return df


def write_results(df: pd.DataFrame, curves: dict, spectra: dict, out: Path) -> None:
    """results.csv, results.json, summary.csv and the plots (per-run rows)."""
    from .plots import plot_accuracy_vs_trainable, plot_forgetting, plot_spectra, plot_training_curves

    out.mkdir(parents=True, exist_ok=True)
    flat = df.drop(columns=[c for c in df if df[c].map(lambda v: isinstance(v, list | dict)).any()])
    flat.to_csv(out / "results.csv", index=False)
    summary(df).to_csv(out / "summary.csv")
    meta = {k: v for k, v in df.attrs.items() if k != "records"}
    (out / "results.json").write_text(json.dumps({**meta, "rows": flat.to_dict(orient="records")}, indent=1,
                                                 default=str))
    plot_accuracy_vs_trainable(df).savefig(out / "accuracy_vs_trainable.png", dpi=120)
    if "forgetting" in df and df["forgetting"].notna().any():
        plot_forgetting(df.dropna(subset=["forgetting"])).savefig(out / "forgetting.png", dpi=120)
    plot_training_curves(curves).savefig(out / "training_curves.png", dpi=120)
    if spectra:
        plot_spectra(spectra).savefig(out / "intrinsic_rank.png", dpi=120)
