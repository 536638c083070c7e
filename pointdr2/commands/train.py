"""``pointdr2 train`` and ``pointdr2 plan``: arguments to :func:`pointdr2.engine.trainer.train` /
:func:`pointdr2.engine.plan.measure_plan` and their output for people."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import torch

from pointdr2.commands.common import command_config, stopped_training_exit
from pointdr2.commands.parsing import parse_int_list, positive
from pointdr2.config import parse_size
from pointdr2.engine.distributed import cleanup
from pointdr2.engine.memory import cache_freed_blocks, return_freed_blocks
from pointdr2.engine.network import resolve_device
from pointdr2.engine.plan import DATASET_CLASSES, MemoryBudgetError, choose_fit, format_plan, measure_plan
from pointdr2.engine.trainer import TrainingDiverged, TrainingInterrupted, check, train

log = logging.getLogger("pointdr2.commands.train")


def run_train(args: argparse.Namespace) -> int:
    """``pointdr2 train``."""
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
    cfg = command_config(args, extra)
    if args.stop_after_epochs is not None and args.stop_after_epochs < 1:
        raise ValueError(f"--stop-after-epochs must be >= 1, got {args.stop_after_epochs}")
    if getattr(args, "check", False):
        summary = check(cfg, world_size=args.nproc, resume=bool(args.resume), force=bool(args.force))
        log.info("check passed: %d process%s, %s; %d train / %d %s samples, %d steps per epoch; run directory %s",
                 summary["processes"], "es" if summary["processes"] > 1 else "", summary["task"], summary["train"],
                 summary[summary["select_split"]], summary["select_split"], summary["steps_per_epoch"], summary["run_dir"])
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



def run_plan(args: argparse.Namespace) -> int:
    """``pointdr2 plan``: measure (``pointdr2.engine.plan.measure_plan``), print the table or JSON, and with
    ``--memory`` the largest batch per mode and the choice ``train.memory_budget`` would make."""
    budget = parse_size(args.memory, "--memory") if args.memory else None
    batch_sizes = parse_int_list(args.batch_sizes, "--batch-sizes")
    probe_batches = parse_int_list(args.probe_batches, "--probe-batches", 2)
    positive(args, "points", "probe_points", "threads")
    cfg = command_config(args)
    if cfg.finetune.mode not in ("dr2net", "conventional", "checkpoint", "auto"):
        raise ValueError(f"finetune.mode must be dr2net, conventional, checkpoint or auto, got {cfg.finetune.mode!r}")
    bs = cfg.train.batch_size
    if batch_sizes is None:
        batch_sizes = [8, 16, 32] if bs == "auto" else sorted({max(1, int(bs) // 4), max(1, int(bs) // 2), int(bs)})
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(int(args.threads))
    if "num_classes" not in cfg.model:
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
