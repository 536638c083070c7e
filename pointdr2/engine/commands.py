"""Implementations of ``pointdr2 train | eval | visualize`` (argument parsing lives in ``pointdr2.cli``).

Each ``cmd_*`` takes the parsed ``argparse.Namespace`` and returns an exit status; bad input
raises ``ValueError`` / ``FileNotFoundError`` with a one-line message (``pointdr2.cli.main``
prints it and exits with status 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

import torch

from pointdr2.config import Config, find_config, load_config
from pointdr2.progress import bar as progress_bar

__all__ = ["cmd_train", "cmd_eval", "cmd_visualize", "load_for_eval", "predict_sample"]

log = logging.getLogger(__name__)


def _split_positional(args: argparse.Namespace) -> None:
    """``CONFIG`` is optional: a first positional ``key=value`` that names no file is an override."""
    config = getattr(args, "config", None)
    if config and "=" in config and not Path(config).exists():
        args.overrides = [config, *(args.overrides or [])]
        args.config = None


def run_config_file(run_dir: str | os.PathLike) -> Path:
    """``RUN/config.yaml``: the resolved config of a run, overrides included (FileNotFoundError if absent)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml in it)")
    return path


def _config(args: argparse.Namespace, extra: list[str] | tuple = ()) -> Config:
    """The config of a command: CONFIG as given, or a run directory's config.yaml (a RUN positional,
    ``--resume RUN`` or the folder of ``--checkpoint RUN/best.pth``), plus the overrides."""
    _split_positional(args)
    overrides = list(args.overrides or []) + list(extra)
    config = getattr(args, "config", None)
    if config and Path(config).is_dir():
        return load_config(run_config_file(config), overrides)
    if config:
        return load_config(find_config(config), overrides)
    resume = getattr(args, "resume", None)
    if resume:
        return load_config(run_config_file(resume), overrides)
    checkpoint = getattr(args, "checkpoint", None)
    if checkpoint:
        folder = Path(checkpoint).parent
        if (folder / "config.yaml").is_file():
            return load_config(folder / "config.yaml", overrides)
        raise ValueError(f"no CONFIG given and no config.yaml beside --checkpoint {checkpoint}; pass the config "
                         "the checkpoint was trained with (pointdr2 eval CONFIG --checkpoint PATH)")
    raise ValueError("give a CONFIG file or a run directory (e.g. pointdr2 eval runs/xyz, pointdr2 train --resume "
                     "runs/xyz)")


def _checkpoint(args: argparse.Namespace) -> Path:
    """``--checkpoint``, defaulting to ``RUN/best.pth`` when the positional is a run directory."""
    if getattr(args, "checkpoint", None):
        return Path(args.checkpoint)
    config = getattr(args, "config", None)
    if config and Path(config).is_dir():
        for name in ("best.pth", "last.pth"):
            if (Path(config) / name).is_file():
                return Path(config) / name
        raise FileNotFoundError(f"{config} holds no best.pth or last.pth")
    raise ValueError("--checkpoint PATH is needed with a CONFIG file (or give a run directory instead of CONFIG)")


def stopped_training_exit(exc: BaseException, command: str) -> int:
    """One stderr line and the exit status for a run that stopped early: 3 diverged, 130 interrupted."""
    from pointdr2.engine.trainer import TrainingDiverged

    if isinstance(exc, TrainingDiverged):
        print(f"pointdr2 {command}: error: {exc}", file=sys.stderr)
        return 3
    print(f"pointdr2 {command}: {exc}", file=sys.stderr)
    return 130


# ----------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from pointdr2.engine.distributed import cleanup
    from pointdr2.engine.trainer import TrainingDiverged, TrainingInterrupted, check, train

    if int(os.environ.get("RANK", "0")) != 0:
        # torchrun workers other than rank 0: warnings only (rank 0 logs and saves for everyone).
        logging.getLogger("pointdr2").setLevel(logging.WARNING)
    extra = []
    if args.resume:
        if args.force:
            raise ValueError("--resume and --force exclude each other: resume continues a run, --force starts it over")
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"--resume: run directory not found: {run_dir}")
        extra.append(f"run.dir={run_dir}")
    cfg = _config(args, extra)
    if args.stop_after_epochs is not None and args.stop_after_epochs < 1:
        raise ValueError(f"--stop-after-epochs must be >= 1, got {args.stop_after_epochs}")
    if getattr(args, "check", False):
        summary = check(cfg, world_size=args.nproc, resume=bool(args.resume), force=bool(args.force))
        log.info("check passed: %d process%s, %s; %d train / %d %s samples, %d steps per epoch; run directory %s",
                 summary["processes"], "es" if summary["processes"] > 1 else "", summary["task"], summary["train"],
                 summary[cfg.train.select_on], cfg.train.select_on, summary["steps_per_epoch"], summary["run_dir"])
        return 0
    finished = False
    try:
        result = train(cfg, resume=bool(args.resume), force=bool(args.force), stop_after_epochs=args.stop_after_epochs)
        finished = True
    except (TrainingDiverged, TrainingInterrupted) as exc:
        return stopped_training_exit(exc, "train")
    finally:
        cleanup(synchronize=finished)
    if result.stopped_early:
        log.info("stopped after epoch %d; continue with: pointdr2 train --resume %s", result.epochs_done,
                 result.run_dir)
    else:
        log.info("done: best %s %s %.2f at epoch %d; checkpoints in %s", cfg.train.select_on, result.metric_name,
                 result.best_metric, result.best_epoch, result.run_dir)
    return 0


