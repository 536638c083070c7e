"""``pointdr2 bench WHAT``: the options of every benchmark, the call of its ``measure`` function and its report.

Each benchmark module (:mod:`pointdr2.bench.ops`, ``.memory``, ``.plan``, ``.precision``,
:mod:`pointdr2.data.bench`, and the study in :mod:`pointdr2.study`) exposes an ``Options`` dataclass and
plain functions; this module alone turns the command line into them, prints and picks the exit status.
``declare(what, parser)`` adds one benchmark's options (only the benchmark being run is declared, so
every other command stays fast); ``check_arguments(args)`` checks them without measuring
(``scripts/gpu_check.sh --dry-run``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from pointdr2.bench import BENCHES
from pointdr2.commands.parsing import parse_int_list

__all__ = ["declare", "run", "check_arguments"]


def _options(cls, args: argparse.Namespace, **extra):
    """``cls`` (an ``Options`` dataclass) from the namespace fields it names, ``extra`` overriding."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{k: v for k, v in vars(args).items() if k in names}, **extra})


def _report(text: str, rows: list, json_path: str | None) -> int:
    """Print a benchmark's report, write its rows to ``--json FILE`` when given; 1 when a row failed."""
    print(text)
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=2))
    return 1 if any(isinstance(r, dict) and "error" in r for r in rows) else 0


