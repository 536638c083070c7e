"""``pointdr2 bench study``: the evidence study - Dr2Net against conventional and checkpointed finetuning.

Everything is measured in the run, on this machine; nothing is typed in.

1. Synthetic data in the official layouts (``pointdr2.data.synthetic``): ModelNet40 h5 objects,
   ScanObjectNN OBJ_BG objects (background clutter) and S3DIS raw rooms, converted with
   ``pointdr2 prepare s3dis``'s converter.
2. Transformer track (``configs/study/transformer-*.yaml``): a Point-MAE-shaped transformer is
   pretrained (supervised, conventional) on the ModelNet40-layout objects, then finetuned on
   ScanObjectNN OBJ_BG with ``finetune.mode`` conventional / checkpoint / dr2net (alpha 1 -> 0,
   beta 0.1 -> 1, backprop auto = precision guard on), ``--seeds`` seeds each.
3. PointNeXt track (``configs/study/pointnext-*.yaml``): PointNeXt-B is pretrained on coarse room
   segmentation (the 13 S3DIS classes merged into 5 super-classes, :data:`COARSE`), then finetuned
   with a new head on the fine 13-class segmentation, three modes x seeds.
   Seeds change the head's initialisation, the data order and the augmentation; the data (including
   the validation carve, always drawn with seed 0) and the schedules are identical.
4. Memory and time per mode of the study's actual configurations through the memory harness
   (``pointdr2.bench.memory``'s worker, a fresh subprocess per row, case ``cases_study``); activation
   memory against depth (transformer) and points per sample (PointNeXt) with ``SavedTensorMeter``.
5. Reconstruction error, anchor spacing and backprop mode over training, parsed from the dr2net
   runs' ``train.log`` (the trainer logs them every ``run.log_every`` steps).
6. Gradient relative error (reversible vs standard, float32) of the pretrained transformer surrogate
   over an (alpha, beta) grid, with what auto mode chose there.
7. Ablation (transformer, dr2net): schedule shape linear / cosine / step, output last / mean.
8. ``study.json`` (every number), PNG plots and ``results.md`` in ``--out`` (and ``--docs``).

Finished pieces are skipped when their result files exist in ``--out`` (``--force`` redoes them), so a
run that dies part-way continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

MODES = ("conventional", "checkpoint", "dr2net")
TRACKS = ("transformer", "pointnext")
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "study"

# The 13 S3DIS classes (pointdr2.data.classes.S3DIS_CLASSES order) merged into 5 super-classes for the
# PointNeXt pretraining task.
COARSE_NAMES = ("horizontal structure", "vertical structure", "opening", "furniture", "clutter")
COARSE = {"ceiling": 0, "floor": 0, "wall": 1, "beam": 1, "column": 1, "window": 2, "door": 2, "board": 2,
          "chair": 3, "table": 3, "bookcase": 3, "sofa": 3, "clutter": 4}

# Sizes of the full study and of --quick (config overrides on top of configs/study/*.yaml).
SETTINGS: dict[str, dict[str, Any]] = {
    "full": {
        "data_size": "demo",
        # keep this fraction of every prepared room's points (seed-fixed): whole-room evaluation,
        # which runs every epoch on the validation room, costs time in proportion to room points
        "room_fraction": 0.3,
        "transformer": {"pretrain": [], "finetune": []},
        "pointnext": {"pretrain": [], "finetune": []},
        "ablation_seeds": 2,
        "harness_steps": 3,
        "harness_rows": ["conventional", "checkpoint", "dr2net@start", "dr2net@end"],
        "harness_in_process": False,
        "depths": [2, 4, 6, 8, 12, 16, 24],
        "points": [1024, 2048, 4096, 8192, 16384],
        "points_batch": 2,
        "grid_alphas": [1.0, 0.75, 0.5, 0.25, 0.0],
        "grid_betas": [0.1, 0.25, 0.5, 0.75, 1.0],
        "grid_batch": 8,
    },
    "quick": {
        "data_size": "test",
        "room_fraction": 0.3,
        "transformer": {
            "pretrain": ["train.epochs=1"],
            "finetune": ["train.epochs=2", "finetune.end_epoch=1"],
            "common": ["model.trans_dim=32", "model.depth=2", "model.num_heads=2", "model.encoder_dims=32",
                       "model.num_group=8", "model.group_size=8", "model.head_hidden=32", "dataset.num_points=64",
                       "model.drop_path_rate=0.0", "run.tensorboard=false"],
        },
        "pointnext": {
            "pretrain": ["train.epochs=1"],
            "finetune": ["train.epochs=2", "finetune.end_epoch=1"],
            "common": ["dataset.crop_points=512", "dataset.loop=8", "model.width=16", "run.tensorboard=false"],
        },
        "ablation_seeds": 1,
        "harness_steps": 1,
        "harness_rows": ["conventional", "checkpoint", "dr2net@end"],
        "harness_in_process": True,
        "depths": [2, 4],
        "points": [256, 512],
        "points_batch": 2,
        "grid_alphas": [1.0, 0.0],
        "grid_betas": [0.1, 1.0],
        "grid_batch": 4,
    },
}
ABLATION = {"linear/last": ("linear", "last"), "cosine/last": ("cosine", "last"), "step/last": ("step", "last"),
            "linear/mean": ("linear", "mean")}
HEAD_PREFIXES = ("cls_head_finetune.", "head.", "prediction.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/study", help="output directory (runs, study.json, results.md, plots)")
    p.add_argument("--quick", action="store_true", help="CI smoke run: tiny data, models and schedules (< 60 s)")
    p.add_argument("--seeds", type=int, default=3, help="finetuning seeds per mode and track")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (also in the harness workers)")
    p.add_argument("--force", action="store_true", help="redo every piece even when its results exist in --out")
    p.add_argument("--docs", default=None, metavar="DIR", help="also write results.md and the PNGs to DIR")
    p.add_argument("--only", default=None, choices=TRACKS, help="run one track only")
    p.add_argument("--ablation-seeds", type=int, default=None,
                   help="seeds per ablation variant (default: 2 full, 1 --quick)")


# ----------------------------------------------------------------------------- data
class RemappedLabels(Dataset):
    """A dataset whose labels go through a lookup table (``lut[fine] -> coarse``).

    Works for training crops (dict items with ``label``) and whole rooms (items with ``.labels``).
    The base dataset's augmentation counter (``_calls``) is forwarded so the trainer's exact-resume
    rewinding still reaches it.
    """

    def __init__(self, base: Dataset, lut: torch.Tensor, class_names: tuple[str, ...]) -> None:
        self.base = base
        self.lut = torch.as_tensor(lut, dtype=torch.int64)
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.whole_room = bool(getattr(base, "whole_room", False))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        item = self.base[i]
        if isinstance(item, Mapping):
            item = dict(item)
            item["label"] = self.lut[item["label"]]
        else:
            item.labels = self.lut[item.labels]
        return item

    @property
    def _calls(self) -> int:
        return int(getattr(self.base, "_calls", 0))

    @_calls.setter
    def _calls(self, value: int) -> None:
        if hasattr(self.base, "_calls"):
            self.base._calls = int(value)


def coarse_lut() -> torch.Tensor:
    """int64 [13]: S3DIS class index -> coarse super-class index (:data:`COARSE`)."""
    from pointdr2.data.classes import S3DIS_CLASSES

    return torch.tensor([COARSE[name] for name in S3DIS_CLASSES], dtype=torch.int64)


def dataset_fn(coarse: bool = False) -> Callable:
    """The trainer's ``dataset_fn``: the val carve always uses seed 0, so every seed sees the same data."""
    from pointdr2.data import build_dataset

    lut = coarse_lut() if coarse else None

    def build(cfg_dataset, split, val_fraction=0.1, seed=0):  # noqa: ARG001 - the trainer passes train.seed
        dataset = build_dataset(cfg_dataset, split, val_fraction=val_fraction, seed=0)
        return RemappedLabels(dataset, lut, COARSE_NAMES) if lut is not None else dataset

    return build


