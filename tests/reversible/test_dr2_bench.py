"""The precision and memory benchmarks: their measurements on tiny sizes, parsing and the stack case."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from pointdr2.bench import memory, precision
from pointdr2.bench.cases_stack import build_case, vit_stack
from pointdr2.commands import bench as bench_command
from pointdr2.reversible import reconstruction_growth


def parse(module, argv):
    """``pointdr2 bench memory|precision ARGV`` as the command line turns it into the module's Options."""
    p = argparse.ArgumentParser()
    bench_command.declare(module.__name__.rsplit(".", 1)[1], p)
    return bench_command._options(module.Options, p.parse_args(argv))


def test_stack_case_sub_blocks_match_explicit_softmax_reference():
    """The stack case's units (the project's Block split into attention and MLP sub-blocks) against an
    explicit softmax(q k^T / sqrt(d)) v and fc2(GELU(fc1(LN(x)))) written out here, in float64."""
    torch.manual_seed(0)
    attn_unit, mlp_unit = vit_stack(depth=1, dim=12, heads=3, drop_path=0.0).double().eval().blocks
    blk = attn_unit.block
    x, pos = torch.randn(2, 5, 12, dtype=torch.float64), torch.randn(2, 5, 12, dtype=torch.float64)
    u = x + pos
    q, k, v = F.linear(F.layer_norm(u, (12,), blk.norm1.weight, blk.norm1.bias), blk.attn.qkv.weight).chunk(3, -1)
    q, k, v = (t.reshape(2, 5, 3, 4).transpose(1, 2) for t in (q, k, v))
    y = ((q @ k.transpose(-2, -1)) / 2.0).softmax(dim=-1) @ v
    ref = 0.3 * u + F.linear(y.transpose(1, 2).reshape(2, 5, 12), blk.attn.proj.weight, blk.attn.proj.bias)
    assert torch.allclose(attn_unit(x, 0.3, pos), ref, atol=1e-12)
    m = mlp_unit.block.mlp
    ref = 0.3 * x + m.fc2(F.gelu(m.fc1(F.layer_norm(x, (12,), mlp_unit.block.norm2.weight, mlp_unit.block.norm2.bias))))
    assert torch.allclose(mlp_unit(x, 0.3, pos), ref, atol=1e-12)


def test_precision_bench_quick_rows():
    args = parse(precision, ["--quick", "--alphas", "1,0", "--betas", "0.1,1", "--dtype", "float64"])
    rows = precision.measure(args)
    assert [(r["alpha"], r["beta"]) for r in rows] == [(1, 0.1), (1, 1), (0, 0.1), (0, 1)]
    eps = torch.finfo(torch.float64).eps
    for r in rows:
        assert math.isclose(r["predicted"], reconstruction_growth(r["alpha"], r["beta"]) ** 4 * eps, rel_tol=1e-9)
        assert r["auto_grad_error"] < 1e-6
    assert rows[-1]["grad_error"] < 1e-12 and rows[-1]["auto_k"] == 4
    with pytest.raises(ValueError, match="betas"):
        precision.measure(parse(precision, ["--quick", "--betas", "0,1"]))


def test_memory_configs_and_bad_modes():
    rows = memory.row_configs(parse(memory, ["--depths", "6,12", "--modes", "conventional,dr2net", "--auto", "start"]))
    assert [(r["label"], r["depth"]) for r in rows] == [
        ("conventional", 6), ("dr2net", 6), ("conventional", 12), ("dr2net", 12), ("auto@start", 12)
    ]
    assert (rows[-1]["alpha"], rows[-1]["beta"], rows[-1]["mode"]) == (1.0, 0.1, "dr2net-auto")
    with pytest.raises(ValueError, match="modes"):
        memory.row_configs(parse(memory, ["--modes", "fast"]))
    with pytest.raises(ValueError, match="auto"):
        memory.row_configs(parse(memory, ["--auto", "begin"]))
    with pytest.raises(ValueError, match="mode"):
        build_case("stack", "fast", 1, 1, 1, 0.0, 1.0, "cpu")


