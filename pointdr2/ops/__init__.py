"""Point-cloud grouping ops with the semantics of pointnet2_ops, on CPU and GPU.

Public functions (indices are int64; ``features`` are channel-first ``[B, C, N]``)::

    furthest_point_sample(xyz[B,N,3], npoint, *, skip_origin=False) -> idx[B,npoint]
    ball_query(xyz[B,N,3], new_xyz[B,S,3], radius, nsample) -> idx[B,S,nsample]
    knn(query[B,S,3], support[B,N,3], k) -> (sqdist[B,S,k] ascending, idx[B,S,k])
    gather_points(features[B,C,N], idx[B,S]) -> [B,C,S]                    (differentiable)
    group_points(features[B,C,N], idx[B,S,K]) -> [B,C,S,K]                (differentiable)
    three_nn(unknown[B,n,3], known[B,m,3]) -> (dist[B,n,3] ascending, idx[B,n,3])
    three_interpolate(features[B,C,m], idx[B,n,3], weight[B,n,3]) -> [B,C,n] (differentiable)

Semantics (identical on every backend): FPS starts at index 0 and repeatedly takes the point
maximising the minimum squared distance to the chosen set, lowest index on ties, with no origin
skip unless ``skip_origin=True`` asks for pointnet2_ops' (see :func:`furthest_point_sample`).
Ball query returns the first ``nsample`` indices in increasing order with ``d^2 < r^2``
(strict; ``r^2`` rounded to float32 like the CUDA kernels), empty slots repeat the first hit, and a
query without hits gets all zeros. kNN returns ascending squared distances, ties broken towards
the lower index; ``three_nn`` returns Euclidean (not squared) distances. Distances are computed in
float32 (float64 for float64 input) and carry no gradient; the index ops never record autograd.

Backends: ``torch`` (pure PyTorch, always present), ``cpp`` (C++ CPU kernels, JIT-compiled on
first use and cached under ``~/.cache/pointdr2``; on large clouds FPS, ball query and kNN run over
kd-tree buckets that return exactly the brute-force results), ``triton`` (Triton GPU kernels, no install-time
compile; also runs on CPU tensors with ``TRITON_INTERPRET=1``) and ``pointnet2_ops`` (the CUDA
package, when importable). ``auto`` (the default) picks the fastest available backend for the
tensor's device and dtype; ``set_backend(name)`` or ``POINTDR2_OPS_BACKEND`` override it. A backend
that cannot run an op for a given input hands that call to the next candidate and, finally, to
``torch``.

Ball query and kNN in the torch backend work through queries in chunks that keep their
temporaries inside a memory budget: ``set_memory_budget(bytes)`` or ``POINTDR2_OPS_CHUNK_MB``
(default 256 MB).
"""

from __future__ import annotations

import importlib
import logging
import operator
import os
from types import ModuleType

import numpy as np
import torch

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "auto_backend",
    "available_backends",
    "backend_status",
    "ball_query",
    "furthest_point_sample",
    "gather_points",
    "get_backend",
    "get_memory_budget",
    "group_points",
    "knn",
    "origin_skip_mask",
    "set_backend",
    "set_memory_budget",
    "three_interpolate",
    "three_nn",
]

#: Every backend this module knows, in no particular order; ``auto`` is the selector, not a backend.
BACKENDS = ("torch", "cpp", "triton", "pointnet2_ops")
_MODULES = {
    "torch": "pointdr2.ops.torch_backend",
    "cpp": "pointdr2.ops.cpp_backend",
    "triton": "pointdr2.ops.triton_backend",
    "pointnet2_ops": "pointdr2.ops.pointnet2_backend",
}
ENV_BACKEND = "POINTDR2_OPS_BACKEND"
ENV_CHUNK_MB = "POINTDR2_OPS_CHUNK_MB"
_DEFAULT_BUDGET = 256 * 2**20


class BackendUnavailable(RuntimeError):
    """Raised by a backend that turns out unable to run (e.g. its C++ build failed)."""


_selected: str | None = None  # set_backend(); None -> environment variable or "auto"
_budget: int | None = None
_reported: set[tuple] = set()  # (backend, reason) pairs already logged, so each is logged once


# ----------------------------------------------------------------------------- backend selection
def _backend_module(name: str) -> ModuleType:
    return importlib.import_module(_MODULES[name])


def _check_backend_name(name: object, what: str) -> str:
    if not isinstance(name, str) or (name != "auto" and name not in BACKENDS):
        known = ", ".join(("auto",) + BACKENDS)
        raise ValueError(f"{what} must be one of {known}; got {name!r}")
    return name