def subsample_rooms(folder: Path, fraction: float) -> int:
    """Keep a seed-fixed random ``fraction`` of the points of every ``Area_*.npy`` room; returns points kept."""
    kept = 0
    for i, path in enumerate(sorted(folder.glob("Area_*.npy"))):
        room = np.load(path)
        rng = np.random.default_rng([0, i])
        keep = np.sort(rng.choice(len(room), size=max(1, round(fraction * len(room))), replace=False))
        np.save(path, room[keep])
        kept += len(keep)
    return kept


def generate_data(out: Path, size: str, tracks: tuple[str, ...], force: bool,
                  room_fraction: float = 1.0) -> dict[str, float]:
    """Write the synthetic layouts (skipped when present); returns seconds per layout.

    S3DIS rooms are written in the raw Stanford layout and converted by ``pointdr2 prepare s3dis``'s
    converter; ``room_fraction < 1`` then thins every converted room (see :data:`SETTINGS`).
    """
    from pointdr2.data.prepare.s3dis import convert_s3dis
    from pointdr2.data.synthetic import write_layout

    data = out / "data"
    jobs = []
    if "transformer" in tracks:
        jobs += [("modelnet40-h5", data, data / "modelnet40_ply_hdf5_2048"),
                 ("scanobjectnn", data / "scanobjectnn", data / "scanobjectnn")]
    if "pointnext" in tracks:
        jobs += [("s3dis-raw", data / "s3dis_raw", data / "s3dis")]
    seconds = {}
    for layout, where, done_dir in tqdm(jobs, desc="synthetic data", unit="set", leave=False):
        marker = done_dir / f".study-{size}"
        if marker.is_file() and not force:
            continue
        _, secs = write_layout(layout, where, size=size, seed=0)
        if layout == "s3dis-raw":
            t0 = time.perf_counter()
            convert_s3dis(where, done_dir, overwrite=True, progress=False)
            if room_fraction < 1.0:
                subsample_rooms(done_dir / "raw", room_fraction)
            secs += time.perf_counter() - t0
        done_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text("done\n")
        seconds[layout] = secs
    return seconds


# ----------------------------------------------------------------------------- configs and runs
def track_configs(out: Path, track: str, s: Mapping):
    """(pretrain config, finetune config) of ``track`` from configs/study/ with the study's paths."""
    from pointdr2.config import load_config

    t = s[track]
    data = out / "data"
    root = {"transformer": (data / "modelnet40_ply_hdf5_2048", data / "scanobjectnn"),
            "pointnext": (data / "s3dis", data / "s3dis")}[track]
    common = list(t.get("common", []))
    pre = load_config(CONFIG_DIR / f"{track}-pretrain.yaml",
                      [*common, *t["pretrain"], f"dataset.root={root[0]}", f"run.dir={out / track / 'pretrain'}"])
    ft = load_config(CONFIG_DIR / f"{track}-finetune.yaml", [*common, *t["finetune"], f"dataset.root={root[1]}"])
    return pre, ft


