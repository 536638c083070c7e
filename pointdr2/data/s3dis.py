"""S3DIS semantic segmentation: training crops and whole-room test passes.

Data: ``<root>/raw/Area_<k>_<room>.npy`` (or the ``.npy`` files directly in ``root``), each (n, 7)
float32 = xyz (room minimum at 0), rgb 0..255, label 0..12 in the order of
``pointdr2.data.classes.S3DIS_CLASSES``; written by ``pointdr2 prepare s3dis``.

- ``split="train"``: rooms of every area except ``test_area``, each seen ``loop`` times per epoch.
  A sample voxelises the room (``voxel_size``, one random point per voxel), crops the
  ``crop_points`` points nearest a random seed point (repeating random indices when fewer remain),
  shifts xyz to a zero minimum and applies the transforms. Returns ``{"pos": float32 [N, 3],
  "feats": float32 [4, N] (rgb, then height above the crop's lowest point; rgb in 0..1 before the
  transforms, which by default standardise it with openpoints' S3DIS colour statistics), "label": int64
  [N]}`` with N = ``crop_points``.
- ``split="test"`` (rooms of ``test_area``) and ``split="val"`` (a seed-fixed ``val_fraction`` of the
  training rooms, excluded from "train"): whole rooms. Each item is an :class:`S3DISRoom` whose
  ``passes()`` yield ``{"pos", "feats", "index": int64 [n]}``: pass ``p`` takes the ``p``-th point
  of every voxel (cycling through voxels with fewer points), so the passes together cover every
  original point. :func:`scatter_predictions` averages per-pass logits back onto the room's points.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pointdr2.data.classes import S3DIS_CLASSES, S3DIS_COLORS
from pointdr2.data.common import (
    AugmentedDataset,
    carve_validation,
    check_finite,
    check_split,
    missing_root_error,
)
from pointdr2.data.transforms import build_transforms, default_transforms

log = logging.getLogger(__name__)

ROOM_RE = re.compile(r"^Area_(\d+)_(.+)\.npy$")
EXPECTED = ["s3disfull/raw/Area_<k>_<room>.npy files, (n, 7) float32 = xyz, rgb 0..255, label 0..12"]


def find_rooms(root: str | Path) -> dict[str, tuple[int, Path]]:
    """``{room name: (area, path)}`` for every ``Area_<k>_<room>.npy`` under ``root/raw`` or ``root``."""
    root = Path(root).expanduser()
    for folder in (root / "raw", root):
        rooms = {}
        if folder.is_dir():
            for path in sorted(folder.glob("Area_*.npy")):
                m = ROOM_RE.match(path.name)
                if m:
                    rooms[path.stem] = (int(m.group(1)), path)
        if rooms:
            return rooms
    raise missing_root_error("s3dis", root, EXPECTED, "s3dis-raw")


# (path, mtime_ns, size) of room files whose values passed the checks in this process: the full scan
# costs as much as a training sample's voxelisation, so it runs once per file, not once per sample.
_CHECKED: set[tuple[str, int, int]] = set()


def load_room(path: str | Path) -> np.ndarray:
    """float32 [n, 7] of one room, checked: readable, shape, non-empty, finite, labels 0..12."""
    path = Path(path)
    try:
        stat = path.stat()
        room = np.load(path, mmap_mode="r", allow_pickle=False)
        room = np.array(room, dtype=np.float32)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: unreadable or truncated room file ({str(exc).splitlines()[0]})") from None
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key in _CHECKED and room.ndim == 2 and room.shape[1] == 7:
        return room
    if room.ndim != 2 or room.shape[1] != 7:
        raise ValueError(f"{path}: room array has shape {room.shape}, expected (n, 7) = xyz, rgb, label")
    if room.shape[0] == 0:
        raise ValueError(f"{path}: empty room (0 points); re-run `pointdr2 prepare s3dis` or remove the file")
    check_finite(room, path, "values")
    labels = room[:, 6]
    if labels.min() < 0 or labels.max() > len(S3DIS_CLASSES) - 1 or not np.all(labels == np.round(labels)):
        raise ValueError(f"{path}: labels must be integers 0..{len(S3DIS_CLASSES) - 1}, "
                         f"found range {labels.min()}..{labels.max()}")
    _CHECKED.add(key)
    return room


def merged_classes(groups: Mapping[str, Sequence[str]] | None) -> tuple[np.ndarray | None, tuple[str, ...]]:
    """(lut int64 [13] original label -> merged label, merged class names) for ``dataset.merge_classes``.

    ``groups`` maps each new class name to the S3DIS class names it merges, e.g. ``{structure: [ceiling,
    floor, wall], ...}``; every S3DIS class must appear in exactly one group. None: no merging.
    """
    if groups is None:
        return None, S3DIS_CLASSES
    if not isinstance(groups, Mapping) or not groups:
        raise ValueError(f"dataset.merge_classes must map new class names to lists of S3DIS classes, got {groups!r}")
    lut = np.full(len(S3DIS_CLASSES), -1, dtype=np.int64)
    for new, (name, members) in enumerate(groups.items()):
        if isinstance(members, str) or not isinstance(members, Sequence) or not members:
            raise ValueError(f"dataset.merge_classes.{name} must be a non-empty list of S3DIS classes, got {members!r}")
        for member in members:
            if member not in S3DIS_CLASSES:
                raise ValueError(f"dataset.merge_classes.{name}: {member!r} is not an S3DIS class "
                                 f"({', '.join(S3DIS_CLASSES)})")
            old = S3DIS_CLASSES.index(member)
            if lut[old] >= 0:
                raise ValueError(f"dataset.merge_classes: {member!r} appears in more than one group")
            lut[old] = new
    missing = [c for c, v in zip(S3DIS_CLASSES, lut) if v < 0]
    if missing:
        raise ValueError(f"dataset.merge_classes leaves S3DIS classes without a group: {', '.join(missing)}")
    return lut, tuple(str(k) for k in groups)


def _class_colors(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    return S3DIS_COLORS if num_classes == len(S3DIS_CLASSES) else S3DIS_COLORS[:num_classes]


def voxel_keys(xyz: np.ndarray, voxel_size: float) -> np.ndarray:
    """int64 [n]: one key per occupied voxel of edge ``voxel_size`` (equal keys = same voxel)."""
    xyz = np.asarray(xyz, dtype=np.float64)  # float64: no voxel flips from float32 rounding at boundaries
    grid = np.floor((xyz - xyz.min(axis=0)) / voxel_size).astype(np.int64)
    dims = grid.max(axis=0) + 1
    return grid[:, 0] + dims[0] * (grid[:, 1] + dims[1] * grid[:, 2])


def voxel_subsample(xyz: np.ndarray, voxel_size: float, rng: np.random.Generator) -> np.ndarray:
    """Indices (int64 [v], ascending) keeping one uniformly random point per occupied voxel."""
    perm = rng.permutation(len(xyz))
    _, first = np.unique(voxel_keys(xyz[perm], voxel_size), return_index=True)
    return np.sort(perm[first])


def assemble(sample: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
    """(pos float32 [N, 3], feats float32 [4, N] = rgb, height) from a transformed sample."""
    pos = np.ascontiguousarray(sample["pos"], dtype=np.float32)
    height = pos[:, 2:3] - pos[:, 2].min()
    feats = np.concatenate([sample["color"], height], axis=1).T
    return torch.from_numpy(pos), torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))


def _select_rooms(root: str | Path, split: str, test_area: int, val_fraction: float,
                  seed: int) -> list[tuple[str, Path]]:
    """The (name, path) rooms of ``split``, each file's header checked (a bad file fails at construction)."""
    chosen = _choose_rooms(root, split, test_area, val_fraction, seed)
    for _, path in chosen:
        _check_header(path)
    return chosen