def set_backend(name: str | None) -> None:
    """Select the op backend for this process: one of ``auto``, ``torch``, ``cpp``, ``triton``,
    ``pointnet2_ops``; ``None`` returns to the ``POINTDR2_OPS_BACKEND`` / ``auto`` default.

    A named backend that is not usable on this machine raises ``ValueError`` listing the usable ones.
    """
    global _selected
    if name is None:
        _selected = None
        return
    _check_backend_name(name, "backend")
    if name != "auto" and name not in available_backends():
        raise ValueError(f"backend {name!r} is not available here; available: {', '.join(available_backends())}")
    _selected = name


def get_backend() -> str:
    """The selected backend name (``auto`` unless ``set_backend`` or ``POINTDR2_OPS_BACKEND`` say otherwise)."""
    if _selected is not None:
        return _selected
    env = os.environ.get(ENV_BACKEND, "").strip()
    if env:
        return _check_backend_name(env, f"environment variable {ENV_BACKEND}")
    return "auto"


def available_backends() -> list[str]:
    """Backends that can run on this machine (cheap: compiles and imports nothing heavy)."""
    return [name for name in BACKENDS if _backend_module(name).is_available()]


def backend_status() -> dict[str, str]:
    """One line per backend for ``pointdr2 info``: availability and, for cpp, whether it is built."""
    return {name: _backend_module(name).status() for name in BACKENDS}


def _auto_chain(device: torch.device, dtype: torch.dtype) -> list[str]:
    if device.type == "cuda":
        # pointnet2_ops' hand-written CUDA kernels first, then Triton's generated ones.
        return ["pointnet2_ops", "triton", "torch"]
    if device.type == "cpu":
        return ["cpp", "torch"]
    return ["triton", "torch"]


def _usable(name: str, device: torch.device, dtype: torch.dtype) -> bool:
    mod = _backend_module(name)
    return mod.is_available() and mod.supports(device, dtype)


def auto_backend(device: torch.device | str, dtype: torch.dtype = torch.float32) -> str:
    """The backend ``auto`` uses for tensors on ``device`` with ``dtype`` (e.g. ``cpp`` on CPU float32)."""
    device = torch.device(device)
    for name in _auto_chain(device, dtype):
        if _usable(name, device, dtype):
            return name
    return "torch"


def _dispatch(op: str, device: torch.device, dtype: torch.dtype, *args, **kwargs):
    chosen = get_backend()
    chain = _auto_chain(device, dtype) if chosen == "auto" else [chosen, "torch"]
    for name in chain:
        mod = _backend_module(name)
        fn = getattr(mod, op, None)
        if fn is None or not _usable(name, device, dtype):
            if name == chosen and (name, device.type, dtype) not in _reported:
                _reported.add((name, device.type, dtype))
                log.warning("op backend %s cannot run %s on %s %s tensors; using the next backend",
                            name, op, device.type, str(dtype).replace("torch.", ""))
            continue
        try:
            return fn(*args, **kwargs)
        except BackendUnavailable as exc:
            if (name, "unavailable") not in _reported:
                _reported.add((name, "unavailable"))
                log.warning("op backend %s is unavailable (%s); falling back to torch", name, exc)
    raise AssertionError("the torch backend supports every op")  # pragma: no cover


# ----------------------------------------------------------------------------- memory budget
def set_memory_budget(nbytes: int | None) -> None:
    """Bytes of temporaries one chunk of ball query / kNN may use (``None``: env or 256 MB)."""
    global _budget
    if nbytes is None:
        _budget = None
        return
    nbytes = _as_int(nbytes, "nbytes")
    if nbytes < 1:
        raise ValueError(f"nbytes must be a positive number of bytes; got {nbytes}")
    _budget = nbytes


def get_memory_budget() -> int:
    if _budget is not None:
        return _budget
    env = os.environ.get(ENV_CHUNK_MB, "").strip()
    if env:
        try:
            mb = float(env)
        except ValueError:
            mb = -1.0
        if not mb > 0:
            raise ValueError(f"environment variable {ENV_CHUNK_MB} must be a positive number of MB; got {env!r}")
        return int(mb * 2**20)
    return _DEFAULT_BUDGET


def radius_squared(radius: float, dtype: torch.dtype = torch.float32) -> float:
    """r^2 as the kernels compare it: rounded to float32 and squared in float32 (float64 for float64)."""
    if dtype == torch.float64:
        return float(radius) * float(radius)
    r = np.float32(radius)
    return float(r * r)


#: pointnet2_ops' FPS never picks a point with ``|p|^2 <= ORIGIN_SKIP_SQ`` after the first.
ORIGIN_SKIP_SQ = 1e-3


