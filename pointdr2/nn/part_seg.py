"""Per-point layers of the part-segmentation heads (Point-MAE / Point-BERT, PointNeXt).

``category_one_hot`` turns the shape categories the models are called with into the one-hot input of
their category embeddings.

``PointNetFeaturePropagation`` is PointNet++'s feature propagation as the PyTorch port those heads
import computes it: inverse *squared*-distance weights ``1 / (d^2 + 1e-8)`` over the 3 nearest coarse
points (PointNeXt's :class:`~pointdr2.nn.pointnext_layers.FeaturePropagation` weighs by ``1 / (d + 1e-8)``),
the fine skip features first, then ``Conv1d BN ReLU`` per width. Module names (``mlp_convs.{i}``,
``mlp_bns.{i}``) mirror the official checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pointdr2 import ops

__all__ = ["PointNetFeaturePropagation", "category_one_hot"]


def category_one_hot(category: torch.Tensor, batch: int, num_categories: int, like: torch.Tensor) -> torch.Tensor:
    """int64 labels ``[B]`` (or ``[B, 1]``), or a float one-hot / soft ``[B, num_categories]`` used as given,
    -> ``[B, num_categories, 1]`` in ``like``'s dtype and device. Raises ValueError for another shape or a
    label outside ``0..num_categories-1``."""
    c = num_categories
    if not isinstance(category, torch.Tensor):
        raise ValueError(f"category must be a torch.Tensor [B] of labels, got {type(category).__name__}")
    if category.is_floating_point() and category.shape == (batch, c):
        return category.to(like).unsqueeze(-1)
    if category.is_floating_point() or category.reshape(-1).shape[0] != batch:
        raise ValueError(f"category must be int64 labels [B={batch}] or a float one-hot [B, {c}], "
                         f"got {category.dtype} {list(category.shape)}")
    category = category.reshape(-1).long()
    if bool(((category < 0) | (category >= c)).any()):
        raise ValueError(f"category labels must lie in 0..{c - 1} (model.num_categories={c}), "
                         f"got {category.tolist()}")
    return F.one_hot(category, c).to(like).unsqueeze(-1)


class PointNetFeaturePropagation(nn.Module):
    """``forward(xyz1 [B, N, 3], xyz2 [B, S, 3], points1 [B, C1, N] or None, points2 [B, C2, S]) -> [B, mlp[-1], N]``.

    ``in_channel`` = C1 + C2. With S = 1 the single coarse feature is copied to every point; S = 2 has
    no 3 nearest neighbours and is refused (the official layer fails on it too).
    """

    def __init__(self, in_channel: int, mlp: Sequence[int]) -> None:
        super().__init__()
        widths = [int(in_channel), *(int(w) for w in mlp)]
        if len(widths) < 2 or any(w < 1 for w in widths):
            raise ValueError(f"PointNetFeaturePropagation needs in_channel >= 1 and at least one width, got "
                             f"{in_channel}, {list(mlp)}")
        self.mlp_convs = nn.ModuleList(nn.Conv1d(widths[i], widths[i + 1], 1) for i in range(len(widths) - 1))
        self.mlp_bns = nn.ModuleList(nn.BatchNorm1d(w) for w in widths[1:])

    def interpolate(self, xyz1: torch.Tensor, xyz2: torch.Tensor, points2: torch.Tensor) -> torch.Tensor:
        """Coarse features ``points2 [B, C, S]`` at the fine points ``xyz1 [B, N, 3]`` -> ``[B, C, N]``."""
        s = xyz2.shape[1]
        if s == 1:
            return points2.expand(-1, -1, xyz1.shape[1])
        if s < 3:
            raise ValueError(f"feature propagation needs 1 or at least 3 coarse points, got {s}")
        dist, idx = ops.three_nn(xyz1.contiguous(), xyz2.contiguous())
        recip = 1.0 / (dist.square() + 1e-8)
        weight = recip / recip.sum(dim=2, keepdim=True)
        return ops.three_interpolate(points2.contiguous(), idx, weight.to(points2.dtype))

    def forward(self, xyz1: torch.Tensor, xyz2: torch.Tensor, points1: torch.Tensor | None,
                points2: torch.Tensor) -> torch.Tensor:
        f = self.interpolate(xyz1, xyz2, points2)
        if points1 is not None:
            f = torch.cat([points1, f], dim=1)
        for conv, bn in zip(self.mlp_convs, self.mlp_bns):
            f = F.relu(bn(conv(f)))
        return f
