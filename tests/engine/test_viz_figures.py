"""Readable pictures: tiles inside the canvas, no overlap, titles present; the room cut-away."""

from __future__ import annotations

import itertools

import matplotlib.image as mpimg
import numpy as np

from pointdr2.viz import palette
from pointdr2.viz.figures import classification_grid, cut_away, segmentation_pair


def _no_overlap(boxes):
    for (a, b) in itertools.combinations(boxes, 2):
        inter_w = min(a[2], b[2]) - max(a[0], b[0])
        inter_h = min(a[3], b[3]) - max(a[1], b[1])
        assert inter_w <= 1e-6 or inter_h <= 1e-6, (a, b)


def test_classification_grid_layout(tmp_path):
    rng = np.random.default_rng(0)
    tiles = [{"xyz": rng.normal(size=(200, 3)) * (i + 1) + 10 * i, "pred": f"c{i % 3}", "true": f"c{i % 2}"}
             for i in range(10)]
    layout = classification_grid(tmp_path / "g.png", tiles, up_axis=1, columns=4)
    assert len(layout) == 10
    for tile, t in zip(layout, tiles):
        x0, y0, x1, y1 = tile["box"]
        assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0  # inside the canvas
        assert tile["title"].startswith(f"{t['pred']} / {t['true']}")
        assert tile["title"].endswith("✗") == (t["pred"] != t["true"])  # wrong ones marked
    _no_overlap([t["box"] for t in layout])
    # rows of 4: 3 rows, the tiles of a row share a height
    rows = sorted({round(t["box"][1], 3) for t in layout})
    assert len(rows) == 3
    assert mpimg.imread(tmp_path / "g.png").shape[1] > 500


def test_segmentation_pair_and_room_cut_away(tmp_path):
    rng = np.random.default_rng(1)
    floor = np.c_[rng.uniform(0, 5, (2000, 2)), np.zeros(2000)]
    ceiling = np.c_[rng.uniform(0, 5, (2000, 2)), np.full(2000, 3.0)]
    chair = np.c_[rng.uniform(2, 2.5, (500, 2)), rng.uniform(0, 0.9, 500)]
    xyz = np.concatenate([floor, ceiling, chair])
    target = np.r_[np.full(2000, 1), np.zeros(2000, dtype=int), np.full(500, 7)]
    pred = target.copy()
    pred[-100:] = 8
    keep = cut_away(xyz, up_axis=2)
    assert not keep[2000:4000].any() and keep[:2000].all() and keep[4000:].all()  # the ceiling is cut away
    names = [f"class{i}" for i in range(13)]
    layout = segmentation_pair(tmp_path / "s.png", xyz, pred, target, names, palette(13), up_axis=2, room=True)
    titles = [t["title"] for t in layout]
    assert titles == ["prediction", "ground truth"]
    _no_overlap([t["box"] for t in layout])
    img = mpimg.imread(tmp_path / "s.png")[..., :3]
    # the legend and both panels draw the chair's class colour and the floor's
    for c in (1, 7):
        assert (np.abs(img - palette(13)[c]).max(axis=-1) < 0.08).sum() > 20, c
