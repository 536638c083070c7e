"""Tiny synthetic datasets in every official layout, written once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pointdr2.data.prepare.s3dis import convert_s3dis
from pointdr2.data.synthetic import write_layout


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding all four synthetic layouts (size "test", seed 0) plus ``s3disfull/``."""
    root = tmp_path_factory.mktemp("synthetic")
    for layout in ("modelnet40-txt", "modelnet40-h5", "scanobjectnn", "s3dis-raw"):
        write_layout(layout, root, size="test", seed=0)
    convert_s3dis(root, root / "s3disfull", progress=False)
    return root


def brute_fps(xyz: np.ndarray, npoint: int) -> np.ndarray:
    """Reference furthest point sampling in float64: start at 0, lowest index on ties."""
    xyz = np.asarray(xyz, dtype=np.float64)
    chosen = [0]
    dist = ((xyz - xyz[0]) ** 2).sum(axis=1)
    for _ in range(npoint - 1):
        nxt = int(np.argmax(dist))  # argmax returns the lowest index among ties
        chosen.append(nxt)
        dist = np.minimum(dist, ((xyz - xyz[nxt]) ** 2).sum(axis=1))
    return np.asarray(chosen, dtype=np.int64)


@pytest.fixture(scope="session")
def fps_reference():
    return brute_fps