def export_encoder(best: Path, dest: Path) -> Path:
    """The pretrained weights without the task head (the finetuning task has other classes)."""
    from pointdr2.engine.checkpoint import load_checkpoint, save_atomic

    state = load_checkpoint(best)["model"]
    encoder = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    save_atomic({"base_model": encoder}, dest)
    return dest


def _finished(run_dir: Path, cfg=None) -> bool:
    """A finished run of the same config: metrics.json and train.log exist, config.yaml equals ``cfg``."""
    if not ((run_dir / "metrics.json").is_file() and (run_dir / "train.log").is_file()):
        return False
    if cfg is None:
        return True
    import yaml

    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    same = saved == cfg.to_dict()
    if not same:
        log.warning("%s holds a run of another config; running it again", run_dir)
    return same


def train_run(cfg, fn: Callable, force: bool) -> dict[str, Any]:
    """Train ``cfg`` (skipped when ``run.dir`` holds a finished run) -> metrics, curves and step stats."""
    from pointdr2.engine.trainer import train

    run_dir = Path(cfg.run.dir)
    seconds = None
    if force or not _finished(run_dir, cfg):
        t0 = time.perf_counter()
        train(cfg, force=True, dataset_fn=fn)
        seconds = time.perf_counter() - t0
        (run_dir / "study_seconds.json").write_text(json.dumps({"train_seconds": seconds}) + "\n")
    elif (run_dir / "study_seconds.json").is_file():
        seconds = json.loads((run_dir / "study_seconds.json").read_text())["train_seconds"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    parsed = parse_train_log(run_dir / "train.log")
    return {"run_dir": str(run_dir), "test": metrics.get("test", {}), "best_epoch": metrics.get("best_epoch"),
            "train_seconds": seconds, **parsed}


_NUM = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"
_STEP_RE = re.compile(rf"step (\d+) loss ({_NUM}) lr ({_NUM}) grad_norm ({_NUM}) ({_NUM}) samples/s(.*)$")
_EPOCH_RE = re.compile(rf"epoch (\d+)/\d+: train loss ({_NUM}) acc ({_NUM}) \| (\w+) (\w+) ({_NUM}) macc ({_NUM})")


def _num(text: str) -> float | int | str:
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def parse_train_log(path: Path) -> dict[str, Any]:
    """Per-epoch validation metrics and per-step Dr2Net statistics from a run's ``train.log``.

    Returns ``{"curve": {metric: [per epoch]}, "curve_metric": name, "steps": {key: [per logged step]}}``;
    step keys: step, loss, alpha, beta, reconstruction_error, cache_every, backprop_mode,
    activation_bytes (missing values are None).
    """
    curve: dict[str, list[float]] = {}
    metric_name = None
    keys = ("alpha", "beta", "reconstruction_error", "cache_every", "backprop_mode", "activation_bytes")
    steps: dict[str, list] = {k: [] for k in ("step", "loss", *keys)}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _STEP_RE.search(line)
        if m:
            extras = dict(re.findall(r"(\w+)=(\S+)", m.group(6)))
            steps["step"].append(int(m.group(1)))
            steps["loss"].append(float(m.group(2)))
            for k in keys:
                steps[k].append(_num(extras[k]) if k in extras else None)
            continue
        m = _EPOCH_RE.search(line)
        if m:
            metric_name = m.group(5)
            curve.setdefault(metric_name, []).append(float(m.group(6)))
            curve.setdefault("macc", []).append(float(m.group(7)))
    return {"curve": curve, "curve_metric": metric_name, "steps": steps}


def guard_summary(steps: Mapping[str, list]) -> dict[str, Any]:
    """What the precision guard did over one dr2net run's logged steps."""
    ks = [k for k in steps.get("cache_every", []) if isinstance(k, int)]
    modes = [m for m in steps.get("backprop_mode", []) if isinstance(m, str)]
    errs = [e for e in steps.get("reconstruction_error", []) if isinstance(e, (int, float))]
    acts = [a for a in steps.get("activation_bytes", []) if isinstance(a, (int, float))]
    return {
        "logged_steps": len(steps.get("step", [])),
        "cache_every_min": min(ks) if ks else None,
        "cache_every_median": float(np.median(ks)) if ks else None,
        "cache_every_max": max(ks) if ks else None,
        "checkpoint_fallback_steps": sum(m == "checkpoint" for m in modes),
        "reversible_steps": sum(m == "reversible" for m in modes),
        "reconstruction_error_max": max(errs) if errs else None,
        "reconstruction_error_median": float(np.median(errs)) if errs else None,
        "activation_bytes_max": max(acts) if acts else None,
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def paired_delta(dr2net: list[float], conventional: list[float]) -> tuple[float, float]:
    """Mean and std (ddof=1) of the per-seed differences dr2net - conventional (same seed = same data order)."""
    n = min(len(dr2net), len(conventional))
    return mean_std([a - b for a, b in zip(dr2net[:n], conventional[:n])])


def within_statement(track: str, metric: str, delta: tuple[float, float], tol: float = 0.5) -> str:
    verdict = "is" if abs(delta[0]) <= tol else "is not"
    return (f"{track}: dr2net {verdict} within {tol} points of conventional "
            f"(Δ {metric} = {delta[0]:+.2f} ± {delta[1]:.2f}, dr2net − conventional, mean ± std over seeds)")


def run_track(out: Path, track: str, s: Mapping, seeds: int, force: bool) -> dict[str, Any]:
    pre_cfg, ft_cfg = track_configs(out, track, s)
    coarse = track == "pointnext"
    result: dict[str, Any] = {"pretrain_config": pre_cfg.to_dict(), "finetune_config": ft_cfg.to_dict()}

    encoder = out / track / "pretrain" / "encoder.pth"
    if force or not encoder.is_file() or not _finished(out / track / "pretrain"):
        log.info("[%s] pretraining (%s)", track, "coarse 5-class room segmentation" if coarse else "ModelNet40 layout")
    pre = train_run(pre_cfg, dataset_fn(coarse=coarse), force or not encoder.is_file())
    if force or not encoder.is_file():
        export_encoder(out / track / "pretrain" / "best.pth", encoder)
    metric = "miou" if coarse else "oa"
    result["pretrain"] = {"best_val": max(pre["curve"].get(metric, [math.nan])), "metric": metric,
                          "train_seconds": pre["train_seconds"], "task": "coarse seg (5 classes)" if coarse else
                          "ModelNet40-layout classification (16 classes)"}

    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    jobs = [(mode, seed) for seed in range(seeds) for mode in MODES]
    for mode, seed in tqdm(jobs, desc=f"{track} finetuning", unit="run", leave=False):
        cfg = ft_cfg.__deepcopy__({})
        cfg.finetune.mode = mode
        cfg.train.seed = seed
        cfg.model["pretrained"] = str(encoder)
        cfg.run.dir = str(out / track / mode / f"seed{seed}")
        log.info("[%s] finetuning %s seed %d", track, mode, seed)
        r = train_run(cfg, dataset_fn(), force)
        r["seed"] = seed
        runs[mode].append(r)
    result["runs"] = runs
    result["metrics"] = summarise(runs, track)
    return result


def summarise(runs: Mapping[str, list[dict]], track: str) -> dict[str, Any]:
    keys = ("oa", "macc") if track == "transformer" else ("miou", "oa", "macc")
    primary = keys[0]
    table: dict[str, Any] = {"primary": primary}
    for mode, rs in runs.items():
        row: dict[str, Any] = {}
        for k in keys:
            vals = [float(r["test"][k]) for r in rs if k in r["test"]]
            row[k] = {"per_seed": vals, "mean": mean_std(vals)[0], "std": mean_std(vals)[1]}
        secs = [r["train_seconds"] for r in rs if r.get("train_seconds") is not None]
        row["train_seconds"] = mean_std(secs)[0] if secs else None
        acts = [guard_summary(r["steps"])["activation_bytes_max"] for r in rs]
        row["train_activation_bytes_max"] = max((a for a in acts if a is not None), default=None)
        table[mode] = row
    if "dr2net" in runs and "conventional" in runs:
        d = paired_delta(table["dr2net"][primary]["per_seed"], table["conventional"][primary]["per_seed"])
        table["delta_dr2net_minus_conventional"] = {"mean": d[0], "std": d[1], "metric": primary}
        table["within_0_5"] = bool(abs(d[0]) <= 0.5)
        table["statement"] = within_statement(track, primary, d)
    if "checkpoint" in runs and "conventional" in runs:
        # checkpointing computes the conventional function (rounding apart): its gap is the noise floor
        n = paired_delta(table["checkpoint"][primary]["per_seed"], table["conventional"][primary]["per_seed"])
        table["delta_checkpoint_minus_conventional"] = {"mean": n[0], "std": n[1], "metric": primary}
        if "statement" in table:
            table["statement"] += (f"; for scale, checkpoint − conventional (the same function, rounding apart) "
                                   f"= {n[0]:+.2f} ± {n[1]:.2f}")
    return table


def run_ablation(out: Path, s: Mapping, base_runs: list[dict], force: bool) -> dict[str, Any]:
    """Transformer dr2net variants: schedule shape and stack output; 'linear/last' are the main dr2net runs."""
    _, ft_cfg = track_configs(out, "transformer", s)
    encoder = out / "transformer" / "pretrain" / "encoder.pth"
    seeds = int(s["ablation_seeds"])
    result: dict[str, Any] = {"seeds": seeds}
    for name, (shape, output) in tqdm(ABLATION.items(), desc="ablation", unit="variant", leave=False):
        runs = []
        for seed in range(seeds):
            if (shape, output) == (ft_cfg.finetune.shape, ft_cfg.finetune.output) and seed < len(base_runs):
                runs.append(base_runs[seed])
                continue
            cfg = ft_cfg.__deepcopy__({})
            cfg.finetune.mode = "dr2net"
            cfg.finetune.shape = shape
            cfg.finetune.output = output
            cfg.train.seed = seed
            cfg.model["pretrained"] = str(encoder)
            cfg.run.dir = str(out / "transformer" / "ablation" / name.replace("/", "-") / f"seed{seed}")
            log.info("[ablation] %s seed %d", name, seed)
            runs.append(train_run(cfg, dataset_fn(), force))
        oa = [float(r["test"]["oa"]) for r in runs]
        guards = [guard_summary(r["steps"]) for r in runs]
        result[name] = {"oa": {"per_seed": oa, "mean": mean_std(oa)[0], "std": mean_std(oa)[1]}, "guard": guards,
                        "run_dirs": [r["run_dir"] for r in runs]}
    return result


# ----------------------------------------------------------------------------- memory
def _case_spec(out: Path, track: str, ft_cfg) -> Path:
    spec = {"model": {k: v for k, v in ft_cfg.model.to_dict().items() if k != "pretrained"},
            "dataset": ft_cfg.dataset.to_dict(), "pretrained": str(out / track / "pretrain" / "encoder.pth"),
            "seed": 0}
    path = out / track / "case.json"
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path


def harness_rows(out: Path, track: str, s: Mapping, threads: int | None, force: bool) -> list[dict[str, Any]]:
    """One training step of the study's finetuning config per mode, each in a fresh subprocess."""
    from pointdr2.bench import cases_study

    cache = out / track / "memory.json"
    if cache.is_file() and not force:
        return json.loads(cache.read_text())
    _, ft_cfg = track_configs(out, track, s)
    spec = _case_spec(out, track, ft_cfg)
    a0, a1 = (float(v) for v in ft_cfg.finetune.alpha)
    b0, b1 = (float(v) for v in ft_cfg.finetune.beta)
    points_key = "crop_points" if track == "pointnext" else "num_points"
    base = {"model": "study", "batch": int(ft_cfg.train.batch_size), "points": int(ft_cfg.dataset[points_key]),
            "steps": int(s["harness_steps"]), "device": "cpu", "threads": threads, "depth": None}
    configs = [{**base, "mode": "conventional", "alpha": 1.0, "beta": 0.0, "label": "conventional"},
               {**base, "mode": "checkpoint", "alpha": 1.0, "beta": 0.0, "label": "checkpoint"},
               {**base, "mode": "dr2net-auto", "alpha": a0, "beta": b0, "label": "dr2net@start"},
               {**base, "mode": "dr2net-auto", "alpha": a1, "beta": b1, "label": "dr2net@end"}]
    configs = [c for c in configs if c["label"] in s["harness_rows"]]
    if s["harness_in_process"]:
        # --quick: the harness' worker in this process (same measurement code; saves a torch start-up
        # per row). Peak RSS is then not that of a fresh process: a smoke test, not a measurement.
        from pointdr2.bench import memory

        memory.CASE_MODULES.setdefault("study", "pointdr2.bench.cases_study")

        def run_row(cfg):
            return memory._worker(cfg)
    else:
        def run_row(cfg):
            return cases_study.run_row(cfg, timeout=1800)
    old = os.environ.get(cases_study.ENV)
    os.environ[cases_study.ENV] = str(spec)
    try:
        rows = []
        for cfg in tqdm(configs, desc=f"{track} memory", unit="mode", leave=False):
            row = run_row(cfg)
            if "error" in row:
                raise RuntimeError(f"memory harness failed for {track} {cfg['label']}: {row['error']}")
            rows.append(row)
    finally:
        if old is None:
            os.environ.pop(cases_study.ENV, None)
        else:
            os.environ[cases_study.ENV] = old
    cache.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def saved_bytes(spec: Mapping, mode: str, depth: int | None, points: int | None, batch: int) -> int:
    """Bytes autograd saves for backward in one forward of the study model (``SavedTensorMeter``).

    ``dr2net`` is the fully reversible stack at alpha=0, beta=1 (what auto mode runs at the end of
    the schedule); parameters are not counted.
    """
    from pointdr2.bench.cases_study import sized_configs, study_batch
    from pointdr2.bench.memory import model_for_mode
    from pointdr2.engine.memory import SavedTensorMeter
    from pointdr2.models import build_model

    model_cfg, dataset_cfg = sized_configs(spec, depth, points)
    torch.manual_seed(0)
    net = build_model(model_cfg)
    module = model_for_mode(net, mode, 0.0, 1.0, "study").train()
    data = study_batch(dataset_cfg, batch)
    inputs = (data["points"],) if "points" in data else (data["pos"], data["feats"])
    with SavedTensorMeter(net) as meter:
        logits = module(*inputs)
    del logits
    return int(meter.bytes)


def sweeps(out: Path, s: Mapping, tracks: tuple[str, ...], force: bool) -> dict[str, Any]:
    cache = out / "sweeps.json"
    result = json.loads(cache.read_text()) if cache.is_file() and not force else {}
    if "transformer" in tracks and "depth" not in result:
        _, ft = track_configs(out, "transformer", s)
        spec = {"model": ft.model.to_dict(), "dataset": ft.dataset.to_dict()}
        depths = list(s["depths"])
        series = {m: [saved_bytes(spec, m, d, None, int(ft.train.batch_size))
                      for d in tqdm(depths, desc=f"depth sweep {m}", leave=False)] for m in MODES}
        result["depth"] = {"depths": depths, "bytes": series, "batch": int(ft.train.batch_size),
                           "points": int(ft.dataset.num_points)}
    if "pointnext" in tracks and "points" not in result:
        _, ft = track_configs(out, "pointnext", s)
        spec = {"model": ft.model.to_dict(), "dataset": ft.dataset.to_dict()}
        points = list(s["points"])
        series = {m: [saved_bytes(spec, m, None, n, int(s["points_batch"]))
                      for n in tqdm(points, desc=f"points sweep {m}", leave=False)] for m in MODES}
        result["points"] = {"points": points, "bytes": series, "batch": int(s["points_batch"])}
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------- gradient error grid
def flat_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1).double() for p in model.parameters() if p.grad is not None])


