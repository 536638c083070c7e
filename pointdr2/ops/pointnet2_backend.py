"""Adapter for the ``pointnet2_ops`` CUDA package (float32 CUDA tensors, int32 indices).

It converts indices to int64 and deals with the one place where pointnet2_ops' FPS is not the
default contract: its kernel never picks a point with ``|p|^2 <= 1e-3`` (an "origin skip" meant to
ignore zero padding). With ``skip_origin=False`` (the default) a cloud with such a point (other than
index 0, which is picked first anyway) is handed to the next backend (Triton or torch), which gives
the exact contract result; translating the cloud would change float32 rounding and therefore tie
decisions. With ``skip_origin=True`` the kernel's own rule is wanted and it runs as it is, except
for a cloud with a point whose ``|p|^2`` lies within float32 rounding of the threshold (the kernel
may fuse its multiply-adds, the other backends do not): that one goes to the next backend, so the
skip decision is the same on every backend. kNN is not part of pointnet2_ops and is always handled
by the next backend.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

from pointdr2.ops import BackendUnavailable

NAME = "pointnet2_ops"
# pointnet2_ops skips |p|^2 <= 1e-3; the margin covers float32 rounding of |p|^2 in its kernel.
_ORIGIN_SKIP = 1e-3 * (1 + 1e-4)


def _utils():
    try:
        return importlib.import_module("pointnet2_ops.pointnet2_utils")
    except ImportError as exc:  # pragma: no cover - only without the package
        raise BackendUnavailable(f"pointnet2_ops cannot be imported: {exc}") from exc


def is_available() -> bool:
    try:
        found = importlib.util.find_spec("pointnet2_ops") is not None
    except (ImportError, ValueError):
        found = False
    return found and torch.cuda.is_available()


def status() -> str:
    if importlib.util.find_spec("pointnet2_ops") is None:
        return "not installed"
    return "available" if torch.cuda.is_available() else "installed, but needs CUDA"


def supports(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cuda" and dtype == torch.float32


def has_origin_points(xyz: torch.Tensor) -> bool:
    """True when pointnet2_ops' FPS would skip a point of ``xyz`` [B, N, 3] other than index 0."""
    mag = (xyz[:, 1:].double() ** 2).sum(-1)
    return bool((mag <= _ORIGIN_SKIP).any())


def near_skip_threshold(xyz: torch.Tensor) -> bool:
    """True when a point of ``xyz`` [B, N, 3] other than index 0 has ``|p|^2`` so close to 1e-3 that
    fused and unfused float32 arithmetic could decide the origin skip differently."""
    mag = (xyz[:, 1:].double() ** 2).sum(-1)
    return bool(((mag > 1e-3 * (1 - 1e-4)) & (mag <= _ORIGIN_SKIP)).any())


def furthest_point_sample(xyz: torch.Tensor, npoint: int, *, skip_origin: bool = False) -> torch.Tensor:
    if (near_skip_threshold(xyz) if skip_origin else has_origin_points(xyz)):
        # Only _dispatch's BackendUnavailable handler logs; this is a per-call hand-off, not a failure.
        return _next_backend("furthest_point_sample", xyz, npoint, skip_origin=skip_origin)
    idx = _utils().furthest_point_sample(xyz.float().contiguous(), int(npoint))
    return idx.to(torch.int64)


def ball_query(xyz: torch.Tensor, new_xyz: torch.Tensor, radius: float, nsample: int) -> torch.Tensor:
    idx = _utils().ball_query(float(radius), int(nsample), xyz.float().contiguous(), new_xyz.float().contiguous())
    return idx.to(torch.int64)


def three_nn(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dist, idx = _utils().three_nn(unknown.float().contiguous(), known.float().contiguous())
    return dist, idx.to(torch.int64)


def _next_backend(op: str, *args, **kwargs):
    from pointdr2.ops import torch_backend, triton_backend

    if triton_backend.is_available() and triton_backend.supports(args[0].device, args[0].dtype):
        return getattr(triton_backend, op)(*args, **kwargs)
    return getattr(torch_backend, op)(*args, **kwargs)
