"""Pictures a person can read (matplotlib, Agg backend; no display, no Open3D needed).

- :func:`classification_grid`: test clouds in a grid, each centred in its own tile and titled with its
  predicted and true class (wrong predictions in red with a cross), a legend saying so.
- :func:`segmentation_pair`: prediction beside ground truth, coloured by class, with a legend of the
  classes present; rooms are cut away above a height so the interior shows.

Both return the figure's layout (tile boxes in figure coordinates, titles) so tests can check it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["classification_grid", "segmentation_pair", "cut_away"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _layout(fig) -> list[dict[str, Any]]:
    fig.canvas.draw()
    out = []
    for ax in fig.axes:
        box = ax.get_position()
        out.append({"box": (box.x0, box.y0, box.x1, box.y1), "title": ax.get_title()})
    return out


def _scatter(ax, xyz: np.ndarray, colors, up_axis: int, size: float) -> None:
    xyz = np.asarray(xyz, dtype=np.float64)
    other = [a for a in range(3) if a != up_axis]
    centre = (xyz.max(axis=0) + xyz.min(axis=0)) / 2
    p = xyz - centre
    r = float(np.abs(p).max()) or 1.0
    ax.scatter(p[:, other[0]], p[:, other[1]], p[:, up_axis], c=colors, s=size, depthshade=False, linewidths=0)
    ax.set_xlim(-r, r)
    ax.set_ylim(-r, r)
    ax.set_zlim(-r, r)
    ax.view_init(elev=25, azim=-60)
    ax.set_axis_off()


def classification_grid(path: str | Path, tiles: Sequence[Mapping], up_axis: int = 1, title: str = "",
                        columns: int = 6) -> list[dict[str, Any]]:
    """``tiles``: dicts with ``xyz`` float [N, 3], ``pred`` and ``true`` (class names). Writes ``path``."""
    plt = _pyplot()
    cols = max(1, min(columns, len(tiles)))
    rows = max(1, math.ceil(len(tiles) / cols))
    fig = plt.figure(figsize=(2.4 * cols, 2.5 * rows + 0.9))
    for i, t in enumerate(tiles):
        ax = fig.add_subplot(rows, cols, i + 1, projection="3d")
        xyz = np.asarray(t["xyz"], dtype=np.float64)
        height = xyz[:, up_axis]
        _scatter(ax, xyz, height, up_axis, 2.0)
        wrong = t["pred"] != t["true"]
        ax.set_title(f"{t['pred']} / {t['true']}" + (" ✗" if wrong else ""), fontsize=8,
                     color="tab:red" if wrong else "black")
    correct = sum(t["pred"] == t["true"] for t in tiles)
    fig.suptitle(f"{title}\ntile title: predicted / true class; red ✗ = wrong ({correct}/{len(tiles)} correct)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    layout = _layout(fig)
    _save(fig, path)
    return layout


def cut_away(xyz: np.ndarray, up_axis: int = 2, keep: float = 0.75) -> np.ndarray:
    """Boolean mask of the points below ``keep`` of the room's height (drops the ceiling and upper walls)."""
    z = np.asarray(xyz, dtype=np.float64)[:, up_axis]
    lo, hi = float(z.min()), float(z.max())
    return z <= lo + keep * (hi - lo)


def segmentation_pair(path: str | Path, xyz: np.ndarray, pred: np.ndarray, target: np.ndarray,
                      class_names: Sequence[str], colors: np.ndarray, up_axis: int = 2, room: bool = False,
                      title: str = "", max_points: int = 60000, seed: int = 0) -> list[dict[str, Any]]:
    """Prediction beside ground truth, one colour per class, a legend of the classes present.

    ``room=True`` cuts the cloud away above 3/4 of its height; more than ``max_points`` points are
    subsampled (seed-fixed) for drawing only.
    """
    plt = _pyplot()
    xyz = np.asarray(xyz, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.int64).reshape(-1)
    target = np.asarray(target, dtype=np.int64).reshape(-1)
    keep = cut_away(xyz, up_axis) if room else np.ones(len(xyz), dtype=bool)
    idx = np.flatnonzero(keep)
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=max_points, replace=False))
    colors = np.asarray(colors, dtype=np.float64)
    colors = colors / 255.0 if colors.max() > 1.0 else colors
    size = 6.0 if len(idx) < 5000 else 1.0
    fig = plt.figure(figsize=(11, 5.6))
    acc = 100.0 * float((pred == target).mean()) if len(target) else float("nan")
    for k, (name, labels) in enumerate((("prediction", pred), ("ground truth", target))):
        ax = fig.add_subplot(1, 2, k + 1, projection="3d")
        _scatter(ax, xyz[idx], colors[labels[idx]], up_axis, size)
        ax.set_title(name, fontsize=10)
    present = sorted(set(target.tolist()) | set(pred.tolist()))
    handles = [plt.Line2D([], [], marker="o", ls="", color=colors[c], label=str(class_names[c])
                          if c < len(class_names) else str(c)) for c in present]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=8, frameon=False)
    cut = "; cut away above 3/4 of the room's height" if room else ""
    fig.suptitle(f"{title}\npoint accuracy {acc:.1f}% over {len(target)} points{cut}", fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 0.92))
    layout = _layout(fig)
    _save(fig, path)
    return layout


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path
