"""Benchmark cases for ``pointdr2 bench memory --model pointnext-{b,l,xl}``: S3DIS segmentation training;
and ``--model pointnext-s-partseg``: ShapeNetPart part segmentation (configs/shapenetpart/pointnext-s.yaml:
xyz + normals + height of ``points`` points per shape, the recipe's 2,048, a category per shape, per-point
cross-entropy over 50 parts; PointNeXt-S has no InvResMLP blocks, so its dr2net row checkpoints the set
abstractions like the checkpoint row, unless ``depth`` adds blocks).

One training step of the S3DIS configuration (rgb + height input, 13 classes, strides 1,4,4,4,4,
radius 0.1, nsample 32) on a synthetic crop of ``points`` points (the official recipe crops 24,000)
with ``batch`` crops, cross-entropy over every point. Rows (see ``pointdr2/bench/memory.py``):

- ``conventional``: the model itself;
- ``checkpoint``: ``to_dr2net(model, 1.0, 0.0, mode="checkpoint")`` - every InvResMLP block and
  every set abstraction checkpointed;
- ``dr2net`` / ``dr2net-auto``: ``to_dr2net(model, alpha, beta, mode="reversible" / "auto")`` - each
  stage's InvResMLP blocks reversible, set abstractions checkpointed (``recompute_stem``).

``depth`` (optional) sets the number of InvResMLP blocks in each of the four downsampling stages
(``blocks = [1, d+1, d+1, d+1, d+1]``); ``None`` keeps the published blocks (B 1,2,3,2,2;
L 1,3,5,3,3; XL 1,4,7,4,4: 5, 10 and 15 InvResMLP blocks; S 1,1,1,1,1: none).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pointdr2.bench.memory import model_for_mode
from pointdr2.data.synthetic import indoor_crop as synthetic_crop
from pointdr2.models import build_model

MODELS = ("pointnext-b", "pointnext-l", "pointnext-xl", "pointnext-s-partseg")
NUM_CLASSES = 13
NUM_PARTS, NUM_CATEGORIES = 50, 16


def synthetic_shapes(batch: int, points: int, generator: torch.Generator) -> torch.Tensor:
    """``[B, N, 7]`` object-like shapes as the part-segmentation config feeds them: xyz in the unit ball,
    unit normals, height (y minus its minimum)."""
    from pointdr2.bench.cases_transformer import synthetic_clouds

    xyz = synthetic_clouds(batch, points, generator)
    normals = torch.randn(batch, points, 3, generator=generator)
    normals = normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    height = xyz[..., 1:2] - xyz[..., 1:2].amin(dim=1, keepdim=True)
    return torch.cat([xyz, normals, height], -1).contiguous()


def build_case(model: str, mode: str, depth: int | None, batch: int, points: int, alpha: float, beta: float,
               device: torch.device) -> tuple[nn.Module, tuple[torch.Tensor, ...], Callable[[torch.Tensor], torch.Tensor]]:
    """-> (module in train mode on ``device``, (pos, feats) or (points, category), loss_fn(logits) -> scalar)."""
    if model not in MODELS:
        raise ValueError(f"cases_pointnext: model must be one of {', '.join(MODELS)}, got {model!r}")
    partseg = model == "pointnext-s-partseg"
    cfg = ({"name": "pointnext-s", "task": "partseg"} if partseg else
           {"name": model, "task": "seg", "num_classes": NUM_CLASSES, "in_channels": 4})
    if depth is not None:
        if depth < 0:
            raise ValueError(f"cases_pointnext: depth must be >= 0 InvResMLP blocks per stage, got {depth}")
        cfg["blocks"] = [1] + [depth + 1] * 4
    net = build_model(cfg)
    module = model_for_mode(net, mode, alpha, beta, "cases_pointnext")
    module.depth_label = "-".join(str(b) for b in net.encoder.blocks)  # blocks per stage, for the table
    module = module.to(device).train()
    g = torch.Generator().manual_seed(0)
    if partseg:
        shapes = synthetic_shapes(batch, points, g)
        category = torch.randint(0, NUM_CATEGORIES, (batch,), generator=g)
        target = torch.randint(0, NUM_PARTS, (batch, points), generator=g).to(device)
        inputs: tuple[torch.Tensor, ...] = (shapes.to(device), category.to(device))
    else:
        pos, feats = synthetic_crop(batch, points, g)
        target = torch.randint(0, NUM_CLASSES, (batch, points), generator=g).to(device)
        inputs = (pos.to(device), feats.to(device))

    def loss_fn(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target)

    return module, inputs, loss_fn