def _choose_rooms(root: str | Path, split: str, test_area: int, val_fraction: float,
                  seed: int) -> list[tuple[str, Path]]:
    rooms = find_rooms(root)
    areas = sorted({a for a, _ in rooms.values()})
    if split == "test":
        chosen = [(n, p) for n, (a, p) in rooms.items() if a == test_area]
        if not chosen:
            raise ValueError(f"no rooms of dataset.test_area={test_area} under {root}; areas present: {areas}")
        return chosen
    train = [(n, p) for n, (a, p) in rooms.items() if a != test_area]
    if not train:
        raise ValueError(f"no training rooms under {root}: every room is in dataset.test_area={test_area}")
    # Stratified by room: one stratum holding all training rooms, so the carve picks whole rooms.
    val = carve_validation(np.zeros(len(train), dtype=np.int64), val_fraction, seed)
    if split == "val":
        if not val.any():
            raise ValueError(f"split 'val' is empty with val_fraction={val_fraction} and {len(train)} training rooms")
        return [r for r, v in zip(train, val) if v]
    return [r for r, v in zip(train, val) if not v]


class S3DIS(AugmentedDataset):
    """Training crops of S3DIS rooms (see the module docstring)."""

    def __init__(self, root: str | Path, split: str = "train", test_area: int = 5, voxel_size: float = 0.04,
                 crop_points: int | None = 24000, loop: int = 30, transforms: Sequence[Mapping] | None = None,
                 val_fraction: float = 0.1, seed: int = 0, merge_classes: Mapping | None = None):
        if check_split(split) != "train":
            raise ValueError("S3DIS crops are the training sampler; use S3DISWholeRoom for val/test")
        if voxel_size is not None and float(voxel_size) <= 0:
            raise ValueError(f"dataset.voxel_size must be positive or null, got {voxel_size}")
        if crop_points is not None and int(crop_points) <= 0:
            raise ValueError(f"dataset.crop_points must be positive or null, got {crop_points}")
        if int(loop) <= 0:
            raise ValueError(f"dataset.loop must be a positive integer, got {loop}")
        self.split, self.test_area = split, int(test_area)
        self.voxel_size = None if voxel_size is None else float(voxel_size)
        self.crop_points = None if crop_points is None else int(crop_points)
        self.loop = int(loop)
        self.rooms = _select_rooms(root, split, self.test_area, val_fraction, seed)
        self.lut, self.class_names = merged_classes(merge_classes)
        self.num_classes = len(self.class_names)
        self.colors = _class_colors(self.num_classes)
        self.transform = build_transforms(default_transforms("s3dis", split) if transforms is None else transforms)
        log.info("S3DIS train: %d rooms (test area %d excluded) x loop %d", len(self.rooms), self.test_area, self.loop)

    def __len__(self) -> int:
        return len(self.rooms) * self.loop

    def __getitem__(self, i: int) -> dict:
        rng = self.next_rng(i)
        room = load_room(self.rooms[i % len(self.rooms)][1])
        xyz = room[:, :3]
        idx = voxel_subsample(xyz, self.voxel_size, rng) if self.voxel_size else np.arange(len(xyz))
        if self.crop_points is not None:
            if len(idx) > self.crop_points:
                centre = xyz[idx[rng.integers(len(idx))]]
                d2 = ((xyz[idx] - centre) ** 2).sum(axis=1)
                idx = idx[np.sort(np.argpartition(d2, self.crop_points - 1)[: self.crop_points])]
            elif len(idx) < self.crop_points:
                # Fixed N for batching: repeat random points (they add no new information).
                idx = np.concatenate([idx, rng.choice(idx, size=self.crop_points - len(idx))])
        pos = xyz[idx] - xyz[idx].min(axis=0)
        labels = room[idx, 6].astype(np.int64)
        sample = {"pos": pos.astype(np.float32), "color": room[idx, 3:6] / np.float32(255.0),
                  "label": labels if self.lut is None else self.lut[labels]}
        sample = self.transform(sample, rng)
        pos_t, feats = assemble(sample)
        return {"pos": pos_t, "feats": feats, "label": torch.from_numpy(np.ascontiguousarray(sample["label"]))}