def surrogate_grads(model: torch.nn.Module, surrogate: torch.nn.Module, mode: str, points: torch.Tensor,
                    labels: torch.Tensor) -> torch.Tensor:
    """Flat float64 gradient of the cross-entropy w.r.t. every model parameter, stacks in ``mode``."""
    from pointdr2.reversible import iter_stacks

    for stack in iter_stacks(surrogate):
        stack.mode = mode
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(surrogate(points), labels)
    loss.backward()
    return flat_grads(model)


def grad_model_and_batch(ft_cfg, encoder: Path, batch: int):
    """The pretrained transformer (eval mode, head from seed 0) and ``batch`` test samples."""
    from pointdr2.bench.cases_study import study_batch
    from pointdr2.models import build_model, load_pretrained

    model_cfg = {k: v for k, v in ft_cfg.model.to_dict().items() if k != "pretrained"}
    torch.manual_seed(0)
    model = build_model(model_cfg)
    load_pretrained(model, encoder)
    model.eval()  # drop-path off: every mode computes the same function
    data = study_batch(ft_cfg.dataset.to_dict(), batch, split="test")
    return model, data["points"], data["label"]


def grad_grid(out: Path, s: Mapping, force: bool) -> dict[str, Any]:
    """Relative gradient error of reversible (whole stack) vs standard backprop, float32, over (alpha, beta)."""
    from pointdr2.models import to_dr2net
    from pointdr2.reversible import iter_stacks

    cache = out / "grad_grid.json"
    if cache.is_file() and not force:
        return json.loads(cache.read_text())
    _, ft = track_configs(out, "transformer", s)
    model, points, labels = grad_model_and_batch(ft, out / "transformer" / "pretrain" / "encoder.pth",
                                                 int(s["grid_batch"]))
    alphas, betas = list(s["grid_alphas"]), list(s["grid_betas"])
    rev_err, auto_err, auto_k, auto_mode, rec = [], [], [], [], []
    for a in tqdm(alphas, desc="gradient error grid", leave=False):
        rows = ([], [], [], [], [])
        for b in betas:
            sur = to_dr2net(model, a, b, mode="standard")
            ref = surrogate_grads(model, sur, "standard", points, labels)
            rev = surrogate_grads(model, sur, "reversible", points, labels)
            stacks = list(iter_stacks(sur))
            rows[4].append(max(float(st.last_reconstruction_error or 0.0) for st in stacks))
            auto_sur = to_dr2net(model, a, b, mode="auto")  # fresh guard at every grid point
            auto = surrogate_grads(model, auto_sur, "auto", points, labels)
            first = next(iter(iter_stacks(auto_sur)))
            norm = float(torch.linalg.vector_norm(ref))
            rows[0].append(float(torch.linalg.vector_norm(rev - ref)) / norm)
            rows[1].append(float(torch.linalg.vector_norm(auto - ref)) / norm)
            rows[2].append(first.last_cache_every)
            rows[3].append(first.last_mode)
        for target, row in zip((rev_err, auto_err, auto_k, auto_mode, rec), rows):
            target.append(row)
    n_blocks = sum(len(st.blocks) for st in iter_stacks(to_dr2net(model, 1.0, 0.1, mode="standard")))
    result = {"alphas": alphas, "betas": betas, "reversible_rel_error": rev_err, "auto_rel_error": auto_err,
              "auto_cache_every": auto_k, "auto_mode": auto_mode, "reconstruction_error": rec, "dtype": "float32",
              "batch": int(s["grid_batch"]), "sub_blocks": n_blocks,
              "model": {k: v for k, v in ft.model.to_dict().items() if k != "pretrained"}}
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------- report
def _pm(stat: Mapping) -> str:
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:.2f}"


