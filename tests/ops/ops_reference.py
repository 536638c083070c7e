"""Brute-force NumPy float64 references for the grouping ops and shared cloud fixtures."""

from __future__ import annotations

import numpy as np
import torch


def ref_origin_skip(xyz: np.ndarray) -> np.ndarray:
    """pointnet2_ops' skip test per point: float32 ``(x*x + y*y) + z*z <= 1e-3`` (the double literal)."""
    p = np.asarray(xyz).astype(np.float32)
    mag = p[..., 0] * p[..., 0] + p[..., 1] * p[..., 1]
    mag = mag + p[..., 2] * p[..., 2]
    return mag.astype(np.float64) <= 1e-3


def ref_fps(xyz: np.ndarray, npoint: int, skip_origin: bool = False) -> np.ndarray:
    """Brute-force FPS; ``skip_origin``: skipped points are never candidates after index 0, and a
    pick without any candidate is index 0 (pointnet2_ops)."""
    skip = ref_origin_skip(xyz) if skip_origin else np.zeros(np.shape(xyz)[:2], dtype=bool)
    xyz = np.asarray(xyz, dtype=np.float64)
    out = np.zeros((xyz.shape[0], npoint), dtype=np.int64)
    for b, p in enumerate(xyz):
        mind = np.full(len(p), np.inf)
        last = 0
        for i in range(1, npoint):
            d = ((p - p[last]) ** 2).sum(axis=1)
            mind = np.minimum(mind, d)
            candidates = np.flatnonzero(~skip[b])
            if len(candidates):
                # first maximum among the candidates: lowest index on ties
                last = int(candidates[np.argmax(mind[candidates])])
            else:
                last = 0
            out[b, i] = last
    return out


def ref_ball_query(xyz: np.ndarray, new_xyz: np.ndarray, radius: float, nsample: int) -> np.ndarray:
    xyz = np.asarray(xyz, dtype=np.float64)
    new_xyz = np.asarray(new_xyz, dtype=np.float64)
    B, S = new_xyz.shape[:2]
    out = np.zeros((B, S, nsample), dtype=np.int64)
    for b in range(B):
        for s in range(S):
            d2 = ((xyz[b] - new_xyz[b, s]) ** 2).sum(axis=1)
            hits = np.flatnonzero(d2 < radius * radius)[:nsample]
            if len(hits):
                out[b, s, :] = hits[0]
                out[b, s, : len(hits)] = hits
    return out


def ref_knn(query: np.ndarray, support: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    query = np.asarray(query, dtype=np.float64)
    support = np.asarray(support, dtype=np.float64)
    B, S = query.shape[:2]
    dist = np.zeros((B, S, k))
    idx = np.zeros((B, S, k), dtype=np.int64)
    for b in range(B):
        for s in range(S):
            d2 = ((support[b] - query[b, s]) ** 2).sum(axis=1)
            order = np.lexsort((np.arange(len(d2)), d2))[:k]  # by distance, then index
            dist[b, s], idx[b, s] = d2[order], order
    return dist, idx


def random_cloud(batch: int, n: int, seed: int, duplicates: int = 0, dtype=torch.float32,
                 near_origin: int = 0) -> torch.Tensor:
    """Uniform cloud in [-1, 1]^3 with ``duplicates`` points copied onto other indices and
    ``near_origin`` points moved into the ball |p| < 0.045 (some exactly at the origin, some just
    inside or outside pointnet2_ops' skip radius sqrt(1e-3) ~ 0.0316)."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(-1, 1, size=(batch, n, 3)).astype(np.float32)
    for b in range(batch):
        for j in range(near_origin):
            dst = rng.integers(0, n)
            if j % 3 == 0:
                p[b, dst] = 0.0
            else:
                direction = rng.normal(size=3)
                p[b, dst] = direction / np.linalg.norm(direction) * rng.uniform(0.0, 0.045)
        for _ in range(duplicates):
            src, dst = rng.integers(0, n, size=2)
            p[b, dst] = p[b, src]
    return torch.from_numpy(p).to(dtype)
