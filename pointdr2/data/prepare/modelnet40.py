"""``pointdr2 prepare modelnet40``: the ``.dat`` FPS cache of the ``modelnet40_normal_resampled`` layout.

The cache ``modelnet40_{split}_<K>pts_fps.dat`` is a pickle of ``[list of float32 (K, 6), list of
int32 (1,)]`` (the layout Point-BERT/Point-MAE read): the raw (unnormalised) points with normals,
FPS-ordered so any prefix of length ``n`` is itself the ``n``-point FPS sample.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from pointdr2.data.modelnet40 import detect_layout, read_lines, read_txt_points
from pointdr2.progress import bar as progress_bar

log = logging.getLogger(__name__)


def _fps_group(group: list[tuple[int, np.ndarray]], npoints: int, device: str, points: list) -> None:
    """FPS-order the shapes of ``group`` (all with the same point count) into ``points[k]``."""
    from pointdr2.ops import furthest_point_sample

    xyz = torch.from_numpy(np.stack([a[:, :3] for _, a in group])).to(device)
    idx = furthest_point_sample(xyz, npoints).cpu().numpy()
    for (k, arr), sel in zip(group, idx):
        points[k] = np.ascontiguousarray(arr[sel], dtype=np.float32)


def write_fps_cache(root: str | Path, npoints: int = 8192, splits: tuple[str, ...] = ("train", "test"),
                    device: str = "cpu", batch_size: int = 16, overwrite: bool = False,
                    progress: bool = True) -> list[Path]:
    """Write the FPS cache of each split next to the split files; returns the written paths.

    Shapes with equal point counts are sampled together in batches of ``batch_size`` on ``device``
    with ``pointdr2.ops.furthest_point_sample``. A shape with fewer than ``npoints`` points is a
    ValueError naming its file; an existing cache is kept unless ``overwrite``.
    """
    layout, folder = detect_layout(root, "txt")
    if npoints <= 0 or batch_size <= 0:
        raise ValueError(f"--npoints and --batch-size must be positive, got {npoints} and {batch_size}")
    names = read_lines(folder / "modelnet40_shape_names.txt")
    lookup = {name: i for i, name in enumerate(names)}
    written = []
    for split in splits:
        target = folder / f"modelnet40_{split}_{npoints}pts_fps.dat"
        if target.exists() and not overwrite:
            log.info("%s exists; keeping it (use --overwrite to rewrite)", target)
            written.append(target)
            continue
        split_file = folder / f"modelnet40_{split}.txt"
        ids = read_lines(split_file)
        if not ids:
            raise ValueError(f"{split_file} lists 0 shapes; expected one shape id per line (e.g. airplane_0001)")
        points: list[np.ndarray | None] = [None] * len(ids)
        labels: list[np.ndarray] = []
        pending: dict[int, list[tuple[int, np.ndarray]]] = {}

        bar = progress_bar(ids, desc=f"FPS cache {split} ({npoints} pts)", unit="shape", enabled=progress)
        for k, shape_id in enumerate(bar):
            cls = shape_id.rsplit("_", 1)[0]
            if cls not in lookup:
                raise ValueError(f"{split_file}: id {shape_id!r} names class {cls!r}, not in modelnet40_shape_names.txt")
            path = folder / cls / f"{shape_id}.txt"
            arr = read_txt_points(path)
            if len(arr) < npoints:
                raise ValueError(f"{path}: {len(arr)} points < --npoints {npoints}")
            labels.append(np.array([lookup[cls]], dtype=np.int32))
            pending.setdefault(len(arr), []).append((k, arr))
            if len(pending[len(arr)]) >= batch_size:
                _fps_group(pending.pop(len(arr)), npoints, device, points)
        for count in list(pending):
            _fps_group(pending.pop(count), npoints, device, points)
        tmp = target.with_suffix(".dat.tmp")
        with open(tmp, "wb") as f:
            pickle.dump([points, labels], f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, target)  # atomic: a crash never leaves a truncated cache behind
        log.info("wrote %s (%d shapes)", target, len(ids))
        written.append(target)
    return written