def _check_header(path: Path) -> None:
    """Cheap check at construction (shape from the .npy header, no data read)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: unreadable or truncated room file ({str(exc).splitlines()[0]})") from None
    if arr.ndim != 2 or arr.shape[1] != 7:
        raise ValueError(f"{path}: room array has shape {arr.shape}, expected (n, 7) = xyz, rgb, label")
    if arr.shape[0] == 0:
        raise ValueError(f"{path}: empty room (0 points); re-run `pointdr2 prepare s3dis` or remove the file")


class S3DISRoom:
    """One whole room for testing: iterate ``passes()`` and scatter the predictions back.

    Attributes: ``name``, ``num_points``, ``labels`` (int64 Tensor [num_points]), ``num_passes``.
    """

    def __init__(self, name: str, room: np.ndarray, voxel_size: float | None, transform, seed: int,
                 lut: np.ndarray | None = None):
        self.name = name
        self.room = room
        self.num_points = len(room)
        labels = room[:, 6].astype(np.int64)
        self.labels = torch.from_numpy(labels if lut is None else lut[labels])
        self.transform = transform
        self.seed = seed
        rng = np.random.default_rng([seed, self.num_points])
        if voxel_size:
            # Points of one voxel become contiguous in `order` (shuffled within the voxel).
            perm = rng.permutation(self.num_points)
            keys = voxel_keys(room[perm, :3], voxel_size)
            sort = np.argsort(keys, kind="stable")
            self._order = perm[sort]
            _, self._start, self._count = np.unique(keys[sort], return_index=True, return_counts=True)
        else:
            self._order = np.arange(self.num_points)
            self._start = np.arange(self.num_points)
            self._count = np.ones(self.num_points, dtype=np.int64)
        self.num_passes = int(self._count.max())

    def __len__(self) -> int:
        return self.num_passes

    @property
    def pass_points(self) -> int:
        """Points over all passes (one per voxel per pass): the work of whole-room inference."""
        return self.num_passes * len(self._start)

    def pass_indices(self, p: int) -> np.ndarray:
        """int64 [v]: the ``p``-th point of every voxel (voxels with fewer points cycle)."""
        if not 0 <= p < self.num_passes:
            raise ValueError(f"pass {p} out of range 0..{self.num_passes - 1} for room {self.name}")
        return self._order[self._start + p % self._count].astype(np.int64)

    def get_pass(self, p: int) -> dict:
        idx = self.pass_indices(p)
        xyz = self.room[idx, :3]
        sample = {"pos": (xyz - xyz.min(axis=0)).astype(np.float32), "color": self.room[idx, 3:6] / np.float32(255.0),
                  "label": self.room[idx, 6].astype(np.int64)}
        sample = self.transform(sample, np.random.default_rng([self.seed, self.num_points, p]))
        pos, feats = assemble(sample)
        return {"pos": pos, "feats": feats, "index": torch.from_numpy(idx)}

    @staticmethod
    def chunk_features(pos: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A crop of a pass as a training crop has it: positions from the crop's minimum and the
        height feature (channel 3) above the crop's lowest point, not the room's floor."""
        low = pos.min(dim=0).values
        feats = feats.clone()
        feats[3] = pos[:, 2] - low[2]
        return pos - low, feats

    def passes(self) -> Iterator[dict]:
        """Yield every pass: ``{"pos": float32 [v, 3], "feats": float32 [4, v], "index": int64 [v]}``."""
        for p in range(self.num_passes):
            yield self.get_pass(p)

    __iter__ = passes


