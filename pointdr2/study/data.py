"""Stage 1 of the study: synthetic data in the official layouts (``pointdr2.data.synthetic``).

Written once per size into ``<out>/data`` (a marker file records the size; a changed size or
``--force`` rewrites it). S3DIS rooms are written in the raw Stanford layout and converted by
``pointdr2 prepare s3dis``'s converter, as a user's data would be.

``s3dis-source`` is a second S3DIS-layout building from another generator seed (:data:`SOURCE_SEED_OFFSET`):
other rooms, other furniture, other colours, none shared with the target building. The PointNeXt track
pretrains on it and finetunes on ``s3dis-raw``, as one pretrains on one set of scans and finetunes on another.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from pointdr2.data.prepare.s3dis import convert_s3dis
from pointdr2.data.synthetic import GENERATOR_VERSION, SIZES, write_layout
from pointdr2.progress import bar as progress_bar

log = logging.getLogger(__name__)

SOURCE_SEED_OFFSET = 1000  # the source building's generator seed is the study's seed + this


def data_dir(out: Path) -> Path:
    return Path(out) / "data"


def generate(out: Path, size: str, layouts: tuple[str, ...], force: bool = False, seed: int = 0,
             progress: bool = True, workers: int = 1, pb_t50_rs: bool = True) -> dict[str, dict]:
    """Write every layout in ``layouts`` (skipped when written before with the same size, seed and generator).

    ``workers`` processes share a layout's work where its writer can split it (the bytes do not change);
    ``pb_t50_rs=False`` writes ScanObjectNN without its PB_T50_RS files (a later call that wants them rewrites).

    Returns ``{layout: {"seconds": s, "folder": path}}`` for the layouts present afterwards.
    """
    data = data_dir(out)
    data.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict] = {}
    for layout in progress_bar(layouts, desc="synthetic data", unit="set", leave=False, enabled=progress):
        marker = data / f".{layout}.json"
        layout_seed = seed + SOURCE_SEED_OFFSET if layout == "s3dis-source" else seed
        want = {"size": size, "seed": layout_seed, "sizes": SIZES[size], "generator": GENERATOR_VERSION}
        if layout == "scanobjectnn":
            want["pb_t50_rs"] = bool(pb_t50_rs)
        if marker.is_file() and not force:
            have = json.loads(marker.read_text())
            if {k: have.get(k) for k in want} == json.loads(json.dumps(want)):
                done[layout] = have
                continue
        t0 = time.perf_counter()
        if layout in ("s3dis-raw", "s3dis-source"):
            name = "s3dis" if layout == "s3dis-raw" else "s3dis_source"
            raw = data / f"{name}_raw"
            write_layout("s3dis-raw", raw, size=size, seed=layout_seed)
            convert_s3dis(raw, data / name, overwrite=True, progress=False)
            folder = data / name
        elif layout == "scanobjectnn":
            folder, _ = write_layout(layout, data / "scanobjectnn", size=size, seed=seed, workers=workers,
                                     pb_t50_rs=pb_t50_rs)
        else:
            folder, _ = write_layout(layout, data, size=size, seed=seed)
        record = {**want, "seconds": time.perf_counter() - t0, "folder": str(folder)}
        marker.write_text(json.dumps(record, indent=2) + "\n")
        done[layout] = record
        log.info("study data: %s (%s) in %.1f s", layout, size, record["seconds"])
    return done
