"""``pointdr2 prepare shapenetpart``: check every file of the official layout and write the loader's cache.

Reads ``synsetoffset2category.txt``, the three split files and every shape file they list, with the loader's
checks (a missing file, another column count than ``x y z nx ny nz part``, a part outside the category's
range or a non-finite value is a one-line error naming the file). The cache (``<root>/pointdr2_cache/``:
``{split}_points.npy`` float32 [T, 6], ``{split}_labels.npy`` uint8 [T], ``{split}_index.json`` with the
shape keys and offsets) holds every point, so training still draws new points each epoch; loading it is
memory-mapped. An existing cache that matches the split files is reported, not rewritten, unless
``overwrite``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pointdr2.data.classes import SHAPENETPART_PARTS
from pointdr2.data.shapenetpart import (
    SPLIT_FILES,
    cache_paths,
    find_root,
    load_cache,
    read_categories,
    read_shape,
    read_split,
    write_cache,
)
from pointdr2.progress import bar as progress_bar

log = logging.getLogger(__name__)


def check_shapenetpart(root: str | Path, cache: bool = True, overwrite: bool = False, num_points: int = 2048,
                       progress: bool = True) -> list[dict]:
    """One row per split: split, shapes, categories (present/16), points per shape (min/median/max), shapes
    with fewer than ``num_points`` points, part ids present (/50), and the cache path ("-" without one)."""
    folder = find_root(root)
    categories = read_categories(folder)
    listed = {split: read_split(folder, split, categories) for split in SPLIT_FILES}  # all three must exist
    rows = []
    for split, shapes in listed.items():
        if not shapes:
            raise ValueError(f"{folder / 'train_test_split' / SPLIT_FILES[split]}: lists no shape of the "
                             "categories in synsetoffset2category.txt")
        have = None if overwrite else load_cache(folder, split, shapes)
        if have is not None:
            _, labels, offsets = have
            counts = np.diff(offsets)
            parts = np.unique(np.asarray(labels))
            where = str(cache_paths(folder, split)["index"].parent)
        else:
            arrays = [read_shape(s.path, s.category)
                      for s in progress_bar(shapes, desc=f"ShapeNetPart {split}", unit="shape", enabled=progress)]
            counts = np.asarray([len(p) for p, _ in arrays])
            parts = np.unique(np.concatenate([lab for _, lab in arrays]))
            where = str(write_cache(folder, split, shapes, arrays)["index"].parent) if cache else "-"
        rows.append({
            "split": split, "shapes": len(shapes),
            "categories": f"{len({s.category for s in shapes})}/{len(SHAPENETPART_PARTS)}",
            "points": f"{int(counts.min())}/{int(np.median(counts))}/{int(counts.max())}",
            "below": int((counts < num_points).sum()), "parts": f"{len(parts)}/50", "cache": where,
        })
        log.info("ShapeNetPart %s: %d shapes %s", split, len(shapes), "in the cache" if have is not None else "checked")
    return rows