def accuracy_table(track: str, m: Mapping) -> str:
    keys = ("oa", "macc") if track == "transformer" else ("miou", "oa", "macc")
    names = {"oa": "test OA %", "macc": "test mAcc %", "miou": "test mIoU %"}
    rows = []
    for mode in MODES:
        if mode in m:
            r = m[mode]
            rows.append([mode, *(_pm(r[k]) for k in keys),
                         "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}",
                         _mib(r["train_activation_bytes_max"])])
    return _md_table(["finetuning", *(names[k] for k in keys), "train s (mean)", "activation MiB in training (max)"],
                     rows)


def memory_table(rows: list[Mapping]) -> str:
    conv = next(r for r in rows if r["label"] == "conventional")
    out = []
    for r in rows:
        k = r.get("cache_every")
        out.append([r["label"], f"{r['alpha']:g}/{r['beta']:g}", "-" if k is None else str(k),
                    _mib(r["saved_bytes"]), f"{r['saved_bytes'] / conv['saved_bytes']:.2f}",
                    _mib(r["peak_bytes"]), f"{r['peak_bytes'] / max(conv['peak_bytes'], 1):.2f}",
                    f"{1e3 * r['step_s']:.0f}", f"{r['step_s'] / conv['step_s']:.2f}"])
    return _md_table(["mode", "alpha/beta", "k", "saved MiB", "/conv", "peak MiB", "/conv", "step ms", "/conv"], out)


