"""The study's run matrix (``pointdr2.study.plan``) and the check of a mode run on fewer seeds."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from pointdr2.engine.evaluator import save_items
from pointdr2.study import analysis, plan
from pointdr2.study.runs import RunSpec
from pointdr2.study.settings import MODES, full_settings


def test_full_plan_seeds_per_track_and_mode(tmp_path):
    s = full_settings()
    counts = {t: Counter(sp.meta["mode"] for sp in plan.finetune_specs(tmp_path, t, s))
              for t in ("transformer", "pointnext")}
    assert counts["transformer"] == {"conventional": 5, "checkpoint": 3, "dr2net": 5, "dr2net-exact": 5}
    assert counts["pointnext"] == {"conventional": 3, "checkpoint": 1, "dr2net": 3, "dr2net-exact": 3}
    s.seeds = 2  # --seeds 2 caps every mode, reduced or not
    counts = Counter(sp.meta["mode"] for sp in plan.finetune_specs(tmp_path, "pointnext", s))
    assert counts == {"conventional": 2, "checkpoint": 1, "dr2net": 2, "dr2net-exact": 2}
    assert Counter(sp.meta["mode"] for sp in plan.finetune_specs(tmp_path, "transformer", s)) == {m: 2 for m in MODES}


def test_pointnext_pretrains_on_another_building(tmp_path):
    pre = plan.pretrain_spec(tmp_path, "pointnext", full_settings()).resolved()
    fine = plan.finetune_specs(tmp_path, "pointnext", full_settings())[0].resolved()
    assert Path(pre.dataset.root) == tmp_path / "data" / "s3dis_source"
    assert Path(fine.dataset.root) == tmp_path / "data" / "s3dis"
    assert "merge_classes" not in pre.dataset  # the same 13 classes, other rooms


def _spec(tmp_path: Path, mode: str, seed: int, pred) -> RunSpec:
    d = tmp_path / mode / f"seed{seed}"
    d.mkdir(parents=True)
    save_items(d / "test_items.npz", {"index": torch.arange(4), "pred": torch.tensor(pred),
                                       "label": torch.tensor([0, 1, 2, 3])})
    return RunSpec(f"t/{mode}/seed{seed}", Path("x.yaml"), [], d, meta={"mode": mode, "seed": seed})


def test_reduced_modes_compares_item_by_item(tmp_path):
    specs = {"conventional": [_spec(tmp_path, "conventional", s, [0, 1, 2, s]) for s in range(3)],
             "checkpoint": [_spec(tmp_path, "checkpoint", 0, [0, 1, 2, 0])],
             "dr2net": [_spec(tmp_path, "dr2net", 0, [0, 1, 2, 1])]}
    specs["dr2net"] += [_spec(tmp_path, "dr2net", s, [0, 1, 2, 3]) for s in (1, 2)]
    red = analysis.reduced_modes(specs)
    assert red == {"checkpoint": {"seeds": [0], "identical_to_conventional": {0: True}}}
    specs["checkpoint"].append(_spec(tmp_path, "checkpoint", 1, [0, 1, 2, 0]))  # conventional seed 1 has 3 there
    red = analysis.reduced_modes(specs)
    assert red["checkpoint"]["identical_to_conventional"] == {0: True, 1: False}
    assert np.array_equal(np.load(tmp_path / "checkpoint" / "seed1" / "test_items.npz")["pred"], [0, 1, 2, 0])


def test_ledger_counts_an_invocation_that_was_killed(tmp_path):
    from pointdr2.study import Ledger

    path = tmp_path / "invocations.json"
    first = Ledger(path, "pointdr2 bench study", fresh=False)
    first.entry["seconds"] = 0.0
    first._t0 -= 300.0  # five minutes into the first invocation, then killed after this tick
    first.tick("run transformer/conventional/seed0")
    second = Ledger(path, "pointdr2 bench study", fresh=False)
    second._t0 -= 60.0
    second.tick("measurements", finished=True)
    calls = json.loads(path.read_text())
    assert [c["finished"] is None for c in calls] == [True, False]
    assert calls[0]["last"] == "run transformer/conventional/seed0"
    assert 300.0 <= calls[0]["seconds"] < 330.0 and 60.0 <= calls[1]["seconds"] < 90.0
    assert 360.0 <= second.total_seconds < 420.0
    assert Ledger(path, "again", fresh=True).calls[0]["command"] == "again"  # --force starts a new ledger
    assert len(json.loads(path.read_text())) == 1
