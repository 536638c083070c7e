"""Tiny datasets and models shared by the engine tests (and the DDP worker script).

``Blobs``: anisotropic Gaussian point clouds, one stretch axis per class, with a random jitter
drawn from torch's global RNG in ``__getitem__`` (an "augmentation" whose randomness the resume
tests must reproduce). ``TinyPointNet``: per-point MLP, max-pool, linear head; no BatchNorm and
no dropout, so a W-process step equals a one-process step on the same global batch.
"""

from __future__ import annotations

import torch
from torch import nn

from pointdr2.config import load_config


class Blobs(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int, num_points: int = 64, num_classes: int = 3, jitter: float = 0.02):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % num_classes
        base = torch.randn(n, num_points, 3, generator=g)
        axes = torch.full((num_classes, 3), 0.3)
        for c in range(num_classes):
            axes[c, c % 3] = 1.0 + 0.5 * (c // 3)
        self.points = (base * axes[self.labels][:, None, :]).float()
        self.jitter = jitter
        self.num_classes, self.class_names = num_classes, [f"class{i}" for i in range(num_classes)]
        self.fetch_hook = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        if self.fetch_hook is not None:
            self.fetch_hook(i)
        pts = self.points[i]
        if self.jitter:
            pts = pts + self.jitter * torch.randn(pts.shape)
        return {"points": pts, "label": self.labels[i]}


SPLIT_SIZES = {"train": 24, "val": 12, "test": 13}
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


def blobs_fn(sizes: dict | None = None, **kw):
    """A ``dataset_fn(cfg_dataset, split, **kw)`` serving fresh Blobs splits."""
    sizes = {**SPLIT_SIZES, **(sizes or {})}

    def make(cfg_dataset, split, **_):
        return Blobs(sizes[split], SPLIT_SEEDS[split], **kw)

    return make


class TinyPointNet(nn.Module):
    def __init__(self, num_classes: int = 3, width: int = 16, nan_after: int | None = None):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)
        self.nan_after = nan_after
        self.calls = 0

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        out = self.head(self.mlp(points[..., :3]).amax(dim=1))
        if self.training:
            self.calls += 1
            if self.nan_after is not None and self.calls > self.nan_after:
                out = out * float("nan")
        return out


def tiny_model_fn(**kw):
    def make(cfg_model):
        torch.manual_seed(0)
        return TinyPointNet(num_classes=int(cfg_model["num_classes"]), **kw)

    return make


def tiny_transformer_overrides() -> list[str]:
    """A point transformer small enough for unit tests (dim 32, depth 2, 8 groups of 8 points)."""
    return ["+model.name=point_transformer", "+model.trans_dim=32", "+model.depth=2", "+model.num_heads=2",
            "+model.num_group=8", "+model.group_size=8", "+model.encoder_dims=32", "+model.drop_path_rate=0.1",
            "+model.head_hidden=32"]


def engine_config(run_dir, *extra: str):
    """Config for 2 short epochs on Blobs (24 train samples, batch 8 -> 3 steps per epoch)."""
    return load_config(None, ["train.epochs=2", "train.batch_size=8", "train.num_workers=0", "train.warmup_epochs=1",
                              "train.lr=0.002", "run.progress=false", "run.log_every=1", f"run.dir={run_dir}",
                              "+dataset.name=blobs", *extra])