def ablation_table(ab: Mapping) -> str:
    rows = []
    for name in ABLATION:
        if name not in ab:
            continue
        g = ab[name]["guard"]
        ks = [x["cache_every_min"] for x in g if x["cache_every_min"] is not None]
        kx = [x["cache_every_max"] for x in g if x["cache_every_max"] is not None]
        rows.append([name, _pm(ab[name]["oa"]), f"{min(ks) if ks else '-'}..{max(kx) if kx else '-'}",
                     str(sum(x["checkpoint_fallback_steps"] for x in g)),
                     str(sum(x["reversible_steps"] for x in g)),
                     "-" if not g or g[0]["reconstruction_error_max"] is None else
                     f"{max(x['reconstruction_error_max'] or 0 for x in g):.1e}"])
    return _md_table(["shape/output", "test OA %", "anchor spacing k (min..max)", "steps as checkpointing",
                      "steps reversible", "max rec. error"], rows)


def write_plots(study: Mapping, where: Path) -> dict[str, str]:
    from pointdr2.bench import study_plots as sp

    where.mkdir(parents=True, exist_ok=True)
    pngs: dict[str, str] = {}
    names = {"transformer": ("oa", "validation OA %"), "pointnext": ("miou", "validation mIoU %")}
    dr2net_steps = {}
    for track in TRACKS:
        if track not in study["tracks"]:
            continue
        metric, label = names[track]
        runs = study["tracks"][track]["runs"]
        curves = {mode: [r["curve"].get(metric, []) for r in runs[mode]] for mode in MODES}
        pngs[f"curves_{track}"] = str(sp.plot_curves(where / f"curves_{track}.png", curves, label,
                                                     f"{track}: finetuning, mean ± std over seeds"))
        if runs["dr2net"]:
            st = runs["dr2net"][0]["steps"]
            dr2net_steps[track] = {k: [v if isinstance(v, (int, float)) else math.nan for v in st[k]]
                                   for k in ("step", "reconstruction_error", "cache_every", "alpha")}
    if dr2net_steps:
        pngs["dr2net_training"] = str(sp.plot_dr2net_training(where / "dr2net_training.png", dr2net_steps))
    sw = study.get("sweeps", {})
    if "depth" in sw:
        d = sw["depth"]
        pngs["memory_depth"] = str(sp.plot_memory_sweep(
            where / "memory_depth.png", d["depths"], d["bytes"], "transformer depth (blocks)",
            f"transformer: batch {d['batch']}, {d['points']} points"))
    if "points" in sw:
        p = sw["points"]
        pngs["memory_points"] = str(sp.plot_memory_sweep(
            where / "memory_points.png", p["points"], p["bytes"], "points per sample",
            f"PointNeXt-B: batch {p['batch']}"))
    g = study.get("grad_grid")
    if g:
        labels = [[("ckpt" if m == "checkpoint" else f"auto k={k}") for k, m in zip(kr, mr)]
                  for kr, mr in zip(g["auto_cache_every"], g["auto_mode"])]
        pngs["grad_error"] = str(sp.plot_grad_grid(
            where / "grad_error.png", g["alphas"], g["betas"], g["reversible_rel_error"], labels,
            f"reversible vs standard gradient, float32, {g['sub_blocks']} sub-blocks (cell: error; auto's choice)"))
    return pngs


