"""Point-cloud transforms, composable from config.

A transform is called as ``t(sample, rng) -> sample`` on a dict of NumPy arrays, with ``rng`` the
item's ``np.random.Generator`` (see ``common.item_rng``), so every draw is reproducible. Keys:

- classification: ``points`` float32 [N, 3(+C)] (xyz first, then normals or other channels),
  ``label`` int64 [], optional ``mask`` int64 [N];
- segmentation: ``pos`` float32 [N, 3], ``color`` float32 [N, 3] in 0..1, ``label`` int64 [N],
  optional ``index`` int64 [N].

Per-point arrays follow every subsampling. Config form: a list of mappings
``[{name: fps_subsample, npoints: 1200, keep: 1024}, {name: scale_translate}]``.

Pipelines of the codebases users know:

- Point-BERT / Point-MAE: train ``fps_subsample(npoints=1200, keep=1024)`` then
  ``scale_translate`` (per-axis scale U(2/3, 3/2), translation U(-0.2, 0.2)); test
  ``fps_subsample(npoints=1024)``.
- PointNeXt (S3DIS), openpoints' ``cfgs/s3dis/default.yaml``: train ``chromatic_auto_contrast``,
  ``scale``, ``xyz_align``, ``rotate``, ``jitter``, ``chromatic_drop``, ``chromatic_normalize``
  (S3DIS colour mean/std); test ``xyz_align``, ``chromatic_normalize``. ``center_normalize`` (with
  ``append_height``) is the object-classification variant.
- PointNeXt (ShapeNetPart), ``cfgs/shapenetpart/default.yaml``: train ``scale``, ``center_normalize``
  (``append_height``: xyz, normals, height), ``jitter``, ``normal_drop``; test ``center_normalize``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np
import torch

from pointdr2.hints import did_you_mean

__all__ = ["TRANSFORMS", "Compose", "build_transforms", "default_transforms", "register_transform"]

TRANSFORMS: dict[str, type] = {}

PER_POINT_KEYS = ("points", "pos", "color", "mask", "index")


def register_transform(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        TRANSFORMS[name] = cls
        cls.spec_name = name
        return cls

    return wrap


def _num_points(sample: Mapping) -> int:
    key = "points" if "points" in sample else "pos"
    return int(sample[key].shape[0])


def take(sample: dict, idx: np.ndarray) -> dict:
    """The sample restricted to the points ``idx`` (int64 [M]); scalar labels are kept."""
    out = dict(sample)
    for key in PER_POINT_KEYS:
        if key in out:
            out[key] = out[key][idx]
    label = out.get("label")
    if isinstance(label, np.ndarray) and label.ndim == 1:
        out["label"] = label[idx]
    return out


def _xyz_key(sample: Mapping) -> str:
    return "points" if "points" in sample else "pos"


def _has_normals(sample: Mapping) -> bool:
    return "points" in sample and sample["points"].shape[1] >= 6


def furthest_point_indices(xyz: np.ndarray, npoint: int, skip_origin: bool = False) -> np.ndarray:
    """FPS indices (int64 [npoint]) of ``xyz`` (float [N, 3]) with ``pointdr2.ops`` (starts at index 0;
    ``skip_origin``: pointnet2_ops' origin skip, see ``pointdr2.ops.furthest_point_sample``)."""
    from pointdr2.ops import furthest_point_sample

    pts = torch.from_numpy(np.ascontiguousarray(xyz[:, :3], dtype=np.float32)).unsqueeze(0)
    with torch.no_grad():
        idx = furthest_point_sample(pts, int(npoint), skip_origin=bool(skip_origin))
    return idx[0].numpy().astype(np.int64)


class Transform:
    spec_name = ""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{self.spec_name}({params})"


@register_transform("fps_subsample")
class FPSSubsample(Transform):
    """Furthest point sampling to ``npoints``, then (if ``keep``) a random ``keep`` of them.

    Point-BERT/MAE training: ``npoints=1200, keep=1024`` (2400/2048 for 2048-point models); test:
    ``npoints=1024`` without ``keep`` (deterministic). ``skip_origin: true`` samples as the official
    code's pointnet2_ops FPS does (never picks a point with ``|p|^2 <= 1e-3`` after the first).
    """

    def __init__(self, npoints: int, keep: int | None = None, skip_origin: bool = False):
        self.npoints = int(npoints)
        self.keep = None if keep is None else int(keep)
        if self.npoints <= 0 or (self.keep is not None and not 0 < self.keep <= self.npoints):
            raise ValueError(f"fps_subsample: need 0 < keep <= npoints, got npoints={npoints}, keep={keep}")
        if not isinstance(skip_origin, bool):
            raise ValueError(f"fps_subsample: skip_origin must be true or false, got {skip_origin!r}")
        self.skip_origin = skip_origin

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        n = _num_points(sample)
        if self.npoints > n:
            raise ValueError(f"fps_subsample: npoints={self.npoints} but the sample has only {n} points; "
                             "raise dataset.num_points or lower npoints")
        idx = furthest_point_indices(sample[_xyz_key(sample)], self.npoints, self.skip_origin)
        if self.keep is not None:
            idx = idx[rng.choice(self.npoints, size=self.keep, replace=False)]
        return take(sample, idx)


@register_transform("random_subsample")
class RandomSubsample(Transform):
    """A random ``npoints`` subset (with repetition only if the sample has fewer points)."""

    def __init__(self, npoints: int):
        self.npoints = int(npoints)
        if self.npoints <= 0:
            raise ValueError(f"random_subsample: npoints must be positive, got {npoints}")

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        n = _num_points(sample)
        idx = rng.choice(n, size=self.npoints, replace=n < self.npoints)
        return take(sample, idx.astype(np.int64))


@register_transform("shuffle")
class Shuffle(Transform):
    """Random permutation of the points."""

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        return take(sample, rng.permutation(_num_points(sample)))


@register_transform("scale_translate")
class ScaleTranslate(Transform):
    """Per-axis xyz scale U(scale_low, scale_high) then translation U(-translate, translate)."""

    def __init__(self, scale_low: float = 2.0 / 3.0, scale_high: float = 3.0 / 2.0, translate: float = 0.2):
        self.scale_low, self.scale_high, self.translate = float(scale_low), float(scale_high), float(translate)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        key = _xyz_key(sample)
        scale = rng.uniform(self.scale_low, self.scale_high, size=3)
        shift = rng.uniform(-self.translate, self.translate, size=3)
        arr = sample[key].copy()
        arr[:, :3] = arr[:, :3] * scale + shift
        return {**sample, key: arr.astype(np.float32, copy=False)}


@register_transform("scale")
class Scale(Transform):
    """Random scaling U(low, high): one factor per axis (``anisotropic``) or one for all."""

    def __init__(self, low: float = 0.9, high: float = 1.1, anisotropic: bool = True):
        self.low, self.high, self.anisotropic = float(low), float(high), bool(anisotropic)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        key = _xyz_key(sample)
        scale = rng.uniform(self.low, self.high, size=3 if self.anisotropic else 1)
        arr = sample[key].copy()
        arr[:, :3] *= scale
        if _has_normals(sample) and self.anisotropic:
            # Normals transform with the inverse scale, then are renormalised.
            n = arr[:, 3:6] / scale
            arr[:, 3:6] = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        return {**sample, key: arr.astype(np.float32, copy=False)}


@register_transform("rotate")
class Rotate(Transform):
    """Rotation about the up axis (0=x, 1=y, 2=z) by U(-angle, angle) radians; normals follow."""

    def __init__(self, up_axis: int = 2, angle: float = math.pi):
        if up_axis not in (0, 1, 2):
            raise ValueError(f"rotate: up_axis must be 0, 1 or 2, got {up_axis}")
        self.up_axis, self.angle = int(up_axis), float(angle)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        theta = rng.uniform(-self.angle, self.angle)
        c, s = math.cos(theta), math.sin(theta)
        a, b = [i for i in range(3) if i != self.up_axis]
        rot = np.eye(3)
        rot[a, a], rot[a, b], rot[b, a], rot[b, b] = c, -s, s, c
        key = _xyz_key(sample)
        arr = sample[key].copy()
        arr[:, :3] = arr[:, :3] @ rot.T
        if _has_normals(sample):
            arr[:, 3:6] = arr[:, 3:6] @ rot.T
        return {**sample, key: arr.astype(np.float32, copy=False)}


@register_transform("jitter")
class Jitter(Transform):
    """Gaussian xyz noise N(0, sigma^2) clipped to [-clip, clip]."""

    def __init__(self, sigma: float = 0.005, clip: float = 0.02):
        self.sigma, self.clip = float(sigma), float(clip)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        key = _xyz_key(sample)
        arr = sample[key].copy()
        noise = np.clip(rng.normal(0.0, self.sigma, size=(arr.shape[0], 3)), -self.clip, self.clip)
        arr[:, :3] += noise
        return {**sample, key: arr.astype(np.float32, copy=False)}


@register_transform("xyz_align")
class XYZAlign(Transform):
    """Centre the horizontal axes on their mean and put the minimum of the up axis at 0."""

    def __init__(self, up_axis: int = 2):
        self.up_axis = int(up_axis)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        key = _xyz_key(sample)
        arr = sample[key].copy()
        xyz = arr[:, :3]
        shift = xyz.mean(axis=0)
        shift[self.up_axis] = xyz[:, self.up_axis].min()
        arr[:, :3] = xyz - shift
        return {**sample, key: arr.astype(np.float32, copy=False)}


@register_transform("center_normalize")
class CenterNormalize(Transform):
    """Centre on the centroid and scale into the unit sphere; ``append_height`` adds a column
    (up coordinate minus its minimum) after the existing channels of ``points``."""

    def __init__(self, up_axis: int = 1, append_height: bool = False):
        self.up_axis, self.append_height = int(up_axis), bool(append_height)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        key = _xyz_key(sample)
        arr = sample[key].astype(np.float32, copy=True)
        height = arr[:, self.up_axis] - arr[:, self.up_axis].min()
        xyz = arr[:, :3] - arr[:, :3].mean(axis=0)
        radius = float(np.linalg.norm(xyz, axis=1).max()) if len(xyz) else 0.0
        arr[:, :3] = xyz / radius if radius > 0 else xyz
        if self.append_height:
            if key != "points":
                raise ValueError("center_normalize: append_height applies to classification samples only "
                                 "(segmentation samples always get a height feature)")
            arr = np.concatenate([arr, height[:, None]], axis=1)
        return {**sample, key: arr}


@register_transform("chromatic_auto_contrast")
class ChromaticAutoContrast(Transform):
    """With probability ``p``, stretch colours to the full 0..1 range per channel and blend it in
    (blend factor ``blend`` or U(0, 1) when None)."""

    def __init__(self, p: float = 0.2, blend: float | None = None):
        self.p, self.blend = float(p), blend

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if "color" not in sample or rng.random() >= self.p:
            return sample
        color = sample["color"]
        lo, hi = color.min(axis=0, keepdims=True), color.max(axis=0, keepdims=True)
        stretched = (color - lo) / np.maximum(hi - lo, 1e-6)
        b = rng.random() if self.blend is None else float(self.blend)
        return {**sample, "color": ((1 - b) * color + b * stretched).astype(np.float32)}


@register_transform("chromatic_drop")
class ChromaticDrop(Transform):
    """With probability ``p`` set every colour to 0 (forces the model to use geometry)."""

    def __init__(self, p: float = 0.2):
        self.p = float(p)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if "color" not in sample or rng.random() >= self.p:
            return sample
        return {**sample, "color": np.zeros_like(sample["color"])}


@register_transform("normal_drop")
class NormalDrop(Transform):
    """With probability ``p`` set every normal (``points[:, 3:6]``) to 0: openpoints' ``ChromaticDropGPU``
    as its ShapeNetPart configs apply it, where the feature channels it zeroes are the normals."""

    def __init__(self, p: float = 0.2):
        self.p = float(p)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if not _has_normals(sample):
            raise ValueError("normal_drop needs points with normals ([N, 6+]: dataset.use_normals: true)")
        if rng.random() >= self.p:
            return sample
        arr = sample["points"].copy()
        arr[:, 3:6] = 0.0
        return {**sample, "points": arr}


@register_transform("chromatic_normalize")
class ChromaticNormalize(Transform):
    """Standardise colours (0..1) per channel: ``(color - mean) / std``."""

    def __init__(self, mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.2, 0.2, 0.2)):
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"chromatic_normalize: mean and std need 3 values (std > 0), got {mean}, {std}")
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if "color" not in sample:
            return sample
        color = (sample["color"] - np.asarray(self.mean)) / np.asarray(self.std)
        return {**sample, "color": color.astype(np.float32)}


