"""ShapeNetPart part segmentation in the official layout users have on disk.

``shapenetcore_partanno_segmentation_benchmark_v0_normal/`` (the root, or a folder holding it):

- ``synsetoffset2category.txt``: one ``<Category>\\t<synset offset>`` per line (``Airplane\\t02691156``);
- ``train_test_split/shuffled_{train,val,test}_file_list.json``: JSON lists of
  ``"shape_data/<synset>/<shape id>"`` (12,137 / 1,870 / 2,874 shapes in the release);
- ``<synset>/<shape id>.txt``: one point per line, ``x y z nx ny nz part`` (space separated), ``part`` the
  global part id 0..49 (a whole number, written as a float in the release).

16 categories own fixed ranges of the 50 parts (``classes.SHAPENETPART_PARTS``: Airplane 0-3, Bag 4-5, ...,
Table 47-49); the category label is the index in ``classes.SHAPENETPART_CATEGORIES`` whatever the order of
``synsetoffset2category.txt`` (a file listing fewer categories selects those). A file with another column
count, a part outside its category's range, a non-finite value, a missing shape file or split file is a
one-line error naming the file.

Samples: ``{"points": float32 [N, 3] (or [N, 6] with use_normals: xyz then normals), "label": int64 [N]
(global part ids), "category": int64 []}``. As Point-MAE's ``PartNormalDataset`` (``pc_normalize``), xyz
of the whole shape are centred on the centroid and scaled into the unit sphere, then ``num_points`` points
are drawn: a random subset (every point once, then random repeats, when the shape has fewer), new in every
epoch for "train" and fixed per shape (``seed``) for "val"/"test", or ``sampling: fps``. No augmentation by
default (as ``PartNormalDataset``); ``dataset.transforms.train`` adds it (e.g. ``{name: scale, low: 0.8,
high: 1.25, anisotropic: false}``, one factor for all axes, as PointNet++'s part-segmentation training).

Splits are the release's own: "train", "val", "test"; ``trainval: true`` trains on train + val as
Point-MAE and PointNeXt do (their models are selected on the test split). ``pointdr2 prepare shapenetpart``
checks every file and writes a cache (``pointdr2_cache/`` in the root) that later loads read instead of the
text files (``use_cache``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pointdr2.data.classes import (
    SHAPENETPART_CATEGORIES,
    SHAPENETPART_PART_NAMES,
    SHAPENETPART_PARTS,
    SHAPENETPART_SYNSETS,
)
from pointdr2.data.common import (
    AugmentedDataset,
    check_finite,
    check_split,
    missing_root_error,
    normalize_unit_sphere,
)
from pointdr2.data.transforms import build_transforms, default_transforms, furthest_point_indices

log = logging.getLogger(__name__)

ROOT_DIR = "shapenetcore_partanno_segmentation_benchmark_v0_normal"
CATEGORY_FILE = "synsetoffset2category.txt"
SPLIT_DIR = "train_test_split"
SPLIT_FILES = {split: f"shuffled_{split}_file_list.json" for split in ("train", "val", "test")}
CACHE_DIR = "pointdr2_cache"
CACHE_VERSION = 1
COLUMNS = 7  # x y z nx ny nz part
EXPECTED = [f"{ROOT_DIR}/ with {CATEGORY_FILE}, {SPLIT_DIR}/shuffled_{{train,val,test}}_file_list.json and "
            "<synset>/<shape id>.txt (x y z nx ny nz part per line)"]

SYNSET_TO_CATEGORY = {s: i for i, s in enumerate(SHAPENETPART_SYNSETS)}
# part id -> its category (the inverse of SHAPENETPART_PARTS)
PART_TO_CATEGORY = np.asarray([c for c, parts in enumerate(SHAPENETPART_PARTS) for _ in parts], dtype=np.int64)


@dataclass(frozen=True)
class Shape:
    """One entry of a split file: ``<synset>/<shape_id>``, its category label and its point file."""

    synset: str
    shape_id: str
    category: int
    path: Path

    @property
    def key(self) -> str:
        return f"{self.synset}/{self.shape_id}"


def find_root(root: str | Path) -> Path:
    """The folder holding ``synsetoffset2category.txt``: ``root`` itself or ``root/<ROOT_DIR>``."""
    root = Path(root).expanduser()
    for folder in (root, root / ROOT_DIR):
        if (folder / CATEGORY_FILE).is_file():
            return folder
    raise missing_root_error("shapenetpart", root, EXPECTED, "shapenetpart")


def read_categories(root: Path) -> dict[str, int]:
    """``{synset: category label}`` of the categories listed in ``synsetoffset2category.txt``."""
    path = root / CATEGORY_FILE
    out: dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 2:
            raise ValueError(f"{path}:{number}: expected '<Category> <synset offset>' (e.g. 'Airplane\t02691156'), "
                             f"got {line.strip()!r}")
        name, synset = tokens
        if synset not in SYNSET_TO_CATEGORY:
            raise ValueError(f"{path}:{number}: synset {synset!r} ({name}) is not one of the 16 ShapeNetPart "
                             f"categories ({', '.join(SHAPENETPART_SYNSETS)})")
        out[synset] = SYNSET_TO_CATEGORY[synset]
    if not out:
        raise ValueError(f"{path}: lists no category; expected lines such as 'Airplane\t02691156'")
    return out


def read_split(root: Path, split: str, categories: Mapping[str, int]) -> list[Shape]:
    """The shapes of the release's split file ``split`` ("train" | "val" | "test") in listed categories."""
    path = root / SPLIT_DIR / SPLIT_FILES[split]
    if not path.is_file():
        raise FileNotFoundError(f"ShapeNetPart split file missing: {path} (expected a JSON list of "
                                "'shape_data/<synset>/<shape id>' strings)")
    try:
        entries = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of 'shape_data/<synset>/<shape id>' strings, "
                         f"got a {type(entries).__name__}")
    shapes, skipped = [], 0
    for entry in entries:
        parts = entry.strip("/").split("/") if isinstance(entry, str) else []
        if len(parts) < 2 or not parts[-1] or parts[-2] not in SYNSET_TO_CATEGORY:
            raise ValueError(f"{path}: entry {entry!r} is not 'shape_data/<synset>/<shape id>' with one of the "
                             "16 ShapeNetPart synsets")
        synset, shape_id = parts[-2], parts[-1]
        if synset not in categories:
            skipped += 1  # a category left out of synsetoffset2category.txt: not selected
            continue
        shapes.append(Shape(synset, shape_id, categories[synset], root / synset / f"{shape_id}.txt"))
    if skipped:
        log.info("ShapeNetPart %s: %d shapes of categories not in %s skipped", split, skipped, CATEGORY_FILE)
    return shapes


