"""``pointdr2 demo``: :func:`pointdr2.study.demo.run_demo` with the figure renderer, and its summary printed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pointdr2.study.demo import DemoOptions, run_demo, summary_text
from pointdr2.study.runs import StudyRunError
from pointdr2.viz.figures import classification_grid


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        summary = run_demo(DemoOptions(out=out, quick=bool(args.quick), force=bool(args.force)), classification_grid)
    except StudyRunError as exc:
        print(f"pointdr2 demo: error: {exc}", file=sys.stderr)
        return 1
    print(summary_text(summary, out))
    return 0
