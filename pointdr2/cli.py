"""The ``pointdr2`` command (also ``python -m pointdr2``).

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares its arguments and sets
``func``; the function runs it and returns an exit status. Bad input raises ``ValueError`` /
``FileNotFoundError`` (or a subclass); ``main`` turns those into one line on stderr and exit
status 2. ``POINTDR2_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from pointdr2 import __version__

log = logging.getLogger("pointdr2")


# ----------------------------------------------------------------------------- info
def _module_version(name: str) -> str:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable here"
        return f"not available ({type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''})"
    return str(getattr(module, "__version__", "installed"))


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    from pointdr2 import ops

    lines = [
        f"pointdr2     {__version__}",
        f"python       {platform.python_version()} ({platform.machine()}, {platform.system()})",
        f"torch        {torch.__version__}",
        f"numpy        {_module_version('numpy')}",
        f"h5py         {_module_version('h5py')}",
        f"tensorboard  {_module_version('tensorboard')}",
        f"triton       {_module_version('triton')}",
        f"open3d       {_module_version('open3d')}",
        f"cpu threads  {torch.get_num_threads()} (cores: {os.cpu_count()})",
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            prop = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i}       {prop.name}, {prop.total_memory / 2**30:.1f} GiB, "
                         f"capability {prop.major}.{prop.minor}")
    else:
        lines.append("cuda         not available (CPU only)")
    lines.append(f"op backends  {', '.join(ops.available_backends())}")
    for name, state in ops.backend_status().items():
        lines.append(f"  {name + ':':<14} {state}")
    lines.append(f"  selected   {ops.get_backend()}"
                 + ("  (from POINTDR2_OPS_BACKEND)" if os.environ.get("POINTDR2_OPS_BACKEND") else ""))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        lines.append(f"  auto on {device:<4} {ops.auto_backend(device, torch.float32)} (float32)")
    print("\n".join(lines))
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions, devices and available op backends")
    p.set_defaults(func=_cmd_info)


# ----------------------------------------------------------------------------- bench
def _add_bench(sub: argparse._SubParsersAction) -> None:
    from pointdr2.bench import BENCHES

    p = sub.add_parser("bench", help="benchmarks measured side by side in one run")
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    # Import only the benchmark being run: each one pulls in models, ops or data, and every
    # pointdr2 command builds this parser.
    argv = [a for a in _ARGV if not a.startswith("-")]
    wanted = argv[1] if len(argv) > 1 and argv[0] == "bench" else None
    for name, (module_path, help_text) in BENCHES.items():
        q = what.add_parser(name, help=help_text)
        if name == wanted:
            module = importlib.import_module(module_path)
            module.add_arguments(q)
            q.set_defaults(func=module.run)


# ----------------------------------------------------------------------------- train / eval / visualize / demo
class _IntermixedParser(argparse.ArgumentParser):
    """Lets ``key=value`` overrides and options come in any order (``CONFIG --checkpoint P a=1 b=2``).

    Plain argparse stops filling a ``nargs="*"`` positional at the first option.
    """

    _busy = False

    def parse_known_args(self, args=None, namespace=None):
        if self._busy:
            return super().parse_known_args(args, namespace)
        self._busy = True
        try:
            return super().parse_known_intermixed_args(args, namespace)
        finally:
            self._busy = False


def _intermixed(sub: argparse._SubParsersAction, name: str, **kwargs) -> argparse.ArgumentParser:
    old = sub._parser_class
    sub._parser_class = _IntermixedParser
    try:
        return sub.add_parser(name, **kwargs)
    finally:
        sub._parser_class = old


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = _intermixed(sub, "train", help="finetune / train a model; writes a run directory (run.dir)")
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

    def run(args: argparse.Namespace) -> int:
        from pointdr2.engine.commands import cmd_train

        return cmd_train(args)

    p.set_defaults(func=run)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = _intermixed(sub, "eval", help="evaluate a checkpoint: OA/mAcc (classification), mIoU/mAcc/OA (segmentation)")
    p.add_argument("config", metavar="CONFIG|RUN", nargs="?",
                   help="config file, or a run directory (its config.yaml and best.pth)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="best.pth / last.pth or an official checkpoint (default with RUN: RUN/best.pth; without "
                        "CONFIG: the config.yaml beside it)")
    p.add_argument("--vote", type=int, metavar="N", help="test-time voting passes (classification; default eval.vote)")
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    def run(args: argparse.Namespace) -> int:
        from pointdr2.engine.commands import cmd_eval

        return cmd_eval(args)

    p.set_defaults(func=run)


def _add_visualize(sub: argparse._SubParsersAction) -> None:
    p = _intermixed(sub, "visualize", help="render a sample coloured by prediction, ground truth or error (PNG + PLY)")
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

    def run(args: argparse.Namespace) -> int:
        from pointdr2.engine.commands import cmd_visualize

        return cmd_visualize(args)

    p.set_defaults(func=run)


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = _intermixed(sub, "plan", help="measure the memory of each finetuning mode and fit batch size and mode to a budget")
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

    def run(args: argparse.Namespace) -> int:
        from pointdr2.engine.commands import cmd_plan

        return cmd_plan(args)

    p.set_defaults(func=run)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the embedded default: synthetic data, pretrain, Dr2Net vs conventional finetuning")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output directory (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a tiny version (< 1 min) that exercises every step")
    p.add_argument("--force", action="store_true", help="overwrite an existing demo directory")

    def run(args: argparse.Namespace) -> int:
        from pointdr2.study.demo import DemoOptions, run_demo
        from pointdr2.study.runs import StudyRunError

        try:
            run_demo(DemoOptions(out=Path(args.out), quick=bool(args.quick), force=bool(args.force)))
        except StudyRunError as exc:
            print(f"pointdr2 demo: error: {exc}", file=sys.stderr)
            return 1
        return 0

    p.set_defaults(func=run)


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
    p.set_defaults(func=_run_prepare_modelnet40)

    p = which.add_parser("scanobjectnn", help="locate and check the ScanObjectNN h5 files of every variant")
    p.add_argument("--root", required=True, help="folder with main_split/ and main_split_nobg/ (or h5_files/)")
    p.set_defaults(func=_run_prepare_scanobjectnn)

    p = which.add_parser("s3dis", help="convert raw S3DIS Annotations into per-room .npy files")
    p.add_argument("--raw", required=True, help="Stanford3dDataset_v1.2_Aligned_Version (or its parent)")
    p.add_argument("--out", required=True, help="output folder (s3disfull); rooms go to OUT/raw/")
    p.add_argument("--overwrite", action="store_true", help="rewrite rooms already converted")
    p.set_defaults(func=_run_prepare_s3dis)

    p = which.add_parser("shapenetpart", help="check every ShapeNetPart file and write the loader's cache")
    p.add_argument("--root", required=True,
                   help="shapenetcore_partanno_segmentation_benchmark_v0_normal (or the folder holding it)")
    p.add_argument("--no-cache", action="store_true", help="only check; write no cache")
    p.add_argument("--overwrite", action="store_true", help="re-read every file and rewrite an existing cache")
    p.add_argument("--num-points", type=int, default=2048, help="report shapes with fewer points (default 2048)")
    p.set_defaults(func=_run_prepare_shapenetpart)

    p = which.add_parser("synthetic", help="write synthetic data in an official layout")
    p.add_argument("--layout", required=True,
                   help="modelnet40-txt | modelnet40-h5 | scanobjectnn | s3dis-raw | shapenetpart | all")
    p.add_argument("--out", required=True, help="output folder (the layout's folder is created inside)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="demo", help="test | demo | small | study (default demo)")
    p.set_defaults(func=_run_prepare_synthetic)


def _run_prepare_modelnet40(args: argparse.Namespace) -> int:
    from pointdr2.data.prepare.modelnet40 import write_fps_cache

    for path in write_fps_cache(args.root, npoints=args.npoints, splits=tuple(args.splits), device=args.device,
                                batch_size=args.batch_size, overwrite=args.overwrite):
        print(f"cache: {path}")
    return 0


def _run_prepare_scanobjectnn(args: argparse.Namespace) -> int:
    from pointdr2.data.prepare.scanobjectnn import check_scanobjectnn

    rows = check_scanobjectnn(args.root)
    print(f"{'variant':<10} {'split':<9} {'samples':>7} {'points':>6} {'classes':>7} {'bg':>6}  path")
    for r in rows:
        print(f"{r['variant']:<10} {r['split']:<9} {r['samples']:>7} {r['points']:>6} {r['classes']:>7} "
              f"{r['background']:>6}  {r['path']}")
    return 0


def _run_prepare_s3dis(args: argparse.Namespace) -> int:
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


def _run_prepare_shapenetpart(args: argparse.Namespace) -> int:
    from pointdr2.data.prepare.shapenetpart import check_shapenetpart

    rows = check_shapenetpart(args.root, cache=not args.no_cache, overwrite=args.overwrite, num_points=args.num_points)
    print(f"{'split':<6} {'shapes':>6} {'categories':>10} {'points min/median/max':>22} "
          f"{'< ' + str(args.num_points):>7} {'parts':>6}  cache")
    for r in rows:
        print(f"{r['split']:<6} {r['shapes']:>6} {r['categories']:>10} {r['points']:>22} {r['below']:>7} "
              f"{r['parts']:>6}  {r['cache']}")
    return 0


def _run_prepare_synthetic(args: argparse.Namespace) -> int:
    from pointdr2.data.synthetic import LAYOUTS, write_layout

    layouts = LAYOUTS if args.layout == "all" else (args.layout,)
    for layout in layouts:
        path, seconds = write_layout(layout, args.out, size=args.size, seed=args.seed)
        print(f"{layout}: {path} ({seconds:.1f} s)")
    return 0


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
