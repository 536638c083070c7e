"""Datasets: ``build_dataset(cfg_dataset, split)`` from the config's ``dataset`` section.

``dataset.name`` picks a builder from ``DATASETS``; every other key is checked against that
builder's keys (an unknown key is a ValueError naming the closest known ones):

=============  ===================================================================================
modelnet40     root, num_points (1024), use_normals (false), layout (auto|txt|h5), normalize (true),
               sampling (fps|first, txt files without cache), use_cache (true), transforms
scanobjectnn   root, variant (OBJ_BG|OBJ_ONLY|PB_T50_RS), num_points (all: 2048), use_mask (false),
               normalize (false), transforms
shapenetpart   root, num_points (2048), use_normals (false), normalize (true), sampling (random|fps),
               trainval (false: train on the release's train split; true: train + val), use_cache (true),
               transforms
s3dis          root, test_area (5), voxel_size (0.04), crop_points (24000), loop (30),
               test_voxel_size (= voxel_size), merge_classes ({new: [S3DIS classes]}), transforms
=============  ===================================================================================

``transforms`` is a mapping ``{train: [specs], test: [specs]}`` (``val`` defaults to ``test``); see
``pointdr2.data.transforms``. ``root`` defaults to ``data/<name>``.

Splits: "train", "test", and "val" = a deterministic carve of ``val_fraction`` of the official
training split (stratified by class; by room for S3DIS) fixed by ``seed``; "train" excludes it.
Pass ``val_fraction=0`` to train on the whole official training split. ShapeNetPart has a validation
split of its own: its "val" is the release's ``shuffled_val_file_list.json`` and ``val_fraction``
does not apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from torch.utils.data import Dataset

from pointdr2.data.classes import (
    MODELNET40_CLASSES,
    S3DIS_CLASSES,
    S3DIS_COLORS,
    SCANOBJECTNN_CLASSES,
)
from pointdr2.data.common import check_fraction, check_split
from pointdr2.data.modelnet40 import ModelNet40
from pointdr2.data.s3dis import S3DIS, S3DISRoom, S3DISWholeRoom, scatter_predictions
from pointdr2.data.scanobjectnn import ScanObjectNN
from pointdr2.data.shapenetpart import ShapeNetPart
from pointdr2.data.transforms import build_transforms
from pointdr2.hints import did_you_mean

__all__ = [
    "DATASETS", "MODELNET40_CLASSES", "S3DIS_CLASSES", "S3DIS_COLORS", "SCANOBJECTNN_CLASSES",
    "ModelNet40", "S3DIS", "S3DISRoom", "S3DISWholeRoom", "ScanObjectNN", "ShapeNetPart", "build_dataset",
    "build_transforms", "register_dataset", "scatter_predictions",
]

# name -> (builder(options, split, val_fraction, seed), allowed keys besides name/root/transforms)
DATASETS: dict[str, tuple[Callable[..., Dataset], tuple[str, ...]]] = {}
COMMON_KEYS = ("name", "root", "transforms")


def register_dataset(name: str, keys: tuple[str, ...]) -> Callable[[Callable], Callable]:
    def wrap(fn: Callable) -> Callable:
        DATASETS[name] = (fn, keys)
        return fn

    return wrap


def _transforms_for(spec: Any, split: str) -> Any:
    """The transform list of ``split`` from ``dataset.transforms`` (None = the dataset's default)."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise ValueError(f"dataset.transforms must be a mapping with train/test lists, got {spec!r}")
    for key in spec:
        if key not in ("train", "val", "test"):
            raise ValueError(f"dataset.transforms.{key}: unknown split; expected train, val or test")
    if split == "val" and "val" not in spec:
        split = "test"
    return spec.get(split)


@register_dataset("modelnet40", ("num_points", "use_normals", "layout", "normalize", "sampling", "use_cache"))
def _build_modelnet40(opts: dict, split: str, val_fraction: float, seed: int) -> Dataset:
    return ModelNet40(split=split, val_fraction=val_fraction, seed=seed, **opts)


@register_dataset("scanobjectnn", ("variant", "num_points", "use_mask", "normalize"))
def _build_scanobjectnn(opts: dict, split: str, val_fraction: float, seed: int) -> Dataset:
    return ScanObjectNN(split=split, val_fraction=val_fraction, seed=seed, **opts)


@register_dataset("shapenetpart", ("num_points", "use_normals", "normalize", "sampling", "trainval", "use_cache"))
def _build_shapenetpart(opts: dict, split: str, val_fraction: float, seed: int) -> Dataset:
    return ShapeNetPart(split=split, val_fraction=val_fraction, seed=seed, **opts)


@register_dataset("s3dis", ("test_area", "voxel_size", "crop_points", "loop", "test_voxel_size", "merge_classes"))
def _build_s3dis(opts: dict, split: str, val_fraction: float, seed: int) -> Dataset:
    test_voxel = opts.pop("test_voxel_size", opts.get("voxel_size", 0.04))
    if split == "train":
        return S3DIS(split=split, val_fraction=val_fraction, seed=seed, **opts)
    whole = {k: v for k, v in opts.items() if k in ("root", "test_area", "transforms", "merge_classes")}
    return S3DISWholeRoom(split=split, voxel_size=test_voxel, val_fraction=val_fraction, seed=seed, **whole)


def build_dataset(cfg_dataset: Mapping, split: str, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """The dataset of ``split`` ("train" | "val" | "test") described by ``cfg_dataset``.

    Classification datasets yield ``{"points": float32 [N, 3(+C)], "label": int64 []}``; S3DIS
    "train" yields ``{"pos", "feats", "label"}`` crops and "val"/"test" yield whole rooms
    (:class:`S3DISRoom`, flagged by ``dataset.whole_room``); ShapeNetPart yields ``{"points" [N, 3(+3)],
    "label" int64 [N] part ids, "category" int64 []}``. Every dataset has ``num_classes`` and
    ``class_names``.
    """
    if not isinstance(cfg_dataset, Mapping):
        raise ValueError(f"the dataset config must be a mapping, got {type(cfg_dataset).__name__}")
    check_split(split)
    val_fraction = check_fraction(val_fraction)
    name = cfg_dataset.get("name")
    if name not in DATASETS:
        hint = did_you_mean(name, DATASETS, cutoff=0.4)
        raise ValueError(f"dataset.name must be one of {', '.join(sorted(DATASETS))}, got {name!r}{hint}")
    builder, keys = DATASETS[name]
    allowed = COMMON_KEYS + keys
    for key in cfg_dataset:
        if key not in allowed:
            hint = did_you_mean(key, allowed, prefix="dataset.", otherwise=f"; known keys for {name}: {', '.join(allowed)}")
            raise ValueError(f"unknown config key 'dataset.{key}' for dataset {name}{hint}")
    opts = {k: v for k, v in cfg_dataset.items() if k not in ("name", "transforms")}
    opts.setdefault("root", f"data/{name}")
    opts["transforms"] = _transforms_for(cfg_dataset.get("transforms"), split)
    dataset = builder(opts, split, val_fraction, int(seed))
    if not hasattr(dataset, "whole_room"):
        dataset.whole_room = False
    return dataset
