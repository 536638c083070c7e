"""``pointdr2 prepare s3dis``: raw ``Stanford3dDataset_v1.2_Aligned_Version`` -> per-room ``.npy``.

Input: ``<raw>/Area_<k>/<room>/Annotations/<class>_<i>.txt`` (``x y z r g b`` per line). Output:
``<out>/raw/Area_<k>_<room>.npy``, (n, 7) float32 = xyz shifted so the room minimum is 0, rgb
0..255, label index into ``classes.S3DIS_CLASSES`` (``stairs`` -> clutter). Malformed lines (the
real release has a few) are skipped and reported with file and line number; the conversion goes
on.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pointdr2.data.classes import S3DIS_ALIASES, S3DIS_CLASSES
from pointdr2.data.common import SOURCES
from pointdr2.progress import bar as progress_bar

log = logging.getLogger(__name__)

RAW_DIR = "Stanford3dDataset_v1.2_Aligned_Version"


@dataclass
class ConversionReport:
    rooms: list[Path] = field(default_factory=list)  # written .npy files
    points: int = 0
    malformed: list[tuple[str, int, str]] = field(default_factory=list)  # (file, line number, text)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    skipped_rooms: list[tuple[str, str]] = field(default_factory=list)  # (room dir, reason)


def find_raw_root(raw: str | Path) -> Path:
    raw = Path(raw).expanduser()
    for cand in (raw, raw / RAW_DIR):
        if cand.is_dir() and any(p.is_dir() and re.fullmatch(r"Area_\d+", p.name) for p in cand.iterdir()):
            return cand
    raise FileNotFoundError(
        f"S3DIS raw data not found at {raw}: expected {RAW_DIR}/Area_<k>/<room>/Annotations/<class>_<i>.txt "
        f"(x y z r g b per line). Official data: {SOURCES['s3dis'].split(', converted')[0]} "
        "(or `pointdr2 prepare synthetic --layout s3dis-raw --out DIR`)")


def parse_annotation(path: Path, report: ConversionReport) -> np.ndarray:
    """float32 [n, 6] of the well-formed lines of one annotation file; bad lines go to ``report``."""
    try:
        arr = np.loadtxt(path, dtype=np.float32, ndmin=2, comments=None)
        if arr.size == 0:
            return np.zeros((0, 6), dtype=np.float32)
        if arr.shape[1] == 6 and np.isfinite(arr).all():
            return arr
    except ValueError:
        pass
    # Slow path, only for files with bad lines: parse line by line and report each bad one.
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            tokens = line.split()
            if not tokens:
                continue
            values = None
            if len(tokens) == 6:
                try:
                    values = [float(t) for t in tokens]
                except ValueError:
                    values = None
            if values is None or not np.isfinite(values).all():
                report.malformed.append((str(path), number, line.rstrip("\n")[:80]))
                log.warning("%s:%d: malformed line skipped: %r", path, number, line.rstrip("\n")[:80])
                continue
            rows.append(values)
    return np.asarray(rows, dtype=np.float32).reshape(-1, 6)


def convert_s3dis(raw: str | Path, out: str | Path, overwrite: bool = False, progress: bool = True,
                  areas: tuple[int, ...] | None = None) -> ConversionReport:
    """Convert every room under ``raw`` into ``out/raw/Area_<k>_<room>.npy``; returns a report."""
    root = find_raw_root(raw)
    target = Path(out).expanduser() / "raw"
    target.mkdir(parents=True, exist_ok=True)
    lookup = {name: i for i, name in enumerate(S3DIS_CLASSES)}
    rooms = sorted(p for p in root.glob("Area_*/*") if p.is_dir() and re.fullmatch(r"Area_\d+", p.parent.name))
    if areas is not None:
        rooms = [r for r in rooms if int(r.parent.name.split("_")[1]) in areas]
    report = ConversionReport()
    for room in progress_bar(rooms, desc="S3DIS rooms", unit="room", enabled=progress):
        dest = target / f"{room.parent.name}_{room.name}.npy"
        ann = room / "Annotations"
        if not ann.is_dir():
            report.skipped_rooms.append((str(room), "no Annotations folder"))
            log.warning("%s: no Annotations folder; room skipped", room)
            continue
        if dest.exists() and not overwrite:
            report.rooms.append(dest)
            continue
        parts = []
        for path in sorted(ann.glob("*.txt")):
            cls = path.stem.split("_")[0]
            cls = S3DIS_ALIASES.get(cls, cls)
            if cls not in lookup:
                report.skipped_files.append((str(path), f"unknown class {cls!r}"))
                log.warning("%s: unknown class %r (expected one of %s); file skipped", path, cls, ", ".join(S3DIS_CLASSES))
                continue
            pts = parse_annotation(path, report)
            if len(pts):
                parts.append(np.concatenate([pts, np.full((len(pts), 1), lookup[cls], dtype=np.float32)], axis=1))
        if not parts:
            report.skipped_rooms.append((str(room), "no valid points"))
            log.warning("%s: no valid annotated points; room skipped", room)
            continue
        data = np.concatenate(parts)
        data[:, :3] -= data[:, :3].min(axis=0)
        tmp = dest.with_name(dest.stem + ".tmp.npy")
        np.save(tmp, data.astype(np.float32))
        os.replace(tmp, dest)
        report.rooms.append(dest)
        report.points += len(data)
    log.info("S3DIS: %d rooms in %s, %d malformed lines skipped", len(report.rooms), target, len(report.malformed))
    return report
