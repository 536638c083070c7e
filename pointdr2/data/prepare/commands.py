"""Arguments and runners of ``pointdr2 prepare DATASET`` (wired into ``pointdr2.cli`` by ``_add_prepare``).

Each runner returns an exit status and prints a short summary of what it wrote on stdout; progress
goes through tqdm and logging.
"""

from __future__ import annotations

import argparse

from pointdr2.data.synthetic import LAYOUTS, SIZES


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    which = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)

    p = which.add_parser("modelnet40", help="write the .dat FPS cache of modelnet40_normal_resampled")
    p.add_argument("--root", required=True, help="modelnet40_normal_resampled (or the folder holding it)")
    p.add_argument("--npoints", type=int, default=8192, help="points per shape in the cache (default 8192)")
    p.add_argument("--splits", nargs="+", default=["train", "test"], choices=["train", "test"])
    p.add_argument("--device", default="cpu", help="device for furthest point sampling (cpu, cuda, ...)")
    p.add_argument("--batch-size", type=int, default=16, help="shapes sampled together")
    p.add_argument("--overwrite", action="store_true", help="rewrite an existing cache")
    p.set_defaults(func=run_modelnet40)

    p = which.add_parser("scanobjectnn", help="locate and check the ScanObjectNN h5 files of every variant")
    p.add_argument("--root", required=True, help="folder with main_split/ and main_split_nobg/ (or h5_files/)")
    p.set_defaults(func=run_scanobjectnn)

    p = which.add_parser("s3dis", help="convert raw S3DIS Annotations into per-room .npy files")
    p.add_argument("--raw", required=True, help="Stanford3dDataset_v1.2_Aligned_Version (or its parent)")
    p.add_argument("--out", required=True, help="output folder (s3disfull); rooms go to OUT/raw/")
    p.add_argument("--overwrite", action="store_true", help="rewrite rooms already converted")
    p.set_defaults(func=run_s3dis)

    p = which.add_parser("synthetic", help="write synthetic data in an official layout")
    p.add_argument("--layout", required=True, choices=[*LAYOUTS, "all"])
    p.add_argument("--out", required=True, help="output folder (the layout's folder is created inside)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="demo", choices=list(SIZES))
    p.set_defaults(func=run_synthetic)


def run_modelnet40(args: argparse.Namespace) -> int:
    from pointdr2.data.prepare.modelnet40 import write_fps_cache

    for path in write_fps_cache(args.root, npoints=args.npoints, splits=tuple(args.splits), device=args.device,
                                batch_size=args.batch_size, overwrite=args.overwrite):
        print(f"cache: {path}")
    return 0


def run_scanobjectnn(args: argparse.Namespace) -> int:
    from pointdr2.data.prepare.scanobjectnn import check_scanobjectnn

    rows = check_scanobjectnn(args.root)
    print(f"{'variant':<10} {'split':<9} {'samples':>7} {'points':>6} {'classes':>7} {'bg':>6}  path")
    for r in rows:
        print(f"{r['variant']:<10} {r['split']:<9} {r['samples']:>7} {r['points']:>6} {r['classes']:>7} "
              f"{r['background']:>6}  {r['path']}")
    return 0


def run_s3dis(args: argparse.Namespace) -> int:
    from pointdr2.data.prepare.s3dis import convert_s3dis

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


def run_synthetic(args: argparse.Namespace) -> int:
    from pointdr2.data.synthetic import write_layout

    layouts = LAYOUTS if args.layout == "all" else (args.layout,)
    for layout in layouts:
        path, seconds = write_layout(layout, args.out, size=args.size, seed=args.seed)
        print(f"{layout}: {path} ({seconds:.1f} s)")
    return 0
