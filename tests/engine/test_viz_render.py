"""Open3D rendering on a hand-made cloud: headless PNG with exact class colours, PLY round trip, colouring."""

import numpy as np
import pytest

from pointdr2.viz import ERROR_COLORS, color_by_labels, color_errors, palette, read_ply, render_png, write_ply


def _cloud():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 3)) * 0.2
    b = rng.normal(size=(400, 3)) * 0.2 + [1.0, 0.0, 0.0]
    return np.concatenate([a, b]), np.repeat([2, 5], 400)


def test_colouring_by_labels_and_errors():
    colors = palette(7)
    xyz, labels = _cloud()
    c = color_by_labels(labels, len(xyz), colors)
    assert np.array_equal(c[0], colors[2]) and np.array_equal(c[-1], colors[5])
    whole = color_by_labels(4, 10, colors)  # one label colours a whole object
    assert np.array_equal(whole, np.tile(colors[4], (10, 1)))
    err = color_errors([1, 2, 3], [1, 0, 3], 3)
    assert np.array_equal(err, ERROR_COLORS[[0, 1, 0]])
    assert len({tuple(p) for p in palette(40)}) == 40
    with pytest.raises(ValueError, match="labels must lie in"):
        color_by_labels([9], 3, colors)


def test_headless_png_shows_the_class_colours(tmp_path):
    import matplotlib.image as mpimg

    xyz, labels = _cloud()
    colors = palette(7)
    path = render_png(tmp_path / "c.png", (xyz, color_by_labels(labels, len(xyz), colors)), width=200, height=160,
                      point_size=5, up_axis="z")
    img = mpimg.imread(path)[..., :3]
    assert img.shape == (160, 200, 3)
    for k in (2, 5):
        assert (np.abs(img - colors[k]).max(axis=-1) < 3 / 255).sum() > 50, k
    absent = colors[0]
    assert (np.abs(img - absent).max(axis=-1) < 3 / 255).sum() == 0
    with pytest.raises(ValueError, match=".png"):
        render_png(tmp_path / "c.jpg", (xyz, np.zeros_like(xyz)))


def test_ply_round_trip(tmp_path):
    xyz, labels = _cloud()
    colors = color_by_labels(labels, len(xyz), palette(7))
    write_ply(tmp_path / "c.ply", xyz, colors)
    back_xyz, back_colors = read_ply(tmp_path / "c.ply")
    np.testing.assert_allclose(back_xyz, xyz, atol=1e-6)
    np.testing.assert_allclose(back_colors, colors, atol=0.5 / 255 + 1e-9)
    with pytest.raises(ValueError, match="non-finite"):
        write_ply(tmp_path / "bad.ply", np.full((2, 3), np.nan), np.zeros((2, 3)))
