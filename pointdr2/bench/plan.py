"""``pointdr2 bench plan``: how well ``pointdr2 plan`` predicts what a training step keeps and peaks at.

For each case the plan is made as a user makes it (``python -m pointdr2 plan CONFIG --json``: a forward and
backward at two small batch sizes, plus a second point count where the case extrapolates in points), and
each of its rows is then measured at batch sizes and point counts the plan did not run, every
configuration in a fresh process by the ``bench memory`` harness (its own saved-tensor hook; peak RSS above
the step's baseline with freed blocks returned to the OS, or ``max_memory_allocated`` on CUDA), on the
network the config trains in that mode (``pointdr2.bench.cases_config``; Dr2Net rows at the plan's
schedule point and spacing k).

Compared per row: predicted against measured activation bytes (``saved``) and step peak above the
weights, gradients and optimizer state (``peak`` = saved + transient). Targets: saved within 10 %, peak
within 20 %.

Cases (full run): Point-MAE (``modelnet40/pointmae.yaml``, 1,024 points, batch 8/16/32 predicted from
batches 2 and 4), PointNeXt-L (``s3dis/pointnext-l.yaml``, S3DIS-like crops of 8k/16k/24k points at batch
2, predicted from crops of 4,000 and 2,000 points) and Point-MAE part segmentation
(``shapenetpart/pointmae.yaml``, 2,048 points, batch 4/8/16 predicted from batches 2 and 4) and PointNeXt-S part
segmentation (``shapenetpart/pointnext-s.yaml``, batch 4/8 from batches 2 and 4). ``--quick``:
tiny versions of the three (seconds).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pointdr2.bench.memory import run_row
from pointdr2.progress import bar as progress_bar

log = logging.getLogger(__name__)

SAVED_TARGET, PEAK_TARGET = 0.10, 0.20

CASES = [
    {"name": "pointmae", "config": "modelnet40/pointmae.yaml", "overrides": [], "batches": [8, 16, 32],
     "points": [1024], "probe_points": None},
    {"name": "pointnext-l", "config": "s3dis/pointnext-l.yaml", "overrides": [], "batches": [2],
     "points": [8000, 16000, 24000], "probe_points": 4000},
    {"name": "pointmae-partseg", "config": "shapenetpart/pointmae.yaml", "overrides": [], "batches": [4, 8, 16],
     "points": [2048], "probe_points": None},
    {"name": "pointnext-s-partseg", "config": "shapenetpart/pointnext-s.yaml", "overrides": [], "batches": [4, 8],
     "points": [2048], "probe_points": None},
]
QUICK_CASES = [
    {"name": "pointmae-tiny", "config": "modelnet40/pointmae.yaml",
     "overrides": ["model.trans_dim=64", "model.depth=4", "model.num_heads=2", "model.encoder_dims=64",
                   "model.num_group=16", "model.group_size=16"], "batches": [8], "points": [256], "probe_points": None},
    {"name": "pointnext-tiny", "config": "s3dis/pointnext-l.yaml",
     "overrides": ["model.width=8", "model.blocks=[1,2,2,1,1]"], "batches": [2], "points": [2048],
     "probe_points": 1024},
    {"name": "partseg-tiny", "config": "shapenetpart/pointmae.yaml",
     "overrides": ["model.trans_dim=32", "model.depth=4", "model.num_heads=2", "model.encoder_dims=32",
                   "model.num_group=16", "model.group_size=8", "model.feature_blocks=[1, 2, 4]",
                   "model.propagation_mlp=[32, 32]", "model.seg_hidden=[32, 16]"], "batches": [8], "points": [256],
     "probe_points": None},
]


@dataclass(frozen=True)
class Options:
    """What ``pointdr2 bench plan`` measures (its command-line options)."""

    quick: bool = False  # CI smoke run: tiny models, one row per mode
    short: bool = False  # only the largest batch size and point count of each case (scripts/gpu_check.sh)
    batches: list[int] | None = None  # batch sizes measured (default: each case's)
    points: list[int] | None = None  # point counts measured (default: each case's)
    cases: list[str] | None = None  # case names (default: all of the run)
    device: str = "cpu"  # cpu | cuda | cuda:N | auto (the plan and the measurement use it)
    threads: int = 1  # torch threads in every process
    timeout: float = 1800  # seconds per process


def _plan_json(case: dict, points: int, args: Options) -> dict:
    """The plan of ``case`` at ``points`` points, from the ``pointdr2 plan --json`` command itself."""
    cmd = [sys.executable, "-m", "pointdr2", "plan", case["config"], *case["overrides"], "--json",
           "--points", str(points), "--batch-sizes", ",".join(map(str, case["batches"])),
           "--device", args.device, "--threads", str(args.threads)]
    if case["probe_points"]:
        cmd += ["--probe-points", str(case["probe_points"])]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"pointdr2 plan {case['config']} failed: {tail}")
    return json.loads(proc.stdout)


def _finetune_of(row: dict) -> dict:
    """The finetune keys that build the network a plan row describes."""
    if row["mode"] in ("conventional", "checkpoint"):
        return {"mode": row["mode"]}
    if row.get("backprop") == "exact" or row.get("cache_every") is None:
        return {"mode": "dr2net", "backprop": row.get("backprop") or "auto"}
    if not row.get("beta"):
        return {"mode": "dr2net", "backprop": "auto", "cache_every": None}
    return {"mode": "dr2net", "backprop": "reversible", "cache_every": int(row["cache_every"])}


def _rel(pred: float | None, meas: float | None) -> float | None:
    if pred is None or meas is None or meas <= 0:
        return None
    return pred / meas - 1.0


def rows_for(case: dict, args: Options) -> list[dict[str, Any]]:
    out = []
    for n in case["points"]:
        plan = _plan_json(case, n, args)
        for row in plan["rows"]:
            for b in row["batches"]:
                out.append({"case": case["name"], "label": row["label"], "batch": b["batch"], "points": n,
                            "cache_every": row["cache_every"], "alpha": row["alpha"], "beta": row["beta"],
                            "pred_saved": b["saved_bytes"], "pred_peak": b["saved_bytes"] + b["transient_bytes"],
                            "probes": f"b{'/'.join(map(str, plan['probe_batches']))} "
                                      f"n{'/'.join(map(str, plan['probe_points']))}",
                            "worker": {"model": "config", "mode": row["label"], "depth": None, "batch": b["batch"],
                                       "points": n, "alpha": row["alpha"] if row["alpha"] is not None else 1.0,
                                       "beta": row["beta"] if row["beta"] is not None else 0.0, "steps": 1,
                                       "device": args.device, "threads": args.threads, "measure": ["saved", "peak"],
                                       "label": row["label"],
                                       "case_args": {"config": case["config"], "overrides": case["overrides"],
                                                     "finetune": _finetune_of(row)}}})
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    mib = 2**-20
    head = (f"{'case':<15} {'mode':<13} {'batch':>5} {'points':>6} {'k':>3} {'saved pred':>10} {'meas':>9} "
            f"{'err':>7} {'peak pred':>10} {'meas':>9} {'err':>7}  probes")
    out = [head, "-" * len(head)]
    for r in rows:
        lead = f"{r['case']:<15} {r['label']:<13} {r['batch']:>5} {r['points']:>6} {str(r['cache_every'] or '-'):>3}"
        if "error" in r:
            out.append(f"{lead} error: {r['error']}")
            continue
        es, ep = r["saved_err"], r["peak_err"]
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] * mib:.1f}"
        out.append(f"{lead} {r['pred_saved'] * mib:>10.1f} {r['saved_bytes'] * mib:>9.1f} "
                   f"{'-' if es is None else f'{100 * es:+.1f}%':>7} {r['pred_peak'] * mib:>10.1f} "
                   f"{peak:>9} "
                   f"{'-' if ep is None else f'{100 * ep:+.1f}%':>7}  {r['probes']}")
    return "\n".join(out)


def cases_of(args: Options) -> list[dict]:
    """The cases :func:`measure` runs; ValueError for bad options (``scripts/gpu_check.sh --dry-run`` checks them)."""
    cases = QUICK_CASES if args.quick else CASES
    if args.cases:
        known = {c["name"] for c in cases}
        unknown = [n for n in args.cases if n not in known]
        if unknown:
            raise ValueError(f"--cases: unknown {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
        cases = [c for c in cases if c["name"] in args.cases]
    cases = [{**c, "batches": args.batches or c["batches"], "points": args.points or c["points"]} for c in cases]
    if args.short:
        cases = [{**c, "batches": [max(c["batches"])], "points": [max(c["points"])]} for c in cases]
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.device not in ("cpu", "cuda", "auto") and not str(args.device).startswith("cuda:"):
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {args.device!r}")
    return cases


def measure(args: Options, progress: bool = True) -> list[dict[str, Any]]:
    """Every case's plan rows, each measured in a fresh process; a failed row holds ``"error"``."""
    rows = []
    for case in cases_of(args):
        rows += rows_for(case, args)
    for r in progress_bar(rows, desc="bench plan", unit="config", enabled=progress):
        res = run_row(r["worker"], args.timeout)
        if "error" in res:
            r["error"] = res["error"]
            log.warning("%s %s batch %d: %s", r["case"], r["label"], r["batch"], res["error"])
            continue
        r.update(saved_bytes=res["saved_bytes"], peak_bytes=res["peak_bytes"], ran_k=res.get("cache_every"),
                 saved_err=_rel(r["pred_saved"], res["saved_bytes"]), peak_err=_rel(r["pred_peak"], res["peak_bytes"]))
    return rows


def format_report(rows: list[dict[str, Any]], args: Options) -> str:
    """The table of :func:`measure`'s rows and the worst errors against the targets."""
    device = next((r["worker"]["device"] for r in rows), args.device)
    lines = [f"bench plan: predicted (pointdr2 plan --json) vs measured (bench memory harness, fresh process per "
             f"row), device {device}; MiB per process; peak = saved + transient above weights, gradients and "
             "optimizer state", format_table(rows)]
    ok = [r for r in rows if "error" not in r]
    worst_s = max((abs(r["saved_err"]) for r in ok if r["saved_err"] is not None), default=None)
    worst_p = max((abs(r["peak_err"]) for r in ok if r["peak_err"] is not None), default=None)
    if worst_s is not None:
        lines.append(f"worst |error|: saved {100 * worst_s:.1f}% (target {100 * SAVED_TARGET:.0f}%: "
                     f"{'met' if worst_s <= SAVED_TARGET else 'MISSED'})" + (
                         "" if worst_p is None else f", peak {100 * worst_p:.1f}% (target {100 * PEAK_TARGET:.0f}%: "
                                                    f"{'met' if worst_p <= PEAK_TARGET else 'MISSED'})"))
    return "\n".join(lines)