# ----------------------------------------------------------------------------- ops
def _declare_ops(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (median reported)")
    p.add_argument("--quick", action="store_true", help="small sizes (CI smoke test)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    p.add_argument("--backends", default=None, help="comma-separated subset of the available CPU backends (default: all)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: each case on one thread and on all of torch's threads)")


def _run_ops(args: argparse.Namespace) -> int:
    from pointdr2.bench import ops as bench_ops

    result = bench_ops.measure(_options(bench_ops.Options, args))
    print(json.dumps(bench_ops.as_json(result), indent=1) if args.json else bench_ops.format_table(result))
    return 0


# ----------------------------------------------------------------------------- memory / speed
def _declare_memory(p: argparse.ArgumentParser) -> None:
    from pointdr2.bench.memory import CASE_MODULES, MODES

    p.add_argument("--model", default="stack", choices=sorted(set(CASE_MODULES) - {"config"}), help="case to measure")
    p.add_argument("--modes", default="conventional,checkpoint,dr2net", help="comma list of " + "|".join(MODES))
    p.add_argument("--depths", default=None, help="comma list of depths (stack default 6,12,24; models: their own)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--points", type=int, default=None, help="points per sample (stack: tokens, default 65)")
    p.add_argument("--alpha", type=float, default=0.0, help="alpha of the dr2net/checkpoint rows")
    p.add_argument("--beta", type=float, default=1.0, help="beta of the dr2net/checkpoint rows")
    p.add_argument("--auto", default="start,middle,end",
                   help="schedule points (start|middle|end) for dr2net-auto rows at --auto-depth; 'none' to skip")
    p.add_argument("--auto-depth", type=int, default=None, help="depth of the auto rows (stack default 12)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration (median reported)")
    p.add_argument("--measure", default="saved,peak,time",
                   help="comma list of saved|peak|time (saved alone runs one forward per configuration: "
                        "large crops in minutes)")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads in each worker")
    p.add_argument("--quick", action="store_true", help="CI smoke run: tiny sizes, 2 steps")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")


def _run_memory(args: argparse.Namespace) -> int:
    from pointdr2.bench import memory

    opts = _options(memory.Options, args)
    results = memory.measure(opts)
    return _report(memory.format_report(results, opts), results, args.json)


# ----------------------------------------------------------------------------- plan
def _declare_plan(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="CI smoke run: tiny models, one row per mode")
    p.add_argument("--short", action="store_true",
                   help="only the largest batch size and point count of each case (scripts/gpu_check.sh)")
    p.add_argument("--batches", default=None, metavar="B,B,...", help="batch sizes measured (default: each case's)")
    p.add_argument("--points", default=None, metavar="N,N,...", help="point counts measured (default: each case's)")
    p.add_argument("--cases", default=None, help="comma list of case names (default: all of the run)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (the plan and the measurement use it)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in every process (default 1)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per process")


def _plan_options(args: argparse.Namespace):
    from pointdr2.bench import plan

    cases = [c.strip() for c in args.cases.split(",") if c.strip()] if args.cases else None
    opts = _options(plan.Options, args, batches=parse_int_list(args.batches, "--batches"),
                    points=parse_int_list(args.points, "--points"), cases=cases)
    plan.cases_of(opts)  # every option checked before anything runs
    return opts


def _run_plan(args: argparse.Namespace) -> int:
    from pointdr2.bench import plan

    opts = _plan_options(args)
    rows = plan.measure(opts)
    return _report(plan.format_report(rows, opts), [{k: v for k, v in r.items() if k != "worker"} for r in rows],
                   args.json)


# ----------------------------------------------------------------------------- precision
def _declare_precision(p: argparse.ArgumentParser) -> None:
    from pointdr2.bench.precision import DTYPES

    p.add_argument("--alphas", default="1,0.5,0.2,0", help="comma list of alpha values")
    p.add_argument("--betas", default="0.1,0.5,0.7,1", help="comma list of beta values")
    p.add_argument("--depth", type=int, default=12, help="ViT blocks (2 sub-blocks each)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--tokens", type=int, default=65)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--tolerance", type=float, default=1e-4, help="auto mode's tolerance")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="CI smoke run: depth 2, dim 64, the grid's corners")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")


def _run_precision(args: argparse.Namespace) -> int:
    from pointdr2.bench import precision

    opts = _options(precision.Options, args)
    rows = precision.measure(opts)
    return _report(precision.format_table(rows, opts), rows, args.json)


# ----------------------------------------------------------------------------- data
def _declare_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=None, help="existing synthetic/real data root (default: write demo data)")
    p.add_argument("--size", default="demo", help="synthetic size when writing data (test | demo | small)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader num_workers")
    p.add_argument("--batches", type=int, default=8, help="timed batches per loader (after one warm-up batch)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _run_data(args: argparse.Namespace) -> int:
    from pointdr2.data import bench as data_bench

    result = data_bench.measure(_options(data_bench.Options, args))
    print(json.dumps(result) if args.json else data_bench.format_report(result))
    return 0


# ----------------------------------------------------------------------------- study
def _declare_study(p: argparse.ArgumentParser) -> None:
    from pointdr2.study.settings import TRACKS

    p.add_argument("--out", default="runs/study", help="output directory (runs, study.json, results.md, plots)")
    p.add_argument("--quick", action="store_true", help="CI smoke run: toy data, models and schedules (< 60 s)")
    p.add_argument("--seeds", type=int, default=None, help="finetuning seeds per mode and track (full: 5, fewer for some modes (the report says which); quick: 1)")
    p.add_argument("--ablation-seeds", type=int, default=None, help="seeds per recipe variant (full: 1, quick: 1)")
    p.add_argument("--workers", type=int, default=2, help="training runs at a time (default 2)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of each training run (default 1)")
    p.add_argument("--force", action="store_true", help="redo every piece even when its results exist in --out")
    p.add_argument("--docs", default=None, metavar="DIR", help="also write results.md and the PNGs to DIR")
    p.add_argument("--only", default=None, choices=list(TRACKS), help="run one track only")


def _study_command(args: argparse.Namespace) -> str:
    """The command line as results.md records it."""
    parts = ["pointdr2 bench study", f"--out {args.out}"]
    for flag in ("seeds", "ablation_seeds", "workers", "threads", "only", "docs"):
        value = getattr(args, flag, None)
        if value is not None:
            parts.append(f"--{flag.replace('_', '-')} {value}")
    if args.quick:
        parts.append("--quick")
    return " ".join(parts)


def _study_options(args: argparse.Namespace):
    from pointdr2.study import StudyOptions

    opts = StudyOptions(out=Path(args.out), quick=bool(args.quick), seeds=args.seeds,
                        ablation_seeds=args.ablation_seeds, workers=int(args.workers), threads=int(args.threads),
                        force=bool(args.force), docs=Path(args.docs) if args.docs else None, only=args.only,
                        command=_study_command(args))
    opts.check()
    return opts


def _run_study(args: argparse.Namespace) -> int:
    from pointdr2.study import run_study
    from pointdr2.study.report import summary_lines
    from pointdr2.study.runs import StudyRunError

    opts = _study_options(args)
    try:
        study = run_study(opts)
    except StudyRunError as exc:
        print(f"pointdr2 bench study: error: {exc}", file=sys.stderr, flush=True)
        return 1
    print("\n".join(summary_lines(study)))
    print(f"study.json, results.md and plots in {args.out}")
    return 0


# ----------------------------------------------------------------------------- dispatch
_DECLARE = {"ops": _declare_ops, "memory": _declare_memory, "speed": _declare_memory, "plan": _declare_plan,
            "precision": _declare_precision, "data": _declare_data, "study": _declare_study}
_RUN = {"ops": _run_ops, "memory": _run_memory, "speed": _run_memory, "plan": _run_plan,
        "precision": _run_precision, "data": _run_data, "study": _run_study}
# option checks without measuring, for the benchmarks that have more than argparse's own
_CHECK: dict[str, Any] = {
    "memory": lambda a: importlib.import_module("pointdr2.bench.memory").row_configs(
        _options(importlib.import_module("pointdr2.bench.memory").Options, a)),
    "speed": lambda a: _CHECK["memory"](a),
    "plan": _plan_options,
    "study": _study_options,
}
assert set(_DECLARE) == set(_RUN) == set(BENCHES), "every benchmark in pointdr2.bench.BENCHES needs its command"


def declare(what: str, parser: argparse.ArgumentParser) -> None:
    """Add the options of benchmark ``what`` to ``parser``."""
    _DECLARE[what](parser)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark ``args.what`` and print its report; the exit status is 1 when a row failed."""
    return _RUN[args.what](args)


def check_arguments(args: argparse.Namespace) -> None:
    """Raise ValueError for options ``run`` would refuse, without measuring."""
    check = _CHECK.get(args.what)
    if check is not None:
        check(args)
