"""PointNeXt layers: set abstraction, local aggregation, InvResMLP, feature propagation, heads.

The computation follows openpoints' PointNeXt (``models/backbone/pointnext.py``) so that official
checkpoints load by module path: every conv block is an ``nn.Sequential(conv, [norm], [act])``
with the same child indices, and modules carry the same attribute names (``convs``, ``pwconv``,
``skipconv``, ``head``). Shapes: positions ``p`` are ``[B, N, 3]`` float, features ``f`` are
channel-first ``[B, C, N]`` of the same dtype, neighbour indices are int64 ``[B, S, K]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import nn

from pointdr2 import ops
from pointdr2.nn.chunked_grouping import group_offsets, grouped_max

__all__ = [
    "conv_block",
    "linear_block",
    "group_offsets",
    "LocalAggregation",
    "SetAbstraction",
    "InvResMLP",
    "FeaturePropagation",
    "interpolate_features",
    "SegHead",
    "ClsHead",
]


def conv_block(in_channels: int, out_channels: int, *, dim: int = 1, norm: bool = True,
               act: bool = True) -> nn.Sequential:
    """``Sequential(Conv{dim}d 1x1, [BatchNorm], [ReLU])``; the conv has a bias only without norm.

    ``dim=1`` acts on ``[B, C, N]``, ``dim=2`` on grouped ``[B, C, S, K]`` tensors. The child
    indices (0 conv, 1 norm, 2 act) are those of openpoints' ``create_convblock{1,2}d``.
    """
    if dim == 1:
        layers: list[nn.Module] = [nn.Conv1d(in_channels, out_channels, 1, bias=not norm)]
        if norm:
            layers.append(nn.BatchNorm1d(out_channels))
    elif dim == 2:
        layers = [nn.Conv2d(in_channels, out_channels, 1, bias=not norm)]
        if norm:
            layers.append(nn.BatchNorm2d(out_channels))
    else:
        raise ValueError(f"conv_block dim must be 1 or 2, got {dim!r}")
    if act:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def linear_block(in_features: int, out_features: int, *, norm: bool = True, act: bool = True) -> nn.Sequential:
    """``Sequential(Linear, [BatchNorm1d], [ReLU])`` on ``[B, C]``; bias only without norm."""
    layers: list[nn.Module] = [nn.Linear(in_features, out_features, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm1d(out_features))
    if act:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _max_over_neighbours(x: torch.Tensor) -> torch.Tensor:
    # max(dim) routes the gradient to one arg-max per channel like openpoints (amax would split it
    # among ties, and ball query repeats the first hit, so ties are common).
    return x.max(dim=-1).values


class LocalAggregation(nn.Module):
    """Aggregate each point's ball neighbourhood on the same point set (PointNeXt's LA).

    ``f_i' = max_k convs(cat[dp_ik / r, f_k])`` with ``convs`` = 1x1 Conv2d + BN (+ ReLU) layers.

    Args:
        channels: ``[C_in, ..., C_out]``; the first conv sees ``C_in + 3`` channels.
        radius, nsample: ball query parameters.
        normalize_dp: divide offsets by the radius (openpoints ``group_args.normalize_dp``).
        last_act: ReLU after the last conv.
    """

    def __init__(self, channels: Sequence[int], radius: float, nsample: int, *, normalize_dp: bool = True,
                 last_act: bool = True) -> None:
        super().__init__()
        channels = list(channels)
        if len(channels) < 2:
            raise ValueError(f"LocalAggregation channels needs at least [C_in, C_out], got {channels!r}")
        widths = [channels[0] + 3, *channels[1:]]
        self.convs = nn.Sequential(*[
            conv_block(widths[i], widths[i + 1], dim=2, act=last_act or i < len(widths) - 2)
            for i in range(len(widths) - 1)
        ])
        self.radius = float(radius)
        self.nsample = int(nsample)
        self.normalize_dp = bool(normalize_dp)

    def neighbours(self, p: torch.Tensor) -> torch.Tensor:
        """Ball-query indices ``int64[B, N, nsample]`` of ``p[B,N,3]`` on itself."""
        return ops.ball_query(p, p, self.radius, self.nsample)

    def forward(self, p: torch.Tensor, f: torch.Tensor, idx: Optional[torch.Tensor] = None,
                chunk_points: Optional[int] = None) -> torch.Tensor:
        """``p[B,N,3]``, ``f[B,C,N]``, optional precomputed ``idx[B,N,K]`` -> ``[B,C_out,N]``.

        ``chunk_points``: compute (and backpropagate) the grouped tensors that many centre points at
        a time, with the same values and gradients (:func:`pointdr2.nn.chunked_grouping.grouped_max`).
        """
        if idx is None:
            idx = self.neighbours(p)
        radius = self.radius if self.normalize_dp else None
        if chunk_points is not None:
            return grouped_max(self.convs, p, p, f, idx, radius, chunk_points)
        dp = group_offsets(p, p, idx, radius)
        fj = ops.group_points(f, idx)
        return _max_over_neighbours(self.convs(torch.cat([dp, fj], dim=1)))


class SetAbstraction(nn.Module):
    """PointNeXt's set abstraction: downsample by ``stride`` (FPS), group, MLP, max.

    Three forms, as in openpoints:

    - ``is_head`` (first stage, stride 1): a per-point Conv1d (with bias, no norm/act) - the stem.
    - ``stride == 1`` otherwise: group *all* points (absolute xyz + features) into one vector.
    - ``stride > 1``: FPS to ``N // stride`` centres, ball query, ``cat[dp/r, f_j]``, 1x1 Conv2d +
      BN + ReLU layers (hidden width ``C_out // 2``), max over neighbours; with ``use_res`` the last
      conv drops its ReLU and ``ReLU(out + skipconv(f_centre))`` is returned.

    ``forward(p[B,N,3], f[B,C_in,N]) -> (p'[B,S,3], f'[B,C_out,S])`` (``S = 1`` for group-all,
    where ``p`` is returned unchanged). ``fps_skip_origin``: FPS with pointnet2_ops' origin skip
    (openpoints' own FPS has none, so official PointNeXt checkpoints want ``False``).
    """

    def __init__(self, in_channels: int, out_channels: int, *, layers: int = 1, stride: int = 1,
                 radius: float = 0.1, nsample: int = 32, normalize_dp: bool = True, use_res: bool = False,
                 is_head: bool = False, fps_skip_origin: bool = False) -> None:
        super().__init__()
        if stride < 1:
            raise ValueError(f"SetAbstraction stride must be >= 1, got {stride!r}")
        if layers < 1:
            raise ValueError(f"SetAbstraction layers must be >= 1, got {layers!r}")
        self.stride = int(stride)
        self.is_head = bool(is_head)
        self.all_aggr = not self.is_head and self.stride == 1
        self.use_res = bool(use_res) and not self.all_aggr and not self.is_head
        self.radius = float(radius)
        self.nsample = int(nsample)
        self.normalize_dp = bool(normalize_dp)
        self.fps_skip_origin = bool(fps_skip_origin)

        if self.is_head:
            self.convs = nn.Sequential(conv_block(in_channels, out_channels, dim=1, norm=False, act=False))
            return
        mid = out_channels // 2 if self.stride > 1 else out_channels
        widths = [in_channels + 3] + [mid] * (layers - 1) + [out_channels]
        self.convs = nn.Sequential(*[
            conv_block(widths[i], widths[i + 1], dim=2, act=not (self.use_res and i == len(widths) - 2))
            for i in range(len(widths) - 1)
        ])
        if self.use_res:
            self.skipconv = (conv_block(in_channels, out_channels, dim=1, norm=False, act=False)
                             if in_channels != out_channels else nn.Identity())
            self.act = nn.ReLU()

    def sample(self, p: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """The index part (no gradients): ``(new_p[B,S,3], centre_idx int64[B,S], idx int64[B,S,K])``
        for a downsampling layer; ``(p, None, None)`` for the stem and group-all forms."""
        if self.is_head or self.all_aggr:
            return p, None, None
        n_centres = p.shape[1] // self.stride
        if n_centres < 1:
            raise ValueError(f"SetAbstraction: {p.shape[1]} points cannot be downsampled by stride {self.stride}")
        with torch.no_grad():
            centre_idx = ops.furthest_point_sample(p, n_centres, skip_origin=self.fps_skip_origin)
            new_p = torch.gather(p, 1, centre_idx.unsqueeze(-1).expand(-1, -1, 3))
            idx = ops.ball_query(p, new_p, self.radius, self.nsample)
        return new_p, centre_idx, idx

    def aggregate(self, p: torch.Tensor, f: torch.Tensor, new_p: torch.Tensor, centre_idx: Optional[torch.Tensor],
                  idx: Optional[torch.Tensor], chunk_points: Optional[int] = None) -> torch.Tensor:
        """The differentiable part, given ``sample(p)``: ``f[B,C_in,N] -> [B,C_out,S]``.

        ``chunk_points`` (downsampling form only; the stem and group-all forms ignore it): the grouped
        tensors a chunk of that many centres at a time, same values and gradients
        (:func:`pointdr2.nn.chunked_grouping.grouped_max`)."""
        if self.is_head:
            return self.convs(f)
        if self.all_aggr:
            # Group-all: absolute coordinates of every point, one group per cloud.
            grouped = torch.cat([p.transpose(1, 2).unsqueeze(2), f.unsqueeze(2)], dim=1)
            return _max_over_neighbours(self.convs(grouped))
        radius = self.radius if self.normalize_dp else None
        if chunk_points is not None:
            out = grouped_max(self.convs, new_p, p, f, idx, radius, chunk_points)
        else:
            dp = group_offsets(new_p, p, idx, radius)
            out = _max_over_neighbours(self.convs(torch.cat([dp, ops.group_points(f, idx)], dim=1)))
        if self.use_res:
            identity = self.skipconv(torch.gather(f, 2, centre_idx.unsqueeze(1).expand(-1, f.shape[1], -1)))
            out = self.act(out + identity)
        return out

    def forward(self, p: torch.Tensor, f: torch.Tensor,
                chunk_points: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        new_p, centre_idx, idx = self.sample(p)
        return new_p, self.aggregate(p, f, new_p, centre_idx, idx, chunk_points)


class InvResMLP(nn.Module):
    """PointNeXt's inverted residual MLP block.

    ``F(f) = pwconv(LA(f))`` with ``LA`` = LocalAggregation ``C -> C`` (BN, ReLU) and ``pwconv`` =
    Conv1d ``C -> expansion*C`` BN ReLU, Conv1d ``-> C`` BN; the block returns
    ``ReLU(f + F(f))`` (activation after the addition). ``residual_branch`` is ``F`` and
    ``scaled(f, alpha, ...) = ReLU(alpha*f + F(f))`` is the block with its identity path scaled
    (Dr²Net's ``G(x; alpha)``; ``alpha = 1`` is the pretrained block).
    """

    def __init__(self, channels: int, *, radius: float = 0.2, nsample: int = 32, expansion: int = 4,
                 normalize_dp: bool = True, use_res: bool = True) -> None:
        super().__init__()
        self.use_res = bool(use_res)
        self.convs = LocalAggregation([channels, channels], radius, nsample, normalize_dp=normalize_dp)
        mid = int(channels * expansion)
        self.pwconv = nn.Sequential(
            conv_block(channels, mid, dim=1, act=True),
            conv_block(mid, channels, dim=1, act=False),
        )
        self.act = nn.ReLU()

    @property
    def radius(self) -> float:
        return self.convs.radius

    @property
    def nsample(self) -> int:
        return self.convs.nsample

    def residual_branch(self, f: torch.Tensor, p: torch.Tensor, idx: Optional[torch.Tensor] = None,
                        chunk_points: Optional[int] = None) -> torch.Tensor:
        """``F(f)``: ``f[B,C,N]``, ``p[B,N,3]``, optional ``idx[B,N,K]`` -> ``[B,C,N]``; ``chunk_points``
        as in :meth:`LocalAggregation.forward`."""
        return self.pwconv(self.convs(p, f, idx, chunk_points))

    def scaled(self, f: torch.Tensor, alpha: float, p: torch.Tensor,
               idx: Optional[torch.Tensor] = None, chunk_points: Optional[int] = None) -> torch.Tensor:
        """``G(f; alpha) = ReLU(alpha*f + F(f))`` (``ReLU(F(f))`` when ``use_res`` is off)."""
        out = self.residual_branch(f, p, idx, chunk_points)
        if self.use_res:
            out = out + f if alpha == 1.0 else out + alpha * f
        return self.act(out)

    def forward(self, p: torch.Tensor, f: torch.Tensor, idx: Optional[torch.Tensor] = None,
                chunk_points: Optional[int] = None) -> torch.Tensor:
        """The pretrained block: ``p[B,N,3]``, ``f[B,C,N]`` -> ``[B,C,N]``."""
        return self.scaled(f, 1.0, p, idx, chunk_points)


def interpolate_features(unknown: torch.Tensor, known: torch.Tensor, known_feats: torch.Tensor) -> torch.Tensor:
    """Inverse-distance interpolation from the 3 nearest known points (weights ``1/(d + 1e-8)``).

    ``unknown[B,n,3]``, ``known[B,m,3]``, ``known_feats[B,C,m]`` -> ``[B,C,n]``. With fewer than 3
    known points the available ones are used (pointnet2's kernel leaves the missing slots at a
    distance of 1e20, i.e. a weight of ~1e-20).
    """
    m = known.shape[1]
    if m >= 3:
        dist, idx = ops.three_nn(unknown.contiguous(), known.contiguous())
    else:
        d2 = (unknown.unsqueeze(2) - known.unsqueeze(1)).square().sum(-1)
        sq, idx = torch.sort(d2, dim=-1)
        dist = sq.clamp_min(0).sqrt()
    recip = 1.0 / (dist + 1e-8)
    weight = recip / recip.sum(dim=2, keepdim=True)
    if m >= 3:
        return ops.three_interpolate(known_feats, idx, weight)
    gathered = torch.gather(known_feats.unsqueeze(2).expand(-1, -1, idx.shape[1], -1), 3,
                            idx.unsqueeze(1).expand(-1, known_feats.shape[1], -1, -1))
    return (gathered * weight.unsqueeze(1)).sum(-1)


class FeaturePropagation(nn.Module):
    """PointNet++ feature propagation: interpolate coarse features to the fine points, concat the
    fine skip features (skip first), then ``Conv1d BN ReLU`` layers ``mlp[0] -> mlp[1] -> ...``.

    ``forward(p1[B,n,3], f1[B,C1,n] or None, p2[B,m,3], f2[B,C2,m]) -> [B, mlp[-1], n]``.
    """

    def __init__(self, mlp: Sequence[int]) -> None:
        super().__init__()
        mlp = list(mlp)
        if len(mlp) < 2:
            raise ValueError(f"FeaturePropagation mlp needs at least [C_in, C_out], got {mlp!r}")
        self.convs = nn.Sequential(*[conv_block(mlp[i], mlp[i + 1], dim=1) for i in range(len(mlp) - 1)])

    def forward(self, p1: torch.Tensor, f1: Optional[torch.Tensor], p2: torch.Tensor,
                f2: torch.Tensor) -> torch.Tensor:
        up = interpolate_features(p1, p2, f2)
        return self.convs(up if f1 is None else torch.cat([f1, up], dim=1))


class SegHead(nn.Module):
    """Per-point classifier ``Conv1d BN ReLU Dropout Conv1d``: ``[B,C,N] -> logits [B,K,N]``.

    ``pooled``: global features appended to every point first (openpoints' ``SegHead(globals=
    "max,avg")``), ``"max"`` and/or ``"avg"`` over the points, in the order given: the convs then
    see ``C * (1 + len(pooled))`` channels, which is also the default hidden width.
    """

    POOLINGS = ("max", "avg")

    def __init__(self, in_channels: int, num_classes: int, *, mlps: Optional[Sequence[int]] = None,
                 dropout: float = 0.5, pooled: Sequence[str] = ()) -> None:
        super().__init__()
        self.pooled = tuple(pooled)
        bad = [g for g in self.pooled if g not in self.POOLINGS]
        if bad:
            raise ValueError(f"SegHead pooled features must be among {self.POOLINGS}, got {bad[0]!r}")
        in_channels *= 1 + len(self.pooled)
        widths = [in_channels, *(mlps if mlps is not None else [in_channels]), num_classes]
        layers: list[nn.Module] = []
        for i in range(len(widths) - 2):
            layers.append(conv_block(widths[i], widths[i + 1], dim=1))
            if dropout:
                layers.append(nn.Dropout(dropout))
        layers.append(conv_block(widths[-2], widths[-1], dim=1, norm=False, act=False))
        self.head = nn.Sequential(*layers)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if self.pooled:
            pooled = [f.max(dim=-1, keepdim=True).values if g == "max" else f.mean(dim=-1, keepdim=True)
                      for g in self.pooled]
            f = torch.cat([f, torch.cat(pooled, dim=1).expand(-1, -1, f.shape[-1])], dim=1)
        return self.head(f)


class ClsHead(nn.Module):
    """Global classifier ``(Linear BN ReLU Dropout)* Linear``: ``[B,C] -> logits [B,K]``."""

    def __init__(self, in_channels: int, num_classes: int, *, mlps: Sequence[int] = (512, 256),
                 dropout: float = 0.5) -> None:
        super().__init__()
        widths = [in_channels, *mlps, num_classes]
        layers: list[nn.Module] = []
        for i in range(len(widths) - 2):
            layers.append(linear_block(widths[i], widths[i + 1]))
            if dropout:
                layers.append(nn.Dropout(dropout))
        layers.append(linear_block(widths[-2], widths[-1], norm=False, act=False))
        self.head = nn.Sequential(*layers)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f)
