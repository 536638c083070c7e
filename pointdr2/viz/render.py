"""Colour point clouds by class or error, render them to PNG with Open3D, write and read PLY files.

Headless rendering uses ``open3d.visualization.Visualizer(visible=False)`` and
``capture_screen_float_buffer``: without an X server Open3D falls back to an EGL offscreen context
(Mesa's software renderer on machines without a GPU), so no display and no Vulkan loader are
needed. Point clouds without normals are drawn unlit, so a class colour lands in the PNG exactly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["palette", "color_by_labels", "color_errors", "ERROR_COLORS", "write_ply", "read_ply", "render_png",
           "show_window", "has_display"]

log = logging.getLogger(__name__)

# 20 well separated colours (0..1); more classes continue with evenly spaced hues.
_BASE = np.array([
    [0.90, 0.10, 0.10], [0.12, 0.47, 0.71], [0.17, 0.63, 0.17], [1.00, 0.50, 0.05], [0.58, 0.40, 0.74],
    [0.55, 0.34, 0.29], [0.89, 0.47, 0.76], [0.50, 0.50, 0.50], [0.74, 0.74, 0.13], [0.09, 0.75, 0.81],
    [0.00, 0.00, 0.55], [0.60, 0.90, 0.30], [1.00, 0.85, 0.00], [0.40, 0.00, 0.20], [0.00, 0.40, 0.40],
    [1.00, 0.60, 0.60], [0.30, 0.20, 0.00], [0.60, 0.80, 1.00], [0.80, 0.40, 0.00], [0.20, 0.20, 0.20],
])

# Correct / wrong colours for --color error.
ERROR_COLORS = np.array([[0.75, 0.75, 0.75], [0.90, 0.05, 0.05]])


def palette(num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` float64 colours in 0..1, the same for every call."""
    if num_classes <= len(_BASE):
        return _BASE[:num_classes].copy()
    import colorsys

    extra = num_classes - len(_BASE)
    hues = [colorsys.hsv_to_rgb((i * 0.61803398875) % 1.0, 0.65, 0.85) for i in range(extra)]
    return np.concatenate([_BASE, np.array(hues)], axis=0)


