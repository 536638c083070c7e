"""``pointdr2 prepare scanobjectnn``: locate and check the h5 files of every variant (no conversion needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pointdr2.data.classes import SCANOBJECTNN_CLASSES
from pointdr2.data.scanobjectnn import VARIANTS, read_h5, variant_file


def check_scanobjectnn(root: str | Path) -> list[dict]:
    """One row per file found: variant, split, path, samples, points, classes present, background share.

    Raises the loader's errors for broken files; FileNotFoundError (with the expected layout) if no
    variant is present at all.
    """
    rows, missing = [], None
    for variant in VARIANTS:
        for split in ("training", "test"):
            try:
                path = variant_file(root, variant, split)
            except FileNotFoundError as exc:
                missing = exc
                continue
            data, label, mask = read_h5(path, need_mask=False)
            if len(label) == 0:  # training would refuse it later, after the user thought the data was ready
                raise ValueError(f"{path}: the {variant} {split} split holds 0 samples; expected at least one "
                                 "(a truncated or wrongly exported h5 file?)")
            try:
                _, _, mask = read_h5(path, need_mask=True)
            except ValueError:
                mask = None
            rows.append({
                "variant": variant, "split": split, "path": str(path), "samples": len(label),
                "points": data.shape[1], "classes": f"{len(np.unique(label))}/{len(SCANOBJECTNN_CLASSES)}",
                "background": "n/a" if mask is None else f"{float((mask == -1).mean()):.1%}",
            })
    if not rows and missing is not None:
        raise missing
    return rows