def origin_skip_mask(xyz: torch.Tensor) -> torch.Tensor:
    """bool [B, N]: the points of ``xyz`` [B, N, 3] that FPS with ``skip_origin=True`` never picks
    after the first, ``|p|^2 <= 1e-3``.

    ``|p|^2`` is computed as pointnet2_ops' kernel does, in float32 as ``(x*x + y*y) + z*z`` (each
    operation rounded, no fused multiply-add) whatever the input dtype, and compared with the double
    1e-3 (the kernel's literal). Every backend uses this one mask, so they agree bit for bit.
    """
    p = xyz.detach().to(torch.float32)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    mag = x * x + y * y
    mag = mag + z * z
    return mag.double() <= ORIGIN_SKIP_SQ


# ----------------------------------------------------------------------------- validation
def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer; got {value!r}") from None


def _check_tensor(t: object, name: str, expected: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {expected}; got {type(t).__name__}")
    return t


def _check_xyz(t: object, name: str, expected: str = "[B, N, 3]") -> torch.Tensor:
    t = _check_tensor(t, name, expected)
    if t.dim() != 3 or t.shape[-1] != 3:
        raise ValueError(f"{name} must have shape {expected}; got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of shape {expected}; got dtype {t.dtype}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}, expected {expected} with B >= 1 and N >= 1")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf coordinates; expected finite {expected}")
    return t.detach().contiguous()


def _check_pair(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"batch sizes differ: {a_name} has B={a.shape[0]}, {b_name} has B={b.shape[0]}")
    if a.device != b.device:
        raise ValueError(f"{a_name} is on {a.device} but {b_name} is on {b.device}; expected one device")
    if a.dtype != b.dtype:
        raise ValueError(f"{a_name} is {a.dtype} but {b_name} is {b.dtype}; expected one dtype")


def _check_index(idx: object, name: str, expected: str, rank: int, batch: int, n: int,
                 last: int | None = None) -> torch.Tensor:
    idx = _check_tensor(idx, name, expected)
    if idx.dim() != rank or (last is not None and idx.shape[-1] != last):
        raise ValueError(f"{name} must have shape {expected}; got {tuple(idx.shape)}")
    if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"{name} must be an integer tensor (int64 or int32) of shape {expected}; got {idx.dtype}")
    if idx.shape[0] != batch:
        raise ValueError(f"batch sizes differ: features has B={batch}, {name} has B={idx.shape[0]}")
    if idx.numel():
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"{name} holds indices in [{lo}, {hi}]; expected values in [0, {n - 1}]")
    return idx.to(torch.int64)


def _check_features(f: object, name: str = "features", expected: str = "[B, C, N]") -> torch.Tensor:
    f = _check_tensor(f, name, expected)
    if f.dim() != 3:
        raise ValueError(f"{name} must have shape {expected}; got {tuple(f.shape)}")
    if f.shape[2] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(f.shape)}, expected {expected} with N >= 1")
    return f


# ----------------------------------------------------------------------------- index ops
@torch.no_grad()
def furthest_point_sample(xyz: torch.Tensor, npoint: int, *, skip_origin: bool = False) -> torch.Tensor:
    """Furthest point sampling.

    Args:
        xyz: float [B, N, 3] coordinates (any float dtype; distances computed in float32).
        npoint: number of points to pick, 1 <= npoint <= N.
        skip_origin: pointnet2_ops' rule, with which the official Point-BERT / Point-MAE models were
            trained: a point with ``|p|^2 <= 1e-3`` (see :func:`origin_skip_mask`) is never picked
            after the first; index 0 still starts the sample wherever it lies. Skipped points only
            drop out of the choice. When every candidate left is at distance 0 (all chosen, or
            duplicates of chosen points) the lowest-index candidate is picked; with no candidate
            at all (every point, index 0 included, in the origin ball) every pick is index 0, as
            pointnet2_ops returns. ``False`` (default): no skip.

    Returns:
        int64 [B, npoint] indices into N; ``idx[:, 0] == 0``.
    """
    xyz = _check_xyz(xyz, "xyz")
    npoint = _as_int(npoint, "npoint")
    if not 1 <= npoint <= xyz.shape[1]:
        raise ValueError(f"npoint must be in [1, N={xyz.shape[1]}] for xyz of shape {tuple(xyz.shape)}; got {npoint}")
    if not isinstance(skip_origin, (bool, np.bool_)):
        raise ValueError(f"skip_origin must be True or False; got {skip_origin!r}")
    return _dispatch("furthest_point_sample", xyz.device, xyz.dtype, xyz, npoint, skip_origin=bool(skip_origin))


