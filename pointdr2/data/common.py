"""Helpers shared by the dataset modules: per-item random generators, split carving, checks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

# Where the official data comes from (shown in "root not found" errors).
SOURCES = {
    "modelnet40": (
        "modelnet40_normal_resampled.zip (Point-BERT/Point-MAE layout) or modelnet40_ply_hdf5_2048.zip "
        "(PointNet/PointNeXt layout), both from https://shapenet.cs.stanford.edu/media/ "
        "(mirrors are listed in the Point-BERT and PointNeXt READMEs)"
    ),
    "scanobjectnn": (
        "h5_files.zip of ScanObjectNN, granted through the form at https://hkust-vgd.github.io/scanobjectnn/"
    ),
    "shapenetpart": (
        "shapenetcore_partanno_segmentation_benchmark_v0_normal.zip from https://shapenet.cs.stanford.edu/media/ "
        "(mirrors are listed in the Point-MAE and PointNeXt segmentation READMEs)"
    ),
    "s3dis": (
        "Stanford3dDataset_v1.2_Aligned_Version.zip from http://buildingparser.stanford.edu/dataset.html, "
        "converted with `pointdr2 prepare s3dis --raw <Stanford3dDataset_v1.2_Aligned_Version> --out <s3disfull>`"
    ),
}

SYNTHETIC_HINT = "(or generate a synthetic stand-in: `pointdr2 prepare synthetic --layout {layout} --out DIR`)"


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def check_fraction(val_fraction: float) -> float:
    val_fraction = float(val_fraction)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    return val_fraction


def carve_validation(groups: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask [n] of the items that form the validation split.

    ``groups`` (int64 [n]) are the strata: class labels for classification, so every class keeps the
    same share in train and val. Per stratum ``round(fraction * count)`` items are drawn with a
    generator seeded by ``seed`` alone, so the carve is identical in every process and run; a stratum
    with at least two items gives at least one to val when the fraction is positive.
    """
    groups = np.asarray(groups)
    mask = np.zeros(len(groups), dtype=bool)
    if val_fraction <= 0 or len(groups) == 0:
        return mask
    rng = np.random.default_rng(seed)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        take = int(round(val_fraction * len(members)))
        if take == 0 and len(members) >= 2:
            take = 1
        take = min(take, len(members) - 1)  # never empty a class out of train
        if take > 0:
            mask[rng.choice(members, size=take, replace=False)] = True
    return mask


def split_indices(n_train_items: int, groups: np.ndarray, split: str, val_fraction: float,
                  seed: int) -> np.ndarray:
    """Indices (int64) into the official training items for ``split`` "train" or "val"."""
    val = carve_validation(groups, val_fraction, seed)
    if split == "val":
        if not val.any():
            raise ValueError(f"split 'val' is empty with val_fraction={val_fraction}; use a positive fraction "
                             "(train.val_fraction) or train.select_on=test")
        return np.flatnonzero(val)
    return np.flatnonzero(~val)


class AugmentedDataset(Dataset):
    """A dataset whose augmentation draws come from :func:`item_rng` over the items fetched so far.

    :meth:`set_epoch` positions that stream (the trainer calls it at every epoch start, and at the batch a
    resumed run continues from), so an interrupted and resumed run draws exactly what an uninterrupted
    one draws. Subclasses take one generator per ``__getitem__`` from :meth:`next_rng`.
    """

    epoch: int = 0
    fetched: int = 0  # items fetched by this process since the last set_epoch

    def set_epoch(self, epoch: int, fetched: int = 0) -> None:
        """Start epoch ``epoch`` with ``fetched`` of its items already fetched (0 at an epoch's start)."""
        self.epoch, self.fetched = int(epoch), int(fetched)

    def next_rng(self, index: int) -> np.random.Generator:
        """The generator of the next fetch of item ``index``."""
        self.fetched += 1
        return item_rng(index, self.fetched)


def item_rng(index: int, calls: int) -> np.random.Generator:
    """The generator for one ``__getitem__``: reproducible and different in every worker and epoch.

    ``torch.initial_seed()`` is the main process seed there and ``base_seed + worker_id`` in a
    DataLoader worker (a new base seed each epoch), so ``torch.manual_seed`` fixes everything while
    workers never share augmentation draws (the classic numpy-in-workers bug). ``calls`` counts the
    items fetched by this process, which changes the draws between epochs without workers.
    """
    return np.random.default_rng([torch.initial_seed(), int(calls), int(index)])


def normalize_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centre xyz (columns 0:3) on the centroid and scale them into the unit sphere (max norm 1)."""
    out = points.astype(np.float32, copy=True)
    xyz = out[:, :3]
    xyz -= xyz.mean(axis=0, keepdims=True)
    scale = float(np.sqrt((xyz.astype(np.float64) ** 2).sum(axis=1)).max()) if len(xyz) else 0.0
    if scale > 0:
        xyz /= scale
    return out


def check_finite(array: np.ndarray, path: Path | str, what: str = "coordinates") -> None:
    """Raise ValueError naming ``path`` (and the first bad row) if ``array`` holds NaN or inf."""
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        where = ", ".join(str(int(i)) for i in bad)
        raise ValueError(f"{path}: non-finite {what} (NaN or inf) at index [{where}]")


def check_labels(labels: np.ndarray, num_classes: int, path: Path | str) -> None:
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(f"{path}: label {int(bad)} out of range; expected 0..{num_classes - 1}")


def missing_root_error(name: str, root: Path | str, expected: Sequence[str], layout: str) -> FileNotFoundError:
    lines = "; ".join(expected)
    return FileNotFoundError(
        f"{name} data not found at {root}: expected {lines}. Official data: {SOURCES[name]} "
        + SYNTHETIC_HINT.format(layout=layout)
    )