class Compose:
    """Apply transforms in order with the same generator."""

    def __init__(self, transforms: Sequence[Any]):
        self.transforms = list(transforms)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        for t in self.transforms:
            sample = t(sample, rng)
        return sample

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def build_transforms(specs: Sequence[Mapping] | None, where: str = "dataset.transforms") -> Compose:
    """A ``Compose`` from config specs (a list of mappings with ``name`` and parameters)."""
    if specs is None:
        return Compose([])
    if isinstance(specs, Mapping) or isinstance(specs, str) or not isinstance(specs, Sequence):
        raise ValueError(f"{where} must be a list of {{name: ..., param: value}} mappings, got {specs!r}")
    out = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ValueError(f"{where}[{i}] must be a mapping with a 'name' key, got {spec!r}")
        name = spec["name"]
        if name not in TRANSFORMS:
            hint = did_you_mean(name, TRANSFORMS, cutoff=0.4)
            raise ValueError(f"{where}[{i}]: unknown transform {name!r}{hint}; known: {', '.join(sorted(TRANSFORMS))}")
        cls = TRANSFORMS[name]
        params = {k: v for k, v in spec.items() if k != "name"}
        allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        for key in params:
            if key not in allowed:
                hint = did_you_mean(key, allowed, cutoff=0.4)
                raise ValueError(f"{where}[{i}] ({name}): unknown parameter {key!r}{hint}; "
                                 f"allowed: {', '.join(allowed) or 'none'}")
        try:
            out.append(cls(**params))
        except TypeError as exc:
            raise ValueError(f"{where}[{i}] ({name}): {exc}") from None
    return Compose(out)