@torch.no_grad()
def ball_query(xyz: torch.Tensor, new_xyz: torch.Tensor, radius: float, nsample: int) -> torch.Tensor:
    """Ball query as pointnet2_ops.

    Args:
        xyz: float [B, N, 3] points searched.
        new_xyz: float [B, S, 3] ball centres (same dtype and device as ``xyz``).
        radius: ball radius > 0; a point is inside when ``d^2 < r^2`` (strict).
        nsample: slots per ball, >= 1 (may exceed N; slots past the hits repeat the first hit).

    Returns:
        int64 [B, S, nsample]: the first ``nsample`` hits in increasing index order, empty slots
        filled with the first hit, all zeros for a ball without hits.
    """
    xyz = _check_xyz(xyz, "xyz")
    new_xyz = _check_xyz(new_xyz, "new_xyz", "[B, S, 3]")
    _check_pair(xyz, "xyz", new_xyz, "new_xyz")
    nsample = _as_int(nsample, "nsample")
    if nsample < 1:
        raise ValueError(f"nsample must be >= 1; got {nsample}")
    if isinstance(radius, torch.Tensor):
        radius = float(radius)
    if not isinstance(radius, (int, float, np.floating, np.integer)) or isinstance(radius, bool) \
            or not np.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius must be a finite number > 0; got {radius!r}")
    return _dispatch("ball_query", xyz.device, xyz.dtype, xyz, new_xyz, float(radius), nsample)


@torch.no_grad()
def knn(query: torch.Tensor, support: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest neighbours.

    Args:
        query: float [B, S, 3] query points.
        support: float [B, N, 3] points searched (same dtype and device).
        k: neighbours per query, 1 <= k <= N.

    Returns:
        ``(sqdist, idx)``: squared distances [B, S, k] in ``query.dtype``, ascending, and int64
        indices [B, S, k] into N; equal distances are ordered by increasing index.
    """
    query = _check_xyz(query, "query", "[B, S, 3]")
    support = _check_xyz(support, "support")
    _check_pair(query, "query", support, "support")
    k = _as_int(k, "k")
    if not 1 <= k <= support.shape[1]:
        raise ValueError(f"k must be in [1, N={support.shape[1]}] for support of shape {tuple(support.shape)}; got {k}")
    return _dispatch("knn", query.device, query.dtype, query, support, k)


@torch.no_grad()
def three_nn(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Three nearest known points of every unknown point (feature propagation).

    Args:
        unknown: float [B, n, 3]; known: float [B, m, 3] with m >= 3.

    Returns:
        ``(dist, idx)``: Euclidean distances [B, n, 3] ascending (ties by index) and int64 [B, n, 3].
    """
    unknown = _check_xyz(unknown, "unknown", "[B, n, 3]")
    known = _check_xyz(known, "known", "[B, m, 3]")
    _check_pair(unknown, "unknown", known, "known")
    if known.shape[1] < 3:
        raise ValueError(f"known must have shape [B, m, 3] with m >= 3; got {tuple(known.shape)}")
    return _dispatch("three_nn", unknown.device, unknown.dtype, unknown, known)


# ----------------------------------------------------------------------------- feature ops
def gather_points(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """features [B, C, N], idx int [B, S] -> [B, C, S] (differentiable w.r.t. features)."""
    features = _check_features(features)
    B, C, N = features.shape
    idx = _check_index(idx, "idx", "[B, S]", 2, B, N)
    return features.gather(2, idx[:, None, :].expand(B, C, idx.shape[1]))


def group_points(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """features [B, C, N], idx int [B, S, K] -> [B, C, S, K] (differentiable w.r.t. features)."""
    features = _check_features(features)
    B, C, N = features.shape
    idx = _check_index(idx, "idx", "[B, S, K]", 3, B, N)
    S, K = idx.shape[1:]
    flat = idx.reshape(B, 1, S * K).expand(B, C, S * K)
    return features.gather(2, flat).view(B, C, S, K)


def three_interpolate(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted sum of three neighbours' features.

    Args:
        features: float [B, C, m]; idx: int [B, n, 3] into m; weight: float [B, n, 3].

    Returns:
        [B, C, n] = sum_j weight[b, i, j] * features[b, :, idx[b, i, j]] in ``features.dtype``;
        differentiable w.r.t. features and weight.
    """
    features = _check_features(features, "features", "[B, C, m]")
    B, C, m = features.shape
    idx = _check_index(idx, "idx", "[B, n, 3]", 3, B, m, last=3)
    weight = _check_tensor(weight, "weight", "[B, n, 3]")
    if tuple(weight.shape) != tuple(idx.shape):
        raise ValueError(f"weight must have shape [B, n, 3] = {tuple(idx.shape)} like idx; got {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ValueError(f"weight must be a floating-point tensor of shape [B, n, 3]; got {weight.dtype}")
    if weight.device != features.device:
        raise ValueError(f"weight is on {weight.device} but features is on {features.device}; expected one device")
    weight = weight.to(features.dtype)
    n = idx.shape[1]
    out = None
    # Three [B, C, n] gathers instead of one [B, C, n, 3] block: a third of the peak memory.
    for j in range(3):
        term = features.gather(2, idx[:, None, :, j].expand(B, C, n)) * weight[:, None, :, j]
        out = term if out is None else out + term
    return out
