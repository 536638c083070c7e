"""Neighbourhood grouping modules as users know them from pointnet2_ops / openpoints.

Each module is called as ``module(xyz[B,N,3], new_xyz[B,S,3], features[B,C,N] | None)`` and returns
``[B, 3+C, S, K]``: the neighbours' coordinates (relative to their centre unless
``relative_xyz=False``, optionally normalised) concatenated with their features along the channel
axis. ``use_xyz=False`` drops the coordinates (features are then required). Gradients flow to
``xyz``/``new_xyz`` (through the coordinates) and to ``features``; the neighbour search itself is
an index computation without gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from pointdr2 import ops


def _check_inputs(xyz: torch.Tensor, new_xyz: torch.Tensor | None, features: torch.Tensor | None,
                  use_xyz: bool) -> None:
    if features is not None:
        if not isinstance(features, torch.Tensor) or features.dim() != 3:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"features must have shape [B, C, N]; got {shape}")
        if features.shape[0] != xyz.shape[0] or features.shape[2] != xyz.shape[1]:
            raise ValueError(f"features must have shape [B, C, N] = [{xyz.shape[0]}, C, {xyz.shape[1]}] "
                             f"matching xyz; got {tuple(features.shape)}")
    elif not use_xyz:
        raise ValueError("features is required when use_xyz=False (nothing else to group)")


def _assemble(grouped_xyz: torch.Tensor | None, grouped_features: torch.Tensor | None) -> torch.Tensor:
    if grouped_xyz is None:
        return grouped_features
    if grouped_features is None:
        return grouped_xyz
    return torch.cat([grouped_xyz, grouped_features.to(grouped_xyz.dtype)], dim=1)


class _NeighbourGroup(nn.Module):
    def __init__(self, relative_xyz: bool, normalize_dp: bool, use_xyz: bool) -> None:
        super().__init__()
        self.relative_xyz = bool(relative_xyz)
        self.normalize_dp = bool(normalize_dp)
        self.use_xyz = bool(use_xyz)

    def _neighbours(self, xyz: torch.Tensor, new_xyz: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _normalise(self, dp: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, xyz: torch.Tensor, new_xyz: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """xyz [B,N,3], new_xyz [B,S,3], features [B,C,N] or None -> [B, 3+C (or C, or 3), S, K]."""
        _check_inputs(xyz, new_xyz, features, self.use_xyz)
        idx = self._neighbours(xyz, new_xyz)
        grouped_xyz = None
        if self.use_xyz:
            grouped_xyz = ops.group_points(xyz.transpose(1, 2), idx)  # [B, 3, S, K]
            if self.relative_xyz:
                grouped_xyz = grouped_xyz - new_xyz.transpose(1, 2).unsqueeze(-1)
                if self.normalize_dp:
                    grouped_xyz = self._normalise(grouped_xyz)
        grouped_features = ops.group_points(features, idx) if features is not None else None
        return _assemble(grouped_xyz, grouped_features)


class QueryAndGroup(_NeighbourGroup):
    """Ball-query grouping: the first ``nsample`` points with ``d < radius`` around each centre.

    Args:
        radius: ball radius (> 0).
        nsample: neighbours per centre (K).
        relative_xyz: express coordinates relative to the centre (pointnet2_ops always does).
        normalize_dp: divide relative coordinates by ``radius`` (PointNeXt's ``normalize_dp``).
        use_xyz: include the 3 coordinate channels in the output.
    """

    def __init__(self, radius: float, nsample: int, relative_xyz: bool = True, normalize_dp: bool = False,
                 use_xyz: bool = True) -> None:
        super().__init__(relative_xyz, normalize_dp, use_xyz)
        if not float(radius) > 0:
            raise ValueError(f"radius must be > 0; got {radius!r}")
        if int(nsample) < 1:
            raise ValueError(f"nsample must be >= 1; got {nsample!r}")
        self.radius = float(radius)
        self.nsample = int(nsample)

    def _neighbours(self, xyz: torch.Tensor, new_xyz: torch.Tensor) -> torch.Tensor:
        return ops.ball_query(xyz, new_xyz, self.radius, self.nsample)

    def _normalise(self, dp: torch.Tensor) -> torch.Tensor:
        return dp / self.radius

    def extra_repr(self) -> str:
        return (f"radius={self.radius}, nsample={self.nsample}, relative_xyz={self.relative_xyz}, "
                f"normalize_dp={self.normalize_dp}, use_xyz={self.use_xyz}")


class KNNGroup(_NeighbourGroup):
    """k-nearest-neighbour grouping (neighbours in ascending distance, ties by index).

    Args:
        k: neighbours per centre (K), at most N.
        relative_xyz: express coordinates relative to the centre.
        normalize_dp: divide relative coordinates by each cloud's largest neighbour distance
            (kNN has no radius to divide by), so they lie in the unit ball.
        use_xyz: include the 3 coordinate channels in the output.
    """

    def __init__(self, k: int, relative_xyz: bool = True, normalize_dp: bool = False, use_xyz: bool = True) -> None:
        super().__init__(relative_xyz, normalize_dp, use_xyz)
        if int(k) < 1:
            raise ValueError(f"k must be >= 1; got {k!r}")
        self.k = int(k)

    def _neighbours(self, xyz: torch.Tensor, new_xyz: torch.Tensor) -> torch.Tensor:
        return ops.knn(new_xyz, xyz, self.k)[1]

    def _normalise(self, dp: torch.Tensor) -> torch.Tensor:
        scale = dp.detach().norm(dim=1).amax(dim=(1, 2)).clamp_min(torch.finfo(dp.dtype).tiny)
        return dp / scale.view(-1, 1, 1, 1)

    def extra_repr(self) -> str:
        return f"k={self.k}, relative_xyz={self.relative_xyz}, normalize_dp={self.normalize_dp}, use_xyz={self.use_xyz}"


class GroupAll(nn.Module):
    """One group holding the whole cloud: returns [B, 3+C, 1, N] (absolute coordinates, as pointnet2_ops).

    ``new_xyz`` is accepted for call compatibility and ignored.
    """

    def __init__(self, use_xyz: bool = True) -> None:
        super().__init__()
        self.use_xyz = bool(use_xyz)

    def forward(self, xyz: torch.Tensor, new_xyz: torch.Tensor | None = None,
                features: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(xyz, torch.Tensor) or xyz.dim() != 3 or xyz.shape[-1] != 3:
            shape = tuple(xyz.shape) if isinstance(xyz, torch.Tensor) else type(xyz).__name__
            raise ValueError(f"xyz must have shape [B, N, 3]; got {shape}")
        _check_inputs(xyz, new_xyz, features, self.use_xyz)
        grouped_xyz = xyz.transpose(1, 2).unsqueeze(2) if self.use_xyz else None
        grouped_features = features.unsqueeze(2) if features is not None else None
        return _assemble(grouped_xyz, grouped_features)

    def extra_repr(self) -> str:
        return f"use_xyz={self.use_xyz}"