# ----------------------------------------------------------------------------- plan
def parse_int_list(text: str | None, what: str, count: int | None = None) -> list[int] | None:
    """``"8,16,32"`` -> [8, 16, 32]; a one-line ValueError naming ``what`` for anything but positive integers."""
    if text is None:
        return None
    try:
        items = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        items = []
    if not items or any(v < 1 for v in items) or (count is not None and len(items) != count):
        n = f"{count} " if count else ""
        raise ValueError(f"{what}: expected {n}comma-separated positive integers (e.g. 8,16,32), got {text!r}")
    return items


def cmd_plan(args: argparse.Namespace) -> int:
    """``pointdr2 plan``: measure (``pointdr2.engine.plan.measure_plan``), print the table or JSON, and with
    ``--memory`` the largest batch per mode and the choice ``train.memory_budget`` would make."""
    from pointdr2.config import parse_size
    from pointdr2.engine.memory import cache_freed_blocks, return_freed_blocks
    from pointdr2.engine.plan import MemoryBudgetError, choose_fit, format_plan, measure_plan
    from pointdr2.engine.trainer import resolve_device

    budget = parse_size(args.memory, "--memory") if args.memory else None
    batch_sizes = parse_int_list(args.batch_sizes, "--batch-sizes")
    probe_batches = parse_int_list(args.probe_batches, "--probe-batches", 2)
    for name in ("points", "probe_points", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    cfg = _config(args)
    if cfg.finetune.mode not in ("dr2net", "conventional", "checkpoint", "auto"):
        raise ValueError(f"finetune.mode must be dr2net, conventional, checkpoint or auto, got {cfg.finetune.mode!r}")
    bs = cfg.train.batch_size
    if batch_sizes is None:
        batch_sizes = [8, 16, 32] if bs == "auto" else sorted({max(1, int(bs) // 4), max(1, int(bs) // 2), int(bs)})
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(int(args.threads))
    if "num_classes" not in cfg.model:
        from pointdr2.engine.plan import DATASET_CLASSES

        cfg.model["num_classes"] = DATASET_CLASSES.get(str(cfg.dataset.get("name", "")).lower(), 10)
    freed = device.type == "cpu" and return_freed_blocks()
    try:
        plan = measure_plan(cfg, device=device, points=args.points, probe_batches=probe_batches,
                            probe_points=args.probe_points, name_peak=bool(args.peak_at))
    finally:
        if freed:
            cache_freed_blocks()
    fit, fit_error = None, None
    if budget is not None:
        try:
            fit = choose_fit(plan, budget, mode="auto", batch_size=bs)
        except MemoryBudgetError as exc:
            fit_error = str(exc)
    if args.json:
        out = plan.to_dict(batch_sizes, budget, fit)
        if budget is not None:
            out.setdefault("choice", None)
            out["choice_error"] = fit_error
        print(json.dumps(out, indent=2))
    else:
        print(format_plan(plan, batch_sizes, budget, fit))
        if fit_error:
            print(f"nothing fits: {fit_error}")
    return 0


# ----------------------------------------------------------------------------- eval
def load_for_eval(cfg: Config, checkpoint: str | os.PathLike, split: str = "test"):
    """Dataset, base model, evaluation network and checkpoint dict for ``split``.

    The model is built from ``cfg.model`` (``num_classes`` from the dataset when unset), the
    weights loaded strictly, and a Dr2Net surrogate rebuilt at the checkpoint's coefficients when
    the checkpoint was finetuned with ``finetune.mode: dr2net``. An official (foreign) checkpoint is
    evaluated as published: when its head predicts another number of classes than the config's
    (the official Point-BERT ScanObjectNN checkpoints have a 40-way head for 15 classes), the model
    is built with the checkpoint's head size, which is logged; a head with fewer classes than the
    dataset has is an error.
    """
    from pointdr2.data import build_dataset
    from pointdr2.engine.checkpoint import is_own_checkpoint, load_checkpoint
    from pointdr2.engine.trainer import build_network, load_model_weights, resolve_device
    from pointdr2.models import build_model
    from pointdr2.models.checkpoints import checkpoint_num_classes

    if split not in ("train", "val", "test"):
        raise ValueError(f"--split must be train, val or test, got {split!r}")
    ckpt_path = Path(checkpoint)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"--checkpoint: file not found: {ckpt_path}")
    device = resolve_device(cfg.train.device)
    vf = float(cfg.train.val_fraction) if cfg.train.select_on == "val" else 0.0
    dataset = build_dataset(cfg.dataset, split, val_fraction=vf, seed=int(cfg.train.seed))
    if "num_classes" not in cfg.model:
        cfg.model["num_classes"] = int(dataset.num_classes)
    model = build_model(cfg.model)
    raw = load_checkpoint(ckpt_path)  # read once, under the one loading policy
    if not is_own_checkpoint(raw):
        try:
            head = checkpoint_num_classes(model, raw, ckpt_path)
        except ValueError:  # not this model's weights: load_model_weights says so below
            head = None
        configured = getattr(model, "num_classes", None)
        if head is not None and configured is not None and head != int(configured):
            classes = int(dataset.num_classes)
            if head < classes:
                raise ValueError(f"--checkpoint {ckpt_path}: its head predicts {head} classes but dataset "
                                 f"{cfg.dataset.get('name')!r} has {classes}; it was trained for another label set")
            log.info("%s has a %d-way head (model.num_classes=%d in the config): evaluating it as published, "
                     "with model.num_classes=%d (predictions beyond the dataset's %d classes count as wrong)",
                     ckpt_path, head, int(configured), head, classes)
            cfg.model["num_classes"] = head
            model = build_model(cfg.model)
    ckpt = load_model_weights(model, ckpt_path, checkpoint=raw)
    model.to(device).eval()
    finetune = ckpt.get("finetune") if isinstance(ckpt.get("finetune"), dict) else {"mode": "conventional"}
    if finetune.get("mode") == "dr2net":
        # checkpoints written before ``finetune.residual`` existed were trained with the branch form
        ft = {"mode": "dr2net", "output": finetune.get("output", "last"), "residual": finetune.get("residual", "branch"),
              "backprop": "auto"}
        net = build_network(model, ft, float(finetune["alpha"]), float(finetune["beta"]), train=False).to(device)
        log.info("evaluating the Dr2Net surrogate at alpha=%.3g beta=%.3g (as finetuned)", finetune["alpha"],
                 finetune["beta"])
    else:
        net = model
    net.eval()
    return dataset, model, net, ckpt, device


def cmd_eval(args: argparse.Namespace) -> int:
    from pointdr2.engine.evaluator import evaluate

    cfg = _config(args)
    checkpoint = _checkpoint(args)
    vote = int(args.vote) if args.vote is not None else int(cfg.eval.vote)
    if vote < 1:
        raise ValueError(f"--vote must be >= 1, got {vote}")
    dataset, _, net, _, device = load_for_eval(cfg, checkpoint, args.split)
    crop = cfg.dataset.get("crop_points")
    from pointdr2.engine.evaluator import default_room_predictor

    metrics = evaluate(net, dataset, device=device, batch_size=int(cfg.eval.batch_size), vote=vote,
                       num_workers=int(cfg.train.num_workers), amp=str(cfg.train.amp), seed=int(cfg.train.seed),
                       progress=bool(cfg.run.progress), desc=f"eval {args.split}",
                       room_predictor=default_room_predictor(int(crop) if crop else None))
    if metrics["task"] == "partseg":
        return _print_partseg(metrics, checkpoint, args.split, vote, bool(args.json))
    names = list(getattr(dataset, "class_names", [])) or [str(i) for i in range(len(metrics["acc_per_class"]))]
    out = {"checkpoint": str(checkpoint), "split": args.split, "vote": vote, "task": metrics["task"],
           "oa": metrics["oa"], "macc": metrics["macc"], "count": metrics["count"]}
    if metrics["task"] == "segmentation":
        out["miou"] = metrics["miou"]
        out["iou_per_class"] = dict(zip(names, metrics["iou_per_class"]))
    out["acc_per_class"] = dict(zip(names, metrics["acc_per_class"]))
    if args.json:
        # JSON has no NaN: classes absent from the split become null.
        print(json.dumps(_nan_to_none(out)))
    else:
        head = "  ".join(f"{k} {out[k]:.2f}" for k in ("miou", "oa", "macc") if k in out)
        print(f"{args.split} ({out['count']} {'points' if out['task'] == 'segmentation' else 'samples'}, "
              f"vote {vote}): {head}")
        per = out.get("iou_per_class") or out["acc_per_class"]
        label = "IoU" if "iou_per_class" in out else "acc"
        for name, value in per.items():
            print(f"  {name:<16} {label} {value:6.2f}" if not math.isnan(value) else f"  {name:<16} {label}    n/a")
    return 0


def _print_partseg(metrics: dict, checkpoint, split: str, vote: int, as_json: bool) -> int:
    """``eval`` output of part segmentation: instance / class mIoU, point accuracy and IoU per category."""
    out = {"checkpoint": str(checkpoint), "split": split, "vote": vote, "task": "partseg",
           "ins_miou": metrics["ins_miou"], "cls_miou": metrics["cls_miou"], "oa": metrics["oa"],
           "count": metrics["count"], "iou_per_category": metrics["iou_per_category"]}
    if as_json:
        print(json.dumps(_nan_to_none(out)))  # categories without a test shape become null
        return 0
    print(f"{split} ({out['count']} shapes, vote {vote}): ins_miou {out['ins_miou']:.2f}  cls_miou "
          f"{out['cls_miou']:.2f}  oa {out['oa']:.2f}")
    for name, value in out["iou_per_category"].items():
        print(f"  {name:<16} IoU {value:6.2f}" if not math.isnan(value) else f"  {name:<16} IoU    n/a")
    return 0


def _nan_to_none(obj):
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ----------------------------------------------------------------------------- visualize
@torch.no_grad()
def predict_sample(net, dataset, index: int, device: torch.device, max_points: int | None = None):
    """``(xyz [n,3] numpy, pred [n] or [], target [n] or [])`` for sample ``index`` of ``dataset``."""
    from pointdr2.engine.evaluator import default_room_predictor, is_room_dataset, task_of

    if not 0 <= index < len(dataset):
        raise ValueError(f"--index must lie in [0, {len(dataset)}), got {index}")
    if is_room_dataset(dataset):
        room = dataset[index]
        with progress_bar(total=getattr(room, "pass_points", None), desc=f"predict room {index}", unit="pt",
                          unit_scale=True, leave=False, every=10.0) as bar:
            logits = default_room_predictor(max_points)(net, room, device, on_points=bar.update)
        return room.room[:, :3], logits.argmax(dim=-1).numpy(), room.labels.numpy()
    sample = dataset[index]
    task = task_of(sample)
    if task == "classification":
        points = sample["points"]
        logits = net(points.unsqueeze(0).to(device))
        return points[:, :3].numpy(), logits.argmax(dim=1).cpu().numpy(), sample["label"].reshape(1).numpy()
    if task == "partseg":  # the argmax over the shape's own category's parts, as the metrics take it
        points, category = sample["points"], int(sample["category"])
        logits = net(points.unsqueeze(0).to(device), torch.tensor([category], device=device))[0].cpu()
        parts = torch.tensor(dataset.category_parts[category])
        pred = parts[logits.index_select(0, parts).argmax(dim=0)]
        return points[:, :3].numpy(), pred.numpy(), sample["label"].numpy()
    logits = net(sample["pos"].unsqueeze(0).to(device), sample["feats"].unsqueeze(0).to(device))
    return sample["pos"].numpy(), logits[0].argmax(dim=0).cpu().numpy(), sample["label"].numpy()


def _class_colors(dataset, num_classes: int, outputs: int = 0):
    """The dataset's class colours (or a palette), extended for model outputs beyond its classes (an
    official checkpoint evaluated with its own, wider head)."""
    import numpy as np

    from pointdr2.viz import palette

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
    from pointdr2.engine.evaluator import is_room_dataset
    from pointdr2.viz.figures import classification_grid, segmentation_pair

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


def cmd_visualize(args: argparse.Namespace) -> int:
    from pointdr2.viz import color_by_labels, color_errors, has_display, render_png, show_window, write_ply

    cfg = _config(args)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file, got {out}")
    style = getattr(args, "style", "figure")
    count = int(getattr(args, "count", 12) or 12)
    if count < 1:
        raise ValueError(f"--count must be >= 1, got {count}")
    dataset, _, net, _, device = load_for_eval(cfg, _checkpoint(args), args.split)
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
