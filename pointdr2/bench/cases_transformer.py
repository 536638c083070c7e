"""Benchmark cases for ``pointdr2 bench memory --model pointmae|pointbert``: ModelNet40 finetuning; and
``--model pointmae-partseg|pointbert-partseg``: ShapeNetPart finetuning (the official part-segmentation model,
128 x 32 groups at 2,048 points, the head reading blocks depth/3, 2*depth/3 and depth, per-point cross-entropy
over 50 parts; the recipe's batch is 16).

One training step of the official finetuning configuration (dim 384, 6 heads, 64 groups x 32
points, 40 classes) on ``batch`` synthetic clouds of ``points`` points (the recipe uses 1024),
cross-entropy loss. ``depth`` sets the number of transformer blocks (``None``: the published 12).
Rows (see ``pointdr2/bench/memory.py``):

- ``conventional``: the model itself;
- ``checkpoint``: ``to_dr2net(model, 1.0, 0.0, mode="checkpoint", recompute_stem=True)``: every
  sub-block checkpointed, tokenizer recomputed in chunks of groups;
- ``dr2net`` / ``dr2net-auto``: ``to_dr2net(model, alpha, beta, mode="reversible" / "auto",
  recompute_stem=True)`` (part segmentation: the head reads the stack's taps and is recomputed too).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pointdr2.bench.memory import model_for_mode
from pointdr2.models import build_model

MODELS = ("pointmae", "pointbert", "pointmae-partseg", "pointbert-partseg")
NUM_CLASSES = 40
NUM_PARTS, NUM_CATEGORIES = 50, 16


def synthetic_clouds(batch: int, points: int, generator: torch.Generator) -> torch.Tensor:
    """[B, N, 3] object-like clouds normalised to the unit ball (as ModelNet40 after preprocessing):
    points on a random ellipsoid surface with noise, so FPS/kNN see surface-like neighbourhoods."""
    direction = torch.randn(batch, points, 3, generator=generator)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    axes = 0.4 + 0.6 * torch.rand(batch, 1, 3, generator=generator)
    xyz = direction * axes + 0.01 * torch.randn(batch, points, 3, generator=generator)
    xyz = xyz - xyz.mean(dim=1, keepdim=True)
    return xyz / xyz.norm(dim=-1).amax(dim=1)[:, None, None]


def build_case(model: str, mode: str, depth: int | None, batch: int, points: int, alpha: float, beta: float,
               device: torch.device) -> tuple[nn.Module, tuple[torch.Tensor, ...], Callable[[torch.Tensor], torch.Tensor]]:
    """-> (module in train mode on ``device``, (points,), loss_fn(logits) -> scalar)."""
    if model not in MODELS:
        raise ValueError(f"cases_transformer: model must be one of {', '.join(MODELS)}, got {model!r}")
    partseg = model.endswith("-partseg")
    cfg = {"name": model, "num_classes": NUM_PARTS if partseg else NUM_CLASSES}
    if depth is not None:
        if depth < 1:
            raise ValueError(f"cases_transformer: depth must be >= 1 transformer blocks, got {depth}")
        cfg["depth"] = depth
    if points < 64:
        # CI smoke sizes: fewer, smaller groups so the cloud can be grouped at all
        cfg.update(num_group=max(1, points // 4), group_size=max(1, min(32, points // 2)))
    elif points < 1024:
        cfg.update(num_group=max(1, min(64, points // 16)), group_size=32)
    else:
        # the recipes scale groups with points (1024 -> 64 x 32, 2048 -> 128 x 32)
        cfg.update(num_group=64 * max(1, math.ceil(points / 1024)), group_size=32)
    if partseg:
        cfg["num_group"] = max(3, cfg["num_group"])
    net = build_model(cfg)
    module = model_for_mode(net, mode, alpha, beta, "cases_transformer")
    module.depth_label = str(len(net.blocks.blocks))  # transformer blocks, for the table
    module = module.to(device).train()
    g = torch.Generator().manual_seed(0)
    pts = synthetic_clouds(batch, points, g)
    if partseg:  # per-point part labels [B, N] of each shape's category
        category = torch.randint(0, NUM_CATEGORIES, (batch,), generator=g)
        target = torch.randint(0, NUM_PARTS, (batch, points), generator=g).to(device)
        inputs: tuple[torch.Tensor, ...] = (pts.to(device), category.to(device))
    else:
        target = torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(device)
        inputs = (pts.to(device),)

    def loss_fn(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target)

    return module, inputs, loss_fn
