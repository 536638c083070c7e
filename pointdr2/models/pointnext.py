"""PointNeXt (Qian et al., NeurIPS 2022) for segmentation, classification and part segmentation, and its
Dr²Net surrogate.

Module paths mirror openpoints' ``BaseSeg``/``BaseCls``/``BasePartSeg`` so official checkpoints load as
they are:

    encoder.encoder.{stage}.{0: SetAbstraction, 1..: InvResMLP}   (PointNextEncoder)
    decoder.decoder.{stage}.0.convs.{k}                           (PointNextDecoder / PointNextPartDecoder)
    decoder.global_conv{1,2}.0.0 | decoder.convc.0.0              (PointNextPartDecoder's category embedding)
    head.head.*          (SegHead, segmentation)   prediction.head.*   (ClsHead, classification)

Forward signatures (see ../shared/API.md): ``PointNeXtSeg(pos[B,N,3], feats[B,C,N]) -> logits[B,K,N]``,
``PointNeXtCls(points[B,N,3(+C)]) -> logits[B,K]`` and ``PointNeXtPartSeg(points[B,N,3(+C)], category[B])
-> logits[B,K,N]`` (ShapeNetPart: K = 50 parts, 16 categories).

Differences from openpoints that do not change results: the InvResMLP blocks of a stage query the
same points with the same radius, so their ball-query indices are computed once per stage and
shared; a classification encoder whose last stage does not group all points is max-pooled.

``dr2net_surrogate`` turns every stage's InvResMLP blocks into one ``Dr2Stack`` with
``G_i(f; alpha) = ReLU(alpha*f + F_i(f))``; the stage's neighbour indices are the stack's extras.
The set-abstraction (downsampling) layers stay non-reversible and are checkpointed.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pointdr2 import ops
from pointdr2.data.classes import SHAPENETPART_PARTS
from pointdr2.hints import did_you_mean
from pointdr2.models.registry import register_model
from pointdr2.nn.chunked_grouping import chunk_points_for
from pointdr2.nn.part_seg import category_one_hot
from pointdr2.nn.pointnext_layers import (
    ClsHead,
    FeaturePropagation,
    InvResMLP,
    SegHead,
    SetAbstraction,
    conv_block,
)
from pointdr2.reversible import Dr2Stack, check_unit_form, frozen_running_stats

logger = logging.getLogger(__name__)

__all__ = [
    "PRESETS",
    "PointNeXtEncoder",
    "PointNeXtDecoder",
    "PointNeXtSeg",
    "PointNeXtCls",
    "PointNeXtPartDecoder",
    "PointNeXtPartSeg",
    "PointNeXtDr2Net",
    "build_pointnext",
    "convert_official_state_dict",
    "resolve_config",
    "stage_radii",
]

# Keys of the ``model`` config section understood by the PointNeXt builders, with defaults.
DEFAULT_CFG: dict[str, Any] = {
    "name": "pointnext",
    "task": "seg",              # seg | cls | partseg
    "num_classes": None,        # default 13 (seg) / 15 (cls) / 50 (partseg)
    "in_channels": 4,
    "width": 32,
    "blocks": [1, 2, 3, 2, 2],  # per stage, including its SetAbstraction
    "strides": [1, 4, 4, 4, 4],
    "radius": 0.1,              # scalar (initial, scaled per stage) or a list per stage
    "radius_scaling": 2.0,
    "nsample": 32,
    "nsample_scaling": 1,
    "expansion": 4,
    "sa_layers": 1,
    "sa_use_res": False,
    "normalize_dp": True,
    "use_res": True,
    "decoder_layers": 2,
    "head_mlps": None,          # hidden widths of the head (seg: its input width; cls: [512, 256])
    "head_globals": None,       # seg/partseg: pooled features appended per point ([max, avg]: openpoints' globals)
    "dropout": 0.5,
    "cls_map": "curvenet",      # partseg: how the category enters the decoder (curvenet | pointnet2 | pointnext
                                # | pointnext1; the last two read the category's part indicator, ShapeNetPart's)
    "num_categories": 16,       # partseg: shape categories (one-hot)
    "height_dim": None,         # cls: append points[..., height_dim] - min as a feature if missing
    "fps_skip_origin": False,   # FPS with pointnet2_ops' origin skip; openpoints' FPS has none
    # Centre points per chunk when a training surrogate (finetune.mode dr2net / checkpoint) computes and
    # backpropagates the grouped [B, C, S, K] tensors of its set abstractions and local aggregations
    # chunk by chunk (exact: the same values, gradients and BatchNorm statistics). null: as many as fit a
    # quarter of the ops memory budget (pointdr2.ops.get_memory_budget, env POINTDR2_OPS_CHUNK_MB, default
    # 256 MB, so 64 MB per chunk).
    "chunk_points": None,
    "pretrained": None,         # consumed by build_model / load_pretrained
    "pretrained_sha256": None,  # optional checksum of model.pretrained (a path or URL), read by the engine
}

# Official configurations (openpoints cfgs/s3dis/pointnext-*.yaml, cfgs/scanobjectnn/pointnext-s.yaml).
PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("pointnext-s", "seg"): {"blocks": [1, 1, 1, 1, 1], "strides": [1, 4, 4, 4, 4], "width": 32,
                             "sa_layers": 2, "sa_use_res": True},
    ("pointnext-b", "seg"): {"blocks": [1, 2, 3, 2, 2], "strides": [1, 4, 4, 4, 4], "width": 32},
    ("pointnext-l", "seg"): {"blocks": [1, 3, 5, 3, 3], "strides": [1, 4, 4, 4, 4], "width": 32},
    ("pointnext-xl", "seg"): {"blocks": [1, 4, 7, 4, 4], "strides": [1, 4, 4, 4, 4], "width": 64},
    ("pointnext-s", "cls"): {"blocks": [1, 1, 1, 1, 1, 1], "strides": [1, 2, 2, 2, 2, 1], "width": 32,
                             "sa_layers": 2, "sa_use_res": True, "radius": 0.15, "radius_scaling": 1.5,
                             "head_mlps": [512, 256], "height_dim": 1},
    # cfgs/shapenetpart/pointnext-s.yaml (pointnext-s_c64 / _c160: width 64 / 160); input xyz, normals, height
    ("pointnext-s", "partseg"): {"blocks": [1, 1, 1, 1, 1], "strides": [1, 2, 2, 2, 2], "width": 32,
                                 "in_channels": 7, "sa_layers": 3, "sa_use_res": True, "radius": 0.1,
                                 "radius_scaling": 2.5, "nsample": 32, "head_globals": ["max", "avg"],
                                 "cls_map": "curvenet", "height_dim": 1},
}
for (_name, _task), _preset in list(PRESETS.items()):
    if _task == "seg" and (_name, "cls") not in PRESETS:
        PRESETS[(_name, "cls")] = {**_preset, "head_mlps": [512, 256]}


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _per_block(value: Any, scaling: float, blocks: Sequence[int], strides: Sequence[int], key: str) -> list[list]:
    """Expand ``radius``/``nsample`` into one value per block (openpoints' convention).

    A scalar is the first downsampling stage's SetAbstraction value; that stage's blocks use
    ``value*scaling`` and every downsampling stage multiplies it once more (stride-1 stages keep
    it for all their blocks). A list gives one value per stage (a nested list one per block; a
    short nested list is padded with its last value).
    """
    out: list[list] = []
    if _is_number(value):
        for n, stride in zip(blocks, strides):
            if stride == 1:
                out.append([value] * n)
            else:
                out.append([value] + [value * scaling] * (n - 1))
                value = value * scaling
        return out
    if not isinstance(value, (list, tuple)) or len(value) != len(blocks):
        raise ValueError(f"model.{key} must be a number or a list with one entry per stage ({len(blocks)}), "
                         f"got {value!r}")
    for i, (v, n) in enumerate(zip(value, blocks)):
        vs = list(v) if isinstance(v, (list, tuple)) else [v]
        if not vs or not all(_is_number(x) for x in vs) or len(vs) > n:
            raise ValueError(f"model.{key}[{i}] must be a number or up to {n} numbers, got {v!r}")
        out.append(vs + [vs[-1]] * (n - len(vs)))
    return out


def stage_radii(cfg: Mapping[str, Any]) -> list[list[float]]:
    """Ball-query radius of every block, ``[stage][block]`` (block 0 = the SetAbstraction)."""
    return _per_block(cfg["radius"], cfg["radius_scaling"], cfg["blocks"], cfg["strides"], "radius")


class PointNeXtStage(nn.Sequential):
    """One encoder stage: ``[SetAbstraction, InvResMLP, ...]`` (indices as openpoints).

    ``forward(p, f) -> (p', f')``; the InvResMLP blocks share one ball query per (radius, nsample).
    """

    def forward(self, p: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        p, f = self[0](p, f)
        cache: dict[tuple[float, int], torch.Tensor] = {}
        for block in list(self)[1:]:
            key = (block.radius, block.nsample)
            if key not in cache:
                cache[key] = ops.ball_query(p, p, block.radius, block.nsample)
            f = block(p, f, cache[key])
        return p, f


class PointNeXtEncoder(nn.Module):
    """PointNeXt encoder: stages of ``SetAbstraction`` + ``InvResMLP`` blocks; widths double at
    every downsampling stage.

    ``forward(p[B,N,3], f[B,C_in,N]) -> (ps, fs)``: lists of length ``stages + 1`` starting with the
    input; ``ps[i]`` is ``[B,N_i,3]``, ``fs[i]`` is ``[B,C_i,N_i]``.
    """

    def __init__(self, *, in_channels: int, width: int, blocks: Sequence[int], strides: Sequence[int],
                 radii: Sequence[Sequence[float]], nsamples: Sequence[Sequence[int]], expansion: int = 4,
                 sa_layers: int = 1, sa_use_res: bool = False, normalize_dp: bool = True,
                 use_res: bool = True, fps_skip_origin: bool = False) -> None:
        super().__init__()
        self.blocks = list(blocks)
        self.strides = list(strides)
        channels = []
        for stride in strides:
            if stride != 1:
                width *= 2
            channels.append(width)
        self.channel_list = channels
        self.in_channels = in_channels
        self.out_channels = channels[-1]
        stages = []
        c_in = in_channels
        for i, (n, stride, c) in enumerate(zip(blocks, strides, channels)):
            is_head = i == 0 and stride == 1
            layers: list[nn.Module] = [SetAbstraction(
                c_in, c, layers=1 if is_head else sa_layers, stride=stride, radius=radii[i][0],
                nsample=nsamples[i][0], normalize_dp=normalize_dp, use_res=sa_use_res, is_head=is_head,
                fps_skip_origin=fps_skip_origin)]
            for j in range(1, n):
                layers.append(InvResMLP(c, radius=radii[i][j], nsample=nsamples[i][j], expansion=expansion,
                                        normalize_dp=normalize_dp, use_res=use_res))
            stages.append(PointNeXtStage(*layers))
            c_in = c
        self.encoder = nn.Sequential(*stages)

    def forward(self, p: torch.Tensor, f: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ps, fs = [p], [f]
        for stage in self.encoder:
            p, f = stage(p, f)
            ps.append(p)
            fs.append(f)
        return ps, fs


def propagation_stages(coarsest: int, skips: Sequence[int], fp_channels: Sequence[int],
                       decoder_layers: int) -> nn.Sequential:
    """The decoder's feature propagations, finest first: stage i takes the next coarser stage's output
    (``coarsest`` channels for the last) and ``skips[i]`` skip channels to ``fp_channels[i]``."""
    n = len(fp_channels)
    stages: list[Optional[nn.Module]] = [None] * n
    c_in = coarsest
    for i in range(-1, -n - 1, -1):
        stages[i] = nn.Sequential(FeaturePropagation([skips[i] + c_in] + [fp_channels[i]] * decoder_layers))
        c_in = fp_channels[i]
    return nn.Sequential(*stages)


class PointNeXtDecoder(nn.Module):
    """U-Net decoder (openpoints' PointNextDecoder with 4 decoder stages): from the coarsest
    stage up, interpolate to the next finer point set, concat its skip features (the raw input
    when the encoder has fewer than 5 stages), ``decoder_layers`` x (Conv1d BN ReLU).

    ``forward(ps, fs) -> [B, C_0, N']`` with ``ps``/``fs`` from ``PointNeXtEncoder`` (input first);
    for a 5-stage encoder with a stride-1 stem ``N'`` is the number of input points.
    """

    decoder_stages = 4

    def __init__(self, encoder_channels: Sequence[int], *, decoder_layers: int = 2, in_channels: int = 3) -> None:
        super().__init__()
        enc = list(encoder_channels)
        skips = enc[:-1]
        fp_channels = enc[:self.decoder_stages]
        if len(skips) < self.decoder_stages:
            skips.insert(0, in_channels)
        self.decoder = propagation_stages(enc[-1], skips, fp_channels, decoder_layers)
        self.out_channels = fp_channels[0]

    def forward(self, ps: Sequence[torch.Tensor], fs: Sequence[torch.Tensor]) -> torch.Tensor:
        fs = list(fs)
        n = len(self.decoder)
        for i in range(-1, -n - 1, -1):
            fs[i - 1] = self.decoder[i][0](ps[i - 1], fs[i - 1], ps[i], fs[i])
        return fs[-n - 1]


class PointNeXtSeg(nn.Module):
    """PointNeXt segmentation network: ``forward(pos[B,N,3], feats[B,C,N]) -> logits[B,K,N]``."""

    task = "seg"
    head_prefix = "head."

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.cfg = dict(cfg)
        self.num_classes = int(cfg["num_classes"])
        self.encoder = _build_encoder(cfg)
        self.decoder = PointNeXtDecoder(self.encoder.channel_list, decoder_layers=cfg["decoder_layers"],
                                        in_channels=cfg["in_channels"])
        self.head = SegHead(self.decoder.out_channels, self.num_classes, mlps=cfg["head_mlps"],
                            dropout=cfg["dropout"], pooled=cfg["head_globals"] or ())

    def features_in(self, pos: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_points(pos, "pos")
        if feats.dim() != 3 or feats.shape[0] != pos.shape[0] or feats.shape[2] != pos.shape[1]:
            raise ValueError(f"feats must be [B, C, N] matching pos {tuple(pos.shape)}, got {tuple(feats.shape)}")
        if feats.shape[1] != self.encoder.in_channels:
            raise ValueError(f"feats has {feats.shape[1]} channels; model.in_channels is {self.encoder.in_channels}")
        return pos.contiguous(), feats.contiguous()

    def forward(self, pos: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        p, f = self.features_in(pos, feats)
        ps, fs = self.encoder(p, f)
        return self.head(self.decoder(ps, fs))

    def convert_state_dict(self, state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """See ``convert_official_state_dict``; an encoder without its head expects a new head."""
        return _expect_new_head(self, convert_official_state_dict(state_dict)[0], self.head_prefix)

    def dr2net_surrogate(self, alpha: float = 1.0, beta: float = 0.1, mode: str = "reversible",
                         **kw: Any) -> PointNeXtDr2Net:
        """The Dr²Net surrogate sharing this model's parameters (see ``PointNeXtDr2Net``)."""
        return PointNeXtDr2Net(self, alpha, beta, mode, **kw)


class PointNeXtCls(nn.Module):
    """PointNeXt classifier: ``forward(points[B,N,3(+C)]) -> logits[B,K]``.

    Positions are ``points[..., :3]``; the input features are ``points[..., :in_channels]`` (xyz
    first, as openpoints feeds ``x = points[:, :, :in_channels]``). When the points have one channel
    fewer than ``in_channels`` and ``height_dim`` is set, the height ``points[..., height_dim] -
    min`` is appended (openpoints' ScanObjectNN loader does this).
    """

    task = "cls"
    head_prefix = "prediction."

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.cfg = dict(cfg)
        self.num_classes = int(cfg["num_classes"])
        self.height_dim = cfg["height_dim"]
        self.encoder = _build_encoder(cfg)
        self.prediction = ClsHead(self.encoder.out_channels, self.num_classes, mlps=cfg["head_mlps"],
                                  dropout=cfg["dropout"])

    def features_in(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _point_features(points, self.encoder.in_channels, self.height_dim)

    def pool(self, f: torch.Tensor) -> torch.Tensor:
        return f.squeeze(-1) if f.shape[-1] == 1 else f.max(dim=-1).values

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        p, f = self.features_in(points)
        _, fs = self.encoder(p, f)
        return self.prediction(self.pool(fs[-1]))

    convert_state_dict = PointNeXtSeg.convert_state_dict
    dr2net_surrogate = PointNeXtSeg.dr2net_surrogate


class PointNeXtPartDecoder(nn.Module):
    """openpoints' ``PointNextPartDecoder`` (decoder blocks 1: feature propagation only) with the shape
    category embedded into the finest stage.

    From the coarsest stage up, each stage interpolates to the next finer point set and concatenates its
    skip features, ``decoder_layers`` x (Conv1d BN ReLU); the last one (onto the stem's points) also gets the
    category embedding per point, before the skip features. ``cls_map``:

    - ``curvenet`` (PointNeXt's ShapeNetPart configs): ``cat[max_N global_conv1(f_{-2}) (64), max_N
      global_conv2(f_{-1}) (128), one-hot (num_categories)]``, ``global_conv*`` = Conv1d (bias) ReLU on the
      encoder's two coarsest stages;
    - ``pointnet2``: ``convc(one-hot)`` (Conv1d num_categories -> 64 with bias, ReLU);
    - ``pointnext``: as curvenet with the category's part indicator (``num_classes`` wide, 1 on the parts
      the category owns: openpoints' ``cls2partembed`` row) in place of the one-hot;
    - ``pointnext1``: ``convc(part indicator)`` (Conv1d num_classes -> 64 with bias, ReLU).

    The part indicator is a buffer outside the state dict (openpoints keeps it as a plain attribute), built
    from ``category_parts`` (the parts of each category; ShapeNetPart's when the label set is 16 / 50).

    ``forward(ps, fs, one_hot[B, num_categories, 1]) -> [B, C_1, N_1]`` with ``ps``/``fs`` from
    ``PointNeXtEncoder`` (input first; at least 3 stages); ``N_1`` is the stem's point count (the input's).
    """

    CLS_MAPS = ("curvenet", "pointnet2", "pointnext", "pointnext1")

    def __init__(self, encoder_channels: Sequence[int], *, decoder_layers: int = 2, cls_map: str = "curvenet",
                 num_categories: int = 16, num_classes: int = 50,
                 category_parts: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        enc = list(encoder_channels)
        if len(enc) < 3:
            raise ValueError(f"PointNeXtPartDecoder needs at least 3 encoder stages, got {len(enc)}")
        if cls_map not in self.CLS_MAPS:
            raise ValueError(f"model.cls_map must be one of {', '.join(self.CLS_MAPS)}, got {cls_map!r}")
        self.cls_map = cls_map
        self.num_categories = int(num_categories)
        skips = enc[:-1]
        fp_channels = enc[:-1]
        # what the category becomes before the convolutions: its one-hot, or its part indicator
        code = self.num_categories
        if cls_map in ("pointnext", "pointnext1"):
            if category_parts is None:
                if (self.num_categories, int(num_classes)) != (len(SHAPENETPART_PARTS), 50):
                    raise ValueError(f"model.cls_map={cls_map} needs the parts of each category: known for "
                                     f"ShapeNetPart (16 categories, 50 parts), got {self.num_categories} "
                                     f"categories and {num_classes} parts")
                category_parts = SHAPENETPART_PARTS
            indicator = torch.zeros(self.num_categories, int(num_classes))
            for c, parts in enumerate(category_parts):
                indicator[c, list(parts)] = 1.0
            self.register_buffer("part_indicator", indicator, persistent=False)
            code = int(num_classes)
        if cls_map in ("curvenet", "pointnext"):
            self.global_conv2 = nn.Sequential(conv_block(enc[-1], 128, dim=1, norm=False))
            self.global_conv1 = nn.Sequential(conv_block(enc[-2], 64, dim=1, norm=False))
            skips[0] += 64 + 128 + code
        else:
            self.convc = nn.Sequential(conv_block(code, 64, dim=1, norm=False))
            skips[0] += 64
        self.decoder = propagation_stages(enc[-1], skips, fp_channels, decoder_layers)
        self.out_channels = fp_channels[0]

    def category_embedding(self, fs: Sequence[torch.Tensor], one_hot: torch.Tensor) -> torch.Tensor:
        """``[B, E, 1]``: what every point of the finest stage gets (``E`` = 208 for curvenet with 16
        categories, 242 for pointnext with 50 parts, 64 for pointnet2 / pointnext1); read from the encoder's
        features."""
        code = one_hot
        if self.cls_map in ("pointnext", "pointnext1"):  # one-hot [B, C, 1] -> its category's parts [B, K, 1]
            code = torch.einsum("bcn,ck->bkn", one_hot, self.part_indicator.to(one_hot.dtype))
        if self.cls_map in ("pointnet2", "pointnext1"):
            return self.convc(code)
        emb1 = self.global_conv1(fs[-2]).max(dim=-1, keepdim=True).values
        emb2 = self.global_conv2(fs[-1]).max(dim=-1, keepdim=True).values
        return torch.cat([emb1, emb2, code], dim=1)

    def forward(self, ps: Sequence[torch.Tensor], fs: Sequence[torch.Tensor], one_hot: torch.Tensor) -> torch.Tensor:
        emb = self.category_embedding(fs, one_hot)
        fs = list(fs)
        n = len(self.decoder)
        for i in range(-1, -n, -1):
            fs[i - 1] = self.decoder[i][0](ps[i - 1], fs[i - 1], ps[i], fs[i])
        f1 = torch.cat([emb.expand(-1, -1, fs[1].shape[-1]), fs[1]], dim=1)
        return self.decoder[0][0](ps[1], f1, ps[2], fs[2])


class PointNeXtPartSeg(nn.Module):
    """PointNeXt part segmentation (openpoints ``BasePartSeg``: PointNextEncoder, PointNextPartDecoder,
    SegHead): ``forward(points[B,N,3(+C)], category int64[B] or one-hot [B, num_categories]) -> logits[B,K,N]``.

    Positions are ``points[..., :3]``; the input features are ``points[..., :in_channels]``, with the height
    ``points[..., height_dim] - min`` appended when the points have one channel fewer (the official input,
    7 channels, is xyz, normals, height: ShapeNetPart with ``dataset.use_normals: true`` gives 6).
    """

    task = "partseg"
    head_prefix = "head."

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.cfg = dict(cfg)
        self.num_classes = int(cfg["num_classes"])
        self.num_categories = int(cfg["num_categories"])
        self.height_dim = cfg["height_dim"]
        self.encoder = _build_encoder(cfg)
        self.decoder = PointNeXtPartDecoder(self.encoder.channel_list, decoder_layers=cfg["decoder_layers"],
                                            cls_map=cfg["cls_map"], num_categories=self.num_categories,
                                            num_classes=self.num_classes)
        self.head = SegHead(self.decoder.out_channels, self.num_classes, mlps=cfg["head_mlps"],
                            dropout=cfg["dropout"], pooled=cfg["head_globals"] or ())

    def features_in(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _point_features(points, self.encoder.in_channels, self.height_dim)

    def segment(self, ps: Sequence[torch.Tensor], fs: Sequence[torch.Tensor], category: torch.Tensor) -> torch.Tensor:
        """Decoder and head on the encoder's outputs -> logits ``[B, K, N]``."""
        one_hot = category_one_hot(category, ps[0].shape[0], self.num_categories, fs[-1])
        return self.head(self.decoder(ps, fs, one_hot))

    def forward(self, points: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        p, f = self.features_in(points)
        ps, fs = self.encoder(p, f)
        return self.segment(ps, fs, category)

    convert_state_dict = PointNeXtSeg.convert_state_dict
    dr2net_surrogate = PointNeXtSeg.dr2net_surrogate


def _point_features(points: torch.Tensor, c_in: int, height_dim: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``points[B,N,3+C]`` -> (positions ``[B,N,3]``, features ``[B,c_in,N]``): the first ``c_in`` channels,
    or all of them plus the height along ``height_dim`` (minus its minimum per cloud) when one is missing."""
    if points.dim() != 3 or points.shape[-1] < 3:
        raise ValueError(f"points must be [B, N, 3+C], got shape {tuple(points.shape)}")
    p = points[..., :3].contiguous()
    if points.shape[-1] >= c_in:
        f = points[..., :c_in]
    elif points.shape[-1] == c_in - 1 and height_dim is not None:
        h = points[..., height_dim:height_dim + 1]
        f = torch.cat([points, h - h.min(dim=1, keepdim=True).values], dim=-1)
    else:
        raise ValueError(f"points has {points.shape[-1]} channels; model.in_channels is {c_in} (xyz, then the "
                         f"dataset's extra channels such as normals with dataset.use_normals: true; "
                         f"model.height_dim appends a height channel)")
    _check_points(p, "points[..., :3]")
    return p, f.transpose(1, 2).contiguous()


def _check_points(p: torch.Tensor, name: str) -> None:
    if p.dim() != 3 or p.shape[-1] != 3:
        raise ValueError(f"{name} must be [B, N, 3], got shape {tuple(p.shape)}")
    if not p.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {p.dtype}")


def _build_encoder(cfg: Mapping[str, Any]) -> PointNeXtEncoder:
    return PointNeXtEncoder(
        in_channels=cfg["in_channels"], width=cfg["width"], blocks=cfg["blocks"], strides=cfg["strides"],
        radii=stage_radii(cfg),
        nsamples=_per_block(cfg["nsample"], cfg["nsample_scaling"], cfg["blocks"], cfg["strides"], "nsample"),
        expansion=cfg["expansion"], sa_layers=cfg["sa_layers"], sa_use_res=cfg["sa_use_res"],
        normalize_dp=cfg["normalize_dp"], use_res=cfg["use_res"], fps_skip_origin=cfg["fps_skip_origin"])


# --------------------------------------------------------------------------- config and registry

def resolve_config(cfg_model: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults <- preset of ``(name, task)`` <- ``cfg_model``; validated. Raises ValueError."""
    if not isinstance(cfg_model, Mapping):
        raise ValueError(f"model config must be a mapping, got {type(cfg_model).__name__}")
    unknown = [k for k in cfg_model if k not in DEFAULT_CFG]
    if unknown:
        key = unknown[0]
        hint = did_you_mean(key, DEFAULT_CFG, prefix="model.", otherwise=f"; known: {', '.join(sorted(DEFAULT_CFG))}")
        raise ValueError(f"unknown key model.{key} for PointNeXt{hint}")
    name = cfg_model.get("name", "pointnext")
    task = cfg_model.get("task", "seg")
    if task not in ("seg", "cls", "partseg"):
        raise ValueError(f"model.task must be 'seg', 'cls' or 'partseg', got {task!r}")
    cfg = copy.deepcopy(DEFAULT_CFG)
    cfg.update(copy.deepcopy(PRESETS.get((name, task), {})))
    cfg.update({k: copy.deepcopy(v) for k, v in cfg_model.items()})
    if cfg["num_classes"] is None:
        cfg["num_classes"] = {"seg": 13, "cls": 15, "partseg": 50}[task]
    for key in ("num_classes", "in_channels", "width", "expansion", "sa_layers", "decoder_layers", "num_categories"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ValueError(f"model.{key} must be a positive integer, got {cfg[key]!r}")
    for key in ("blocks", "strides"):
        v = cfg[key]
        if not isinstance(v, (list, tuple)) or not v or not all(isinstance(x, int) and x >= 1 for x in v):
            raise ValueError(f"model.{key} must be a non-empty list of positive integers, got {v!r}")
    if len(cfg["blocks"]) != len(cfg["strides"]):
        raise ValueError(f"model.blocks ({len(cfg['blocks'])} stages) and model.strides "
                         f"({len(cfg['strides'])} stages) must have the same length")
    if task == "seg" and (not 2 <= len(cfg["strides"]) <= 5 or cfg["strides"][0] != 1
                          or 1 in cfg["strides"][1:]):
        raise ValueError(f"model.strides for segmentation must be [1, s, ...] (2 to 5 stages, every later "
                         f"s > 1), got {cfg['strides']!r}")
    if task == "partseg" and (len(cfg["strides"]) < 3 or cfg["strides"][0] != 1 or 1 in cfg["strides"][1:]):
        raise ValueError(f"model.strides for part segmentation must be [1, s, s, ...] (at least 3 stages, every "
                         f"later s > 1), got {cfg['strides']!r}")
    if cfg["cls_map"] not in PointNeXtPartDecoder.CLS_MAPS:
        raise ValueError(f"model.cls_map must be one of {', '.join(PointNeXtPartDecoder.CLS_MAPS)}, "
                         f"got {cfg['cls_map']!r}")
    pooled = cfg["head_globals"]
    if pooled is not None and (task == "cls" or not isinstance(pooled, (list, tuple))
                               or not all(g in SegHead.POOLINGS for g in pooled)):
        raise ValueError(f"model.head_globals must be null or a list of {' / '.join(SegHead.POOLINGS)} "
                         f"(segmentation heads only), got {pooled!r}")
    for key in ("radius_scaling", "nsample_scaling"):
        if not _is_number(cfg[key]) or cfg[key] <= 0:
            raise ValueError(f"model.{key} must be a positive number, got {cfg[key]!r}")
    radii = stage_radii(cfg)
    if any(r <= 0 for stage in radii for r in stage):
        raise ValueError(f"model.radius must be positive, got {cfg['radius']!r}")
    nsamples = _per_block(cfg["nsample"], cfg["nsample_scaling"], cfg["blocks"], cfg["strides"], "nsample")
    if any(not float(k).is_integer() or k < 1 for stage in nsamples for k in stage):
        raise ValueError(f"model.nsample must give positive integers, got {cfg['nsample']!r}")
    cfg["nsample"] = [[int(k) for k in stage] for stage in nsamples]
    cfg["nsample_scaling"] = 1
    for key in ("sa_use_res", "normalize_dp", "use_res", "fps_skip_origin"):
        if not isinstance(cfg[key], bool):
            raise ValueError(f"model.{key} must be true or false, got {cfg[key]!r}")
    if not _is_number(cfg["dropout"]) or not 0 <= cfg["dropout"] < 1:
        raise ValueError(f"model.dropout must be in [0, 1), got {cfg['dropout']!r}")
    mlps = cfg["head_mlps"]
    if mlps is not None and (not isinstance(mlps, (list, tuple)) or
                             not all(isinstance(x, int) and x >= 1 for x in mlps)):
        raise ValueError(f"model.head_mlps must be null or a list of positive integers, got {mlps!r}")
    if task == "cls" and mlps is None:
        cfg["head_mlps"] = [512, 256]
    cp = cfg["chunk_points"]
    if cp is not None and (not isinstance(cp, int) or isinstance(cp, bool) or cp < 1):
        raise ValueError(f"model.chunk_points must be null or a positive integer (centre points per chunk), got {cp!r}")
    hd = cfg["height_dim"]
    if hd is not None and (not isinstance(hd, int) or isinstance(hd, bool) or hd not in (0, 1, 2)):
        raise ValueError(f"model.height_dim must be null or 0, 1, 2, got {hd!r}")
    return cfg


@register_model("pointnext", "pointnext-s", "pointnext-b", "pointnext-l", "pointnext-xl")
def build_pointnext(cfg_model: Mapping[str, Any]) -> nn.Module:
    """Build a PointNeXt from a ``model`` config section (``task: seg``, ``cls`` or ``partseg``)."""
    cfg = resolve_config(cfg_model)
    model = {"seg": PointNeXtSeg, "cls": PointNeXtCls, "partseg": PointNeXtPartSeg}[cfg["task"]](cfg)
    logger.info("built %s (%s, %.2fM parameters)", cfg["name"], cfg["task"],
                sum(p.numel() for p in model.parameters()) / 1e6)
    return model


# --------------------------------------------------------------------------- official checkpoints

def _expect_new_head(model: nn.Module, sd: dict[str, torch.Tensor], prefix: str
                     ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(sd, expected missing): the model's head keys when ``sd`` holds no head at all (an encoder
    exported to finetune on another label set), else nothing."""
    if any(k.startswith(prefix) for k in sd):
        return sd, []
    return sd, [k for k in model.state_dict() if k.startswith(prefix)]


def convert_official_state_dict(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map an openpoints PointNeXt state dict (or a whole ``{model, optimizer, scheduler, epoch,
    best_val}`` checkpoint) to this model's keys.

    The module paths are openpoints' own, so only wrappers are removed: a ``model``/``state_dict``
    level, DistributedDataParallel's ``module.`` prefix, and keys of loss modules (``criterion.*``).
    Returns ``(state_dict, expected_missing)``; nothing is expected to be missing from a
    finetuned PointNeXt checkpoint. Raises ValueError for a dict that holds no PointNeXt weights.
    """
    sd: Any = state_dict
    for wrapper in ("model", "state_dict", "base_model"):
        if isinstance(sd, Mapping) and isinstance(sd.get(wrapper), Mapping):
            sd = sd[wrapper]
            break
    if not isinstance(sd, Mapping):
        raise ValueError(f"PointNeXt checkpoint must hold a state dict, got {type(sd).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            continue
        while key.startswith("module."):
            key = key[len("module."):]
        if key.startswith("criterion."):
            continue
        out[key] = value
    if not any(k.startswith("encoder.encoder.") for k in out):
        sample = ", ".join(list(out)[:3]) or "no tensors"
        raise ValueError(f"not a PointNeXt state dict: no 'encoder.encoder.*' keys (found {sample})")
    return out, []


# --------------------------------------------------------------------------- Dr²Net surrogate

class _InvResBlockG(nn.Module):
    """Dr2Stack unit around one InvResMLP block B (``B(f) = ReLU(f + F(f))``).

    ``residual="block"``: ``G(f; alpha) = B(f) - (1 - alpha)*f``, the whole block (post-add ReLU
    included) as the residual unit. ``residual="branch"``: ``G(f; alpha) = ReLU(alpha*f + F(f))``, the
    identity scaled inside the ReLU (the form of the method's reference). Both are exactly B at alpha=1;
    Dr²Net never inverts G. ``chunk_points`` (an extra of the stack): the local aggregation's grouped
    tensors a chunk of centres at a time (``None``: whole). The stack recomputes the block in backward
    on copies of its BatchNorm running statistics (``frozen_running_stats``, or checkpoint mode's
    once-only block), so those see one update per step."""

    def __init__(self, block: InvResMLP, residual: str = "block") -> None:
        super().__init__()
        if residual not in ("block", "branch"):
            raise ValueError(f"residual must be one of ('block', 'branch'), got {residual!r}")
        self.block = block
        self.residual = residual

    def forward(self, f: torch.Tensor, alpha: float, p: torch.Tensor, idx: torch.Tensor,
                chunk_points: Optional[int] = None) -> torch.Tensor:
        if self.residual == "branch" or alpha == 1.0 or not self.block.use_res:
            return self.block.scaled(f, alpha, p, idx, chunk_points)
        return self.block.scaled(f, 1.0, p, idx, chunk_points) - (1.0 - alpha) * f


def _checkpoint_sa(sa: SetAbstraction, p: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``sa`` without storing its grouped features: the sampling and neighbour indices are
    computed once (they are not activations) and kept with ``p`` and ``f``; the aggregation is
    recomputed in backward, on copies of its BatchNorm running statistics (one update per step).
    Used for the group-all form (one group of every point: nothing to chunk over centres)."""
    new_p, centre_idx, idx = sa.sample(p)
    out = checkpoint(sa.aggregate, p, f, new_p, centre_idx, idx, use_reentrant=False,
                     context_fn=lambda: (contextlib.nullcontext(), frozen_running_stats(sa)))
    return new_p, out


class PointNeXtDr2Net(nn.Module):
    """Dr²Net surrogate of a PointNeXt model; shares its modules and parameters.

    Every encoder stage with InvResMLP blocks runs them as one ``Dr2Stack`` (its extras: the
    stage's positions, ball-query indices, computed once per stage, and the chunk size). In training,
    with ``recompute_stem``, set abstractions (not reversible) keep only their inputs and indices:
    the downsampling ones compute and backpropagate their grouped tensors in chunks of
    ``chunk_points`` centres (:func:`pointdr2.nn.chunked_grouping.grouped_max`: exact, BatchNorm on
    the whole stage's statistics), a group-all one is checkpointed. Stacks in a recomputing mode
    (not ``standard``) run their local aggregations in the same chunks, in the forward and in the
    stack's recomputation, so no ``[B, C, S, K]`` tensor of a stage exists whole. ``chunk_points``:
    centres per chunk (default ``model.chunk_points``; ``None`` sizes each stage's chunks to the ops
    memory budget, :func:`pointdr2.nn.chunked_grouping.chunk_points_for`). The call signature is the
    source model's. ``state_dict()`` has exactly the source model's keys (the stacks only alias
    the encoder's blocks), so checkpoints move freely between the two.
    """

    def __init__(self, model: nn.Module, alpha: float = 1.0, beta: float = 0.1, mode: str = "reversible", *,
                 recompute_stem: Optional[bool] = None, residual: str = "branch", chunk_points: Any = "model",
                 **stack_kwargs: Any) -> None:
        super().__init__()
        unknown = sorted(set(stack_kwargs) - {"output", "cache_every", "tolerance", "gain"})
        if unknown:
            raise ValueError(f"unknown Dr2Net option(s) {', '.join(unknown)} for PointNeXt; expected "
                             f"recompute_stem, residual, chunk_points, output, cache_every, tolerance, gain")
        if not isinstance(model, (PointNeXtSeg, PointNeXtCls, PointNeXtPartSeg)):
            raise ValueError(f"PointNeXtDr2Net needs a PointNeXtSeg, PointNeXtCls or PointNeXtPartSeg, "
                             f"got {type(model).__name__}")
        self.task = model.task
        self.num_classes = model.num_classes
        self.source_type = type(model)
        self.encoder = model.encoder
        if model.task in ("seg", "partseg"):
            self.decoder = model.decoder
            self.head = model.head
        else:
            self.prediction = model.prediction
        # ``features_in`` / ``pool`` are plain methods of the source model; keep the model itself
        # out of the module tree (its modules are registered above).
        object.__setattr__(self, "_source", model)
        self.recompute_stem = (mode != "standard") if recompute_stem is None else bool(recompute_stem)
        if chunk_points == "model":
            chunk_points = getattr(model, "cfg", {}).get("chunk_points")
        if chunk_points is not None and (isinstance(chunk_points, bool) or not isinstance(chunk_points, int)
                                         or chunk_points < 1):
            raise ValueError(f"chunk_points must be None or a positive integer, got {chunk_points!r}")
        self.chunk_points: Optional[int] = chunk_points
        check_unit_form(residual, stack_kwargs.get("gain", "plain"))
        stacks = {}
        for i, stage in enumerate(self.encoder.encoder):
            blocks = list(stage)[1:]
            if not blocks:
                continue
            keys = {(b.radius, b.nsample) for b in blocks}
            if len(keys) != 1:
                raise ValueError(f"encoder stage {i}: InvResMLP blocks with different radius/nsample {sorted(keys)} "
                                 f"cannot share one Dr2Stack")
            stacks[str(i)] = Dr2Stack([_InvResBlockG(b, residual) for b in blocks], alpha=alpha, beta=beta, mode=mode,
                                      **stack_kwargs)
        self.stacks = nn.ModuleDict(stacks)
        self._aliases = self._stack_aliases()
        # state_dict() without the aliases, load_state_dict() filling them in: the surrogate's keys
        # are exactly the source model's.
        post_hook = getattr(self, "register_state_dict_post_hook", None) or self._register_state_dict_hook
        post_hook(_drop_alias_keys)
        self.register_load_state_dict_pre_hook(_fill_alias_keys)

    def _stack_aliases(self) -> dict[str, str]:
        """``{stacks.* key: encoder.* key}`` for every tensor the stacks share with the encoder."""
        owner = {}
        for name, t in [*self.encoder.named_parameters(remove_duplicate=False),
                        *self.encoder.named_buffers(remove_duplicate=False)]:
            owner.setdefault(id(t), "encoder." + name)
        aliases = {}
        for name, t in [*self.stacks.named_parameters(remove_duplicate=False),
                        *self.stacks.named_buffers(remove_duplicate=False)]:
            if id(t) in owner:
                aliases["stacks." + name] = owner[id(t)]
        return aliases

    def _chunk(self, convs: nn.Module, f: torch.Tensor, nsample: int) -> int:
        if self.chunk_points is not None:
            return self.chunk_points
        return chunk_points_for(f.shape[0], nsample, convs, f.dtype)

    def _run_encoder(self, p: torch.Tensor, f: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ps, fs = [p], [f]
        for i, stage in enumerate(self.encoder.encoder):
            sa = stage[0]
            if not (self.recompute_stem and self.training) or sa.is_head:
                p, f = sa(p, f)
            elif sa.all_aggr:
                p, f = _checkpoint_sa(sa, p, f) if torch.is_grad_enabled() else sa(p, f)
            else:
                p, f = sa(p, f, chunk_points=self._chunk(sa.convs, f, sa.nsample))
            if str(i) in self.stacks:
                first, stack = stage[1], self.stacks[str(i)]
                idx = ops.ball_query(p, p, first.radius, first.nsample)
                chunk = None
                if self.training and stack.mode != "standard":
                    chunk = self._chunk(first.convs.convs, f, first.nsample)
                f = stack(f, p, idx, chunk)
            ps.append(p)
            fs.append(f)
        return ps, fs

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.task == "seg":
            if len(inputs) != 2:
                raise ValueError(f"segmentation surrogate is called as model(pos, feats), got {len(inputs)} inputs")
            p, f = self._source.features_in(*inputs)
            ps, fs = self._run_encoder(p, f)
            return self.head(self.decoder(ps, fs))
        if self.task == "partseg":
            if len(inputs) != 2:
                raise ValueError(f"part-segmentation surrogate is called as model(points, category), "
                                 f"got {len(inputs)} inputs")
            p, f = self._source.features_in(inputs[0])
            ps, fs = self._run_encoder(p, f)
            return self._source.segment(ps, fs, inputs[1])
        if len(inputs) != 1:
            raise ValueError(f"classification surrogate is called as model(points), got {len(inputs)} inputs")
        p, f = self._source.features_in(inputs[0])
        _, fs = self._run_encoder(p, f)
        return self.prediction(self._source.pool(fs[-1]))

    @property
    def head_prefix(self) -> str:
        return self.source_type.head_prefix

    def convert_state_dict(self, state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """See ``convert_official_state_dict``; an encoder without its head expects a new head."""
        return _expect_new_head(self, convert_official_state_dict(state_dict)[0], self.head_prefix)


def _drop_alias_keys(module: PointNeXtDr2Net, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    for key in module._aliases:
        state_dict.pop(prefix + key, None)


def _fill_alias_keys(module: PointNeXtDr2Net, state_dict: dict, prefix: str, local_metadata: Any, strict: bool,
                     missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
    for alias, key in module._aliases.items():
        if prefix + key in state_dict and prefix + alias not in state_dict:
            state_dict[prefix + alias] = state_dict[prefix + key]
