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
    for name, (module_path, help_text) in BENCHES.items():
        q = what.add_parser(name, help=help_text)
        module = importlib.import_module(module_path)
        module.add_arguments(q)
        q.set_defaults(func=module.run)


# ----------------------------------------------------------------------------- main
COMMANDS = [_add_info, _add_bench]


def build_parser() -> argparse.ArgumentParser:
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
    parser = build_parser()
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
