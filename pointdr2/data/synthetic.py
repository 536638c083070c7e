"""Synthetic stand-ins for the real datasets, written in their official on-disk layouts.

No machine here can download ModelNet40, ScanObjectNN or S3DIS, so these generators are the data
of the demo and of every test. They are small but not trivial:

- Objects are composed from parametric surface parts (boxes, cylinders, cones/frustums,
  ellipsoids, tori) with random proportions, so some classes resemble each other (chair / stool /
  bench / table / desk share legs and tops; bookshelf / cabinet, cup / bin / bottle). Each sample gets
  a random yaw, anisotropic scale, non-uniform density (per-part density and a directional
  fall-off, as a scanner would see), Gaussian noise and, sometimes, a missing part or a hole.
- ``write_modelnet40_txt`` / ``write_modelnet40_h5``: 16 ModelNet40 classes (names from
  ``classes.SYNTHETIC_MODELNET_CLASSES``) in the ``modelnet40_normal_resampled`` and
  ``modelnet40_ply_hdf5_2048`` layouts (y up, unit sphere, normals).
- ``write_scanobjectnn``: the 15 ScanObjectNN classes with floor, wall and neighbouring-object
  clutter (mask -1 = background) for OBJ_BG, OBJ_ONLY and PB_T50_RS (stronger perturbation: full
  yaw, scale, the crop box shifted so objects are cut).
- ``write_s3dis_raw``: rooms with floor, ceiling, walls with window and door openings, beams,
  columns, tables, chairs, bookcases, sofas, boards, clutter and sometimes stairs, with rgb, in the
  ``Stanford3dDataset_v1.2_Aligned_Version/Area_k/<room>/Annotations/<class>_<i>.txt`` layout.
- ``write_shapenetpart``: the 16 ShapeNetPart categories, each shape composed of labelled parts (an
  airplane's body, wings, tail and engines; a chair's back, seat, legs and sometimes arms; ...) with normals,
  in the ``shapenetcore_partanno_segmentation_benchmark_v0_normal`` layout.

Everything is driven by one ``seed``: the same seed and size write byte-identical files.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pointdr2.data.classes import (
    SHAPENETPART_CATEGORIES,
    SHAPENETPART_PARTS,
    SHAPENETPART_SYNSETS,
    SYNTHETIC_MODELNET_CLASSES,
    SYNTHETIC_SCANOBJECTNN_CLASSES,
)

log = logging.getLogger(__name__)

# Bumped whenever a writer's output for the same size and seed changes (2: ScanObjectNN per-class streams;
# 3: PB_T50_RS copies on streams of their own; 5: rooms with two or three doors, some ajar, one to three
# bookcases and one or two columns; door, bookcase and sofa colours apart).
GENERATOR_VERSION = 5

LAYOUTS = ("modelnet40-txt", "modelnet40-h5", "scanobjectnn", "s3dis-raw", "shapenetpart")

# Per size: objects per class (train, test), points per object, rooms per area, areas, points per m^2.
SIZES: dict[str, dict] = {
    "test": {"train": 3, "test": 2, "points": 1024, "txt_points": 1200, "pb_copies": 1,
             "areas": (1, 2, 5), "rooms": 1, "density": 25.0},
    # pointdr2 demo: 1,200 ScanObjectNN training and 600 test objects (ModelNet40: 1,280 / 640)
    "demo": {"train": 80, "test": 40, "points": 2048, "txt_points": 2048, "pb_copies": 1,
             "areas": (1, 2, 3, 4, 5, 6), "rooms": 2, "density": 250.0},
    "small": {"train": 40, "test": 10, "points": 2048, "txt_points": 4096, "pb_copies": 3,
              "areas": (1, 2, 3, 4, 5, 6), "rooms": 4, "density": 500.0},
    # the evidence study (pointdr2 bench study): 6,000 ScanObjectNN test objects ("scanobjectnn_test" per class
    # overrides "test"; a large test set takes the test-set part out of the seed-to-seed spread), 8 test rooms in area 5
    "study": {"train": 130, "test": 100, "scanobjectnn_test": 400, "points": 2048, "txt_points": 2048,
              "pb_copies": 1, "areas": (1, 2, 3, 4, 5, 6), "rooms": 8, "density": 150.0},
}


def _size(size: str) -> dict:
    if size not in SIZES:
        raise ValueError(f"--size must be one of {', '.join(SIZES)}, got {size!r}")
    return SIZES[size]


# ============================================================================ parts
def rot_z(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_y(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_x(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


@dataclass
class Part:
    """A surface in its local frame (z up), placed by ``rot`` then ``at``.

    kinds and ``p`` parameters: ``box`` (size (3,), faces subset of "xXyYzZ"), ``cyl`` (r, h, caps
    in "", "b", "t", "bt"), ``cone`` (r1 bottom, r2 top, h, caps), ``ellipsoid`` (radii (3,),
    zmax: keep points with local z <= zmax * c), ``torus`` (R, r, arc radians).
    """

    kind: str
    p: dict
    at: tuple = (0.0, 0.0, 0.0)
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    # A part that defines the class (a cabinet's doors, a sink's basin): never left out as "missing".
    keep: bool = False

    def area(self) -> float:
        p = self.p
        if self.kind == "box":
            sx, sy, sz = p["size"]
            face = {"x": sy * sz, "X": sy * sz, "y": sx * sz, "Y": sx * sz, "z": sx * sy, "Z": sx * sy}
            return sum(face[f] for f in p.get("faces", "xXyYzZ"))
        if self.kind == "cyl":
            return 2 * math.pi * p["r"] * p["h"] + len(p.get("caps", "bt")) * math.pi * p["r"] ** 2
        if self.kind == "cone":
            slant = math.hypot(p["r1"] - p["r2"], p["h"])
            caps = p.get("caps", "b")
            return (math.pi * (p["r1"] + p["r2"]) * slant + ("b" in caps) * math.pi * p["r1"] ** 2
                    + ("t" in caps) * math.pi * p["r2"] ** 2)
        if self.kind == "ellipsoid":
            a, b, c = p["radii"]
            q = 1.6075  # Knud Thomsen's approximation of an ellipsoid's area
            full = 4 * math.pi * (((a * b) ** q + (a * c) ** q + (b * c) ** q) / 3) ** (1 / q)
            return full * (1 + min(max(p.get("zmax", 1.0), -1.0), 1.0)) / 2
        if self.kind == "torus":
            return p["R"] * p["r"] * 2 * math.pi * p.get("arc", 2 * math.pi)
        raise ValueError(f"unknown part kind {self.kind!r}")

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(points float64 [n, 3], unit normals [n, 3]) uniformly on the surface, in world frame."""
        pts, nrm = getattr(self, "_" + self.kind)(n, rng)
        return pts @ self.rot.T + np.asarray(self.at), nrm @ self.rot.T

    def _box(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        size = np.asarray(self.p["size"], dtype=np.float64)
        faces = self.p.get("faces", "xXyYzZ")
        # A face normal to axis a has the area of the other two edges.
        areas = np.array([np.prod(np.delete(size, "xyz".index(f.lower()))) for f in faces])
        which = rng.choice(len(faces), size=n, p=areas / areas.sum())
        pts = (rng.random((n, 3)) - 0.5) * size
        nrm = np.zeros((n, 3))
        for k, f in enumerate(faces):
            sel = which == k
            axis = "xyz".index(f.lower())
            sign = 1.0 if f.isupper() else -1.0
            pts[sel, axis] = sign * size[axis] / 2
            nrm[sel, axis] = sign
        return pts, nrm

    def _cyl(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return self._frustum(n, rng, self.p["r"], self.p["r"], self.p["h"], self.p.get("caps", "bt"))

    def _cone(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return self._frustum(n, rng, self.p["r1"], self.p["r2"], self.p["h"], self.p.get("caps", "b"))

    @staticmethod
    def _frustum(n: int, rng: np.random.Generator, r1: float, r2: float, h: float,
                 caps: str) -> tuple[np.ndarray, np.ndarray]:
        slant = math.hypot(r1 - r2, h)
        areas = [math.pi * (r1 + r2) * slant, ("b" in caps) * math.pi * r1**2, ("t" in caps) * math.pi * r2**2]
        areas = np.array(areas) + 1e-12
        which = rng.choice(3, size=n, p=areas / areas.sum())
        pts, nrm = np.zeros((n, 3)), np.zeros((n, 3))
        theta = rng.uniform(0, 2 * math.pi, n)
        side = which == 0
        # Height fraction t with density proportional to the radius r(t) (inverse CDF of a linear pdf).
        u = rng.random(side.sum())
        if abs(r2 - r1) < 1e-9:
            t = u
        else:
            t = (-r1 + np.sqrt(r1**2 + u * (r2**2 - r1**2))) / (r2 - r1)
        rad = r1 + (r2 - r1) * t
        pts[side] = np.stack([rad * np.cos(theta[side]), rad * np.sin(theta[side]), t * h], 1)
        nz = (r1 - r2) / slant
        nr = h / slant
        nrm[side] = np.stack([nr * np.cos(theta[side]), nr * np.sin(theta[side]), np.full(side.sum(), nz)], 1)
        for k, (radius, z, sign) in enumerate(((r1, 0.0, -1.0), (r2, h, 1.0)), start=1):
            sel = which == k
            rr = radius * np.sqrt(rng.random(sel.sum()))
            pts[sel] = np.stack([rr * np.cos(theta[sel]), rr * np.sin(theta[sel]), np.full(sel.sum(), z)], 1)
            nrm[sel, 2] = sign
        return pts, nrm

    def _ellipsoid(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        radii = np.asarray(self.p["radii"], dtype=np.float64)
        zmax = self.p.get("zmax", 1.0)
        out: list[np.ndarray] = []
        got = 0
        while got < n:
            d = rng.normal(size=(2 * n + 8, 3))
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            d = d[d[:, 2] <= zmax]
            out.append(d)
            got += len(d)
        d = np.concatenate(out)[:n]
        pts = d * radii
        nrm = pts / radii**2
        return pts, nrm / np.linalg.norm(nrm, axis=1, keepdims=True)

    def _torus(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        big, small, arc = self.p["R"], self.p["r"], self.p.get("arc", 2 * math.pi)
        u = rng.uniform(0, arc, 4 * n + 8)
        v = rng.uniform(0, 2 * math.pi, 4 * n + 8)
        keep = rng.random(len(v)) < (big + small * np.cos(v)) / (big + small)  # area-uniform
        u, v = u[keep][:n], v[keep][:n]
        while len(u) < n:  # practically never: the acceptance rate is >= (R - r) / (R + r)
            u, v = np.concatenate([u, u[: n - len(u)]]), np.concatenate([v, v[: n - len(v)]])
        nrm = np.stack([np.cos(v) * np.cos(u), np.cos(v) * np.sin(u), np.sin(v)], 1)
        ring = np.stack([big * np.cos(u), big * np.sin(u), np.zeros(n)], 1)
        return ring + small * nrm, nrm


def sample_parts(parts: list[Part], n: int, rng: np.random.Generator, density_jitter: float = 0.0,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points [n, 3], normals [n, 3], part index int64 [n]), points spread by area x a random
    per-part density factor exp(U(-j, j))."""
    weights = np.array([part.area() for part in parts]) * np.exp(rng.uniform(-density_jitter, density_jitter,
                                                                              len(parts)))
    counts = rng.multinomial(n, weights / weights.sum())
    pts, nrm, idx = [], [], []
    for k, (part, c) in enumerate(zip(parts, counts)):
        if c:
            p, q = part.sample(int(c), rng)
            pts.append(p)
            nrm.append(q)
            idx.append(np.full(int(c), k))
    return np.concatenate(pts), np.concatenate(nrm), np.concatenate(idx)


# ============================================================================ object library (z up, metres)
def _legs(rng: np.random.Generator, w: float, d: float, h: float, inset: float, round_legs: bool,
          thick: float) -> list[Part]:
    parts = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            x, y = sx * (w / 2 - inset), sy * (d / 2 - inset)
            if round_legs:
                parts.append(Part("cyl", {"r": thick / 2, "h": h, "caps": ""}, (x, y, 0.0)))
            else:
                parts.append(Part("box", {"size": (thick, thick, h), "faces": "xXyY"}, (x, y, h / 2)))
    return parts


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def obj_table(rng):
    w, d, h, t = _u(rng, 1.0, 1.7), _u(rng, 0.6, 1.0), _u(rng, 0.68, 0.8), _u(rng, 0.03, 0.06)
    parts = [Part("box", {"size": (w, d, t)}, (0, 0, h - t / 2))]
    return parts + _legs(rng, w, d, h - t, _u(rng, 0.04, 0.12), rng.random() < 0.4, _u(rng, 0.04, 0.07))


def obj_desk(rng):
    w, d, h, t = _u(rng, 1.1, 1.6), _u(rng, 0.55, 0.8), _u(rng, 0.7, 0.78), 0.04
    dw = _u(rng, 0.35, 0.5)
    side = 1 if rng.random() < 0.5 else -1
    parts = [Part("box", {"size": (w, d, t)}, (0, 0, h - t / 2)),
             Part("box", {"size": (dw, d * 0.95, h - t)}, (side * (w / 2 - dw / 2), 0, (h - t) / 2)),
             Part("box", {"size": (0.03, d * 0.95, h - t), "faces": "xXyY"}, (-side * (w / 2 - 0.02), 0, (h - t) / 2)),
             Part("box", {"size": (w - dw, 0.02, (h - t) * 0.5), "faces": "yY"}, (-side * dw / 2, d / 2 - 0.02, h * 0.7))]
    return parts


def obj_chair(rng):
    w, d, hs = _u(rng, 0.4, 0.55), _u(rng, 0.4, 0.55), _u(rng, 0.42, 0.5)
    hb = _u(rng, 0.35, 0.55)
    parts = [Part("box", {"size": (w, d, 0.05)}, (0, 0, hs)),
             Part("box", {"size": (w, 0.05, hb)}, (0, -d / 2 + 0.025, hs + hb / 2 + 0.025), rot=rot_x(_u(rng, -0.15, 0.0)))]
    parts += _legs(rng, w, d, hs - 0.025, 0.03, rng.random() < 0.3, 0.04)
    if rng.random() < 0.3:  # armrests
        for s in (-1, 1):
            parts.append(Part("box", {"size": (0.05, d * 0.8, 0.04)}, (s * w / 2, 0, hs + 0.22)))
    return parts


def obj_stool(rng):
    r, h = _u(rng, 0.15, 0.22), _u(rng, 0.45, 0.75)
    parts = [Part("cyl", {"r": r, "h": 0.04}, (0, 0, h - 0.04))]
    nleg = 3 if rng.random() < 0.5 else 4
    for k in range(nleg):
        a = 2 * math.pi * k / nleg
        parts.append(Part("cyl", {"r": 0.018, "h": h - 0.04, "caps": ""}, (0.8 * r * math.cos(a), 0.8 * r * math.sin(a), 0)))
    parts.append(Part("torus", {"R": 0.8 * r, "r": 0.012}, (0, 0, h * 0.35)))
    return parts


def obj_bench(rng):
    w, d, h = _u(rng, 1.2, 1.9), _u(rng, 0.3, 0.45), _u(rng, 0.4, 0.48)
    parts = [Part("box", {"size": (w, d, 0.05)}, (0, 0, h))]
    parts += _legs(rng, w, d, h - 0.025, 0.06, False, 0.05)
    if rng.random() < 0.5:
        parts.append(Part("box", {"size": (w, 0.04, 0.35)}, (0, -d / 2, h + 0.25)))
    return parts


def obj_sofa(rng):
    w, d, hs = _u(rng, 1.5, 2.3), _u(rng, 0.8, 1.0), _u(rng, 0.4, 0.48)
    ab = _u(rng, 0.15, 0.25)
    return [Part("box", {"size": (w, d, hs)}, (0, 0, hs / 2)),
            Part("box", {"size": (w, 0.2, _u(rng, 0.4, 0.5))}, (0, -d / 2 + 0.1, hs + 0.22)),
            Part("box", {"size": (ab, d, 0.25)}, (-w / 2 + ab / 2, 0, hs + 0.12)),
            Part("box", {"size": (ab, d, 0.25)}, (w / 2 - ab / 2, 0, hs + 0.12))]


def obj_bed(rng):
    w, length, h = _u(rng, 1.0, 1.8), _u(rng, 1.9, 2.2), _u(rng, 0.25, 0.35)
    return [Part("box", {"size": (w, length, h)}, (0, 0, h / 2 + 0.1)),
            Part("box", {"size": (w + 0.05, length + 0.05, 0.1), "faces": "xXyYz"}, (0, 0, 0.05)),
            Part("box", {"size": (w + 0.05, 0.06, _u(rng, 0.6, 1.1))}, (0, -length / 2, 0.45)),
            Part("ellipsoid", {"radii": (w * 0.3, 0.2, 0.07)}, (0, -length / 2 + 0.3, h + 0.15))]


def obj_bookshelf(rng, doors: bool = False):
    w, d, h = _u(rng, 0.6, 1.2), _u(rng, 0.28, 0.4), _u(rng, 1.0, 2.0)
    t = 0.03
    parts = [Part("box", {"size": (t, d, h)}, (-w / 2, 0, h / 2)), Part("box", {"size": (t, d, h)}, (w / 2, 0, h / 2)),
             Part("box", {"size": (w, t, h), "faces": "yY"}, (0, -d / 2, h / 2))]
    nshelf = int(rng.integers(3, 6))
    for k in range(nshelf + 1):
        parts.append(Part("box", {"size": (w, d, t), "faces": "zZ"}, (0, 0, k * (h - t) / nshelf + t / 2)))
    if doors:
        parts.append(Part("box", {"size": (w, t, h), "faces": "yY"}, (0, d / 2, h / 2)))
        for s in (-1, 1):
            parts.append(Part("cyl", {"r": 0.012, "h": 0.12}, (s * 0.06, d / 2 + 0.03, h * 0.55)))
    return parts


def obj_cabinet(rng):
    """A closed cabinet: a box body on a plinth, one or two doors with handles (shelves stay hidden)."""
    w, d, h = _u(rng, 0.5, 1.2), _u(rng, 0.4, 0.6), _u(rng, 0.7, 1.9)
    plinth = _u(rng, 0.05, 0.1)
    parts = [Part("box", {"size": (w, d, h - plinth), "faces": "xXyYZ"}, (0, 0, plinth + (h - plinth) / 2)),
             Part("box", {"size": (w * 0.96, d * 0.9, plinth), "faces": "xXyY"}, (0, 0, plinth / 2))]
    doors = 1 if w < 0.7 else 2
    dw = w / doors
    for k in range(doors):
        x = -w / 2 + dw * (k + 0.5)
        parts.append(Part("box", {"size": (dw * 0.97, 0.02, (h - plinth) * 0.97), "faces": "Y"},
                          (x, d / 2 + 0.01, plinth + (h - plinth) / 2), keep=True))
        hx = x - 0.38 * dw if k == 1 else x + 0.38 * dw  # handles beside the seam of two doors
        parts.append(Part("cyl", {"r": 0.012, "h": _u(rng, 0.1, 0.25)}, (hx, d / 2 + 0.04, plinth + (h - plinth) * 0.45),
                          keep=True))
    return parts


def obj_monitor(rng):
    w, h = _u(rng, 0.45, 0.7), _u(rng, 0.28, 0.42)
    neck = _u(rng, 0.1, 0.2)
    return [Part("box", {"size": (w, 0.03, h)}, (0, 0, neck + h / 2 + 0.02)),
            Part("box", {"size": (0.05, 0.03, neck + 0.05)}, (0, -0.03, (neck + 0.05) / 2)),
            Part("box", {"size": (0.22, 0.18, 0.02)}, (0, -0.03, 0.01))]


def obj_lamp(rng):
    h = _u(rng, 0.4, 1.6)
    r = _u(rng, 0.12, 0.25)
    return [Part("cyl", {"r": _u(rng, 0.08, 0.15), "h": 0.03}, (0, 0, 0)),
            Part("cyl", {"r": 0.012, "h": h, "caps": ""}, (0, 0, 0.03)),
            Part("cone", {"r1": r, "r2": r * _u(rng, 0.3, 0.6), "h": _u(rng, 0.15, 0.3), "caps": ""}, (0, 0, h * 0.92))]


def obj_bottle(rng):
    r, h = _u(rng, 0.03, 0.05), _u(rng, 0.15, 0.25)
    return [Part("cyl", {"r": r, "h": h, "caps": "b"}, (0, 0, 0)),
            Part("cone", {"r1": r, "r2": r * 0.35, "h": h * 0.25, "caps": ""}, (0, 0, h)),
            Part("cyl", {"r": r * 0.35, "h": h * 0.3, "caps": "t"}, (0, 0, h * 1.25))]


def obj_cup(rng):
    r, h = _u(rng, 0.035, 0.05), _u(rng, 0.07, 0.11)
    parts = [Part("cone", {"r1": r * 0.85, "r2": r, "h": h, "caps": "b"}, (0, 0, 0))]
    if rng.random() < 0.8:
        parts.append(Part("torus", {"R": h * 0.3, "r": 0.006, "arc": math.pi}, (r, 0, h / 2), rot=rot_x(math.pi / 2) @ rot_z(-math.pi / 2)))
    return parts


def obj_bowl(rng):
    r = _u(rng, 0.08, 0.15)
    return [Part("ellipsoid", {"radii": (r, r, r * _u(rng, 0.4, 0.8)), "zmax": 0.0}, (0, 0, r * 0.6)),
            Part("cyl", {"r": r * 0.4, "h": 0.01, "caps": "b"}, (0, 0, 0))]


def obj_cone(rng):
    r, h = _u(rng, 0.1, 0.3), _u(rng, 0.3, 0.7)
    return [Part("cone", {"r1": r, "r2": 0.0, "h": h, "caps": "b"}, (0, 0, 0.02)),
            Part("box", {"size": (2.4 * r, 2.4 * r, 0.02)}, (0, 0, 0.01))]


def obj_airplane(rng):
    length, r = _u(rng, 1.5, 2.5), _u(rng, 0.08, 0.14)
    span = length * _u(rng, 0.8, 1.2)
    body = Part("cyl", {"r": r, "h": length * 0.8}, (-length * 0.4, 0, 0), rot=rot_y(math.pi / 2))
    nose = Part("cone", {"r1": r, "r2": 0.0, "h": length * 0.15, "caps": ""}, (length * 0.4, 0, 0), rot=rot_y(math.pi / 2))
    wing = Part("box", {"size": (length * 0.2, span, 0.02)}, (length * _u(rng, -0.05, 0.1), 0, 0))
    tail = Part("box", {"size": (length * 0.1, span * 0.35, 0.02)}, (-length * 0.36, 0, 0))
    fin = Part("box", {"size": (length * 0.12, 0.02, r * 3)}, (-length * 0.36, 0, r * 1.5))
    return [body, nose, wing, tail, fin]


def obj_toilet(rng):
    r = _u(rng, 0.18, 0.22)
    return [Part("ellipsoid", {"radii": (r, r * 1.3, 0.2), "zmax": 0.0}, (0, 0.05, 0.4)),
            Part("torus", {"R": r * 0.95, "r": 0.025}, (0, 0.05, 0.41)),
            Part("cyl", {"r": r * 0.55, "h": 0.25, "caps": ""}, (0, 0.05, 0.0)),
            Part("box", {"size": (0.4, 0.18, _u(rng, 0.3, 0.4))}, (0, -r * 1.3 - 0.05, 0.6))]


def obj_bag(rng):
    w, d, h = _u(rng, 0.3, 0.5), _u(rng, 0.12, 0.2), _u(rng, 0.25, 0.45)
    return [Part("ellipsoid", {"radii": (w / 2, d / 2, h / 2)}, (0, 0, h / 2)),
            Part("torus", {"R": w * 0.25, "r": 0.01, "arc": math.pi}, (0, 0, h * 0.9), rot=rot_x(math.pi / 2))]


def obj_bin(rng):
    r, h = _u(rng, 0.12, 0.2), _u(rng, 0.3, 0.5)
    if rng.random() < 0.5:
        return [Part("cone", {"r1": r * 0.85, "r2": r, "h": h, "caps": "b"}, (0, 0, 0))]
    return [Part("box", {"size": (2 * r, 1.5 * r, h), "faces": "xXyYz"}, (0, 0, h / 2))]


def obj_box(rng):
    s = (_u(rng, 0.2, 0.6), _u(rng, 0.2, 0.6), _u(rng, 0.15, 0.5))
    return [Part("box", {"size": s}, (0, 0, s[2] / 2))]


def obj_door(rng):
    w, h = _u(rng, 0.8, 1.0), _u(rng, 1.9, 2.1)
    return [Part("box", {"size": (w, 0.04, h)}, (0, 0, h / 2)),
            Part("box", {"size": (0.06, 0.1, h + 0.06), "faces": "xXyY"}, (-w / 2 - 0.03, 0, h / 2)),
            Part("box", {"size": (0.06, 0.1, h + 0.06), "faces": "xXyY"}, (w / 2 + 0.03, 0, h / 2)),
            Part("box", {"size": (w + 0.12, 0.1, 0.06)}, (0, 0, h + 0.03)),
            Part("cyl", {"r": 0.02, "h": 0.12}, (w * 0.38, 0.03, 1.0), rot=rot_x(math.pi / 2))]


def obj_pillow(rng):
    return [Part("ellipsoid", {"radii": (_u(rng, 0.25, 0.35), _u(rng, 0.18, 0.25), _u(rng, 0.06, 0.1))}, (0, 0, 0.1))]


def obj_sink(rng):
    """A vanity sink: a counter slab over a cabinet, a basin sunk into the counter and a tall faucet."""
    w, d = _u(rng, 0.5, 0.9), _u(rng, 0.4, 0.55)
    r = min(w, d) * 0.35
    top = _u(rng, 0.8, 0.9)
    return [Part("box", {"size": (w, d, top - 0.05), "faces": "xXyY"}, (0, 0, (top - 0.05) / 2)),
            Part("box", {"size": (w + 0.06, d + 0.04, 0.05)}, (0, 0, top - 0.025), keep=True),
            Part("ellipsoid", {"radii": (r * 1.2, r, _u(rng, 0.12, 0.18)), "zmax": 0.0}, (0, 0.03, top), keep=True),
            Part("cyl", {"r": 0.015, "h": _u(rng, 0.2, 0.3), "caps": "t"}, (0, -d / 2 + 0.06, top), keep=True),
            Part("cyl", {"r": 0.012, "h": 0.12, "caps": "t"}, (0, -d / 2 + 0.06, top + 0.22), rot=rot_x(math.pi / 2),
                 keep=True)]


OBJECTS: dict[str, Callable[[np.random.Generator], list[Part]]] = {
    "airplane": obj_airplane, "bed": obj_bed, "bench": obj_bench, "bookshelf": obj_bookshelf, "bottle": obj_bottle,
    "bowl": obj_bowl, "chair": obj_chair, "cone": obj_cone, "cup": obj_cup, "desk": obj_desk, "lamp": obj_lamp,
    "monitor": obj_monitor, "sofa": obj_sofa, "stool": obj_stool, "table": obj_table, "toilet": obj_toilet,
    "bag": obj_bag, "bin": obj_bin, "box": obj_box, "cabinet": obj_cabinet, "display": obj_monitor,
    "door": obj_door, "shelf": obj_bookshelf, "pillow": obj_pillow, "sink": obj_sink,
}
assert all(name in OBJECTS for name in SYNTHETIC_MODELNET_CLASSES + SYNTHETIC_SCANOBJECTNN_CLASSES)


def make_object(name: str, n: int, rng: np.random.Generator, missing: float = 0.2,
                noise: float = 0.006) -> tuple[np.ndarray, np.ndarray]:
    """One object of class ``name``: (points float32 [n, 3], unit normals float32 [n, 3]).

    z up, metres, base near z = 0, random yaw and anisotropic scale, non-uniform density, noise,
    and (with probability ``missing``) one part left out.
    """
    parts = OBJECTS[name](rng)
    optional = [i for i in range(1, len(parts)) if not parts[i].keep]  # never the first, main one
    if len(parts) > 2 and optional and rng.random() < missing:  # a missing part
        parts.pop(int(optional[int(rng.integers(len(optional)))]))
    scale = rng.uniform(0.85, 1.15, 3)
    yaw = rot_z(rng.uniform(-math.pi, math.pi))
    # Oversample, then keep n points with a directional fall-off: a scanner sees one side denser.
    pts, nrm, _ = sample_parts(parts, 2 * n, rng, density_jitter=0.5)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    extent = max(float(np.ptp(pts, axis=0).max()), 1e-6)
    w = 1.0 / (1.0 + np.exp(-4.0 * (pts @ direction) / extent))
    if rng.random() < 0.3:  # a hole, as from occlusion
        centre = pts[rng.integers(len(pts))]
        w[np.linalg.norm(pts - centre, axis=1) < 0.15 * extent] *= 0.02
    # Weighted sampling without replacement (Efraimidis-Spirakis keys): much faster than choice(p=...).
    keys = np.log(rng.random(len(pts))) / w
    keep = np.argpartition(-keys, n - 1)[:n]
    pts, nrm = pts[keep], nrm[keep]
    pts = (pts * scale) @ yaw.T
    nrm = (nrm / scale) @ yaw.T
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
    pts += rng.normal(0, noise * extent, pts.shape)
    return pts.astype(np.float32), nrm.astype(np.float32)


def _to_y_up(a: np.ndarray) -> np.ndarray:
    """z-up -> y-up (ModelNet / ScanObjectNN convention): (x, y, z) -> (x, z, -y)."""
    return np.stack([a[:, 0], a[:, 2], -a[:, 1]], axis=1)


def _unit_sphere(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    centre = pts.mean(axis=0)
    scale = float(np.linalg.norm(pts - centre, axis=1).max())
    return ((pts - centre) / scale).astype(np.float32), centre, scale


def modelnet_objects(size: str, seed: int) -> dict[str, list[tuple[str, np.ndarray, int]]]:
    """``{"train"|"test": [(class name, float32 [P, 6] xyz+normals, label), ...]}`` (y up, unit sphere)."""
    cfg = _size(size)
    rng = np.random.default_rng([seed, 40])
    out: dict[str, list] = {"train": [], "test": []}
    for split in ("train", "test"):
        for label, name in enumerate(SYNTHETIC_MODELNET_CLASSES):
            for _ in range(cfg[split]):
                pts, nrm = make_object(name, cfg["txt_points"], rng)
                pts, _, _ = _unit_sphere(_to_y_up(pts))
                out[split].append((name, np.concatenate([pts, _to_y_up(nrm)], axis=1).astype(np.float32), label))
    return out


# ============================================================================ writers
def write_modelnet40_txt(out: str | Path, size: str = "demo", seed: int = 0) -> Path:
    """Write ``out/modelnet40_normal_resampled/`` (shape names, split files, per-object txt)."""
    root = Path(out) / "modelnet40_normal_resampled"
    root.mkdir(parents=True, exist_ok=True)
    objects = modelnet_objects(size, seed)
    (root / "modelnet40_shape_names.txt").write_text("\n".join(SYNTHETIC_MODELNET_CLASSES) + "\n")
    counters = dict.fromkeys(SYNTHETIC_MODELNET_CLASSES, 0)
    for split in ("train", "test"):
        ids = []
        for name, arr, _ in objects[split]:
            counters[name] += 1
            shape_id = f"{name}_{counters[name]:04d}"
            (root / name).mkdir(exist_ok=True)
            np.savetxt(root / name / f"{shape_id}.txt", arr, fmt="%.6f", delimiter=",")
            ids.append(shape_id)
        (root / f"modelnet40_{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def write_modelnet40_h5(out: str | Path, size: str = "demo", seed: int = 0, per_file: int = 2048) -> Path:
    """Write ``out/modelnet40_ply_hdf5_2048/ply_data_{train,test}<i>.h5`` (+ shape_names.txt)."""
    import h5py

    cfg = _size(size)
    root = Path(out) / "modelnet40_ply_hdf5_2048"
    root.mkdir(parents=True, exist_ok=True)
    objects = modelnet_objects(size, seed)
    rng = np.random.default_rng([seed, 41])
    (root / "shape_names.txt").write_text("\n".join(SYNTHETIC_MODELNET_CLASSES) + "\n")
    for split in ("train", "test"):
        items = objects[split]
        order = rng.permutation(len(items))  # the official files are shuffled across classes
        data, normal, label = [], [], []
        for k in order:
            _, arr, lab = items[k]
            sel = rng.choice(len(arr), size=cfg["points"], replace=False)  # random order, like the release
            data.append(arr[sel, :3])
            normal.append(arr[sel, 3:])
            label.append(lab)
        names = []
        for f, start in enumerate(range(0, len(data), per_file)):
            path = root / f"ply_data_{split}{f}.h5"
            with h5py.File(path, "w") as h:
                h.create_dataset("data", data=np.stack(data[start:start + per_file]).astype(np.float32))
                h.create_dataset("normal", data=np.stack(normal[start:start + per_file]).astype(np.float32))
                h.create_dataset("label", data=np.asarray(label[start:start + per_file], dtype=np.uint8)[:, None])
            names.append(f"data/modelnet40_ply_hdf5_2048/{path.name}")
        (root / f"{split}_files.txt").write_text("\n".join(names) + "\n")
    return root


def scanobject_sample(name: str, rng: np.random.Generator, points: int, perturbed: bool,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ScanObjectNN-like sample: (with-background float32 [P, 3], its mask int64 [P] with -1 =
    background and 1 = object, object-only float32 [P, 3]); y up, unit sphere."""
    obj, _ = make_object(name, points + points // 2, rng, missing=0.25, noise=0.008)
    lo, hi = obj.min(axis=0), obj.max(axis=0)
    size = hi - lo
    span = float(size[:2].max())
    # Context: the floor under the object, a wall behind it, a neighbouring piece of furniture.
    context = [Part("box", {"size": (3 * span, 3 * span, 0.01), "faces": "Z"}, ((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]))]
    if rng.random() < 0.7:
        context.append(Part("box", {"size": (3 * span, 0.02, 2.5 * size[2]), "faces": "Y"},
                            ((lo[0] + hi[0]) / 2, lo[1] - _u(rng, 0.05, 0.3) * span, lo[2] + 1.25 * size[2])))
    neighbour = OBJECTS[str(rng.choice(list(OBJECTS)))](rng)
    offset = np.array([rng.choice([-1, 1]) * _u(rng, 0.55, 0.9) * span + (lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])
    context += [Part(p.kind, p.p, tuple(np.asarray(p.at) + offset), p.rot) for p in neighbour]
    bg, _, _ = sample_parts(context, 2 * points, rng, density_jitter=0.3)
    bg += rng.normal(0, 0.008 * span, bg.shape)
    if perturbed:  # PB_T50_RS: rotated, anisotropically scaled scene; crop box shifted by up to half its size
        rot = rot_z(rng.uniform(-math.pi, math.pi)) @ np.diag(rng.uniform(0.8, 1.2, 3))
        centre = (lo + hi) / 2
        obj, bg = (obj - centre) @ rot.T + centre, (bg - centre) @ rot.T + centre
        box_lo, box_hi = obj.min(axis=0), obj.max(axis=0)
        shift = rng.uniform(-0.5, 0.5, 3) * (box_hi - box_lo) * np.array([1, 1, 0.3])
        box_lo, box_hi = box_lo + shift, box_hi + shift
        margin = 0.1
    else:
        box_lo, box_hi = obj.min(axis=0), obj.max(axis=0)
        margin = _u(rng, 0.05, 0.2)
    pad = margin * (box_hi - box_lo)
    lo_pad, hi_pad = box_lo - pad, box_hi + pad
    obj_in = obj[np.all((obj >= lo_pad) & (obj <= hi_pad), axis=1)]
    bg_in = bg[np.all((bg >= lo_pad) & (bg <= hi_pad), axis=1)]
    if len(obj_in) < points // 4:  # the shift cut away almost everything: keep the object whole
        obj_in = obj
    n_bg = min(len(bg_in), int(points * _u(rng, 0.15, 0.4)))
    n_obj = points - n_bg
    o = obj_in[rng.choice(len(obj_in), size=n_obj, replace=len(obj_in) < n_obj)]
    b = bg_in[rng.choice(len(bg_in), size=n_bg, replace=False)] if n_bg else np.zeros((0, 3))
    scene = np.concatenate([o, b])
    mask = np.concatenate([np.ones(n_obj, dtype=np.int64), -np.ones(n_bg, dtype=np.int64)])
    perm = rng.permutation(points)
    scene, mask = scene[perm], mask[perm]
    scene, _, _ = _unit_sphere(_to_y_up(scene))
    only = obj[rng.choice(len(obj), size=points, replace=False)]
    only, _, _ = _unit_sphere(_to_y_up(only))
    return scene, mask, only


SCANOBJECTNN_PARTS = ("bg", "masks", "only", "pb", "pb_masks")


def _scanobjectnn_class(args: tuple[int, int, int, int, int, int]) -> dict[str, list]:
    """One (split, class) of ``write_scanobjectnn``: its own random stream, so classes run in any order.

    Returns ``SCANOBJECTNN_PARTS`` -> samples: with-background scenes and masks, object-only clouds, and
    the PB_T50_RS scenes and masks (``pb_copies`` per object).
    """
    seed, split_index, label, count, points, pb_copies = args
    rng = np.random.default_rng([seed, 15, split_index, label])
    rng_pb = np.random.default_rng([seed, 15, split_index, label, 1])  # PB_T50_RS: its own stream, so skippable
    name = SYNTHETIC_SCANOBJECTNN_CLASSES[label]
    out: dict[str, list] = {k: [] for k in SCANOBJECTNN_PARTS}
    for _ in range(count):
        scene, mask, obj = scanobject_sample(name, rng, points, perturbed=False)
        out["bg"].append(scene)
        out["masks"].append(mask)
        out["only"].append(obj)
        for _ in range(pb_copies):
            scene, mask, _ = scanobject_sample(name, rng_pb, points, perturbed=True)
            out["pb"].append(scene)
            out["pb_masks"].append(mask)
    return out


def write_scanobjectnn(out: str | Path, size: str = "demo", seed: int = 0, workers: int = 1,
                       pb_t50_rs: bool = True) -> Path:
    """Write ``out/main_split/`` (OBJ_BG, PB_T50_RS) and ``out/main_split_nobg/`` (OBJ_ONLY) h5 files.

    Each (split, class) draws from its own random stream, so ``workers`` processes write the same bytes
    as one. ``pb_t50_rs=False`` skips the perturbed copies (half the work; OBJ_BG and OBJ_ONLY unchanged).
    """
    import h5py

    cfg = _size(size)
    root = Path(out)
    for folder in ("main_split", "main_split_nobg"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    jobs = [(int(seed), i, label, cfg.get(f"scanobjectnn_{split}", cfg[split]), cfg["points"],
             cfg["pb_copies"] if pb_t50_rs else 0)
            for i, split in enumerate(("train", "test")) for label in range(len(SYNTHETIC_SCANOBJECTNN_CLASSES))]
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(_scanobjectnn_class, jobs))
    else:
        parts = [_scanobjectnn_class(job) for job in jobs]
    n_cls = len(SYNTHETIC_SCANOBJECTNN_CLASSES)
    for i, (_split, file_split) in enumerate((("train", "training"), ("test", "test"))):
        chunk = parts[i * n_cls:(i + 1) * n_cls]  # classes in label order
        merged = {k: [x for c in chunk for x in c[k]] for k in SCANOBJECTNN_PARTS}
        labels = [label for label, c in enumerate(chunk) for _ in c["bg"]]
        files = {
            root / "main_split" / f"{file_split}_objectdataset.h5": (merged["bg"], merged["masks"], labels),
            root / "main_split_nobg" / f"{file_split}_objectdataset.h5":
                (merged["only"], [np.ones(cfg["points"], dtype=np.int64)] * len(labels), labels),
        }
        pb_path = root / "main_split" / f"{file_split}_objectdataset_augmentedrot_scale75.h5"
        if pb_t50_rs:
            pb_labels = [label for label, c in enumerate(chunk) for _ in c["pb"]]
            files[pb_path] = (merged["pb"], merged["pb_masks"], pb_labels)
        else:
            pb_path.unlink(missing_ok=True)  # no stale PB_T50_RS of another seed or size beside the new files
        order_rng = np.random.default_rng([seed, 15, i])
        for path, (data, mask, label) in files.items():
            order = order_rng.permutation(len(data))
            with h5py.File(path, "w") as h:
                h.create_dataset("data", data=np.stack(data)[order].astype(np.float32))
                h.create_dataset("label", data=np.asarray(label, dtype=np.int64)[order])
                h.create_dataset("mask", data=np.stack(mask)[order].astype(np.int64))
    return root


# ---------------------------------------------------------------------------- rooms
# Base colours (0..255) of the raw annotation classes; instances and points vary around them.
# Classes that share a geometry at the study's scale (door / bookcase: wooden, in or against a wall; sofa / chair:
# a seat and a back) get colours apart, so that a reduced network trained for minutes learns every class instead
# of missing one whole by chance.
ROOM_COLORS = {
    "ceiling": (200, 200, 195), "floor": (120, 110, 100), "wall": (185, 180, 170), "beam": (170, 165, 150),
    "column": (150, 145, 140), "window": (110, 150, 190), "door": (190, 60, 45), "table": (150, 110, 70),
    "chair": (60, 60, 70), "sofa": (150, 55, 150), "bookcase": (205, 165, 75), "board": (235, 235, 235),
    "clutter": (100, 130, 90), "stairs": (140, 140, 130),
}


def _wall_points(rng: np.random.Generator, length: float, height: float, holes: list[tuple[float, float, float, float]],
                 density: float) -> np.ndarray:
    """Points (u, v) on a wall of ``length`` x ``height`` minus rectangular holes (u0, u1, v0, v1)."""
    n = int(density * length * height)
    uv = rng.random((n, 2)) * [length, height]
    keep = np.ones(n, dtype=bool)
    for u0, u1, v0, v1 in holes:
        keep &= ~((uv[:, 0] > u0) & (uv[:, 0] < u1) & (uv[:, 1] > v0) & (uv[:, 1] < v1))
    return uv[keep]


def make_room(rng: np.random.Generator, density: float, stairs: bool = False) -> list[tuple[str, np.ndarray]]:
    """One room as a list of (raw class name, float32 [n, 6] xyz + rgb) annotation instances (z up)."""
    w, d, h = _u(rng, 4.0, 8.0), _u(rng, 3.5, 7.0), _u(rng, 2.8, 3.3)
    inst: list[tuple[str, np.ndarray]] = []

    def add(cls: str, xyz: np.ndarray) -> None:
        if len(xyz) == 0:
            return
        base = np.asarray(ROOM_COLORS[cls], dtype=np.float64) + rng.normal(0, 12, 3)
        rgb = np.clip(base + rng.normal(0, 6, (len(xyz), 3)), 0, 255).round()
        xyz = xyz + rng.normal(0, 0.004, xyz.shape)
        inst.append((cls, np.concatenate([xyz, rgb], axis=1).astype(np.float32)))

    def plane(x0: float, x1: float, y0: float, y1: float, z: float) -> np.ndarray:
        n = int(density * (x1 - x0) * (y1 - y0))
        return np.stack([rng.uniform(x0, x1, n), rng.uniform(y0, y1, n), np.full(n, z)], 1)

    add("floor", plane(0, w, 0, d, 0.0))
    add("ceiling", plane(0, w, 0, d, h))
    # Walls: 0 (y=0), 1 (x=w), 2 (y=d), 3 (x=0); u runs along the wall.
    lengths = [w, d, w, d]
    openings: dict[int, list] = {k: [] for k in range(4)}
    # Doors: two per room on two walls, a third in four rooms of ten (S3DIS rooms have several: doors are about 5% of
    # its points); a single (0.8-1.0 m) or, one time in five, a double leaf (1.5-1.8 m), closed in the wall plane or
    # ajar (open 25-90 degrees into the room). Windows go where the wall has room beside them.
    def free_span(k: int, width: float) -> float | None:
        for _ in range(8):
            u0 = _u(rng, 0.3, lengths[k] - width - 0.3)
            if all(u0 + width + 0.2 < a or u0 > b + 0.2 for _, (a, b, _, _) in openings[k]):
                return u0
        return None

    door_walls = [int(k) for k in rng.permutation(4)[: 3 if rng.random() < 0.4 else 2]]
    for k in door_walls:
        dw = _u(rng, 1.5, 1.8) if rng.random() < 0.2 else _u(rng, 0.8, 1.0)
        du = _u(rng, 0.3, lengths[k] - dw - 0.3)
        openings[k].append(("door", (du, du + dw, 0.0, 2.1)))
    door_wall = door_walls[0]
    for k in range(4):
        if rng.random() < 0.6:
            ww = _u(rng, 0.8, min(1.8, lengths[k] - 1.0))
            u0 = free_span(k, ww)
            if u0 is not None:
                openings[k].append(("window", (u0, u0 + ww, 0.9, min(0.9 + _u(rng, 1.0, 1.5), h - 0.3))))

    def wall_to_xyz(k: int, uv: np.ndarray, inset: float | np.ndarray = 0.0) -> np.ndarray:
        u, v = uv[:, 0], uv[:, 1]
        if k == 0:
            return np.stack([u, np.zeros(len(u)) + inset, v], 1)
        if k == 1:
            return np.stack([w - (np.zeros(len(u)) + inset), u, v], 1)
        if k == 2:
            return np.stack([w - u, d - (np.zeros(len(u)) + inset), v], 1)
        return np.stack([np.zeros(len(u)) + inset, d - u, v], 1)

    for k in range(4):
        holes = [rect for _, rect in openings[k]]
        add("wall", wall_to_xyz(k, _wall_points(rng, lengths[k], h, holes, density)))
        for cls, (u0, u1, v0, v1) in openings[k]:
            n = int(density * (u1 - u0) * (v1 - v0))
            uv = np.stack([rng.uniform(u0, u1, n), rng.uniform(v0, v1, n)], 1)
            if cls == "door" and rng.random() < 0.5:  # ajar: the leaf turns about its hinge at u0 into the room
                angle = _u(rng, math.radians(25), math.radians(90))
                s_ = uv[:, 0] - u0  # distance from the hinge along the leaf
                uv = np.stack([u0 + s_ * math.cos(angle), uv[:, 1]], 1)
                add(cls, wall_to_xyz(k, uv, inset=0.02 + s_ * math.sin(angle)))
            else:
                add(cls, wall_to_xyz(k, uv, inset=0.05 if cls == "window" else 0.02))
    board_wall = next(k for k in ((door_wall + 2) % 4, (door_wall + 1) % 4, (door_wall + 3) % 4) if k not in door_walls)
    bw = min(_u(rng, 1.2, 2.4), lengths[board_wall] - 0.6)
    u0 = _u(rng, 0.2, lengths[board_wall] - bw - 0.2)
    n = int(density * bw * 1.0)
    add("board", wall_to_xyz(board_wall, np.stack([rng.uniform(u0, u0 + bw, n), rng.uniform(1.0, 2.0, n)], 1), inset=0.02))

    def place(cls: str, parts: list[Part], x: float, y: float, yaw: float, z: float = 0.0) -> None:
        rot = rot_z(yaw)
        placed = [Part(p.kind, p.p, tuple(rot @ np.asarray(p.at) + [x, y, z]), rot @ p.rot) for p in parts]
        area = sum(p.area() for p in placed)
        pts, _, _ = sample_parts(placed, max(int(density * area), 8), rng)
        add(cls, pts)

    for _ in range(int(rng.integers(0, 3))):  # beams across the ceiling
        x = _u(rng, 0.5, w - 0.5)
        place("beam", [Part("box", {"size": (0.3, d, 0.4), "faces": "xXz"})], x, d / 2, 0.0, h - 0.2)
    for _ in range(int(rng.integers(1, 3))):  # columns against a wall
        x, y = (0.2, _u(rng, 0.5, d - 0.5)) if rng.random() < 0.5 else (_u(rng, 0.5, w - 0.5), d - 0.2)
        place("column", [Part("box", {"size": (0.4, 0.4, h), "faces": "xXyY"})], x, y, 0.0, h / 2)
    tables = []
    for _ in range(int(rng.integers(1, 3))):
        x, y = _u(rng, 1.5, w - 1.5), _u(rng, 1.5, d - 1.5)
        yaw = float(rng.choice([0.0, math.pi / 2])) + _u(rng, -0.1, 0.1)
        place("table", obj_table(rng), x, y, yaw)
        tables.append((x, y))
        for _ in range(int(rng.integers(2, 5))):
            a = _u(rng, 0, 2 * math.pi)
            place("chair", obj_chair(rng), x + 1.0 * math.cos(a), y + 0.8 * math.sin(a), a + math.pi / 2)
    for _ in range(int(rng.integers(1, 4))):
        place("bookcase", obj_bookshelf(rng), _u(rng, 0.8, w - 0.8), d - 0.25, math.pi)
    if rng.random() < 0.5:
        place("sofa", obj_sofa(rng), 0.55, _u(rng, 1.3, d - 1.3), -math.pi / 2)
    clutter = ["box", "bottle", "cup", "bin", "lamp", "monitor", "bag", "bowl"]
    for _ in range(int(rng.integers(3, 9))):
        name = str(rng.choice(clutter))
        if tables and rng.random() < 0.6:
            tx, ty = tables[int(rng.integers(len(tables)))]
            place("clutter", OBJECTS[name](rng), tx + _u(rng, -0.4, 0.4), ty + _u(rng, -0.25, 0.25), _u(rng, 0, 6.3), 0.78)
        else:
            place("clutter", OBJECTS[name](rng), _u(rng, 0.3, w - 0.3), _u(rng, 0.3, d - 0.3), _u(rng, 0, 6.3))
    if stairs:
        steps = [Part("box", {"size": (1.0, 0.3, 0.18 * (k + 1)), "faces": "xXyYZ"}, (0, 0.3 * k, 0.09 * (k + 1)))
                 for k in range(5)]
        place("stairs", steps, w - 0.7, 0.4, 0.0)
    return inst


ROOM_KINDS = ("office", "conferenceRoom", "hallway", "storage", "lounge", "pantry")


def write_s3dis_raw(out: str | Path, size: str = "demo", seed: int = 0) -> Path:
    """Write ``out/Stanford3dDataset_v1.2_Aligned_Version/Area_k/<room>/Annotations/*.txt``."""
    cfg = _size(size)
    root = Path(out) / "Stanford3dDataset_v1.2_Aligned_Version"
    rng = np.random.default_rng([seed, 13])
    room_number = 0
    for area in cfg["areas"]:
        origin = rng.uniform(-20, 20, 3) * [1, 1, 0.1]  # raw coordinates are not min-shifted
        for r in range(cfg["rooms"]):
            room_number += 1
            name = f"{ROOM_KINDS[(room_number - 1) % len(ROOM_KINDS)]}_{r + 1}"
            ann = root / f"Area_{area}" / name / "Annotations"
            ann.mkdir(parents=True, exist_ok=True)
            counts: dict[str, int] = {}
            for cls, arr in make_room(rng, cfg["density"], stairs=room_number % 4 == 1):
                counts[cls] = counts.get(cls, 0) + 1
                arr = arr.copy()
                arr[:, :3] += origin + [8.0 * r, 0.0, 0.0]
                np.savetxt(ann / f"{cls}_{counts[cls]}.txt", arr, fmt="%.3f %.3f %.3f %d %d %d")
    return root


# ---------------------------------------------------------------------------- ShapeNetPart
# Per size: shapes per category in the release's train / val / test split files and the range of points per
# shape (the release has about 2,000-3,000, a few below 2,048).
SHAPENETPART_SIZES: dict[str, dict] = {
    "test": {"train": 2, "val": 1, "test": 1, "points": (160, 240)},
    "demo": {"train": 30, "val": 5, "test": 10, "points": (1900, 2900)},
    "small": {"train": 15, "val": 3, "test": 5, "points": (1900, 2900)},
    "study": {"train": 80, "val": 12, "test": 30, "points": (1900, 2900)},
}


def _labelled(parts: list[Part], labels: list[int]) -> list[tuple[Part, int]]:
    return list(zip(parts, labels))


def _snp_airplane(rng):
    """body (fuselage and nose), wing, tail (stabiliser and fin), engine."""
    parts = obj_airplane(rng)  # body, nose, wing, tail, fin
    out = _labelled(parts, [0, 0, 1, 2, 2])
    if rng.random() < 0.85:
        length = parts[0].p["h"] / 0.8
        r = parts[0].p["r"]
        span, wing_x = parts[2].p["size"][1], parts[2].at[0]
        n_eng = 2 if rng.random() < 0.7 else 4
        for k in range(n_eng):
            y = (0.22 if k < 2 else 0.38) * span * (1 if k % 2 else -1)
            out.append((Part("cyl", {"r": 0.4 * r, "h": 0.2 * length}, (wing_x - 0.08 * length, y, -1.2 * r),
                             rot=rot_y(math.pi / 2)), 3))
    return out


def _snp_bag(rng):
    return _labelled(obj_bag(rng), [1, 0])  # body, handle


def _snp_cap(rng):
    r = _u(rng, 0.09, 0.12)
    return [(Part("ellipsoid", {"radii": (r, 1.05 * r, _u(rng, 0.6, 0.9) * r), "zmax": 0.0}, rot=rot_x(math.pi)), 0),
            (Part("ellipsoid", {"radii": (0.75 * r, _u(rng, 0.6, 0.9) * r, 0.01)}, (0, 1.15 * r, 0.0)), 1)]


def _snp_car(rng):
    """roof, hood, wheel, body (its sides and the trunk lid; hood and roof cover the rest of its top)."""
    length, width, height, r = _u(rng, 3.8, 4.8), _u(rng, 1.6, 1.9), _u(rng, 1.3, 1.5), _u(rng, 0.3, 0.36)
    low = 0.45 * height
    roof_lo, roof_hi = -_u(rng, 0.25, 0.3) * length, _u(rng, 0.15, 0.2) * length
    hood = 0.5 * length - roof_hi
    trunk = roof_lo + 0.5 * length
    out = [(Part("box", {"size": (length, width, low), "faces": "xXyYz"}, (0, 0, r + low / 2)), 3),
           (Part("box", {"size": (trunk, width, 0.01), "faces": "Z"}, (-0.5 * length + trunk / 2, 0, r + low)), 3),
           (Part("box", {"size": (hood, 0.95 * width, 0.06), "faces": "xXyYZ"}, (roof_hi + hood / 2, 0, r + low + 0.03)),
            1),
           (Part("box", {"size": (roof_hi - roof_lo, 0.9 * width, height - low), "faces": "xXyYZ"},
                 ((roof_lo + roof_hi) / 2, 0, r + low + (height - low) / 2)), 0)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            out.append((Part("cyl", {"r": r, "h": 0.22}, (sx * 0.33 * length, sy * width / 2 + 0.11, r),
                             rot=rot_x(math.pi / 2)), 2))
    return out


def _snp_chair(rng):
    parts = obj_chair(rng)  # seat, back, four legs, maybe two armrests
    return _labelled(parts, [1, 0, 2, 2, 2, 2, 3, 3][: len(parts)])


def _snp_earphone(rng):
    """earphone (the two cups), headband, wire."""
    big, cup = _u(rng, 0.075, 0.095), _u(rng, 0.035, 0.05)
    out = [(Part("ellipsoid", {"radii": (0.022, cup * 0.9, cup)}, (s * big, 0, 0)), 0) for s in (-1, 1)]
    out.append((Part("torus", {"R": big, "r": 0.008, "arc": math.pi}, (0, 0, 0), rot=rot_x(math.pi / 2)), 1))
    if rng.random() < 0.6:
        wire = _u(rng, 0.1, 0.2)  # hangs from the bottom of one cup
        out.append((Part("cyl", {"r": 0.004, "h": wire, "caps": ""}, (big, 0, -0.9 * cup - wire)), 2))
    return out


def _snp_guitar(rng):
    """head, neck, body (two bouts)."""
    bx, bz = _u(rng, 0.17, 0.22), _u(rng, 0.2, 0.26)
    top = 2 * bz + 0.6 * bz
    neck = _u(rng, 0.4, 0.5)
    return [(Part("ellipsoid", {"radii": (bx, 0.05, bz)}, (0, 0, bz)), 2),
            (Part("ellipsoid", {"radii": (0.75 * bx, 0.045, 0.6 * bz)}, (0, 0, 2 * bz)), 2),
            (Part("box", {"size": (0.05, 0.03, neck)}, (0, 0.03, top + neck / 2 - 0.05)), 1),
            (Part("box", {"size": (0.08, 0.03, _u(rng, 0.15, 0.2))}, (0, 0.03, top + neck + 0.04)), 0)]


def _snp_knife(rng):
    blade, handle = _u(rng, 0.15, 0.25), _u(rng, 0.09, 0.12)
    return [(Part("box", {"size": (blade, 0.004, _u(rng, 0.025, 0.04))}, (blade / 2, 0, 0)), 0),
            (Part("box", {"size": (handle, 0.018, 0.026)}, (-handle / 2, 0, -0.003)), 1)]


def _snp_lamp(rng):
    """base, lampshade, canopy, tube."""
    parts = obj_lamp(rng)  # base, tube, shade
    shade = parts[2]
    out = _labelled(parts, [0, 3, 1])
    if rng.random() < 0.7:
        out.append((Part("cyl", {"r": 0.35 * shade.p["r2"], "h": 0.04}, (0, 0, shade.at[2] + shade.p["h"])), 2))
    return out


def _snp_laptop(rng):
    w, d, tilt = _u(rng, 0.3, 0.4), _u(rng, 0.2, 0.28), _u(rng, 0.05, 0.45)
    return [(Part("box", {"size": (w, d, 0.02)}, (0, 0, 0.01)), 0),
            (Part("box", {"size": (w, 0.008, d)}, (0, -d / 2 - math.sin(tilt) * d / 2, 0.02 + math.cos(tilt) * d / 2),
                  rot=rot_x(tilt)), 1)]


def _snp_motorbike(rng):
    """gas tank, seat, wheel, handle, light, body."""
    r = _u(rng, 0.28, 0.33)
    out = [(Part("torus", {"R": r, "r": 0.06}, (s * 0.7, 0, r), rot=rot_x(math.pi / 2)), 2) for s in (-1, 1)]
    out += [(Part("box", {"size": (1.0, 0.2, 0.3), "faces": "xXyYz"}, (0, 0, r + 0.15)), 5),
            (Part("ellipsoid", {"radii": (0.25, 0.15, 0.12)}, (0.2, 0, r + 0.42)), 0),
            (Part("box", {"size": (0.4, 0.22, 0.06)}, (-0.25, 0, r + 0.33)), 1),
            (Part("cyl", {"r": 0.015, "h": 0.6}, (0.5, 0.3, r + 0.55), rot=rot_x(math.pi / 2)), 3),
            (Part("cyl", {"r": 0.07, "h": 0.06}, (0.62, 0, r + 0.4), rot=rot_y(math.pi / 2)), 4)]
    return out


def _snp_mug(rng):
    return _labelled(obj_cup(rng), [1, 0])  # cup, handle (sometimes none)


def _snp_pistol(rng):
    barrel = _u(rng, 0.15, 0.22)
    return [(Part("box", {"size": (barrel, 0.03, 0.035)}, (barrel / 2 - 0.03, 0, 0)), 0),
            (Part("box", {"size": (0.035, 0.03, 0.11)}, (-0.02, 0, -0.06), rot=rot_y(-0.25)), 1),
            (Part("torus", {"R": 0.025, "r": 0.004, "arc": math.pi}, (0.03, 0, -0.018), rot=rot_x(-math.pi / 2)), 2)]


def _snp_rocket(rng):
    r, h = _u(rng, 0.05, 0.08), _u(rng, 0.6, 0.9)
    out = [(Part("cyl", {"r": r, "h": h, "caps": "b"}), 0),
           (Part("cone", {"r1": r, "r2": 0.0, "h": _u(rng, 0.15, 0.25), "caps": ""}, (0, 0, h)), 2)]
    fins = 3 if rng.random() < 0.5 else 4
    for k in range(fins):
        a = 2 * math.pi * k / fins
        out.append((Part("box", {"size": (0.1, 0.006, 0.15)}, ((r + 0.05) * math.cos(a), (r + 0.05) * math.sin(a), 0.075),
                         rot=rot_z(a)), 1))
    return out


def _snp_skateboard(rng):
    """wheel, deck, truck."""
    length = _u(rng, 0.7, 0.85)
    out = [(Part("box", {"size": (length, 0.21, 0.015)}, (0, 0, 0.1)), 1)]
    for sx in (-1, 1):
        out.append((Part("box", {"size": (0.04, 0.16, 0.03)}, (sx * 0.35 * length, 0, 0.075)), 2))
        for sy in (-1, 1):
            out.append((Part("cyl", {"r": 0.028, "h": 0.03}, (sx * 0.35 * length, sy * 0.09 + 0.015, 0.03),
                             rot=rot_x(math.pi / 2)), 0))
    return out


def _snp_table(rng):
    """top, leg, support (an apron under the top, on some tables)."""
    parts = obj_table(rng)  # top, four legs
    out = _labelled(parts, [0, 1, 1, 1, 1])
    if rng.random() < 0.6:
        w, d, t = parts[0].p["size"]
        z = parts[0].at[2] - t / 2 - 0.05
        out.append((Part("box", {"size": (0.85 * w, 0.85 * d, 0.1), "faces": "xXyY"}, (0, 0, z)), 2))
    return out


SHAPENETPART_OBJECTS: tuple[Callable[[np.random.Generator], list[tuple[Part, int]]], ...] = (
    _snp_airplane, _snp_bag, _snp_cap, _snp_car, _snp_chair, _snp_earphone, _snp_guitar, _snp_knife,
    _snp_lamp, _snp_laptop, _snp_motorbike, _snp_mug, _snp_pistol, _snp_rocket, _snp_skateboard, _snp_table,
)  # in the order of classes.SHAPENETPART_CATEGORIES; each returns (part, index within the category's parts)


def shapenetpart_shape(category: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One shape of ``category``: (float32 [n, 6] xyz + unit normals, y up; int64 [n] global part ids).

    Points are spread over the parts by area with at least 4 per part, so every part present is labelled;
    proportions, optional parts, a mild anisotropic scale and noise vary from shape to shape.
    """
    labelled = SHAPENETPART_OBJECTS[category](rng)
    parts = [p for p, _ in labelled]
    first = SHAPENETPART_PARTS[category][0]
    floor = 4
    if n < floor * len(parts):
        raise ValueError(f"{n} points cannot label the {len(parts)} parts of a {SHAPENETPART_CATEGORIES[category]}")
    weights = np.array([p.area() for p in parts]) * np.exp(rng.uniform(-0.3, 0.3, len(parts)))
    counts = rng.multinomial(n - floor * len(parts), weights / weights.sum()) + floor
    pts, nrm, lab = [], [], []
    for (part, local), c in zip(labelled, counts):
        p, q = part.sample(int(c), rng)
        pts.append(p)
        nrm.append(q)
        lab.append(np.full(int(c), first + local, dtype=np.int64))
    pts, nrm, lab = np.concatenate(pts), np.concatenate(nrm), np.concatenate(lab)
    scale = rng.uniform(0.9, 1.1, 3)
    pts, nrm = pts * scale, nrm / scale
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
    extent = max(float(np.ptp(pts, axis=0).max()), 1e-6)
    pts = pts + rng.normal(0, 0.002 * extent, pts.shape)
    # y up and about unit size, off-centre: the loader's normalisation has work to do, as with the release
    pts, nrm = _to_y_up(pts), _to_y_up(nrm)
    pts = (pts - pts.mean(axis=0)) / extent + rng.uniform(-0.05, 0.05, 3)
    order = rng.permutation(n)
    return np.concatenate([pts, nrm], axis=1)[order].astype(np.float32), lab[order]


def write_shapenetpart(out: str | Path, size: str = "demo", seed: int = 0) -> Path:
    """Write ``out/shapenetcore_partanno_segmentation_benchmark_v0_normal/`` in the release's layout.

    ``synsetoffset2category.txt``, ``train_test_split/shuffled_{train,val,test}_file_list.json`` (entries
    ``shape_data/<synset>/<id>``, shuffled across categories) and ``<synset>/<id>.txt`` with
    ``x y z nx ny nz part`` lines (the part id written as a float, as in the release). Each (split,
    category) draws from its own random stream.
    """
    if size not in SHAPENETPART_SIZES:
        raise ValueError(f"--size must be one of {', '.join(SHAPENETPART_SIZES)}, got {size!r}")
    cfg = SHAPENETPART_SIZES[size]
    root = Path(out) / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
    (root / "train_test_split").mkdir(parents=True, exist_ok=True)
    (root / "synsetoffset2category.txt").write_text(
        "".join(f"{name}\t{synset}\n" for name, synset in zip(SHAPENETPART_CATEGORIES, SHAPENETPART_SYNSETS)))
    lo, hi = cfg["points"]
    for split_index, split in enumerate(("train", "val", "test")):
        entries = []
        for category, synset in enumerate(SHAPENETPART_SYNSETS):
            rng = np.random.default_rng([seed, 50, split_index, category])
            (root / synset).mkdir(exist_ok=True)
            for _ in range(cfg[split]):
                shape_id = rng.bytes(16).hex()  # 32 hex digits, like the release's model ids
                arr, labels = shapenetpart_shape(category, int(rng.integers(lo, hi + 1)), rng)
                table = np.concatenate([arr.astype(np.float64), labels[:, None].astype(np.float64)], axis=1)
                np.savetxt(root / synset / f"{shape_id}.txt", table, fmt="%.6f", delimiter=" ")
                entries.append(f"shape_data/{synset}/{shape_id}")
        order = np.random.default_rng([seed, 50, split_index]).permutation(len(entries))
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(
            json.dumps([entries[k] for k in order]))
    return root


WRITERS: dict[str, Callable[..., Path]] = {
    "modelnet40-txt": write_modelnet40_txt,
    "modelnet40-h5": write_modelnet40_h5,
    "scanobjectnn": write_scanobjectnn,
    "s3dis-raw": write_s3dis_raw,
    "shapenetpart": write_shapenetpart,
}


def write_layout(layout: str, out: str | Path, size: str = "demo", seed: int = 0, workers: int = 1,
                 pb_t50_rs: bool = True) -> tuple[Path, float]:
    """Write one synthetic layout under ``out``; returns (the layout's folder, seconds taken).

    ``workers`` processes share the work where a writer can split it (ScanObjectNN); same bytes either way.
    ``pb_t50_rs=False``: ScanObjectNN without its PB_T50_RS files.
    """
    if layout not in WRITERS:
        raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    _size(size)
    start = time.perf_counter()
    extra = {"workers": int(workers), "pb_t50_rs": bool(pb_t50_rs)} if layout == "scanobjectnn" else {}
    path = WRITERS[layout](out, size=size, seed=int(seed), **extra)
    seconds = time.perf_counter() - start
    log.info("synthetic %s (%s, seed %d) written to %s in %.1f s", layout, size, seed, path, seconds)
    return path, seconds


def indoor_crop(batch: int, points: int, generator):
    """``pos[B,N,3]`` and ``feats[B,4,N]`` (rgb in [0,1] + height) of an indoor-like crop.

    The density matches a 0.04 m voxelised S3DIS crop: 24,000 points over a box of about
    3 x 3 x 3 m, half on floor/wall planes (dense surfaces, as in rooms) and half in the volume.
    """
    import torch

    side = 3.0 * (points / 24000) ** (1 / 3)
    pos = torch.rand(batch, points, 3, generator=generator) * side
    on_plane = torch.rand(batch, points, generator=generator) < 0.5
    axis = torch.randint(0, 3, (batch, points), generator=generator)
    flat = pos.clone()
    flat.scatter_(2, axis.unsqueeze(-1), 0.0)  # project onto the x=0 / y=0 / z=0 planes
    pos = torch.where(on_plane.unsqueeze(-1), flat, pos)
    rgb = torch.rand(batch, 3, points, generator=generator)
    height = pos[..., 2].unsqueeze(1)
    return pos.contiguous(), torch.cat([rgb, height], 1).contiguous()
