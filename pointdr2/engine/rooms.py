"""Whole-room inference for segmentation networks: per-point logits of a room from its voxel passes, in
overlapping spatial crops when a pass is too large for one forward (S3DIS test, ``pointdr2 eval`` and
``visualize`` of a room)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch
from torch import nn

from pointdr2.progress import bar as progress_bar

__all__ = ["predict_room"]


@torch.no_grad()
def predict_room(model: nn.Module, passes: Any, num_points: Optional[int] = None, *,
                 max_points: Optional[int] = None, device: Optional[torch.device | str] = None,
                 chunk_transform: Optional[Callable[[torch.Tensor, torch.Tensor],
                                                    tuple[torch.Tensor, torch.Tensor]]] = None,
                 progress: bool = False, on_points: Optional[Callable[[int], None]] = None,
                 batch: int = 1) -> torch.Tensor:
    """Per-point logits of a whole room from its voxel passes, without running out of memory.

    Args:
        model: a segmentation model ``model(pos[1,n,3], feats[1,C,n]) -> [1,K,n]`` (put it in eval
            mode first; it runs under ``no_grad``, one pass or chunk at a time).
        passes: an iterable of dicts with ``pos`` float ``[n,3]``, ``feats`` float ``[C,n]`` and
            ``index`` int64 ``[n]`` (the room point each pass point stands for), or a room object
            with ``passes()`` and ``num_points`` (``pointdr2.data.s3dis.S3DISRoom``).
        num_points: points in the room (taken from the room object when omitted).
        max_points: run passes larger than this in overlapping spatial chunks (k-d cells of at most
            3/4 of ``max_points`` points, each with the points nearest it as context, see
            ``_chunks``), so memory stays that of a ``max_points``-point forward; ``None`` runs
            every pass whole.
        device: where the model runs (default: the model's device).
        chunk_transform: optional ``(pos, feats) -> (pos, feats)`` applied to each chunk (e.g. to
            recompute a height feature relative to the chunk as training crops have it).
        progress: a bar (or log lines) over the passes.
        on_points: called after every forward with the number of pass points it covered for the
            first time; over a room the calls sum to the points of all passes (a progress counter
            for callers that show points, as whole-room evaluation does).
        batch: chunks of a pass forwarded together (they all have ``max_points`` points). The
            model must treat samples independently (eval mode: BatchNorm running statistics), so
            the logits are those of one chunk at a time up to float rounding; 1 runs them singly.

    Returns:
        float32 ``[num_points, K]`` on the CPU: the mean of the logits of every forward that
        covered the point (as openpoints' voting-free S3DIS test); rows of points never covered
        are NaN.
    """
    if num_points is None:
        if not hasattr(passes, "passes") or not hasattr(passes, "num_points"):
            raise ValueError("predict_room needs num_points unless passes is a room with passes() and num_points")
        num_points, passes = int(passes.num_points), passes.passes()
    elif hasattr(passes, "passes") and callable(passes.passes):
        passes = passes.passes()
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    if max_points is not None and (not isinstance(max_points, int) or max_points < 1):
        raise ValueError(f"max_points must be a positive integer or None, got {max_points!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    total: Optional[torch.Tensor] = None
    count = torch.zeros(num_points, dtype=torch.float32)
    iterator: Iterable = passes
    if progress:
        iterator = progress_bar(passes, desc="room passes", unit="pass", leave=False)
    for k, item in enumerate(iterator):
        for key in ("pos", "feats", "index"):
            if key not in item:
                raise ValueError(f"pass {k} has no {key!r} entry (expected pos [n,3], feats [C,n], index [n])")
        pos, feats, index = item["pos"], item["feats"], item["index"].long()
        if pos.dim() != 2 or pos.shape[1] != 3 or feats.dim() != 2 or feats.shape[1] != pos.shape[0] \
                or index.shape != (pos.shape[0],):
            raise ValueError(f"pass {k}: expected pos [n,3], feats [C,n], index [n], got {tuple(pos.shape)}, "
                             f"{tuple(feats.shape)}, {tuple(index.shape)}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_points):
            raise ValueError(f"pass {k}: index out of range for a room of {num_points} points")
        covered = torch.zeros(pos.shape[0], dtype=torch.bool) if on_points is not None else None
        chunks = list(_chunks(pos, max_points))
        for start in range(0, len(chunks), batch):
            group = chunks[start:start + batch]
            cps, cfs = [], []
            for chunk in group:
                cp = pos if chunk is None else pos[chunk]
                cf = feats if chunk is None else feats[:, chunk]
                if chunk is not None and chunk_transform is not None:
                    cp, cf = chunk_transform(cp, cf)
                cps.append(cp)
                cfs.append(cf)
            out = model(torch.stack(cps).to(device), torch.stack(cfs).to(device))
            for chunk, logits in zip(group, out):
                logits = logits.transpose(0, 1).float().cpu()
                ci = index if chunk is None else index[chunk]
                if total is None:
                    total = torch.zeros(num_points, logits.shape[1], dtype=torch.float32)
                total.index_add_(0, ci, logits)
                count.index_add_(0, ci, torch.ones(ci.shape[0]))
                if covered is not None:  # points of this pass covered for the first time (context excluded)
                    seen = covered if chunk is None else covered[chunk]
                    new = int((~seen).sum())
                    if chunk is None:
                        covered.fill_(True)
                    else:
                        covered[chunk] = True
                    on_points(new)
    if total is None:
        raise ValueError("predict_room got no passes")
    return total / count.unsqueeze(1)  # 0/0 -> NaN marks uncovered points


def _chunks(pos: torch.Tensor, max_points: Optional[int], core: float = 0.75) -> Iterable[Optional[torch.Tensor]]:
    """Index sets covering ``pos[n,3]``: ``None`` (everything) or crops of ``max_points`` points.

    The room is split k-d-tree fashion (median cuts across the longest extent) into cells of at most
    ``core * max_points`` points; each crop is its cell plus the points nearest the cell's centre up
    to ``max_points``, so every point is covered and every cell has context around it. About
    ``n / (core * max_points)`` crops; growing crops from seeds instead (a kNN ball at the edge of the
    covered region) needed 2.6x ``n / max_points`` on room-shaped clouds, each mostly old points.
    """
    n = pos.shape[0]
    if max_points is None or n <= max_points:
        yield None
        return
    pos64 = pos.double()
    limit = max(1, int(core * max_points))
    cells = [torch.arange(n)]
    while cells:
        cell = cells.pop(0)
        if len(cell) > limit:
            p = pos64[cell]
            axis = int(torch.argmax(p.amax(dim=0) - p.amin(dim=0)))
            order = cell[torch.argsort(p[:, axis], stable=True)]
            half = len(order) // 2
            cells[:0] = [order[:half], order[half:]]  # depth first: neighbouring cells come out together
            continue
        d2 = (pos64 - pos64[cell].mean(dim=0)).square().sum(1)
        d2[cell] = -1.0  # the cell itself first
        chunk = torch.topk(d2, max_points, largest=False).indices
        yield torch.sort(chunk).values  # keep pass order (FPS starts at the first point)
