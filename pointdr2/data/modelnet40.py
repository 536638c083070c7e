"""ModelNet40 in both layouts users have on disk, detected from the root.

- ``modelnet40_normal_resampled/`` (Point-BERT / Point-MAE): ``modelnet40_shape_names.txt``,
  ``modelnet40_{train,test}.txt`` (ids such as ``night_stand_0001``), ``<class>/<id>.txt`` (comma
  separated x,y,z,nx,ny,nz), and optionally the FPS cache ``modelnet40_{split}_<K>pts_fps.dat``
  (pickle of ``[list of float32 (K, 6), list of int32 (1,)]``, written by ``pointdr2 prepare
  modelnet40``). With a cache the first ``num_points`` points of each entry are used (an FPS order's
  prefix is itself an FPS sample); without one each file is read and FPS-sampled on the fly.
- ``modelnet40_ply_hdf5_2048/`` (PointNet / PointNeXt): ``ply_data_{train,test}<i>.h5`` with ``data``
  (n, 2048, 3) float32 and ``label`` (n, 1); optional ``normal`` and ``shape_names.txt``.

Samples: ``{"points": float32 [N, 3 or 6], "label": int64 []}``; xyz centred on the centroid and
scaled into the unit sphere (``normalize``) before the transforms.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from pointdr2.data.classes import MODELNET40_CLASSES
from pointdr2.data.common import (
    AugmentedDataset,
    check_finite,
    check_labels,
    check_split,
    missing_root_error,
    normalize_unit_sphere,
    split_indices,
)
from pointdr2.data.transforms import build_transforms, default_transforms, furthest_point_indices

log = logging.getLogger(__name__)

TXT_DIR = "modelnet40_normal_resampled"
H5_DIR = "modelnet40_ply_hdf5_2048"
EXPECTED = [
    f"{TXT_DIR}/ with modelnet40_shape_names.txt, modelnet40_train.txt, modelnet40_test.txt and "
    "<class>/<id>.txt (x,y,z,nx,ny,nz per line)",
    f"or {H5_DIR}/ with ply_data_train<i>.h5 and ply_data_test<i>.h5 (keys data, label)",
]
CACHE_RE = re.compile(r"modelnet40_(train|test)_(\d+)pts_fps\.dat$")


def _h5_files(folder: Path, split: str) -> list[Path]:
    files = [p for p in folder.glob(f"ply_data_{split}*.h5") if p.is_file()]

    def order(p: Path) -> tuple[int, str]:
        m = re.search(r"(\d+)\.h5$", p.name)
        return (int(m.group(1)) if m else -1, p.name)

    return sorted(files, key=order)


def detect_layout(root: str | Path, layout: str = "auto") -> tuple[str, Path]:
    """(``"txt"`` or ``"h5"``, the folder holding that layout) for ``root`` or its known subfolders."""
    if layout not in ("auto", "txt", "h5"):
        raise ValueError(f"dataset.layout must be auto, txt or h5, got {layout!r}")
    root = Path(root).expanduser()
    found: dict[str, Path] = {}
    for folder in (root, root / TXT_DIR):
        if (folder / "modelnet40_shape_names.txt").is_file():
            found.setdefault("txt", folder)
    for folder in (root, root / H5_DIR):
        if _h5_files(folder, "train") or _h5_files(folder, "test"):
            found.setdefault("h5", folder)
    if layout != "auto":
        if layout not in found:
            raise missing_root_error("modelnet40", root, [EXPECTED[0] if layout == "txt" else EXPECTED[1][3:]],
                                     f"modelnet40-{layout}")
        return layout, found[layout]
    if not found:
        raise missing_root_error("modelnet40", root, EXPECTED, "modelnet40-txt")
    kind = "txt" if "txt" in found else "h5"
    if len(found) == 2:
        log.info("ModelNet40: both layouts under %s; using txt (set dataset.layout=h5 for the other)", root)
    return kind, found[kind]


def read_txt_points(path: Path) -> np.ndarray:
    """float32 [n, 6] from one ``<class>/<id>.txt``; truncated or malformed files name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"ModelNet40 point file missing: {path}")
    try:
        arr = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{path}: malformed or truncated point file ({str(exc).splitlines()[0]})") from None
    if arr.shape[0] == 0 or arr.shape[1] != 6:
        raise ValueError(f"{path}: expected rows of 6 comma-separated values x,y,z,nx,ny,nz, got shape {arr.shape}")
    check_finite(arr, path)
    return arr


