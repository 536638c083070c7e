"""Stage 3 of the study: statistics of the finished runs (means, paired intervals, decisions, the guard).

Inputs are the runs' own files (``metrics.json``, ``metrics.jsonl``, ``test_items.npz``); outputs are
plain dicts stored in ``study.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pointdr2.study.runs import RunResult, RunSpec, run_items
from pointdr2.study.settings import COMPARISONS, MARGIN, TRACKS
from pointdr2.study.stats import DECISION_RULE, bootstrap_paired, decide, mean_std

__all__ = ["item_statistics", "mode_table", "comparisons", "decision_rule", "guard_report", "ablation_table",
           "reduced_modes"]

METRIC_KEYS = {"oa": ("oa", "macc"), "miou": ("miou", "oa", "macc")}


def item_statistics(specs: Sequence[RunSpec], item_metric: str) -> np.ndarray:
    """Per-seed, per-item statistics of ``specs`` (ordered by seed): [S, J] correctness or [S, J, K, K]."""
    rows = []
    index = None
    for spec in specs:
        items = run_items(spec)
        if index is None:
            index = items["index"]
        elif not np.array_equal(index, items["index"]):
            raise ValueError(f"{spec.key}: its test items differ from the other runs' (paired statistics need one "
                             "test set)")
        if item_metric == "accuracy":
            rows.append((items["pred"] == items["label"]).astype(np.int64))
        else:
            rows.append(items["confusion"].astype(np.int64))
    return np.stack(rows)


def mode_table(results: Mapping[str, Sequence[RunResult]], metric: str) -> dict[str, Any]:
    """Per mode: every test metric per seed with mean and std, mean training seconds."""
    table: dict[str, Any] = {}
    for mode, runs in results.items():
        row: dict[str, Any] = {}
        for key in METRIC_KEYS[metric]:
            values = [float(r.test[key]) for r in runs if key in r.test]
            mean, std = mean_std(values)
            row[key] = {"per_seed": values, "mean": mean, "std": std}
        secs = [r.seconds for r in runs if r.seconds is not None]
        row["train_seconds"] = mean_std(secs)[0] if secs else None
        acts = [s.get("activation_bytes") for r in runs for s in r.steps[:1] if s.get("activation_bytes")]
        row["activation_bytes_first_step"] = max(acts) if acts else None
        table[mode] = row
    return table


def comparisons(specs: Mapping[str, Sequence[RunSpec]], track: str, replicates: int,
                pairs: Sequence[tuple[str, str, str]] = COMPARISONS) -> list[dict[str, Any]]:
    """The paired differences of :data:`COMPARISONS` with their 95% intervals and decisions."""
    t = TRACKS[track]
    stats = {mode: item_statistics(s, t.item_metric) for mode, s in specs.items() if s}
    out = []
    for a, b, what in pairs:
        if a not in stats or b not in stats:
            continue
        n = min(len(stats[a]), len(stats[b]))
        iv = bootstrap_paired(stats[a][:n], stats[b][:n], t.item_metric, replicates=replicates, seed=0)
        out.append({"a": a, "b": b, "what": what, "metric": t.metric, "seeds": n,
                    "items": int(stats[a].shape[1]), **iv.as_dict(), "decision": decide(iv, MARGIN),
                    "margin": MARGIN})
    return out


def reduced_modes(specs: Mapping[str, Sequence[RunSpec]], reference: str = "conventional") -> dict[str, Any]:
    """Modes that ran fewer seeds than ``reference``: their seeds and, per seed, whether the run's per-item
    test records (predictions, or the room's confusion matrix) equal ``reference``'s bit for bit."""
    full = {sp.meta["seed"]: sp for sp in specs.get(reference, [])}
    out: dict[str, Any] = {}
    for mode, mode_specs in specs.items():
        if mode == reference or len(mode_specs) >= len(full):
            continue
        same = {}
        for sp in mode_specs:
            ref = full.get(sp.meta["seed"])
            if ref is not None:
                a, b = run_items(sp), run_items(ref)
                same[sp.meta["seed"]] = bool(a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a))
        out[mode] = {"seeds": [sp.meta["seed"] for sp in mode_specs], "identical_to_" + reference: same}
    return out


def decision_rule() -> str:
    """The decision rule in words, with the study's margin."""
    return DECISION_RULE.format(m=MARGIN)


def guard_report(runs: Sequence[RunResult]) -> dict[str, Any]:
    """What the precision guard chose per stack over training, from dr2net runs' step records.

    ``{stack: {"depth", "k_first", "k_min", "k_median", "k_max", "checkpoint_fraction", "first_step_k_gt_1",
    "error_max", "series": {"step": [...], "k": [...], "error": [...]} (first run)}}``.
    """
    report: dict[str, Any] = {}
    for r_i, run in enumerate(runs):
        for rec in run.steps:
            for name, st in (rec.get("stacks") or {}).items():
                entry = report.setdefault(name or "stack", {"k": [], "modes": [], "errors": [], "depth": st["depth"],
                                                            "first_step_k_gt_1": None,
                                                            "series": {"step": [], "k": [], "error": [], "alpha": []}})
                k = st.get("cache_every")
                if k is not None:
                    entry["k"].append(int(k))
                    if k > 1 and entry["first_step_k_gt_1"] is None and r_i == 0:
                        entry["first_step_k_gt_1"] = int(rec["step"])
                entry["modes"].append(st.get("mode"))
                if st.get("reconstruction_error") is not None:
                    entry["errors"].append(float(st["reconstruction_error"]))
                if r_i == 0:
                    entry["series"]["step"].append(int(rec["step"]))
                    entry["series"]["k"].append(k)
                    entry["series"]["error"].append(st.get("reconstruction_error"))
                    entry["series"]["alpha"].append(rec.get("alpha"))
    out = {}
    for name, e in report.items():
        ks = e["k"]
        out[name] = {"depth": e["depth"], "k_first": ks[0] if ks else None, "k_min": min(ks) if ks else None,
                     "k_median": float(np.median(ks)) if ks else None, "k_max": max(ks) if ks else None,
                     "checkpoint_fraction": float(np.mean([m == "checkpoint" for m in e["modes"]])) if e["modes"]
                     else None, "first_step_k_gt_1": e["first_step_k_gt_1"],
                     "error_max": max(e["errors"]) if e["errors"] else None, "series": e["series"]}
    return out


def ablation_table(results: Mapping[str, Sequence[RunResult]], metric: str) -> dict[str, Any]:
    """Per recipe variant: test metric per seed, mean, std, and the paired mean difference to "recipe"."""
    base = {r.seed: float(r.test[metric]) for r in results.get("recipe", [])}
    table: dict[str, Any] = {}
    for name, runs in results.items():
        values = {r.seed: float(r.test[metric]) for r in runs}
        mean, std = mean_std(values.values())
        diffs = [values[s] - base[s] for s in values if s in base]
        table[name] = {"per_seed": [values[s] for s in sorted(values)], "mean": mean, "std": std,
                       "minus_recipe": mean_std(diffs)[0] if diffs and name != "recipe" else None}
    return table
