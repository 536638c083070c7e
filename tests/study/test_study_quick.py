"""``pointdr2 bench study --quick``: one run (module fixture); its outputs checked against independent
recomputations from the runs' own files (test_items.npz, metrics.json)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pointdr2.study.settings import COMPARISONS, MODES, TRACKS
from pointdr2.study.stats import miou_from_sums

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pointdr2", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    proc = _cli("bench", "study", "--quick", "--out", str(out / "run"), "--docs", str(out / "docs"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = json.loads((out / "run" / "study.json").read_text())
    return out / "run", out / "docs", study, proc.stdout


def _items(run_dir: str) -> dict:
    with np.load(Path(run_dir) / "test_items.npz") as f:
        return {k: f[k] for k in f.files}


def test_every_mode_has_its_runs_and_the_summary_is_theirs(quick):
    _, _, study, _ = quick
    for name, track in study["tracks"].items():
        metric = TRACKS[name].metric
        for mode in MODES:
            runs = track["runs"][mode]
            assert [r["seed"] for r in runs] == list(range(study["seeds"])), (name, mode)
            for r in runs:
                v = r["test"][metric]
                assert math.isfinite(v) and 0.0 <= v <= 100.0
                assert len(r["curve"]) >= 1 and len(r["steps"]) >= 1  # it trained and logged
                assert (Path(r["run_dir"]) / "metrics.jsonl").is_file()
            row = track["modes"][mode][metric]
            assert row["per_seed"] == pytest.approx([r["test"][metric] for r in runs])
            assert row["mean"] == pytest.approx(np.mean(row["per_seed"]))


def test_comparisons_recomputed_from_the_test_items(quick):
    """The point estimate of each paired difference from the runs' own per-item files, by hand."""
    _, _, study, _ = quick
    for name, track in study["tracks"].items():
        rows = {(c["a"], c["b"]): c for c in track["comparisons"]}
        assert set(rows) == {(a, b) for a, b, _ in COMPARISONS}
        for (a, b), c in rows.items():
            def metric(mode, track=track, name=name):
                values = []
                for r in track["runs"][mode]:
                    items = _items(r["run_dir"])
                    if TRACKS[name].item_metric == "accuracy":
                        values.append(100.0 * np.mean(items["pred"] == items["label"]))
                        assert values[-1] == pytest.approx(r["test"]["oa"])
                    else:
                        values.append(float(miou_from_sums(items["confusion"].sum(0))))
                return np.mean(values)
            assert c["estimate"] == pytest.approx(metric(a) - metric(b), abs=1e-9)
            assert c["low"] <= c["estimate"] <= c["high"]
            inside = -c["margin"] < c["low"] and c["high"] < c["margin"]
            outside = c["low"] > c["margin"] or c["high"] < -c["margin"]
            assert c["decision"] == ("equivalent" if inside else "not equivalent" if outside else "undecided")


def test_guard_memory_and_sweeps(quick):
    _, _, study, _ = quick
    for name, track in study["tracks"].items():
        for stack, g in track["guard"].items():
            assert 1 <= g["k_min"] <= g["k_max"] <= g["depth"], (name, stack)
            assert len(g["series"]["step"]) == len(g["series"]["k"]) >= 1
        rows = {r["label"]: r for r in track["memory"]}
        assert rows["dr2net@end"]["saved_bytes"] < rows["conventional"]["saved_bytes"]
        assert rows["checkpoint"]["saved_bytes"] < rows["conventional"]["saved_bytes"]
    for key in ("depth", "points"):
        conv = np.asarray(study["sweeps"][key]["bytes"]["conventional"], dtype=np.float64)
        dr2 = np.asarray(study["sweeps"][key]["bytes"]["dr2net"], dtype=np.float64)
        assert np.all(dr2 < conv) and np.all(np.diff(conv) > 0), key


def test_gradient_grid_against_autograd(quick):
    """Reversible gradient error at (0, 1) is rounding; at (1, 0.1) it is larger; auto stays near autograd."""
    _, _, study, _ = quick
    g = study["grad_grid"]
    err = np.asarray(g["reversible_rel_error"], dtype=np.float64)
    auto = np.asarray(g["auto_rel_error"], dtype=np.float64)
    i0, j1 = g["alphas"].index(0.0), g["betas"].index(1.0)
    i1, j0 = g["alphas"].index(1.0), g["betas"].index(0.1)
    assert err[i0, j1] < 1e-4 and err[i1, j0] > err[i0, j1]
    assert np.all(auto < 10 * g["tolerance"] + 1e-5)


def test_ablation_pngs_and_report(quick):
    out, docs, study, stdout = quick
    ab = study["tracks"]["transformer"]["ablation"]
    assert set(ab["variants"]) == {"recipe", "reference"} and ab["variants"]["recipe"]["minus_recipe"] is None
    from matplotlib.image import imread

    assert {"curves_transformer", "intervals_pointnext", "guard", "memory_depth", "grad_error",
            "preservation"} <= set(study["plots"])
    for track in study["tracks"].values():
        p = track["preservation"]
        ft = track["finetune_config"]["finetune"]
        first = p["variants"]["recipe"]["points"][0]
        assert (first["alpha"], first["beta"]) == (ft["alpha"][0], ft["beta"][0])
        assert p["variants"]["reference"]["points"][-1]["beta"] == pytest.approx(1.0)
        assert all(0.0 <= r[p["metric"]] <= 100.0 for v in p["variants"].values() for r in v["points"])
    md = (out / "results.md").read_text(encoding="utf-8")
    assert md == (docs / "results.md").read_text(encoding="utf-8")
    for png in study["plots"].values():
        assert (docs / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and imread(out / png).shape[0] > 100
        assert f"]({png})" in md
    for name, track in study["tracks"].items():
        claim = next(c for c in track["comparisons"] if c["a"] == "dr2net" and c["b"] == "conventional")
        sentence = (f"dr2net − conventional = {claim['estimate']:+.2f} points, 95% interval "
                    f"[{claim['low']:+.2f}, {claim['high']:+.2f}]: {claim['decision']}")
        assert sentence in md, name
    assert "decision rule" in stdout and study["decision_rule"] in md


def test_a_finished_study_is_reused(quick, tmp_path):
    out, _, study, _ = quick
    weights = {p: p.stat().st_mtime_ns for p in out.rglob("*.pth")}
    assert any(p.parent.name == "pretrain" for p in weights) and len(weights) > 10
    proc = _cli("bench", "study", "--quick", "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "holds a run of another config" not in proc.stderr
    again = json.loads((out / "study.json").read_text())
    for name in study["tracks"]:
        assert again["tracks"][name]["runs"] == study["tracks"][name]["runs"]  # no run was trained again
    # not one run was trained again, the pretrainings included (their weights untouched)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pth")} == weights


def test_bad_seeds_is_a_one_line_error(tmp_path):
    proc = _cli("bench", "study", "--quick", "--seeds", "0", "--out", str(tmp_path / "x"), timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "--seeds" in lines[0], proc.stderr
    assert not (tmp_path / "x").exists()


