"""Rendering of coloured point clouds (Open3D): PNG headless, a window where there is a display, PLY files."""

from pointdr2.viz.render import (
    ERROR_COLORS,
    color_by_labels,
    color_errors,
    has_display,
    palette,
    read_ply,
    render_png,
    show_window,
    write_ply,
)

__all__ = ["ERROR_COLORS", "color_by_labels", "color_errors", "has_display", "palette", "read_ply", "render_png",
           "show_window", "write_ply"]