def color_by_labels(labels, num_points: int, colors: np.ndarray) -> np.ndarray:
    """Colours ``[num_points, 3]`` for per-point labels ``[num_points]`` or one label for the whole cloud."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size == 1:
        labels = np.full(num_points, labels[0])
    if labels.size != num_points:
        raise ValueError(f"got {labels.size} labels for {num_points} points")
    if labels.size and (labels.min() < 0 or labels.max() >= len(colors)):
        raise ValueError(f"labels must lie in [0, {len(colors)}), got [{labels.min()}, {labels.max()}]")
    return colors[labels]


def color_errors(pred, target, num_points: int) -> np.ndarray:
    """Grey where ``pred == target``, red where not (per point, or the whole cloud for one label)."""
    pred = np.asarray(pred, dtype=np.int64).reshape(-1)
    target = np.asarray(target, dtype=np.int64).reshape(-1)
    if pred.shape != target.shape:
        raise ValueError(f"pred has {pred.size} labels, target {target.size}")
    wrong = (pred != target).astype(np.int64)
    return color_by_labels(wrong, num_points, ERROR_COLORS)


def _check_cloud(xyz, colors) -> tuple[np.ndarray, np.ndarray]:
    xyz = np.asarray(xyz, dtype=np.float64)
    colors = np.asarray(colors, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz must be [N, 3], got shape {xyz.shape}")
    if colors.shape != xyz.shape:
        raise ValueError(f"colors must be [N, 3] like xyz {xyz.shape}, got {colors.shape}")
    if not np.isfinite(xyz).all():
        raise ValueError("xyz holds non-finite coordinates")
    return xyz, np.clip(colors, 0.0, 1.0)


def write_ply(path: str | os.PathLike, xyz, colors) -> Path:
    """Binary little-endian PLY with float x, y, z and uchar red, green, blue (readable by Open3D, MeshLab)."""
    xyz, colors = _check_cloud(xyz, colors)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(xyz)
    rec = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    rec["x"], rec["y"], rec["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    rgb = np.round(colors * 255.0).astype(np.uint8)
    rec["r"], rec["g"], rec["b"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {n}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(rec.tobytes())
    return path


def read_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a PLY written by :func:`write_ply` (or any point PLY) with Open3D: ``(xyz[N,3], colors[N,3] 0..1)``."""
    import open3d as o3d

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PLY file not found: {path}")
    pcd = o3d.io.read_point_cloud(str(path))
    return np.asarray(pcd.points), np.asarray(pcd.colors)


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _layout(clouds: Sequence[tuple[np.ndarray, np.ndarray]], gap: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Place several clouds side by side on a grid (each centred, spaced by the largest extent)."""
    if len(clouds) == 1:
        return clouds[0]
    cols = int(np.ceil(np.sqrt(len(clouds))))
    extent = max(float(np.ptp(xyz, axis=0).max()) for xyz, _ in clouds) * (1.0 + gap)
    pts, cols_ = [], []
    for i, (xyz, col) in enumerate(clouds):
        r, c = divmod(i, cols)
        centred = xyz - (xyz.min(axis=0) + xyz.max(axis=0)) / 2.0
        pts.append(centred + np.array([c * extent, -r * extent, 0.0]))
        cols_.append(col)
    return np.concatenate(pts), np.concatenate(cols_)


def _geometry(xyz: np.ndarray, colors: np.ndarray):
    import open3d as o3d

    pcd = o3d.geometry.PointCloud()
    pcd.points = o3d.utility.Vector3dVector(xyz)
    pcd.colors = o3d.utility.Vector3dVector(colors)
    return pcd


def _view_vectors(up_axis: str) -> tuple[list, list]:
    if up_axis == "z":
        return [0.6, -1.0, 0.7], [0.0, 0.0, 1.0]
    if up_axis == "y":
        return [0.6, 0.5, 1.0], [0.0, 1.0, 0.0]
    raise ValueError(f"up_axis must be 'y' or 'z', got {up_axis!r}")


def render_png(path: str | os.PathLike, clouds, *, width: int = 800, height: int = 600,
               point_size: float = 4.0, up_axis: str = "y", grid: bool = True) -> Path:
    """Render one cloud ``(xyz[N,3], colors[N,3])`` or a list of them (laid out on a grid) to a PNG.

    Headless through Open3D's hidden Visualizer (EGL offscreen). Raises RuntimeError when Open3D
    cannot create a rendering context. Returns the path written.
    """
    import open3d as o3d

    if isinstance(clouds, tuple):
        clouds = [clouds]
    clouds = [_check_cloud(x, c) for x, c in clouds]
    if not clouds:
        raise ValueError("nothing to render: no point clouds given")
    xyz, colors = _layout(clouds) if grid else (np.concatenate([x for x, _ in clouds]),
                                                 np.concatenate([c for _, c in clouds]))
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"--out must end in .png, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    if not os.environ.get("XDG_RUNTIME_DIR") and not has_display():
        # GLFW complains on stderr when this is unset (headless containers); a private dir silences it.
        import tempfile

        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="pointdr2-xdg-")
    vis = o3d.visualization.Visualizer()
    if not vis.create_window(window_name="pointdr2", width=int(width), height=int(height), visible=False):
        raise RuntimeError("Open3D could not create an offscreen rendering context (needs an X display or Mesa EGL; "
                           "on Debian/Ubuntu: apt-get install libegl1 libgl1-mesa-dri)")
    try:
        vis.add_geometry(_geometry(xyz, colors))
        opt = vis.get_render_option()
        opt.point_size = float(point_size)
        opt.background_color = np.array([1.0, 1.0, 1.0])
        front, up = _view_vectors(up_axis)
        ctl = vis.get_view_control()
        ctl.set_lookat(((xyz.min(axis=0) + xyz.max(axis=0)) / 2.0).tolist())
        ctl.set_front(front)
        ctl.set_up(up)
        ctl.set_zoom(0.6)
        vis.poll_events()
        vis.update_renderer()
        image = np.asarray(vis.capture_screen_float_buffer(do_render=True))
    finally:
        vis.destroy_window()
    if image.size == 0:
        raise RuntimeError("Open3D returned an empty image")
    rgb = np.ascontiguousarray(np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8))
    if not o3d.io.write_image(str(path), o3d.geometry.Image(rgb)):
        raise OSError(f"could not write {path}")
    return path


def show_window(clouds, *, title: str = "pointdr2", up_axis: str = "y") -> None:
    """Open an interactive Open3D window (needs a display)."""
    import open3d as o3d

    if isinstance(clouds, tuple):
        clouds = [clouds]
    xyz, colors = _layout([_check_cloud(x, c) for x, c in clouds])
    front, up = _view_vectors(up_axis)
    o3d.visualization.draw_geometries([_geometry(xyz, colors)], window_name=title, front=front, up=up,
                                      lookat=((xyz.min(axis=0) + xyz.max(axis=0)) / 2.0).tolist(), zoom=0.75)
