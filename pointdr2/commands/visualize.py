"""``pointdr2 visualize``: one sample's prediction as a figure or an Open3D render, and PLY files.

The only engine-facing module that imports :mod:`pointdr2.viz` (with ``pointdr2.commands.demo``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from pointdr2.commands.common import command_checkpoint, command_config
from pointdr2.engine.evaluator import is_room_dataset
from pointdr2.engine.inference import load_for_eval, predict_sample
from pointdr2.progress import bar as progress_bar
from pointdr2.viz import (
    color_by_labels,
    color_errors,
    has_display,
    palette,
    render_png,
    show_window,
    write_ply,
)
from pointdr2.viz.figures import classification_grid, segmentation_pair

log = logging.getLogger("pointdr2.commands.visualize")


def _class_colors(dataset, num_classes: int, outputs: int = 0):
    """The dataset's class colours (or a palette), extended for model outputs beyond its classes (an
    official checkpoint evaluated with its own, wider head)."""
    out = palette(num_classes)
    colors = getattr(dataset, "colors", None)
    if colors is not None:
        colors = np.asarray(colors, dtype=np.float64)
        if colors.ndim == 2 and colors.shape == (num_classes, 3):
            out = colors / 255.0 if colors.max() > 1.0 else colors
    if outputs > num_classes:
        out = np.concatenate([out, palette(outputs)[num_classes:]], axis=0)
    return out


def _figure(out: Path, net, dataset, device, index: int, count: int, xyz, pred, target, names, colors, up: str,
            max_points: int | None) -> None:
    """The readable picture: a labelled grid (classification) or prediction beside truth (segmentation)."""
    up_axis = {"x": 0, "y": 1, "z": 2}[up]

    def label(k: int) -> str:
        return names[k] if k < len(names) else str(k)

    if len(pred) == 1:  # classification: `count` samples from `index` on
        tiles = []
        for i in progress_bar(range(index, min(len(dataset), index + count)), desc="visualize", unit="sample",
                              leave=False, every=10.0):
            x, p, t = predict_sample(net, dataset, i, device, max_points)
            tiles.append({"xyz": x, "pred": label(int(p[0])), "true": label(int(t[0]))})
        classification_grid(out, tiles, up_axis=up_axis, title=f"test samples {index}..{index + len(tiles) - 1}")
    else:
        segmentation_pair(out, xyz, pred, target, names or [str(i) for i in range(len(colors))], colors,
                          up_axis=up_axis, room=is_room_dataset(dataset), title=f"sample {index}")


def run_visualize(args: argparse.Namespace) -> int:
    """``pointdr2 visualize``: a PNG (labelled figure or Open3D render) and PLY files of one sample's prediction."""
    cfg = command_config(args)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file, got {out}")
    style = getattr(args, "style", "figure")
    count = int(getattr(args, "count", 12) or 12)
    if count < 1:
        raise ValueError(f"--count must be >= 1, got {count}")
    dataset, _, net, _, device = load_for_eval(cfg, command_checkpoint(args), args.split)
    if not 0 <= int(args.index) < len(dataset):
        raise ValueError(f"--index must lie in [0, {len(dataset)}), got {args.index}")
    crop = cfg.dataset.get("crop_points")
    xyz, pred, target = predict_sample(net, dataset, int(args.index), device, int(crop) if crop else None)
    n = len(xyz)
    colors = _class_colors(dataset, int(dataset.num_classes), int(getattr(net, "num_classes", 0) or 0))
    names = list(getattr(dataset, "class_names", []))
    by = {"pred": lambda: color_by_labels(pred, n, colors), "gt": lambda: color_by_labels(target, n, colors),
          "error": lambda: color_errors(pred, target, n)}
    up = "z" if cfg.dataset.get("name") == "s3dis" else "y"
    if style == "render":  # Open3D, one cloud coloured by --color
        render_png(out, (xyz, by[args.color]()), up_axis=up, width=args.width, height=args.height,
                   point_size=args.point_size)
    else:
        _figure(out, net, dataset, device, int(args.index), count, xyz, pred, target, names, colors, up,
                int(crop) if crop else None)
    stem = out.with_suffix("")
    write_ply(f"{stem}_pred.ply", xyz, by["pred"]())
    write_ply(f"{stem}_gt.ply", xyz, by["gt"]())
    write_ply(f"{stem}_error.ply", xyz, by["error"]())
    if len(pred) == 1:
        def label(k: int) -> str:
            return names[k] if k < len(names) else str(k)

        log.info("sample %d: predicted %s, ground truth %s", args.index, label(int(pred[0])), label(int(target[0])))
    else:
        log.info("sample %d: %d points, point accuracy %.2f%%", args.index, n, 100.0 * float((pred == target).mean()))
    print(f"wrote {out} (colour by {args.color}) and {stem}_{{pred,gt,error}}.ply")
    if args.window == "yes" or (args.window == "auto" and has_display()):
        show_window((xyz, by[args.color]()), title=f"pointdr2: sample {args.index} ({args.color})", up_axis=up)
    return 0
