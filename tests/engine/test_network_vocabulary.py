"""engine.network: the one mapping of finetune settings to what a Dr2Stack runs, and the benchmarks' rows."""

from __future__ import annotations

import pytest

from pointdr2.engine.network import BENCH_MODES, bench_finetune, stack_mode


@pytest.mark.parametrize("ft, train, expected", [
    ({"mode": "conventional"}, True, "standard"),
    ({"mode": "checkpoint"}, True, "checkpoint"),
    ({"mode": "checkpoint"}, False, "standard"),
    ({"mode": "dr2net", "backprop": "auto"}, True, "auto"),
    ({"mode": "dr2net", "backprop": "reversible"}, True, "reversible"),
    ({"mode": "dr2net", "backprop": "exact"}, True, "standard"),
    ({"mode": "dr2net", "backprop": "auto"}, False, "standard"),
])
def test_stack_mode_of_each_setting(ft, train, expected):
    assert stack_mode(ft, train) == expected


def test_bench_rows_are_finetune_settings_and_bad_names_are_refused():
    assert {m: stack_mode(BENCH_MODES[m]) for m in BENCH_MODES} == {
        "conventional": "standard", "checkpoint": "checkpoint", "dr2net": "reversible", "dr2net-auto": "auto",
        "dr2net-exact": "standard"}
    ft = bench_finetune("dr2net", {"output": "sum", "backprop": "auto", "cache_every": 3})
    assert ft["output"] == "sum" and ft["backprop"] == "reversible" and ft["cache_every"] is None
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        bench_finetune("fast")
    with pytest.raises(ValueError, match="finetune.backprop must be one of"):
        stack_mode({"mode": "dr2net", "backprop": "sometimes"})