def results_markdown(study: Mapping, pngs: Mapping[str, str], where: Path) -> str:
    m = study["machine"]
    lines = ["# pointdr2 evidence study: Dr²Net vs conventional and checkpointed finetuning", "",
             "Generated by `pointdr2 bench study`; every number below was measured in that run.", "",
             f"- command: `{study['command']}`",
             f"- machine: {m['cpu']} ({m['cpus']} CPUs), torch {m['torch']} with {m['threads']} threads, "
             f"Python {m['python']}",
             f"- wall time: {study['wall_seconds'] / 60:.1f} min ({'quick' if study['quick'] else 'full'} sizes, "
             f"{study['seeds']} seeds)", ""]
    for track in TRACKS:
        if track not in study["tracks"]:
            continue
        t = study["tracks"][track]
        mt = t["metrics"]
        ft = t["finetune_config"]
        model = ft["model"]
        if track == "transformer":
            size = (f"Point-MAE-shaped transformer: width {model['trans_dim']}, depth {model['depth']}, "
                    f"{model['num_heads']} heads, {model['num_group']} groups x {model['group_size']} points from "
                    f"{ft['dataset']['num_points']} points; pretrained on {t['pretrain']['task']} (best val OA "
                    f"{t['pretrain']['best_val']:.2f}%), finetuned on synthetic ScanObjectNN OBJ_BG")
        else:
            size = (f"PointNeXt-B (width {model['width']}, blocks {model['blocks']}), {ft['dataset']['crop_points']}-"
                    f"point crops, voxel {ft['dataset']['voxel_size']}, rooms thinned to "
                    f"{100 * study['settings']['room_fraction']:.0f}% of their points; pretrained on {t['pretrain']['task']} "
                    f"(best val mIoU {t['pretrain']['best_val']:.2f}%), finetuned on 13-class segmentation, "
                    f"test area {ft['dataset']['test_area']}")
        lines += [f"## {track} track", "", size + f"; {ft['train']['epochs']} epochs, batch "
                  f"{ft['train']['batch_size']}, dr2net alpha {ft['finetune']['alpha']} beta {ft['finetune']['beta']} "
                  f"({ft['finetune']['shape']}, until epoch {ft['finetune']['end_epoch']}, backprop "
                  f"{ft['finetune']['backprop']}).", "",
                  accuracy_table(track, mt), "", f"**{mt['statement']}.**", ""]
        if f"curves_{track}" in pngs:
            lines += [f"![{track} curves]({Path(pngs[f'curves_{track}']).name})", ""]
        if "memory" in t:
            how = ("in this process (--quick: peak is not a fresh process's)" if study["settings"]["harness_in_process"]
                   else "fresh subprocess per row")
            lines += [f"One training step of this configuration (memory harness, {how}; saved = bytes kept for "
                      "backward, peak = peak RSS above the post-warm-up baseline; dr2net = auto mode at the "
                      "start/end of the schedule):", "", memory_table(t["memory"]), ""]
    if "dr2net_training" in pngs:
        lines += ["## Dr²Net over training", "", "Reconstruction error and the precision guard's anchor spacing "
                  "(k = sub-blocks between kept activations; 1 = checkpointing) in the dr2net runs (seed 0):", "",
                  "![dr2net training](dr2net_training.png)", ""]
    if "ablation" in study:
        ab = study["ablation"]
        lines += ["## Ablation (transformer, dr2net)", "", f"Seeds per variant: {ab['seeds']}. Guard columns sum "
                  "over the variant's runs (logged steps).", "", ablation_table(ab), ""]
    if "memory_depth" in pngs or "memory_points" in pngs:
        lines += ["## Activation memory against size", "", "Bytes saved for backward in one forward "
                  "(`SavedTensorMeter`; dr2net fully reversible at alpha 0, beta 1). Inputs are the study's "
                  "training samples; S3DIS crops larger than a room's voxel count repeat points, as the "
                  "dataset does:", ""]
        for key in ("memory_depth", "memory_points"):
            if key in pngs:
                lines += [f"![{key}]({Path(pngs[key]).name})", ""]
    if "grad_error" in pngs:
        g = study["grad_grid"]
        lines += ["## Gradient error against alpha/beta", "",
                  f"Pretrained transformer surrogate, float32, batch {g['batch']}: relative error of the "
                  "whole-stack reversible gradient against standard backprop; each cell also says what auto mode "
                  "chose there.", "", "![grad error](grad_error.png)", ""]
    return "\n".join(lines)


