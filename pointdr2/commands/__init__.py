"""The ``pointdr2`` command line (also ``python -m pointdr2``): the one layer that knows argparse, printing
for people, exit codes and optional extras.

This module declares every subcommand (``_add_<name>(subparsers)``); the function that runs one lives in a
module of this package (``train``, ``evaluate``, ``visualize``, ``demo``, ``prepare``, ``info``, ``bench``)
and is imported only when that subcommand runs, so ``pointdr2 --help`` stays fast. Below this layer the
engine, data, study and bench modules are plain functions with typed arguments that raise exceptions. Bad
input raises ``ValueError`` / ``FileNotFoundError`` (or a subclass); :func:`main` turns those into one line
on stderr and exit status 2. ``POINTDR2_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from pointdr2 import __version__
from pointdr2.commands.parsing import intermixed

__all__ = ["build_parser", "main"]

log = logging.getLogger("pointdr2")


def _lazy(target: str) -> Callable[[argparse.Namespace], int]:
    """``"package.module:function"`` as a callable that imports the module on its first call."""
    module_name, func_name = target.split(":")

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module_name), func_name)(args)

    run.__qualname__ = target
    return run


# ----------------------------------------------------------------------------- info
def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions, devices and available op backends")
    p.set_defaults(func=_lazy("pointdr2.commands.info:run_info"))


# ----------------------------------------------------------------------------- bench
def _add_bench(sub: argparse._SubParsersAction) -> None:
    from pointdr2.bench import BENCHES

    p = sub.add_parser("bench", help="benchmarks measured side by side in one run")
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    # Import only the benchmark being run: each one pulls in models, ops or data, and every
    # pointdr2 command builds this parser.
    argv = [a for a in _ARGV if not a.startswith("-")]
    wanted = argv[1] if len(argv) > 1 and argv[0] == "bench" else None
    for name, (_, help_text) in BENCHES.items():
        q = what.add_parser(name, help=help_text)
        if name == wanted:
            from pointdr2.commands import bench

            bench.declare(name, q)
            q.set_defaults(func=bench.run)


# ----------------------------------------------------------------------------- train / eval / visualize / demo
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = intermixed(sub, "train", help="finetune / train a model; writes a run directory (run.dir)")
    p.add_argument("config", metavar="CONFIG", nargs="?",
                   help="config file (path, or relative to configs/); optional with --resume RUN (RUN/config.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=2")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pth")
    p.add_argument("--force", action="store_true", help="start over in an existing run directory")
    p.add_argument("--stop-after-epochs", type=int, metavar="N",
                   help="stop (resumably) after N epochs of this invocation, e.g. to fit a time slot")
    p.add_argument("--check", action="store_true",
                   help="check config, data, model and weights as --nproc processes would, then exit without "
                        "training or writing anything (scripts/dist_train.sh runs it before spawning)")
    p.add_argument("--nproc", type=int, default=1, metavar="N", help="processes --check assumes (default 1)")

    p.set_defaults(func=_lazy("pointdr2.commands.train:run_train"))


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = intermixed(sub, "eval", help="evaluate a checkpoint: OA/mAcc (classification), mIoU/mAcc/OA (segmentation)")
    p.add_argument("config", metavar="CONFIG|RUN", nargs="?",
                   help="config file, or a run directory (its config.yaml and best.pth)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="best.pth / last.pth or an official checkpoint (default with RUN: RUN/best.pth; without "
                        "CONFIG: the config.yaml beside it)")
    p.add_argument("--vote", type=int, metavar="N", help="test-time voting passes (classification; default eval.vote)")
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p.set_defaults(func=_lazy("pointdr2.commands.evaluate:run_eval"))


def _add_visualize(sub: argparse._SubParsersAction) -> None:
    p = intermixed(sub, "visualize", help="render a sample coloured by prediction, ground truth or error (PNG + PLY)")
    p.add_argument("config", metavar="CONFIG|RUN", nargs="?", help="config file, or a run directory")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--checkpoint", metavar="PATH", help="default with RUN: RUN/best.pth")
    p.add_argument("--index", type=int, default=0, metavar="I", help="sample (or room) index in the split")
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    p.add_argument("--out", default="visualize.png", metavar="FILE.png", help="PNG to write (PLY files beside it)")
    p.add_argument("--style", default="figure", choices=["figure", "render"],
                   help="figure (default): a labelled grid (classification) or prediction beside ground truth with "
                        "a legend (segmentation); render: one Open3D render coloured by --color")
    p.add_argument("--count", type=int, default=12, help="samples in the classification grid (default 12)")
    p.add_argument("--color", default="pred", choices=["pred", "gt", "error"], help="colouring of --style render")
    p.add_argument("--window", default="auto", choices=["auto", "yes", "no"],
                   help="open an Open3D window (auto: when a display exists)")
    p.add_argument("--width", type=int, default=800)
    p.add_argument("--height", type=int, default=600)
    p.add_argument("--point-size", type=float, default=4.0)

    p.set_defaults(func=_lazy("pointdr2.commands.visualize:run_visualize"))


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = intermixed(sub, "plan", help="measure the memory of each finetuning mode and fit batch size and mode to a budget")
    p.add_argument("config", metavar="CONFIG", help="config file (path, or relative to configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model.depth=6")
    p.add_argument("--memory", metavar="SIZE", help="budget per process, e.g. 12GB, 11.5GiB, 512MiB: the largest "
                   "batch per mode that fits and the mode to choose")
    p.add_argument("--batch-sizes", metavar="B,B,...", help="batch sizes per process to predict (default: a quarter, "
                   "half and all of train.batch_size)")
    p.add_argument("--points", type=int, metavar="N", help="points per sample (default: what the config feeds the model)")
    p.add_argument("--probe-points", type=int, metavar="N", help="measure at N and N/2 points and extrapolate to "
                   "--points (large crops in less time)")
    p.add_argument("--probe-batches", default=None, metavar="B1,B2",
                   help="the two batch sizes measured (default 2,4; segmentation 1,2)")
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default)")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads while measuring")
    p.add_argument("--peak-at", action="store_true", help="name the operation that sets each peak (slower on CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of the table")

    p.set_defaults(func=_lazy("pointdr2.commands.train:run_plan"))


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the embedded default: synthetic data, pretrain, Dr2Net vs conventional finetuning")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output directory (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a tiny version (< 1 min) that exercises every step")
    p.add_argument("--force", action="store_true", help="overwrite an existing demo directory")

    p.set_defaults(func=_lazy("pointdr2.commands.demo:run"))


# ----------------------------------------------------------------------------- prepare
def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="prepare datasets: modelnet40 | scanobjectnn | s3dis | shapenetpart | synthetic")
    _prepare_subcommands(p)


def _prepare_subcommands(parser: argparse.ArgumentParser) -> None:
    which = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)

    p = which.add_parser("modelnet40", help="write the .dat FPS cache of modelnet40_normal_resampled")
    p.add_argument("--root", required=True, help="modelnet40_normal_resampled (or the folder holding it)")
    p.add_argument("--npoints", type=int, default=8192, help="points per shape in the cache (default 8192)")
    p.add_argument("--splits", nargs="+", default=["train", "test"], choices=["train", "test"])
    p.add_argument("--device", default="cpu", help="device for furthest point sampling (cpu, cuda, ...)")
    p.add_argument("--batch-size", type=int, default=16, help="shapes sampled together")
    p.add_argument("--overwrite", action="store_true", help="rewrite an existing cache")
    p.set_defaults(func=_lazy("pointdr2.commands.prepare:run_modelnet40"))

    p = which.add_parser("scanobjectnn", help="locate and check the ScanObjectNN h5 files of every variant")
    p.add_argument("--root", required=True, help="folder with main_split/ and main_split_nobg/ (or h5_files/)")
    p.set_defaults(func=_lazy("pointdr2.commands.prepare:run_scanobjectnn"))

    p = which.add_parser("s3dis", help="convert raw S3DIS Annotations into per-room .npy files")
    p.add_argument("--raw", required=True, help="Stanford3dDataset_v1.2_Aligned_Version (or its parent)")
    p.add_argument("--out", required=True, help="output folder (s3disfull); rooms go to OUT/raw/")
    p.add_argument("--overwrite", action="store_true", help="rewrite rooms already converted")
    p.set_defaults(func=_lazy("pointdr2.commands.prepare:run_s3dis"))

    p = which.add_parser("shapenetpart", help="check every ShapeNetPart file and write the loader's cache")
    p.add_argument("--root", required=True,
                   help="shapenetcore_partanno_segmentation_benchmark_v0_normal (or the folder holding it)")
    p.add_argument("--no-cache", action="store_true", help="only check; write no cache")
    p.add_argument("--overwrite", action="store_true", help="re-read every file and rewrite an existing cache")
    p.add_argument("--num-points", type=int, default=2048, help="report shapes with fewer points (default 2048)")
    p.set_defaults(func=_lazy("pointdr2.commands.prepare:run_shapenetpart"))

    p = which.add_parser("synthetic", help="write synthetic data in an official layout")
    p.add_argument("--layout", required=True,
                   help="modelnet40-txt | modelnet40-h5 | scanobjectnn | s3dis-raw | shapenetpart | all")
    p.add_argument("--out", required=True, help="output folder (the layout's folder is created inside)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="demo", help="test | demo | small | study (default demo)")
    p.set_defaults(func=_lazy("pointdr2.commands.prepare:run_synthetic"))


# ----------------------------------------------------------------------------- main
COMMANDS = [_add_info, _add_bench, _add_train, _add_eval, _add_visualize, _add_plan, _add_demo, _add_prepare]


_ARGV: list[str] = []


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; ``argv`` (default sys.argv[1:]) decides which benchmark module is imported."""
    _ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="pointdr2",
        description="Memory-efficient finetuning of pretrained point-cloud networks with Dr2Net.",
    )
    parser.add_argument("--version", action="version", version=f"pointdr2 {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        if os.environ.get("POINTDR2_DEBUG"):
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"pointdr2 {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pointdr2 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