def read_shape(path: Path, category: int) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [n, 6] xyz + normals, int64 [n] global part ids) of one shape file, checked."""
    if not path.is_file():
        raise FileNotFoundError(f"ShapeNetPart shape file missing: {path}")
    try:
        arr = np.loadtxt(path, dtype=np.float64, ndmin=2, comments=None)
    except ValueError as exc:
        raise ValueError(f"{path}: malformed point file ({str(exc).splitlines()[0]}); expected {COLUMNS} "
                         "space-separated values x y z nx ny nz part per line") from None
    if arr.shape[0] == 0:
        raise ValueError(f"{path}: no points; expected lines of {COLUMNS} values x y z nx ny nz part")
    if arr.shape[1] != COLUMNS:
        raise ValueError(f"{path}: {arr.shape[1]} columns; expected {COLUMNS} (x y z nx ny nz part)")
    check_finite(arr, path, "values")
    part = arr[:, 6]
    labels = np.rint(part).astype(np.int64)
    bad = np.flatnonzero((labels != part) | ~np.isin(labels, SHAPENETPART_PARTS[category]))
    if len(bad):
        parts = SHAPENETPART_PARTS[category]
        raise ValueError(f"{path}:{bad[0] + 1}: part label {part[bad[0]]:g} outside "
                         f"{SHAPENETPART_CATEGORIES[category]}'s parts {parts[0]}..{parts[-1]}")
    return arr[:, :6].astype(np.float32), labels


# ---------------------------------------------------------------------------- the cache
def cache_paths(root: Path, split: str) -> dict[str, Path]:
    folder = root / CACHE_DIR
    return {"points": folder / f"{split}_points.npy", "labels": folder / f"{split}_labels.npy",
            "index": folder / f"{split}_index.json"}


def write_cache(root: Path, split: str, shapes: Sequence[Shape], arrays: Sequence[tuple[np.ndarray, np.ndarray]]
                ) -> dict[str, Path]:
    """Write the checked points of ``shapes`` (one (points, labels) pair each) as the cache of ``split``."""
    paths = cache_paths(root, split)
    paths["index"].parent.mkdir(parents=True, exist_ok=True)
    offsets = np.cumsum([0] + [len(p) for p, _ in arrays]).tolist()
    points = np.concatenate([p for p, _ in arrays]) if arrays else np.zeros((0, 6), np.float32)
    labels = np.concatenate([lab for _, lab in arrays]).astype(np.uint8) if arrays else np.zeros(0, np.uint8)
    index = {"version": CACHE_VERSION, "split": split, "shapes": [s.key for s in shapes], "offsets": offsets}
    for key, write in (("points", lambda f: np.save(f, points)), ("labels", lambda f: np.save(f, labels)),
                       ("index", lambda f: f.write(json.dumps(index).encode()))):
        tmp = paths[key].with_name(paths[key].name + ".tmp")
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, paths[key])  # atomic: a crash never leaves a truncated cache behind
    return paths


def load_cache(root: Path, split: str, shapes: Sequence[Shape]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(points float32 [T, 6] memory-mapped, labels uint8 [T], offsets int64 [n+1]) or None without a cache.

    A cache that does not list exactly ``shapes`` (the split file changed) is an error naming it.
    """
    paths = cache_paths(root, split)
    if not paths["index"].is_file():
        return None
    try:
        index = json.loads(paths["index"].read_text())
        points = np.load(paths["points"], mmap_mode="r")
        labels = np.load(paths["labels"], mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{paths['index'].parent}: unreadable ShapeNetPart cache ({exc}); rewrite it with "
                         f"`pointdr2 prepare shapenetpart --root {root} --overwrite`") from None
    offsets = np.asarray(index.get("offsets", []), dtype=np.int64)
    if (index.get("version") != CACHE_VERSION or index.get("shapes") != [s.key for s in shapes]
            or len(offsets) != len(shapes) + 1 or offsets[-1] != len(points) or len(labels) != len(points)
            or points.ndim != 2 or points.shape[1] != 6):
        raise ValueError(f"{paths['index']}: the cache does not match {SPLIT_DIR}/{SPLIT_FILES[split]} and "
                         f"{CATEGORY_FILE}; rewrite it with `pointdr2 prepare shapenetpart --root {root} --overwrite`")
    return points, labels, offsets


