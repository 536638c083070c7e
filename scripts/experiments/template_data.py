"""Data unlike pointdr2.data.synthetic's, to check the Dr2Net recipe away from the study's own generator.

Each class is a random template of 2-5 primitives (boxes, ellipsoids, cylinders, cones, tori) at random poses;
instances jitter the template's parameters, drop parts, rotate about the vertical and scale. Written in the
official ModelNet40 h5 layout (pretraining, 40 classes) and ScanObjectNN h5 layout (finetuning: 15 other
templates with occlusion by a half-space, a floor patch and a clutter blob as background, noise; OBJ_BG in
main_split/, the object alone in main_split_nobg/). ``--hard`` scales occlusion, background, noise and jitter;
``--hard-test`` gives the test split its own (a train/test shift).

The runs of 2026-12-07 (see the evidence issue's note), e.g. a strong pretraining and a hard finetuning task:

    python scripts/experiments/template_data.py OUT --seed 23 --mn-jitter 0.05 --mn-drop 0.0 --mn-train 150 \
        --mn-test 5 --hard 0.6 --so-train 80 --so-test 40
    pointdr2 train configs/study/transformer-pretrain.yaml dataset.root=OUT/modelnet40_ply_hdf5_2048 run.dir=PRE
    pointdr2 train configs/study/transformer-finetune.yaml dataset.root=OUT/scanobjectnn \
        model.pretrained=PRE/best.pth finetune.mode=conventional run.dir=...
"""
import argparse
import math
from pathlib import Path

import h5py
import numpy as np


