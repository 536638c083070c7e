"""``pointdr2 bench data``: loader throughput (samples/s with DataLoader workers) and synthetic
preparation time per layout, measured in one run on synthetic data in a temporary folder (or on
``--root``, a folder with the four layouts as ``prepare synthetic --layout all`` writes them).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pointdr2.data import build_dataset
from pointdr2.data.prepare.modelnet40 import write_fps_cache
from pointdr2.data.prepare.s3dis import convert_s3dis
from pointdr2.data.synthetic import LAYOUTS, write_layout

log = logging.getLogger(__name__)

BERT_TRAIN = [{"name": "fps_subsample", "npoints": 1200, "keep": 1024}, {"name": "scale_translate"}]


@dataclass(frozen=True)
class Options:
    """What ``pointdr2 bench data`` measures (its command-line options)."""

    root: str | None = None  # existing synthetic/real data root (default: write demo data to a temporary folder)
    size: str = "demo"  # synthetic size when writing data (test | demo | small)
    workers: int = 2  # DataLoader num_workers
    batches: int = 8  # timed batches per loader (after one warm-up batch)


def _loader_rate(dataset, batch_size: int, workers: int, batches: int) -> tuple[float, int]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=False, persistent_workers=False)
    it = iter(loader)
    next(it)  # worker start-up and first batch are not timed
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            break
        count += len(next(iter(batch.values())))
    seconds = time.perf_counter() - start
    return (count / seconds if seconds > 0 else float("nan")), count


def measure(args: Options) -> dict:
    """``{"prepare_seconds": {what: s}, "samples_per_second": {loader: rate}, "workers": n}``."""
    result: dict = {"prepare_seconds": {}, "samples_per_second": {}, "workers": args.workers}
    with tempfile.TemporaryDirectory(prefix="pointdr2_bench_data_") as tmp:
        root = Path(args.root) if args.root else Path(tmp)
        if args.root is None:
            for layout in LAYOUTS:
                _, seconds = write_layout(layout, root, size=args.size, seed=0)
                result["prepare_seconds"][f"synthetic {layout}"] = round(seconds, 2)
        start = time.perf_counter()
        convert_s3dis(root, Path(tmp) / "s3disfull", progress=False)
        result["prepare_seconds"]["s3dis (raw -> npy)"] = round(time.perf_counter() - start, 2)
        cache_root = root
        if args.root is None:
            start = time.perf_counter()
            write_fps_cache(root, npoints=2048, progress=False, overwrite=True)
            result["prepare_seconds"]["modelnet40 FPS cache (2048 pts)"] = round(time.perf_counter() - start, 2)
        cases = {
            "modelnet40 txt, no cache, 2048 pts + BERT train aug": (
                {"name": "modelnet40", "root": str(root), "num_points": 2048, "use_cache": False,
                 "transforms": {"train": BERT_TRAIN}}, "train", 32),
            "modelnet40 txt, .dat cache, 2048 pts + BERT train aug": (
                {"name": "modelnet40", "root": str(cache_root), "num_points": 2048,
                 "transforms": {"train": BERT_TRAIN}}, "train", 32),
            "modelnet40 h5, 1024 pts + scale_translate": (
                {"name": "modelnet40", "root": str(root), "layout": "h5", "num_points": 1024}, "train", 32),
            "scanobjectnn PB_T50_RS + BERT train aug": (
                {"name": "scanobjectnn", "root": str(root), "variant": "PB_T50_RS",
                 "transforms": {"train": BERT_TRAIN}}, "train", 32),
            "shapenetpart txt, 2048 pts + scale": (
                {"name": "shapenetpart", "root": str(root), "use_cache": False}, "train", 32),
            "s3dis train crops (24000 pts, PointNeXt aug)": (
                {"name": "s3dis", "root": str(Path(tmp) / "s3disfull")}, "train", 8),
        }
        for name, (cfg, split, batch) in cases.items():
            ds = build_dataset(cfg, split, val_fraction=0.0)
            rate, count = _loader_rate(ds, batch, args.workers, args.batches)
            result["samples_per_second"][name] = round(rate, 1)
            log.debug("%s: %d samples", name, count)
        rooms = build_dataset({"name": "s3dis", "root": str(Path(tmp) / "s3disfull")}, "test")
        start, passes, points = time.perf_counter(), 0, 0
        for i in range(len(rooms)):
            for p in rooms[i].passes():
                passes += 1
                points += len(p["index"])
        seconds = time.perf_counter() - start
        result["samples_per_second"]["s3dis whole-room test passes (main process)"] = round(passes / seconds, 1)
    return result


def format_report(result: dict) -> str:
    """:func:`measure`'s result as two aligned lists."""
    lines = [f"loader throughput, DataLoader num_workers={result['workers']}"]
    lines += [f"  {name:<58} {rate:>9.1f} samples/s" for name, rate in result["samples_per_second"].items()]
    lines.append("preparation")
    lines += [f"  {name:<58} {seconds:>9.2f} s" for name, seconds in result["prepare_seconds"].items()]
    return "\n".join(lines)