# ---------------------------------------------------------------------------- the dataset
class ShapeNetPart(AugmentedDataset):
    """ShapeNetPart part segmentation (layout, checks and sample format in the module docstring).

    Attributes: ``num_classes`` (50 parts), ``class_names`` (``"<Category>_<k>"``), ``category_names`` (16),
    ``category_parts`` (the global part ids of each category), ``categories`` (int64 [len] label per item).
    """

    num_classes = len(SHAPENETPART_PART_NAMES)
    class_names = SHAPENETPART_PART_NAMES
    category_names = SHAPENETPART_CATEGORIES
    category_parts = SHAPENETPART_PARTS

    def __init__(self, root: str | Path, split: str = "train", num_points: int = 2048, use_normals: bool = False,
                 normalize: bool = True, sampling: str = "random", trainval: bool = False, use_cache: bool = True,
                 transforms: Sequence[Mapping] | None = None, val_fraction: float = 0.1, seed: int = 0):
        self.split = check_split(split)
        self.num_points = int(num_points)
        if self.num_points <= 0:
            raise ValueError(f"dataset.num_points must be positive, got {num_points}")
        if sampling not in ("random", "fps"):
            raise ValueError(f"dataset.sampling must be random or fps, got {sampling!r}")
        self.use_normals, self.normalize, self.sampling = bool(use_normals), bool(normalize), sampling
        self.seed = int(seed)
        self.root = find_root(root)
        categories = read_categories(self.root)
        # The release has its own validation split: val_fraction (a carve of train elsewhere) does not apply.
        file_splits = ("train", "val") if split == "train" and trainval else (split,)
        self.shapes: list[Shape] = []
        self._where: list[tuple[str | None, int]] = []  # per item: (file split of its cache or None, index there)
        self._cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray] | None] = {}
        for file_split in file_splits:
            shapes = read_split(self.root, file_split, categories)
            cache = load_cache(self.root, file_split, shapes) if use_cache else None
            if cache is None:
                missing = next((s for s in shapes if not s.path.is_file()), None)
                if missing is not None:
                    raise FileNotFoundError(f"ShapeNetPart shape file missing: {missing.path} (listed in "
                                            f"{self.root / SPLIT_DIR / SPLIT_FILES[file_split]})")
            else:
                self._cache[file_split] = cache
            self._where += [(file_split if cache is not None else None, k) for k in range(len(shapes))]
            self.shapes += shapes
        if not self.shapes:
            raise ValueError(f"ShapeNetPart {split}: {self.root / SPLIT_DIR} lists no shape of the categories in "
                             f"{self.root / CATEGORY_FILE}")
        self.categories = np.asarray([s.category for s in self.shapes], dtype=np.int64)
        self.transform = build_transforms(default_transforms("shapenetpart", split) if transforms is None
                                          else transforms)
        log.info("ShapeNetPart %s (%s%s): %d shapes, %d categories", split, self.root,
                 ", cached" if self._cache else "", len(self.shapes),
                 len(np.unique(self.categories)))

    def __len__(self) -> int:
        return len(self.shapes)

    def raw_shape(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(float32 [n, 6] xyz + normals as in the file, int64 [n] part ids) of item ``i``, every point."""
        file_split, k = self._where[i]
        if file_split is None:
            return read_shape(self.shapes[i].path, self.shapes[i].category)
        if self._cache[file_split] is None:  # reopened after pickling (a spawned DataLoader worker)
            paths = cache_paths(self.root, file_split)
            self._cache[file_split] = (np.load(paths["points"], mmap_mode="r"), np.load(paths["labels"], mmap_mode="r"),
                                       np.asarray(json.loads(paths["index"].read_text())["offsets"], dtype=np.int64))
        points, labels, offsets = self._cache[file_split]
        lo, hi = int(offsets[k]), int(offsets[k + 1])
        return np.array(points[lo:hi], dtype=np.float32), np.asarray(labels[lo:hi], dtype=np.int64)

    def __getstate__(self) -> dict:
        # memory maps would pickle as full copies of the cache: workers reopen them instead
        state = dict(self.__dict__)
        state["_cache"] = dict.fromkeys(self._cache)
        return state

    def _choose(self, pts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = len(pts)
        if n < self.num_points:  # every point once, then random repeats (they add no information)
            return np.concatenate([np.arange(n), rng.choice(n, size=self.num_points - n)]).astype(np.int64)
        if self.sampling == "fps":
            return furthest_point_indices(pts, self.num_points)
        return np.sort(rng.choice(n, size=self.num_points, replace=False)).astype(np.int64)

    def __getitem__(self, i: int) -> dict:
        rng = self.next_rng(i)
        if self.split != "train":
            rng = np.random.default_rng([self.seed, 50, i])
        pts, labels = self.raw_shape(i)
        if self.normalize:
            pts = normalize_unit_sphere(pts)  # over the whole shape, before sampling (as pc_normalize)
        idx = self._choose(pts, rng)
        pts, labels = pts[idx], labels[idx]
        sample = {"points": np.ascontiguousarray(pts if self.use_normals else pts[:, :3]), "label": labels,
                  "category": int(self.categories[i])}
        sample = self.transform(sample, rng)
        return {"points": torch.from_numpy(np.ascontiguousarray(sample["points"], dtype=np.float32)),
                "label": torch.from_numpy(np.ascontiguousarray(sample["label"], dtype=np.int64)),
                "category": torch.tensor(int(sample["category"]), dtype=torch.int64)}