def sample_prim(kind, p, n, rng):
    if kind == "box":
        sx, sy, sz = p
        area = np.array([sy * sz, sy * sz, sx * sz, sx * sz, sx * sy, sx * sy])
        face = rng.choice(6, size=n, p=area / area.sum())
        u = rng.uniform(-0.5, 0.5, (n, 3))
        ax = face // 2
        sign = np.where(face % 2 == 0, -0.5, 0.5)
        u[np.arange(n), ax] = sign
        return u * np.array([sx, sy, sz])
    if kind == "sphere":
        v = rng.normal(size=(n, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v * np.array(p)
    if kind == "cyl":
        r, h = p
        t = rng.uniform(0, 2 * math.pi, n)
        z = rng.uniform(-h / 2, h / 2, n)
        return np.stack([r * np.cos(t), r * np.sin(t), z], 1)
    if kind == "cone":
        r, h = p
        t = rng.uniform(0, 2 * math.pi, n)
        s = np.sqrt(rng.uniform(0, 1, n))
        return np.stack([r * s * np.cos(t), r * s * np.sin(t), h / 2 - s * h], 1)
    if kind == "torus":
        R, r = p
        a = rng.uniform(0, 2 * math.pi, n)
        b = rng.uniform(0, 2 * math.pi, n)
        return np.stack([(R + r * np.cos(b)) * np.cos(a), (R + r * np.cos(b)) * np.sin(a), r * np.sin(b)], 1)
    raise ValueError(kind)


KINDS = ["box", "sphere", "cyl", "cone", "torus"]


def random_params(kind, rng):
    if kind == "box":
        return list(rng.uniform(0.1, 1.0, 3))
    if kind == "sphere":
        return list(rng.uniform(0.1, 0.6, 3))
    if kind in ("cyl", "cone"):
        return [rng.uniform(0.05, 0.4), rng.uniform(0.2, 1.2)]
    return [rng.uniform(0.2, 0.5), rng.uniform(0.03, 0.15)]


def make_template(rng):
    parts = []
    for _ in range(int(rng.integers(2, 6))):
        kind = KINDS[int(rng.integers(len(KINDS)))]
        pos = rng.uniform(-0.6, 0.6, 3)
        ang = rng.uniform(-math.pi, math.pi, 3) * (rng.random() < 0.5)
        parts.append((kind, random_params(kind, rng), pos, ang))
    return parts


def rot(ang):
    ax, ay, az = ang
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def instance(template, n, rng, jitter, drop):
    parts = [p for p in template if rng.random() > drop] or template[:1]
    pts = []
    weights = np.array([1.0 + rng.random() for _ in parts])
    counts = rng.multinomial(n, weights / weights.sum())
    for (kind, par, pos, ang), c in zip(parts, counts):
        par = [v * rng.uniform(1 - jitter, 1 + jitter) for v in par]
        pos = pos + rng.normal(0, jitter * 0.3, 3)
        ang = np.asarray(ang) + rng.normal(0, jitter * 0.5, 3)
        pts.append(sample_prim(kind, par, int(c), rng) @ rot(ang).T + pos)
    pts = np.concatenate(pts)
    pts = pts @ rot((0, 0, rng.uniform(-math.pi, math.pi))).T
    pts *= rng.uniform(0.8, 1.2, 3)
    return pts


def unit(p):
    p = p - p.mean(0)
    return p / np.linalg.norm(p, axis=1).max()


def finish(p, npts, rng, noise):
    p = unit(p)
    p = p + rng.normal(0, noise, p.shape)
    idx = rng.choice(len(p), npts, replace=len(p) < npts)
    return unit(p[idx]).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--mn-classes", type=int, default=40)
    ap.add_argument("--mn-train", type=int, default=60)
    ap.add_argument("--mn-test", type=int, default=15)
    ap.add_argument("--so-classes", type=int, default=15)
    ap.add_argument("--so-train", type=int, default=80)
    ap.add_argument("--so-test", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--hard", type=float, default=1.0)
    ap.add_argument("--hard-test", type=float, default=None)
    ap.add_argument("--mn-jitter", type=float, default=0.2)
    ap.add_argument("--mn-drop", type=float, default=0.15)
    a = ap.parse_args()
    out = Path(a.out)
    rng = np.random.default_rng(a.seed)
    npts = 2048
    # ModelNet40 layout
    mn = out / "modelnet40_ply_hdf5_2048"
    mn.mkdir(parents=True, exist_ok=True)
    temps = [make_template(rng) for _ in range(a.mn_classes)]
    (mn / "shape_names.txt").write_text("\n".join(f"c{i:02d}" for i in range(a.mn_classes)) + "\n")
    for split, count in (("train", a.mn_train), ("test", a.mn_test)):
        data, lab = [], []
        for c, t in enumerate(temps):
            for _ in range(count):
                data.append(finish(instance(t, 3000, rng, a.mn_jitter, a.mn_drop), npts, rng, 0.01))
                lab.append(c)
        order = rng.permutation(len(data))
        with h5py.File(mn / f"ply_data_{split}0.h5", "w") as h:
            h["data"] = np.stack(data)[order]
            h["normal"] = np.zeros_like(np.stack(data)[order])
            h["label"] = np.asarray(lab, np.uint8)[order][:, None]
        (mn / f"{split}_files.txt").write_text(f"data/modelnet40_ply_hdf5_2048/ply_data_{split}0.h5\n")
    # ScanObjectNN layout, OBJ_BG-like
    so = out / "scanobjectnn" / "main_split"
    so.mkdir(parents=True, exist_ok=True)
    (out / "scanobjectnn" / "main_split_nobg").mkdir(parents=True, exist_ok=True)
    stemps = [make_template(rng) for _ in range(a.so_classes)]
    for split, fname, count in (("train", "training", a.so_train), ("test", "test", a.so_test)):
        h = a.hard if split == "train" or a.hard_test is None else a.hard_test
        data, lab, masks, only = [], [], [], []
        for c, t in enumerate(stemps):
            for _ in range(count):
                obj = instance(t, 3000, rng, 0.25 * h, 0.25 * h)
                # occlusion: drop a half-space slab
                d = rng.normal(size=3)
                d /= np.linalg.norm(d)
                s = obj @ d
                keep = s < np.quantile(s, 1 - 0.35 * h * rng.random())
                obj = obj[keep]
                lo, hi = obj.min(0), obj.max(0)
                span = (hi - lo).max()
                nb = int(len(obj) * rng.uniform(0.2, 0.6) * h)
                floor = np.stack([rng.uniform(lo[0] - 0.3 * span, hi[0] + 0.3 * span, nb // 2),
                                  rng.uniform(lo[1] - 0.3 * span, hi[1] + 0.3 * span, nb // 2),
                                  np.full(nb // 2, lo[2])], 1)
                blob_c = lo + rng.uniform(0, 1, 3) * (hi - lo)
                blob = blob_c + rng.normal(0, 0.15 * span, (nb - nb // 2, 3))
                bg = np.concatenate([floor, blob])
                allp = np.concatenate([obj, bg])
                m = np.concatenate([np.ones(len(obj)), -np.ones(len(bg))])
                allp = allp + rng.normal(0, 0.01 * span * h, allp.shape)
                idx = rng.choice(len(allp), npts, replace=len(allp) < npts)
                data.append(unit(allp[idx]).astype(np.float32))
                masks.append(m[idx].astype(np.int64))
                only.append(finish(obj, npts, rng, 0.005))
                lab.append(c)
        order = rng.permutation(len(data))
        with h5py.File(so / f"{fname}_objectdataset.h5", "w") as f:
            f["data"] = np.stack(data)[order]
            f["label"] = np.asarray(lab, np.int64)[order]
            f["mask"] = np.stack(masks)[order]
        with h5py.File(out / "scanobjectnn" / "main_split_nobg" / f"{fname}_objectdataset.h5", "w") as f:
            f["data"] = np.stack(only)[order]
            f["label"] = np.asarray(lab, np.int64)[order]
            f["mask"] = np.ones((len(order), npts), np.int64)


if __name__ == "__main__":
    main()
