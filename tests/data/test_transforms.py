"""Transforms against hand-computed references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pointdr2.data.transforms import build_transforms, default_transforms


def _cls_sample(n=300, seed=0, normals=True):
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n, 3)).astype(np.float32)
    cols = [pts]
    if normals:
        nrm = rng.normal(size=(n, 3))
        cols.append((nrm / np.linalg.norm(nrm, axis=1, keepdims=True)).astype(np.float32))
    return {"points": np.concatenate(cols, axis=1), "label": np.int64(3), "mask": np.arange(n, dtype=np.int64)}


def test_fps_subsample_matches_brute_force(fps_reference):
    s = _cls_sample()
    out = build_transforms([{"name": "fps_subsample", "npoints": 64}])(s, np.random.default_rng(0))
    ref = fps_reference(s["points"][:, :3], 64)
    np.testing.assert_array_equal(out["mask"], ref)  # mask = original index: per-point keys follow
    np.testing.assert_array_equal(out["points"], s["points"][ref])
    assert out["label"] == 3


def test_fps_subsample_keep_is_random_subset_of_fps(fps_reference):
    s = _cls_sample()
    t = build_transforms([{"name": "fps_subsample", "npoints": 100, "keep": 40}])
    a, b = t(s, np.random.default_rng(1)), t(s, np.random.default_rng(2))
    ref = set(fps_reference(s["points"][:, :3], 100).tolist())
    for out in (a, b):
        assert len(set(out["mask"].tolist())) == 40 and set(out["mask"].tolist()) <= ref
    assert set(a["mask"].tolist()) != set(b["mask"].tolist())


def test_fps_subsample_skip_origin_never_picks_the_origin_ball():
    s = _cls_sample()
    s["points"][7, :3] = 0.0
    s["points"][40, :3] = [0.01, 0.02, -0.01]  # |p|^2 = 6e-4 <= 1e-3: pointnet2_ops skips it
    xyz = s["points"][:, :3].astype(np.float64)
    chosen, mind = [0], np.full(len(xyz), np.inf)
    for _ in range(299):  # brute force with the skip, every point picked
        mind = np.minimum(mind, ((xyz - xyz[chosen[-1]]) ** 2).sum(1))
        chosen.append(int(np.argmax(np.where(np.isin(np.arange(len(xyz)), [7, 40]), -1.0, mind))))
    out = build_transforms([{"name": "fps_subsample", "npoints": 300, "skip_origin": True}])(s, np.random.default_rng(0))
    np.testing.assert_array_equal(out["mask"], chosen)
    assert 7 not in out["mask"] and 40 not in out["mask"]
    plain = build_transforms([{"name": "fps_subsample", "npoints": 300}])(s, np.random.default_rng(0))
    assert 7 in plain["mask"] and 40 in plain["mask"]
    with pytest.raises(ValueError, match="skip_origin must be true or false"):
        build_transforms([{"name": "fps_subsample", "npoints": 3, "skip_origin": "yes"}])


def test_fps_subsample_too_few_points():
    with pytest.raises(ValueError, match="npoints=500 but the sample has only 300"):
        build_transforms([{"name": "fps_subsample", "npoints": 500}])(_cls_sample(), np.random.default_rng(0))


def test_scale_translate_ranges_and_normals_untouched():
    s = _cls_sample()
    t = build_transforms([{"name": "scale_translate"}])
    for seed in range(20):
        out = t(s, np.random.default_rng(seed))
        x0, x1 = s["points"][:, :3].astype(np.float64), out["points"][:, :3].astype(np.float64)
        for axis in range(3):
            # x1 = scale * x0 + shift exactly: recover both by least squares.
            a = np.stack([x0[:, axis], np.ones(len(x0))], 1)
            (scale, shift), *_ = np.linalg.lstsq(a, x1[:, axis], rcond=None)
            assert 2 / 3 - 1e-5 <= scale <= 1.5 + 1e-5 and abs(shift) <= 0.2 + 1e-5
            np.testing.assert_allclose(a @ [scale, shift], x1[:, axis], atol=1e-5)
        np.testing.assert_array_equal(out["points"][:, 3:], s["points"][:, 3:])


def test_rotate_about_up_axis_keeps_height_norms_and_normals():
    s = _cls_sample()
    out = build_transforms([{"name": "rotate", "up_axis": 1, "angle": math.pi}])(s, np.random.default_rng(3))
    p0, p1 = s["points"].astype(np.float64), out["points"].astype(np.float64)
    np.testing.assert_allclose(p1[:, 1], p0[:, 1], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(p1[:, :3], axis=1), np.linalg.norm(p0[:, :3], axis=1), rtol=1e-5)
    # Points and normals rotate by the same angle: their dot products are preserved.
    np.testing.assert_allclose((p1[:, :3] * p1[:, 3:]).sum(1), (p0[:, :3] * p0[:, 3:]).sum(1), atol=1e-5)
    angle0 = np.arctan2(p0[:, 0], p0[:, 2])
    angle1 = np.arctan2(p1[:, 0], p1[:, 2])
    delta = np.angle(np.exp(1j * (angle1 - angle0)))
    assert np.ptp(delta) < 1e-4  # one rigid rotation for every point


def test_xyz_align_and_center_normalize():
    rng = np.random.default_rng(0)
    s = {"pos": (rng.random((200, 3)) * 5 + 3).astype(np.float32), "color": rng.random((200, 3)).astype(np.float32),
         "label": np.zeros(200, dtype=np.int64)}
    out = build_transforms([{"name": "xyz_align", "up_axis": 2}])(s, rng)
    np.testing.assert_allclose(out["pos"][:, :2].mean(0), 0, atol=1e-5)
    assert abs(out["pos"][:, 2].min()) < 1e-6
    c = _cls_sample(normals=False)
    out = build_transforms([{"name": "center_normalize", "up_axis": 1, "append_height": True}])(c, rng)
    p = out["points"].astype(np.float64)
    assert p.shape == (300, 4)
    np.testing.assert_allclose(p[:, :3].mean(0), 0, atol=1e-5)
    assert abs(np.linalg.norm(p[:, :3], axis=1).max() - 1) < 1e-5
    np.testing.assert_allclose(p[:, 3], c["points"][:, 1] - c["points"][:, 1].min(), atol=1e-5)


def test_chromatic_transforms():
    rng = np.random.default_rng(0)
    color = (rng.random((50, 3)) * 0.5 + 0.2).astype(np.float32)
    s = {"pos": np.zeros((50, 3), np.float32), "color": color, "label": np.zeros(50, np.int64)}
    out = build_transforms([{"name": "chromatic_auto_contrast", "p": 1.0, "blend": 1.0}])(s, rng)
    lo, hi = color.min(0), color.max(0)
    np.testing.assert_allclose(out["color"], (color - lo) / (hi - lo), atol=1e-5)
    assert np.all(build_transforms([{"name": "chromatic_drop", "p": 1.0}])(s, rng)["color"] == 0)
    assert build_transforms([{"name": "chromatic_drop", "p": 0.0}])(s, rng)["color"] is color
    out = build_transforms([{"name": "chromatic_normalize", "mean": [0.5, 0.4, 0.3], "std": [0.1, 0.2, 0.4]}])(s, rng)
    np.testing.assert_allclose(out["color"], (color - [0.5, 0.4, 0.3]) / [0.1, 0.2, 0.4], rtol=1e-5)


def test_normal_drop_zeroes_the_normals_of_a_shape_with_probability_p():
    pts = np.random.default_rng(1).random((40, 7)).astype(np.float32)  # xyz, normals, height
    s = {"points": pts, "label": np.zeros(40, np.int64), "category": 3}
    out = build_transforms([{"name": "normal_drop", "p": 1.0}])(s, np.random.default_rng(0))
    assert np.all(out["points"][:, 3:6] == 0)
    np.testing.assert_array_equal(out["points"][:, :3], pts[:, :3])
    np.testing.assert_array_equal(out["points"][:, 6], pts[:, 6])
    assert np.all(pts[:, 3:6] > 0)  # the input is left alone
    assert build_transforms([{"name": "normal_drop", "p": 0.0}])(s, np.random.default_rng(0))["points"] is pts
    drop = build_transforms([{"name": "normal_drop", "p": 0.3}])
    rng = np.random.default_rng(5)
    dropped = [bool(np.all(drop(s, rng)["points"][:, 3:6] == 0)) for _ in range(2000)]
    assert abs(np.mean(dropped) - 0.3) < 0.04
    with pytest.raises(ValueError, match="normal_drop needs points with normals"):
        drop({"points": pts[:, :3], "label": s["label"]}, rng)


def test_jitter_is_clipped():
    s = _cls_sample(normals=False)
    out = build_transforms([{"name": "jitter", "sigma": 1.0, "clip": 0.05}])(s, np.random.default_rng(0))
    d = out["points"] - s["points"]
    assert np.abs(d).max() <= 0.05 + 1e-6 and np.abs(d).max() > 0.04


def test_random_subsample_and_shuffle_keep_rows_together():
    s = _cls_sample()
    rng = np.random.default_rng(0)
    for spec in ({"name": "random_subsample", "npoints": 50}, {"name": "shuffle"},
                 {"name": "random_subsample", "npoints": 400}):
        out = build_transforms([spec])(s, rng)
        np.testing.assert_array_equal(out["points"], s["points"][out["mask"]])
    assert len(set(build_transforms([{"name": "random_subsample", "npoints": 50}])(s, rng)["mask"].tolist())) == 50


@pytest.mark.parametrize("specs, message", [
    ([{"name": "scale_translat"}], "unknown transform 'scale_translat'; did you mean scale_translate"),
    ([{"name": "jitter", "sigm": 0.1}], "unknown parameter 'sigm'; did you mean sigma"),
    ([{"npoints": 3}], "must be a mapping with a 'name' key"),
    ({"name": "jitter"}, "must be a list"),
    ([{"name": "fps_subsample", "npoints": 10, "keep": 20}], "0 < keep <= npoints"),
])
def test_build_transforms_errors(specs, message):
    with pytest.raises(ValueError, match=message):
        build_transforms(specs)


def test_default_pipelines_build():
    for name in ("modelnet40", "scanobjectnn", "s3dis"):
        for split in ("train", "test"):
            build_transforms(default_transforms(name, split))
    assert len(build_transforms(default_transforms("s3dis", "train"))) == 7


def test_default_s3dis_pipelines_are_the_official_recipe():
    """The defaults equal the openpoints pipeline spelled out in the shipped pointnext-l.yaml (colours
    standardised with the S3DIS statistics in train and test, as official checkpoints expect)."""
    from pointdr2.config import find_config, load_config

    shipped = load_config(find_config("s3dis/pointnext-l")).dataset.transforms
    for split in ("train", "test"):
        assert [dict(t) for t in shipped[split]] == default_transforms("s3dis", split)
    sample = {"pos": np.zeros((2, 3), np.float32),
              "color": np.array([[0.5136457, 0.49523646, 0.44921124],
                                 [0.5136457 + 0.18308958, 0.49523646 - 2 * 0.18415008, 0.44921124]], np.float32)}
    out = build_transforms(default_transforms("s3dis", "test"))(sample, np.random.default_rng(0))
    np.testing.assert_allclose(out["color"], [[0, 0, 0], [1, -2, 0]], atol=1e-6)