def read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"ModelNet40 file missing: {path} (expected in the {TXT_DIR} layout)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_cache(path: Path, expected_items: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The FPS cache at ``path``: (list of float32 [K, 6], int64 labels [n])."""
    try:
        with open(path, "rb") as f:
            points, labels = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable or truncated FPS cache ({type(exc).__name__}); "
                         "delete it or rewrite it with `pointdr2 prepare modelnet40`") from None
    if len(points) != expected_items or len(labels) != expected_items:
        raise ValueError(f"{path}: cache holds {len(points)} point sets and {len(labels)} labels, "
                         f"expected {expected_items} (the split file's length)")
    labels = np.asarray([int(np.asarray(lab).reshape(-1)[0]) for lab in labels], dtype=np.int64)
    return points, labels


class ModelNet40(AugmentedDataset):
    """ModelNet40 classification (see the module docstring for layouts and sample format)."""

    def __init__(self, root: str | Path, split: str = "train", num_points: int = 1024, use_normals: bool = False,
                 layout: str = "auto", normalize: bool = True, sampling: str = "fps", use_cache: bool = True,
                 transforms: Sequence[Mapping] | None = None, val_fraction: float = 0.1, seed: int = 0):
        self.split = check_split(split)
        self.num_points = int(num_points)
        if self.num_points <= 0:
            raise ValueError(f"dataset.num_points must be positive, got {num_points}")
        if sampling not in ("fps", "first"):
            raise ValueError(f"dataset.sampling must be fps or first, got {sampling!r}")
        self.use_normals, self.normalize, self.sampling = bool(use_normals), bool(normalize), sampling
        self.layout, self.root = detect_layout(root, layout)
        self.transform = build_transforms(default_transforms("modelnet40", split) if transforms is None else transforms)
        file_split = "test" if split == "test" else "train"
        if self.layout == "txt":
            self._init_txt(file_split, use_cache)
        else:
            self._init_h5(file_split)
        self.num_classes = len(self.class_names)
        check_labels(self.labels, self.num_classes, self.source)
        if split == "test":
            self.indices = np.arange(len(self.labels))
        else:
            self.indices = split_indices(len(self.labels), self.labels, split, val_fraction, seed)
        log.info("ModelNet40 %s (%s layout, %s): %d samples, %d classes", split, self.layout, self.root,
                 len(self.indices), self.num_classes)

    # ---------------------------------------------------------------- txt layout
    def _init_txt(self, file_split: str, use_cache: bool) -> None:
        self.class_names = tuple(read_lines(self.root / "modelnet40_shape_names.txt"))
        lookup = {name: i for i, name in enumerate(self.class_names)}
        split_file = self.root / f"modelnet40_{file_split}.txt"
        ids = read_lines(split_file)
        self.files, labels = [], []
        for shape_id in ids:
            cls = shape_id.rsplit("_", 1)[0]
            if cls not in lookup:
                raise ValueError(f"{split_file}: id {shape_id!r} names class {cls!r}, not in modelnet40_shape_names.txt")
            self.files.append(self.root / cls / f"{shape_id}.txt")
            labels.append(lookup[cls])
        self.labels = np.asarray(labels, dtype=np.int64)
        self.source = split_file
        self.cache: list[np.ndarray] | None = None
        cache_path = self._find_cache(file_split) if use_cache else None
        if cache_path is not None:
            self.cache, cache_labels = load_cache(cache_path, len(ids))
            if not np.array_equal(cache_labels, self.labels):
                raise ValueError(f"{cache_path}: labels disagree with {split_file}; rewrite the cache")
            self.source = cache_path
            log.info("ModelNet40: using FPS cache %s", cache_path)
        else:
            if self.sampling == "fps" and self.num_points > 2048:
                log.warning("ModelNet40: no FPS cache with >= %d points in %s; sampling every shape on the fly is "
                            "slow. Write one with `pointdr2 prepare modelnet40 --root %s --npoints %d`",
                            self.num_points, self.root, self.root, self.num_points)
            missing = [f for f in self.files[:1] + self.files[-1:] if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"ModelNet40 point file missing: {missing[0]} (listed in {split_file})")

    def _find_cache(self, file_split: str) -> Path | None:
        best: tuple[int, Path] | None = None
        for path in self.root.glob(f"modelnet40_{file_split}_*pts_fps.dat"):
            m = CACHE_RE.search(path.name)
            if m and int(m.group(2)) >= self.num_points and (best is None or int(m.group(2)) < best[0]):
                best = (int(m.group(2)), path)
        return None if best is None else best[1]

    # ---------------------------------------------------------------- h5 layout
    def _init_h5(self, file_split: str) -> None:
        import h5py

        files = _h5_files(self.root, file_split)
        if not files:
            raise missing_root_error("modelnet40", self.root, [f"ply_data_{file_split}<i>.h5 in {self.root}"],
                                     "modelnet40-h5")
        data, normals, labels = [], [], []
        for path in files:
            try:
                with h5py.File(path, "r") as f:
                    for key in ("data", "label"):
                        if key not in f:
                            raise ValueError(f"{path}: missing h5 key {key!r}; found {sorted(f.keys())}, "
                                             "expected data (n,2048,3) and label (n,1)")
                    d = np.asarray(f["data"][:], dtype=np.float32)
                    lab = np.asarray(f["label"][:]).reshape(-1).astype(np.int64)
                    nrm = np.asarray(f["normal"][:], dtype=np.float32) if "normal" in f else None
            except OSError as exc:
                raise ValueError(f"{path}: unreadable or truncated h5 file ({exc})") from None
            if d.ndim != 3 or d.shape[2] != 3 or len(lab) != len(d):
                raise ValueError(f"{path}: data has shape {d.shape} and label {len(lab)} entries; "
                                 "expected data (n, P, 3) and label (n,) or (n, 1)")
            check_finite(d, path)
            if self.use_normals:
                if nrm is None:
                    raise ValueError(f"{path}: dataset.use_normals=true but the h5 file has no 'normal' key "
                                     "(use the txt layout for normals)")
                normals.append(nrm)
            data.append(d)
            labels.append(lab)
        self.points = np.concatenate(data)
        if self.use_normals:
            self.points = np.concatenate([self.points, np.concatenate(normals)], axis=2)
        self.labels = np.concatenate(labels)
        if self.points.shape[1] < self.num_points:
            raise ValueError(f"{files[0]}: {self.points.shape[1]} points per shape < dataset.num_points={self.num_points}")
        names = self.root / "shape_names.txt"
        self.class_names = tuple(read_lines(names)) if names.is_file() else MODELNET40_CLASSES
        self.source = files[0]

    # ---------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.indices)

    def raw_points(self, i: int) -> np.ndarray:
        """float32 [num_points, 6 or 3] before normalisation and transforms (index into this split)."""
        j = int(self.indices[i])
        if self.layout == "h5":
            return self.points[j, : self.num_points]
        if self.cache is not None:
            pts = np.asarray(self.cache[j], dtype=np.float32)
            if len(pts) < self.num_points:
                raise ValueError(f"{self.source}: entry {j} has {len(pts)} points < dataset.num_points={self.num_points}")
            return pts[: self.num_points]
        path = self.files[j]
        pts = read_txt_points(path)
        if len(pts) < self.num_points:
            raise ValueError(f"{path}: {len(pts)} points < dataset.num_points={self.num_points}")
        if self.sampling == "fps":
            return pts[furthest_point_indices(pts, self.num_points)]
        return pts[: self.num_points]

    def __getitem__(self, i: int) -> dict:
        pts = self.raw_points(i)
        if self.normalize:
            pts = normalize_unit_sphere(pts)
        if not self.use_normals:
            pts = pts[:, :3]
        sample = {"points": np.ascontiguousarray(pts, dtype=np.float32), "label": self.labels[self.indices[i]]}
        sample = self.transform(sample, self.next_rng(i))
        return {"points": torch.from_numpy(np.ascontiguousarray(sample["points"], dtype=np.float32)),
                "label": torch.tensor(int(sample["label"]), dtype=torch.int64)}
