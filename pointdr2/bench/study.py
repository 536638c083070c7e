"""``pointdr2 bench study``: the evidence study's command (the pipeline lives in :mod:`pointdr2.study`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pointdr2.study.settings import TRACKS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/study", help="output directory (runs, study.json, results.md, plots)")
    p.add_argument("--quick", action="store_true", help="CI smoke run: toy data, models and schedules (< 60 s)")
    p.add_argument("--seeds", type=int, default=None, help="finetuning seeds per mode and track (full: 3, quick: 1)")
    p.add_argument("--ablation-seeds", type=int, default=None, help="seeds per recipe variant (full: 1, quick: 1)")
    p.add_argument("--workers", type=int, default=2, help="training runs at a time (default 2)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of each training run (default 1)")
    p.add_argument("--force", action="store_true", help="redo every piece even when its results exist in --out")
    p.add_argument("--docs", default=None, metavar="DIR", help="also write results.md and the PNGs to DIR")
    p.add_argument("--only", default=None, choices=list(TRACKS), help="run one track only")


def _command(args: argparse.Namespace) -> str:
    parts = ["pointdr2 bench study", f"--out {args.out}"]
    for flag in ("seeds", "ablation_seeds", "workers", "threads", "only", "docs"):
        value = getattr(args, flag, None)
        if value is not None:
            parts.append(f"--{flag.replace('_', '-')} {value}")
    if args.quick:
        parts.append("--quick")
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    from pointdr2.study import StudyOptions, run_study
    from pointdr2.study.report import summary_lines
    from pointdr2.study.runs import StudyRunError

    opts = StudyOptions(out=Path(args.out), quick=bool(args.quick), seeds=args.seeds,
                        ablation_seeds=args.ablation_seeds, workers=int(args.workers), threads=int(args.threads),
                        force=bool(args.force), docs=Path(args.docs) if args.docs else None, only=args.only,
                        command=_command(args))
    opts.check()
    try:
        study = run_study(opts)
    except StudyRunError as exc:
        print(f"pointdr2 bench study: error: {exc}", file=sys.stderr, flush=True)
        return 1
    print("\n".join(summary_lines(study)))
    print(f"study.json, results.md and plots in {args.out}")
    return 0