def machine_info(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


# ----------------------------------------------------------------------------- main
def _check_args(args: argparse.Namespace) -> None:
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if getattr(args, "ablation_seeds", None) is not None and args.ablation_seeds < 1:
        raise ValueError(f"--ablation-seeds must be >= 1, got {args.ablation_seeds}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.only is not None and args.only not in TRACKS:
        raise ValueError(f"--only must be one of {', '.join(TRACKS)}, got {args.only!r}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")


def _command(args: argparse.Namespace) -> str:
    parts = ["pointdr2 bench study", f"--out {args.out}", f"--seeds {args.seeds}"]
    if args.quick:
        parts.append("--quick")
    if args.threads:
        parts.append(f"--threads {args.threads}")
    if args.only:
        parts.append(f"--only {args.only}")
    if getattr(args, "ablation_seeds", None):
        parts.append(f"--ablation-seeds {args.ablation_seeds}")
    if args.docs:
        parts.append(f"--docs {args.docs}")
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    from pointdr2.engine.commands import stopped_training_exit
    from pointdr2.engine.trainer import TrainingDiverged, TrainingInterrupted

    _check_args(args)
    try:
        return _run(args)
    except (TrainingDiverged, TrainingInterrupted) as exc:
        return stopped_training_exit(exc, "bench study")


def _run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    s = dict(SETTINGS["quick" if args.quick else "full"])
    if getattr(args, "ablation_seeds", None):
        s["ablation_seeds"] = int(args.ablation_seeds)
    if args.threads:
        torch.set_num_threads(int(args.threads))
    threads = torch.get_num_threads()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tracks = (args.only,) if args.only else TRACKS
    seeds = int(args.seeds)

    log.info("[1/5] synthetic data (%s size) in %s", s["data_size"], out / "data")
    data_seconds = generate_data(out, s["data_size"], tracks, args.force, float(s["room_fraction"]))
    study: dict[str, Any] = {"command": _command(args), "quick": bool(args.quick), "seeds": seeds, "tracks": {},
                             "settings": {k: v for k, v in s.items()}, "data_seconds": data_seconds}
    log.info("[2/5] pretraining and finetuning: %s x %d modes x %d seeds", ", ".join(tracks), len(MODES), seeds)
    for track in tracks:
        study["tracks"][track] = run_track(out, track, s, seeds, args.force)
    if "transformer" in tracks:
        log.info("[3/5] ablation: schedule shape and output (transformer, dr2net)")
        study["ablation"] = run_ablation(out, s, study["tracks"]["transformer"]["runs"]["dr2net"], args.force)
    log.info("[4/5] memory and time per mode, memory sweeps, gradient error grid")
    for track in tracks:
        study["tracks"][track]["memory"] = harness_rows(out, track, s, args.threads, args.force)
    study["sweeps"] = sweeps(out, s, tracks, args.force)
    if "transformer" in tracks:
        study["grad_grid"] = grad_grid(out, s, args.force)
    study["wall_seconds"] = time.perf_counter() - t_start
    study["machine"] = machine_info(threads)

    log.info("[5/5] plots and results.md")
    pngs = write_plots(study, out)
    study["plots"] = {k: Path(v).name for k, v in pngs.items()}
    (out / "study.json").write_text(json.dumps(study, indent=2, default=float) + "\n")
    md = results_markdown(study, pngs, out)
    (out / "results.md").write_text(md + "\n", encoding="utf-8")
    if args.docs:
        docs = Path(args.docs)
        docs.mkdir(parents=True, exist_ok=True)
        (docs / "results.md").write_text(md + "\n", encoding="utf-8")
        for p in pngs.values():
            shutil.copy2(p, docs / Path(p).name)
    _print_summary(study, out)
    return 0


def _print_summary(study: Mapping, out: Path) -> None:
    print(f"\npointdr2 bench study ({'quick' if study['quick'] else 'full'}): {study['seeds']} seeds, "
          f"{study['wall_seconds'] / 60:.1f} min on {study['machine']['threads']} threads\n")
    for track, t in study["tracks"].items():
        print(f"{track}:")
        print(accuracy_table(track, t["metrics"]))
        print(t["metrics"]["statement"])
        if "memory" in t:
            print(memory_table(t["memory"]))
        print()
    if "ablation" in study:
        print("ablation (transformer, dr2net):")
        print(ablation_table(study["ablation"]) + "\n")
    print(f"study.json, results.md and plots in {out}")