class S3DISWholeRoom(Dataset):
    """Whole rooms of ``test_area`` (split "test") or of the val carve (split "val"); items are
    :class:`S3DISRoom` objects (use ``batch_size=None`` in a DataLoader, or iterate directly)."""

    whole_room = True

    def __init__(self, root: str | Path, split: str = "test", test_area: int = 5, voxel_size: float | None = 0.04,
                 transforms: Sequence[Mapping] | None = None, val_fraction: float = 0.1, seed: int = 0,
                 merge_classes: Mapping | None = None):
        if check_split(split) == "train":
            raise ValueError("S3DISWholeRoom serves the val and test splits; use S3DIS for train")
        self.split, self.test_area = split, int(test_area)
        self.voxel_size = None if voxel_size is None else float(voxel_size)
        self.seed = int(seed)
        self.rooms = _select_rooms(root, split, self.test_area, val_fraction, seed)
        self.lut, self.class_names = merged_classes(merge_classes)
        self.num_classes = len(self.class_names)
        self.colors = _class_colors(self.num_classes)
        self.transform = build_transforms(default_transforms("s3dis", split) if transforms is None else transforms)
        log.info("S3DIS %s: %d whole rooms", split, len(self.rooms))

    def __len__(self) -> int:
        return len(self.rooms)

    def __getitem__(self, i: int) -> S3DISRoom:
        name, path = self.rooms[i]
        return S3DISRoom(name, load_room(path), self.voxel_size, self.transform, self.seed, self.lut)


def scatter_predictions(room_num_points: int, passes_indices: Sequence, logits_list: Sequence) -> torch.Tensor:
    """Average per-pass predictions onto the room's points: float32 Tensor [room_num_points, K].

    ``passes_indices[p]``: int64 [v_p] indices into the room (a pass's ``"index"``);
    ``logits_list[p]``: [K, v_p] as the segmentation model returns per sample (a leading batch
    dimension of 1 is accepted). Logits or probabilities are averaged as given. Every point must be
    covered by at least one pass, so each gets exactly one averaged prediction.
    """
    if len(passes_indices) != len(logits_list) or not len(logits_list):
        raise ValueError(f"need one logits tensor per pass, got {len(passes_indices)} index arrays and "
                         f"{len(logits_list)} logits")
    total: torch.Tensor | None = None
    count = torch.zeros(int(room_num_points), dtype=torch.float32)
    for p, (idx, logits) in enumerate(zip(passes_indices, logits_list)):
        idx = torch.as_tensor(idx, dtype=torch.int64).reshape(-1).cpu()
        logits = torch.as_tensor(logits).detach().float().cpu()
        if logits.dim() == 3 and logits.shape[0] == 1:
            logits = logits[0]
        if logits.dim() != 2 or logits.shape[1] != idx.numel():
            raise ValueError(f"pass {p}: logits must be [K, {idx.numel()}] (or [1, K, {idx.numel()}]), "
                             f"got {tuple(logits.shape)}")
        if idx.numel() and (idx.min() < 0 or idx.max() >= room_num_points):
            raise ValueError(f"pass {p}: indices must lie in 0..{room_num_points - 1}")
        if total is None:
            total = torch.zeros(int(room_num_points), logits.shape[0], dtype=torch.float32)
        elif logits.shape[0] != total.shape[1]:
            raise ValueError(f"pass {p}: {logits.shape[0]} classes, earlier passes had {total.shape[1]}")
        total.index_add_(0, idx, logits.t())
        count.index_add_(0, idx, torch.ones(idx.numel()))
    uncovered = int((count == 0).sum())
    if uncovered:
        raise ValueError(f"{uncovered} of {room_num_points} room points are in no pass; pass all of a room's passes")
    return total / count[:, None]
