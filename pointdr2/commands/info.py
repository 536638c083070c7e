"""``pointdr2 info``: versions, devices and the op backends this machine can use."""

from __future__ import annotations

import argparse
import importlib
import os
import platform

import torch

from pointdr2 import __version__, ops


def _module_version(name: str) -> str:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable here"
        return f"not available ({type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''})"
    return str(getattr(module, "__version__", "installed"))


def run_info(args: argparse.Namespace) -> int:
    """``pointdr2 info``: versions, devices and op backends."""
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
