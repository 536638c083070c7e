"""ScanObjectNN (OBJ_BG, OBJ_ONLY, PB_T50_RS) from the official h5 files.

Files (under the root, or under ``root/h5_files/`` as some users keep them):

========== ================================================================
OBJ_BG     ``main_split/{training,test}_objectdataset.h5``
OBJ_ONLY   ``main_split_nobg/{training,test}_objectdataset.h5``
PB_T50_RS  ``main_split/{training,test}_objectdataset_augmentedrot_scale75.h5``
========== ================================================================

Keys ``data`` (n, 2048, 3) float32, ``label`` (n,), ``mask`` (n, 2048) with -1 = background.
Samples: ``{"points": float32 [N, 3], "label": int64 []}`` plus, with ``use_mask``, ``"mask": int64
[N]`` holding the file's values (-1 background, >= 0 object).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from pointdr2.data.classes import SCANOBJECTNN_CLASSES
from pointdr2.data.common import (
    AugmentedDataset,
    check_finite,
    check_labels,
    check_split,
    missing_root_error,
    normalize_unit_sphere,
    split_indices,
)
from pointdr2.data.transforms import build_transforms, default_transforms

log = logging.getLogger(__name__)

VARIANTS: dict[str, tuple[str, str]] = {
    # variant -> (folder, file name with {split} in training|test)
    "OBJ_BG": ("main_split", "{split}_objectdataset.h5"),
    "OBJ_ONLY": ("main_split_nobg", "{split}_objectdataset.h5"),
    "PB_T50_RS": ("main_split", "{split}_objectdataset_augmentedrot_scale75.h5"),
}
PREFIXES = ("", "h5_files")


def variant_file(root: str | Path, variant: str, file_split: str) -> Path:
    """The h5 file of ``variant`` for ``file_split`` in {"training", "test"}, with or without ``h5_files/``."""
    if variant not in VARIANTS:
        raise ValueError(f"dataset.variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    root = Path(root).expanduser()
    folder, pattern = VARIANTS[variant]
    rel = Path(folder) / pattern.format(split=file_split)
    candidates = [root / prefix / rel for prefix in PREFIXES]
    for path in candidates:
        if path.is_file():
            return path
    raise missing_root_error(
        "scanobjectnn", root,
        [f"{rel} (or h5_files/{rel}) for variant {variant}; the variants are "
         + ", ".join(f"{v}: {f}/{p.format(split='{training,test}')}" for v, (f, p) in VARIANTS.items())],
        "scanobjectnn")


def read_h5(path: Path, need_mask: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(data float32 [n, P, 3], label int64 [n], mask int64 [n, P] or None) with checks naming the file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            keys = sorted(f.keys())
            required = ["data", "label"] + (["mask"] if need_mask else [])
            for key in required:
                if key not in f:
                    raise ValueError(f"{path}: missing h5 key {key!r}; found {keys}, expected data (n,2048,3), "
                                     "label (n,) and mask (n,2048)")
            data = np.asarray(f["data"][:], dtype=np.float32)
            label = np.asarray(f["label"][:]).reshape(-1).astype(np.int64)
            mask = np.asarray(f["mask"][:]).astype(np.int64) if need_mask else None
    except OSError as exc:
        raise ValueError(f"{path}: unreadable or truncated h5 file ({exc})") from None
    if data.ndim != 3 or data.shape[2] != 3 or len(label) != len(data):
        raise ValueError(f"{path}: data has shape {data.shape} and label {len(label)} entries; "
                         "expected data (n, P, 3) and label (n,)")
    if mask is not None and mask.shape != data.shape[:2]:
        raise ValueError(f"{path}: mask has shape {mask.shape}, expected {data.shape[:2]}")
    check_finite(data, path)
    check_labels(label, len(SCANOBJECTNN_CLASSES), path)
    return data, label, mask


class ScanObjectNN(AugmentedDataset):
    """ScanObjectNN classification (see the module docstring)."""

    def __init__(self, root: str | Path, split: str = "train", variant: str = "PB_T50_RS", num_points: int | None = None,
                 use_mask: bool = False, normalize: bool = False, transforms: Sequence[Mapping] | None = None,
                 val_fraction: float = 0.1, seed: int = 0):
        self.split = check_split(split)
        self.variant = variant
        self.use_mask, self.normalize = bool(use_mask), bool(normalize)
        self.path = variant_file(root, variant, "test" if split == "test" else "training")
        self.points, self.labels, self.masks = read_h5(self.path, self.use_mask)
        # None = every point of the file (2048 in the official release).
        self.num_points = self.points.shape[1] if num_points is None else int(num_points)
        if not 0 < self.num_points <= self.points.shape[1]:
            raise ValueError(f"dataset.num_points={num_points} must be in 1..{self.points.shape[1]} "
                             f"(points per object in {self.path})")
        self.class_names = SCANOBJECTNN_CLASSES
        self.num_classes = len(self.class_names)
        self.transform = build_transforms(
            default_transforms("scanobjectnn", split) if transforms is None else transforms)
        if split == "test":
            self.indices = np.arange(len(self.labels))
        else:
            self.indices = split_indices(len(self.labels), self.labels, split, val_fraction, seed)
        log.info("ScanObjectNN %s %s (%s): %d samples", variant, split, self.path, len(self.indices))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        j = int(self.indices[i])
        pts = self.points[j, : self.num_points]
        if self.normalize:
            pts = normalize_unit_sphere(pts)
        sample = {"points": np.array(pts, dtype=np.float32), "label": self.labels[j]}
        if self.use_mask:
            sample["mask"] = self.masks[j, : self.num_points]
        sample = self.transform(sample, self.next_rng(i))
        out = {"points": torch.from_numpy(np.ascontiguousarray(sample["points"], dtype=np.float32)),
               "label": torch.tensor(int(sample["label"]), dtype=torch.int64)}
        if self.use_mask:
            out["mask"] = torch.from_numpy(np.ascontiguousarray(sample["mask"], dtype=np.int64))
        return out
