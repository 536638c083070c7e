"""``pointdr2 eval``: a checkpoint's test (or val/train) metrics, printed for people or as JSON."""

from __future__ import annotations

import argparse
import json
import math

from pointdr2.commands.common import command_checkpoint, command_config, nan_to_none
from pointdr2.engine.evaluator import default_room_predictor, evaluate
from pointdr2.engine.inference import load_for_eval


def run_eval(args: argparse.Namespace) -> int:
    """``pointdr2 eval``: :func:`pointdr2.engine.evaluator.evaluate` on a checkpoint, as a table or one JSON line."""
    cfg = command_config(args)
    checkpoint = command_checkpoint(args)
    vote = int(args.vote) if args.vote is not None else int(cfg.eval.vote)
    if vote < 1:
        raise ValueError(f"--vote must be >= 1, got {vote}")
    dataset, _, net, _, device = load_for_eval(cfg, checkpoint, args.split)
    crop = cfg.dataset.get("crop_points")
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
        print(json.dumps(nan_to_none(out)))
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
        print(json.dumps(nan_to_none(out)))  # categories without a test shape become null
        return 0
    print(f"{split} ({out['count']} shapes, vote {vote}): ins_miou {out['ins_miou']:.2f}  cls_miou "
          f"{out['cls_miou']:.2f}  oa {out['oa']:.2f}")
    for name, value in out["iou_per_category"].items():
        print(f"  {name:<16} IoU {value:6.2f}" if not math.isnan(value) else f"  {name:<16} IoU    n/a")
    return 0
