"""``pointdr2 prepare DATASET``: the data preparation functions of :mod:`pointdr2.data.prepare`, with
their reports printed for people."""

from __future__ import annotations

import argparse

from pointdr2.data.prepare.modelnet40 import write_fps_cache
from pointdr2.data.prepare.s3dis import convert_s3dis
from pointdr2.data.prepare.scanobjectnn import check_scanobjectnn
from pointdr2.data.prepare.shapenetpart import check_shapenetpart
from pointdr2.data.synthetic import LAYOUTS, write_layout


def run_modelnet40(args: argparse.Namespace) -> int:
    for path in write_fps_cache(args.root, npoints=args.npoints, splits=tuple(args.splits), device=args.device,
                                batch_size=args.batch_size, overwrite=args.overwrite):
        print(f"cache: {path}")
    return 0


def run_scanobjectnn(args: argparse.Namespace) -> int:
    rows = check_scanobjectnn(args.root)
    print(f"{'variant':<10} {'split':<9} {'samples':>7} {'points':>6} {'classes':>7} {'bg':>6}  path")
    for r in rows:
        print(f"{r['variant']:<10} {r['split']:<9} {r['samples']:>7} {r['points']:>6} {r['classes']:>7} "
              f"{r['background']:>6}  {r['path']}")
    return 0


def run_s3dis(args: argparse.Namespace) -> int:
    report = convert_s3dis(args.raw, args.out, overwrite=args.overwrite)
    print(f"rooms: {len(report.rooms)} written to {args.out}/raw ({report.points} new points)")
    if report.malformed:
        print(f"malformed lines skipped: {len(report.malformed)}")
        for path, line, text in report.malformed:
            print(f"  {path}:{line}: {text!r}")
    for path, reason in report.skipped_files:
        print(f"file skipped: {path}: {reason}")
    for room, reason in report.skipped_rooms:
        print(f"room skipped: {room}: {reason}")
    return 0


def run_shapenetpart(args: argparse.Namespace) -> int:
    rows = check_shapenetpart(args.root, cache=not args.no_cache, overwrite=args.overwrite, num_points=args.num_points)
    print(f"{'split':<6} {'shapes':>6} {'categories':>10} {'points min/median/max':>22} "
          f"{'< ' + str(args.num_points):>7} {'parts':>6}  cache")
    for r in rows:
        print(f"{r['split']:<6} {r['shapes']:>6} {r['categories']:>10} {r['points']:>22} {r['below']:>7} "
              f"{r['parts']:>6}  {r['cache']}")
    return 0


def run_synthetic(args: argparse.Namespace) -> int:
    layouts = LAYOUTS if args.layout == "all" else (args.layout,)
    for layout in layouts:
        path, seconds = write_layout(layout, args.out, size=args.size, seed=args.seed)
        print(f"{layout}: {path} ({seconds:.1f} s)")
    return 0
