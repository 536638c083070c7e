"""bench plan: the plan command's JSON against the bench memory harness, in fresh processes, on a tiny config."""

from __future__ import annotations

import pytest

from pointdr2.bench import plan as bench_plan
from pointdr2.bench.memory import run_row
from pointdr2.commands import build_parser
from pointdr2.commands.bench import check_arguments


def _args(**kw) -> bench_plan.Options:
    return bench_plan.Options(**{"quick": True, "timeout": 600, **kw})


def _check(*argv: str) -> None:
    """The command line's own check of ``pointdr2 bench plan ARGV`` (what scripts/gpu_check.sh --dry-run runs)."""
    argv = ["bench", "plan", *argv]
    check_arguments(build_parser(argv).parse_args(argv))


def test_predicted_saved_bytes_match_the_harness_at_an_unprobed_batch():
    case = {"name": "tiny", "config": "modelnet40/pointmae.yaml", "batches": [6], "points": [64], "probe_points": None,
            "overrides": ["model.trans_dim=32", "model.depth=4", "model.num_heads=2", "model.encoder_dims=32",
                          "model.num_group=8", "model.group_size=8"]}
    rows = bench_plan.rows_for(case, _args())
    assert [r["label"] for r in rows] == ["conventional", "checkpoint", "dr2net@worst", "dr2net@end"]
    assert rows[2]["worker"]["case_args"]["finetune"] == {"mode": "dr2net", "backprop": "reversible", "cache_every": 3}
    r = rows[2]  # conventional and checkpoint are checked in-process in tests/engine/test_plan.py
    res = run_row(r["worker"], 600)
    assert "error" not in res, res.get("error")
    assert res["cache_every"] == r["cache_every"] == 3
    assert r["pred_saved"] == pytest.approx(res["saved_bytes"], rel=0.02)
    assert rows[2]["pred_saved"] < 0.1 * rows[0]["pred_saved"]


def test_part_segmentation_rows_match_the_harness():
    case = next(c for c in bench_plan.QUICK_CASES if c["name"] == "partseg-tiny")
    rows = bench_plan.rows_for({**case, "batches": [6], "points": [128]}, _args())
    for r in (rows[0], rows[3]):  # conventional, dr2net@end: shapes with a category, through the harness
        res = run_row(r["worker"], 600)
        assert "error" not in res, res.get("error")
        assert r["pred_saved"] == pytest.approx(res["saved_bytes"], rel=0.02), r["label"]
    assert rows[3]["pred_saved"] < 0.2 * rows[0]["pred_saved"]


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="--cases: unknown nope"):
        _check("--quick", "--cases", "nope")
    with pytest.raises(ValueError, match="--batches"):
        _check("--quick", "--batches", "8,zero")
    with pytest.raises(ValueError, match="--device"):
        bench_plan.cases_of(_args(device="tpu"))
    cases = bench_plan.cases_of(_args(quick=False, short=True))
    assert [(c["batches"], c["points"]) for c in cases] == [([32], [1024]), ([2], [24000]), ([16], [2048]),
                                                            ([8], [2048])]