def test_memory_worker_measures_less_saved_memory_for_dr2net():
    base = {"model": "stack", "batch": 2, "points": 5, "steps": 1, "device": "cpu", "threads": 1, "depth": 2,
            "alpha": 0.0, "beta": 1.0}
    res = {m: memory.measure_row({**base, "mode": m, "label": m}) for m in ("conventional", "checkpoint", "dr2net")}
    state = 2 * 5 * 384 * 4
    assert res["dr2net"]["saved_bytes"] < res["checkpoint"]["saved_bytes"] < res["conventional"]["saved_bytes"]
    # checkpoint keeps the 4 sub-block inputs x_0..x_3 (and the head keeps x_4); dr2net the final pair
    # (x_3, x_4), x_4 being the storage the head keeps too: 5 states against 2
    assert res["checkpoint"]["saved_bytes"] - res["dr2net"]["saved_bytes"] == 3 * state
    assert res["dr2net"]["cache_every"] == 4 and res["dr2net"]["sub_blocks"] == 4
    assert all(r["step_s"] > 0 and r["peak_bytes"] >= 0 for r in res.values())
    table = memory.format_table(list(res.values()))
    assert "dr2net" in table and "/ckpt" in table


def test_memory_worker_saved_only_measures_the_same_bytes_without_stepping():
    base = {"model": "stack", "batch": 2, "points": 5, "steps": 1, "device": "cpu", "threads": 1, "depth": 2,
            "alpha": 0.0, "beta": 1.0, "mode": "checkpoint", "label": "checkpoint"}
    full = memory.measure_row(base)
    only = memory.measure_row({**base, "measure": ["saved"]})
    assert only["saved_bytes"] == full["saved_bytes"] > 0
    assert only["peak_bytes"] is None and only["step_s"] is None
    assert "-" in memory.format_table([only]).splitlines()[-1]
    with pytest.raises(ValueError, match="measure"):
        memory.row_configs(parse(memory, ["--measure", "saved,speed"]))


def test_memory_worker_runs_in_a_fresh_process():
    cfg = {"model": "stack", "batch": 1, "points": 3, "steps": 1, "device": "cpu", "threads": 1, "depth": 1,
           "alpha": 1.0, "beta": 0.1, "mode": "dr2net-auto", "label": "auto@start"}
    res = memory.run_row(cfg, timeout=300)
    assert "error" not in res, res.get("error")
    assert res["ran"] in ("checkpoint", "reversible") and 1 <= res["cache_every"] <= 2


def test_memory_table_names_the_published_depth_and_no_coefficients_for_plain_rows():
    from pointdr2.bench import cases_pointnext, cases_transformer

    cpu = torch.device("cpu")
    mae, _, _ = cases_transformer.build_case("pointmae", "conventional", None, 1, 64, 0.0, 1.0, cpu)
    assert mae.depth_label == "12"  # --depths unset: Point-MAE's 12 blocks, not "None"
    nxt, _, _ = cases_pointnext.build_case("pointnext-l", "dr2net", None, 1, 64, 0.5, 0.5, cpu)
    assert nxt.depth_label == "1-3-5-3-3"
    rows = [{"label": m, "mode": m, "depth": None, "depth_label": "1-3-5-3-3", "alpha": 0.5, "beta": 0.5,
             "saved_bytes": s, "peak_bytes": None, "step_s": None} for m, s in (("conventional", 4.0), ("dr2net", 1.0))]
    lines = memory.format_table(rows).splitlines()
    conv, dr2 = lines[2].split(), lines[3].split()
    assert conv[:4] == ["conventional", "1-3-5-3-3", "-", "-"]
    assert dr2[:4] == ["dr2net", "1-3-5-3-3", "0.50", "0.50"] and dr2[6] == "0.250"  # saved / conventional


def test_partseg_memory_case_keeps_the_taps_not_the_depth():
    """pointmae-partseg: dr2net's saved bytes are a small fraction of conventional's and do not grow with depth
    (the head's taps are a fixed count); the logits are [B, 50, N] and the loss is per point."""
    from pointdr2.bench import cases_transformer

    module, inputs, loss_fn = cases_transformer.build_case("pointmae-partseg", "dr2net", 3, 2, 64, 0.0, 1.0,
                                                           torch.device("cpu"))
    assert type(module).__name__ == "PartSegDr2" and module.recompute_head and len(inputs) == 2
    out = module(*inputs)
    assert out.shape == (2, 50, 64) and loss_fn(out).ndim == 0
    base = {"model": "pointmae-partseg", "batch": 2, "points": 64, "steps": 1, "device": "cpu", "threads": 1,
            "alpha": 0.0, "beta": 1.0, "measure": ["saved"]}
    saved = {(m, d): memory.measure_row({**base, "mode": m, "label": m, "depth": d})["saved_bytes"]
             for m in ("conventional", "dr2net") for d in (3, 6)}
    assert saved[("dr2net", 3)] < 0.1 * saved[("conventional", 3)]
    assert saved[("dr2net", 6)] <= 1.1 * saved[("dr2net", 3)]
    assert saved[("conventional", 6)] > saved[("conventional", 3)]  # conventional keeps every block
