"""Pure PyTorch backend: vectorised, runs on every device and dtype, always available.

Inputs arrive validated by :mod:`pointdr2.ops` (contiguous, finite, right shapes). Distances are
always computed in float32 as ``(dx*dx + dy*dy) + dz*dz`` from coordinate differences, the same
arithmetic as the C++ and Triton kernels, so every backend makes the same strict ``d^2 < r^2``
decision on boundary points and the same tie decisions. Ball query and kNN materialise a
``[B, s, N]`` distance block per chunk of ``s`` queries, with ``s`` chosen so the block stays
inside the memory budget of :func:`pointdr2.ops.get_memory_budget`.
"""

from __future__ import annotations

import torch

NAME = "torch"

# Bytes of temporaries per (query, point) pair: two float32 buffers for the distance plus the
# bool/int32 masks (ball query) or the int64 sort key (kNN).
_BALL_BYTES_PER_PAIR = 14
_KNN_BYTES_PER_PAIR = 20


def is_available() -> bool:
    return True


def status() -> str:
    return "available"


def supports(device: torch.device, dtype: torch.dtype) -> bool:
    return dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _planes(xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, N, 3] -> three contiguous float32 [B, N] coordinate planes (float64 stays float64)."""
    dtype = torch.float64 if xyz.dtype == torch.float64 else torch.float32
    p = xyz.to(dtype).transpose(1, 2).contiguous()
    return p[:, 0], p[:, 1], p[:, 2]


def _sqdist_block(q: tuple[torch.Tensor, ...], p: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Squared distances [B, s, N] between query planes ([B, s] each) and point planes ([B, N])."""
    d = q[0][:, :, None] - p[0][:, None, :]
    d.mul_(d)
    t = q[1][:, :, None] - p[1][:, None, :]
    t.mul_(t)
    d.add_(t)
    torch.sub(q[2][:, :, None], p[2][:, None, :], out=t)
    t.mul_(t)
    d.add_(t)
    return d


def _query_chunk(batch: int, n: int, bytes_per_pair: int) -> int:
    from pointdr2.ops import get_memory_budget

    return max(1, get_memory_budget() // max(1, batch * n * bytes_per_pair))


def furthest_point_sample(xyz: torch.Tensor, npoint: int, *, skip_origin: bool = False) -> torch.Tensor:
    """[B, N, 3] -> int64 [B, npoint]; a python loop over npoint with a vectorised update.

    ``skip_origin``: points of :func:`pointdr2.ops.origin_skip_mask` take no part in the maximum
    (-1, below every distance: a cloud without candidates picks index 0)."""
    from pointdr2.ops import origin_skip_mask

    skip = origin_skip_mask(xyz) if skip_origin else None
    B, N, _ = xyz.shape
    x, y, z = _planes(xyz)
    mind = torch.full((B, N), float("inf"), dtype=x.dtype, device=xyz.device)
    out = torch.zeros((B, npoint), dtype=torch.int64, device=xyz.device)
    rows = torch.arange(B, device=xyz.device)
    last = torch.zeros(B, dtype=torch.int64, device=xyz.device)
    d = torch.empty_like(mind)
    t = torch.empty_like(mind)
    for i in range(1, npoint):
        torch.sub(x, x[rows, last][:, None], out=d)
        d.mul_(d)
        torch.sub(y, y[rows, last][:, None], out=t)
        t.mul_(t)
        d.add_(t)
        torch.sub(z, z[rows, last][:, None], out=t)
        t.mul_(t)
        d.add_(t)
        torch.minimum(mind, d, out=mind)
        # argmax returns the first maximal index: the lowest index wins ties.
        if skip is None:
            last = mind.argmax(dim=1)
        else:
            last = t.copy_(mind).masked_fill_(skip, -1.0).argmax(dim=1)
        out[:, i] = last
    return out


def ball_query(xyz: torch.Tensor, new_xyz: torch.Tensor, radius: float, nsample: int) -> torch.Tensor:
    """First ``nsample`` indices (increasing) with d^2 < r^2; empty slots repeat the first hit."""
    from pointdr2.ops import radius_squared

    B, N, _ = xyz.shape
    S = new_xyz.shape[1]
    p = _planes(xyz)
    q = _planes(new_xyz)
    r2 = radius_squared(radius, p[0].dtype)
    out = torch.empty((B, S, nsample), dtype=torch.int64, device=xyz.device)
    chunk = _query_chunk(B, N, _BALL_BYTES_PER_PAIR)
    for s0 in range(0, S, chunk):
        s1 = min(S, s0 + chunk)
        d2 = _sqdist_block(tuple(c[:, s0:s1] for c in q), p)
        hit = d2 < r2
        del d2
        # rank of each hit within its row (1-based); only the first nsample hits are kept, so the
        # nonzero() below returns at most B*s*nsample entries whatever the radius.
        rank = hit.to(torch.int32).cumsum_(dim=2)
        hit &= rank <= nsample
        b, s, n = hit.nonzero(as_tuple=True)
        slot = rank[b, s, n].to(torch.int64) - 1
        block = torch.full((B, s1 - s0, nsample), -1, dtype=torch.int64, device=xyz.device)
        block[b, s, slot] = n
        first = block[:, :, :1]
        block = torch.where(block < 0, first, block)
        out[:, s0:s1] = block.clamp_(min=0)
    return out


def knn(query: torch.Tensor, support: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest support points per query: (sqdist [B,S,k] ascending, int64 idx); ties -> lower index."""
    sq, idx = _knn(query, support, k)
    return sq.to(query.dtype), idx


def _knn(query: torch.Tensor, support: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """knn with squared distances left in the compute dtype (float32, or float64 for float64)."""
    B, N, _ = support.shape
    S = query.shape[1]
    p = _planes(support)
    q = _planes(query)
    sq = torch.empty((B, S, k), dtype=p[0].dtype, device=query.device)
    idx = torch.empty((B, S, k), dtype=torch.int64, device=query.device)
    ar = torch.arange(N, device=query.device)
    chunk = _query_chunk(B, N, _KNN_BYTES_PER_PAIR + (4 if p[0].dtype == torch.float64 else 0))
    for s0 in range(0, S, chunk):
        s1 = min(S, s0 + chunk)
        d2 = _sqdist_block(tuple(c[:, s0:s1] for c in q), p)
        if d2.dtype == torch.float32:
            # Non-negative float32 values order like their int32 bit patterns, so (bits << 32 | index)
            # is a unique int64 key whose order is (distance, index): topk then breaks ties exactly.
            key = d2.view(torch.int32).to(torch.int64).bitwise_left_shift_(32).bitwise_or_(ar)
            del d2
            top = key.topk(k, dim=2, largest=False, sorted=True).values
            idx[:, s0:s1] = top & 0xFFFFFFFF
            sq[:, s0:s1] = (top >> 32).to(torch.int32).view(torch.float32)
        else:
            # float64 (tests, references): a stable sort gives the same (distance, index) order.
            val, order = d2.sort(dim=2, stable=True)
            idx[:, s0:s1] = order[:, :, :k]
            sq[:, s0:s1] = val[:, :, :k]
    return sq, idx


def three_nn(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Three nearest known points: (Euclidean dist [B,n,3] ascending, int64 idx [B,n,3])."""
    sq, idx = _knn(unknown, known, 3)
    return sq.sqrt_().to(unknown.dtype), idx
