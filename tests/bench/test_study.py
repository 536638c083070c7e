"""``pointdr2 bench study --quick``: one run (module fixture), its outputs checked against independent references."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
MODES = ("conventional", "checkpoint", "dr2net")
SEEDS = 2


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pointdr2", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    docs = out / "docs"
    proc = _cli("bench", "study", "--quick", "--seeds", str(SEEDS), "--threads", "1", "--out", str(out / "run"),
                "--docs", str(docs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = json.loads((out / "run" / "study.json").read_text())
    return out / "run", docs, study, proc.stdout


def test_every_mode_and_seed_has_finite_metrics(quick):
    _, _, study, _ = quick
    for track, keys in (("transformer", ("oa", "macc")), ("pointnext", ("miou", "oa", "macc"))):
        runs = study["tracks"][track]["runs"]
        for mode in MODES:
            assert [r["seed"] for r in runs[mode]] == list(range(SEEDS)), (track, mode)
            for r in runs[mode]:
                for k in keys:
                    v = r["test"][k]
                    assert math.isfinite(v) and 0.0 <= v <= 100.0, (track, mode, k, v)
                # the run really trained: one validation value per epoch in its log
                assert len(r["curve"][keys[0]]) == study["tracks"][track]["finetune_config"]["train"]["epochs"]
        # mean and std in the summary are those of the per-seed numbers
        for mode in MODES:
            row = study["tracks"][track]["metrics"][mode][keys[0]]
            vals = [r["test"][keys[0]] for r in runs[mode]]
            assert row["per_seed"] == pytest.approx(vals)
            assert row["mean"] == pytest.approx(np.mean(vals))
            assert row["std"] == pytest.approx(np.std(vals, ddof=1))


def test_dr2net_runs_log_guard_and_reconstruction(quick):
    _, _, study, _ = quick
    for track in ("transformer", "pointnext"):
        for r in study["tracks"][track]["runs"]["dr2net"]:
            steps = r["steps"]
            assert len(steps["step"]) > 0
            assert all(m in ("reversible", "checkpoint") for m in steps["backprop_mode"])
            assert all(isinstance(k, int) and k >= 1 for k in steps["cache_every"])
            # alpha moves from 1 towards 0 over the schedule
            assert steps["alpha"][0] == pytest.approx(1.0) and steps["alpha"][-1] < 1.0
        for r in study["tracks"][track]["runs"]["conventional"]:
            assert all(m is None for m in r["steps"]["backprop_mode"])


def test_activation_bytes_ordering(quick):
    _, _, study, _ = quick
    for track in ("transformer", "pointnext"):
        rows = {r["label"]: r for r in study["tracks"][track]["memory"]}
        conv, ckpt, dr2 = rows["conventional"], rows["checkpoint"], rows["dr2net@end"]
        assert dr2["saved_bytes"] < ckpt["saved_bytes"] < conv["saved_bytes"], track
        assert dr2["cache_every"] is not None and dr2["cache_every"] >= 1
        for r in rows.values():
            assert r["step_s"] > 0 and r["peak_bytes"] >= 0
    for key, field in (("depth", "depths"), ("points", "points")):
        sweep = study["sweeps"][key]
        conv, ckpt, dr2 = (np.asarray(sweep["bytes"][m], dtype=np.float64) for m in MODES)
        assert np.all(dr2 < ckpt) and np.all(ckpt < conv), key
        # conventional activation memory grows with depth / points
        assert np.all(np.diff(conv) > 0), (key, sweep[field], conv)


def test_pngs_are_valid_images(quick):
    out, docs, study, _ = quick
    from matplotlib.image import imread

    expected = {"curves_transformer", "curves_pointnext", "memory_depth", "memory_points", "grad_error",
                "dr2net_training"}
    assert expected <= set(study["plots"])
    for name in study["plots"].values():
        for where in (out, docs):
            path = where / name
            assert path.stat().st_size > 1000
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            img = imread(path)
            assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.shape[2] in (3, 4)


def test_results_md_statement_matches_numbers(quick):
    out, docs, study, stdout = quick
    md = (out / "results.md").read_text(encoding="utf-8")
    assert md == (docs / "results.md").read_text(encoding="utf-8")
    assert "pointdr2 bench study" in md and study["machine"]["torch"] in md
    for track, metric in (("transformer", "oa"), ("pointnext", "miou")):
        runs = study["tracks"][track]["runs"]
        diffs = [d["test"][metric] - c["test"][metric] for d, c in zip(runs["dr2net"], runs["conventional"])]
        delta, std = float(np.mean(diffs)), float(np.std(diffs, ddof=1))
        verdict = "is" if abs(delta) <= 0.5 else "is not"
        m = re.search(rf"{track}: dr2net (is|is not) within 0\.5 points of conventional "
                      rf"\(Δ {metric} = ([-+]\d+\.\d\d) ± (\d+\.\d\d)", md)
        assert m, track
        assert m.group(1) == verdict
        assert float(m.group(2)) == pytest.approx(delta, abs=0.006)
        assert float(m.group(3)) == pytest.approx(std, abs=0.006)
        assert m.group(0) in stdout
    for name in study["plots"].values():
        assert f"]({name})" in md


def test_gradient_error_grid_against_autograd(quick):
    """Recompute reversible-vs-standard gradients with plain autograd on the pretrained surrogate."""
    out, _, study, _ = quick
    from pointdr2.bench.study import SETTINGS, grad_model_and_batch, track_configs
    from pointdr2.models import to_dr2net
    from pointdr2.reversible import iter_stacks

    g = study["grad_grid"]
    _, ft = track_configs(out, "transformer", SETTINGS["quick"])
    model, points, labels = grad_model_and_batch(ft, out / "transformer" / "pretrain" / "encoder.pth", g["batch"])

    def grads(mode: str, alpha: float, beta: float) -> torch.Tensor:
        sur = to_dr2net(model, alpha, beta, mode="standard")
        for stack in iter_stacks(sur):
            stack.mode = mode
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(sur(points), labels).backward()
        return torch.cat([p.grad.reshape(-1).double() for p in model.parameters() if p.grad is not None])

    def rel(alpha: float, beta: float) -> float:
        ref, rev = grads("standard", alpha, beta), grads("reversible", alpha, beta)
        return float(torch.linalg.vector_norm(rev - ref) / torch.linalg.vector_norm(ref))

    ia, ib = g["alphas"].index(0.0), g["betas"].index(1.0)
    ja, jb = g["alphas"].index(1.0), g["betas"].index(0.1)
    exact, loose = g["reversible_rel_error"][ia][ib], g["reversible_rel_error"][ja][jb]
    assert exact < 1e-4
    assert loose > exact
    mine_exact, mine_loose = rel(0.0, 1.0), rel(1.0, 0.1)
    assert mine_exact < 1e-4
    assert mine_loose > mine_exact
    # same model, batch and arithmetic: the study's number is this one (up to float32 reduction order)
    assert loose == pytest.approx(mine_loose, rel=0.2, abs=1e-6)
    # auto mode's choice was recorded at every grid point
    assert all(m in ("reversible", "checkpoint") for row in g["auto_mode"] for m in row)


def test_ablation_variants(quick):
    _, _, study, _ = quick
    ab = study["ablation"]
    for name in ("linear/last", "cosine/last", "step/last", "linear/mean"):
        assert len(ab[name]["oa"]["per_seed"]) == ab["seeds"]
        assert all(0.0 <= v <= 100.0 for v in ab[name]["oa"]["per_seed"])
        for guard in ab[name]["guard"]:
            assert guard["logged_steps"] == guard["checkpoint_fallback_steps"] + guard["reversible_steps"]


def test_bad_seeds_is_a_one_line_error(tmp_path):
    proc = _cli("bench", "study", "--quick", "--seeds", "0", "--out", str(tmp_path / "x"), timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "--seeds" in lines[0], proc.stderr
    assert not (tmp_path / "x").exists()