# openpoints' S3DIS colour statistics (ChromaticNormalize in cfgs/s3dis/default.yaml, train and val):
# what official checkpoints were trained on.
S3DIS_COLOR_MEAN = (0.5136457, 0.49523646, 0.44921124)
S3DIS_COLOR_STD = (0.18308958, 0.18415008, 0.19252081)


def default_transforms(dataset: str, split: str) -> list[dict]:
    """Specs used when the config gives none: light, safe augmentation for training only."""
    train = split == "train"
    if dataset == "s3dis":
        normalize = {"name": "chromatic_normalize", "mean": list(S3DIS_COLOR_MEAN), "std": list(S3DIS_COLOR_STD)}
        if train:
            return [
                {"name": "chromatic_auto_contrast"},
                {"name": "scale", "low": 0.9, "high": 1.1},
                {"name": "xyz_align", "up_axis": 2},
                {"name": "rotate", "up_axis": 2, "angle": math.pi},
                {"name": "jitter", "sigma": 0.005, "clip": 0.02},
                {"name": "chromatic_drop", "p": 0.2},
                normalize,
            ]
        return [{"name": "xyz_align", "up_axis": 2}, normalize]
    if dataset == "shapenetpart":  # samples as Point-MAE's PartNormalDataset gives them; augment in the config
        return []
    return [{"name": "scale_translate"}] if train else []
