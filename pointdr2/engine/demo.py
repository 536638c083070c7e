"""``pointdr2 demo``: the embedded default, end to end on synthetic data in the official layouts.

1. writes synthetic ModelNet40 (h5 layout, 16 classes) and ScanObjectNN (15 classes, objects in
   background clutter) data sets with ``pointdr2.data.synthetic``;
2. pretrains a small Point-MAE-style point transformer on the ModelNet40-layout objects
   (supervised classification, conventional training);
3. finetunes the pretrained encoder on ScanObjectNN OBJ_BG twice, with Dr2Net (``finetune.mode:
   dr2net``, alpha 1 -> 0 and beta 0.1 -> 1 per step) and conventionally, each selecting its best
   epoch on a validation split carved from the training data, then testing once;
4. measures the activation memory of one training step (bytes autograd saves for backward,
   counted with ``torch.autograd.graph.saved_tensors_hooks``) and its time for conventional,
   checkpointed and Dr2Net finetuning (at the start and at the end of the coefficient schedule);
5. prints accuracy, memory and time side by side, writes ``summary.json`` and a PNG of test
   predictions (objects coloured by predicted class; red-framed grid below: errors).

The finetuning config is ``configs/demo.yaml``; the settings below choose the sizes so the full demo
runs in under 10 minutes on 2 CPU cores (``--quick``: a tiny run of every step, for tests).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pointdr2.config import find_config, load_config

__all__ = ["run_demo", "SETTINGS"]

log = logging.getLogger(__name__)

# Sizes of the full demo and of --quick.
SETTINGS = {
    "full": {"data_size": "demo", "pretrain_epochs": 25, "finetune_epochs": 15, "schedule_end": 8,
             "model": [], "num_points": 256, "batch_size": 16, "render": 12, "warmup_step": True},
    "quick": {"data_size": "test", "pretrain_epochs": 1, "finetune_epochs": 1, "schedule_end": 1,
              "model": ["model.trans_dim=32", "model.depth=2", "model.num_heads=2", "model.encoder_dims=32",
                        "model.num_group=8", "model.group_size=8", "model.head_hidden=32"],
              "num_points": 64, "batch_size": 16, "render": 4, "warmup_step": False},
}


def _configs(out: Path, s: dict):
    """(pretrain config, finetune config) derived from configs/demo.yaml."""
    demo_yaml = find_config("demo.yaml")
    common = [f"train.batch_size={s['batch_size']}", f"dataset.num_points={s['num_points']}", *s["model"]]
    ft = load_config(demo_yaml, [*common, f"dataset.root={out / 'data' / 'scanobjectnn'}",
                                 f"train.epochs={s['finetune_epochs']}", f"finetune.end_epoch={s['schedule_end']}"])
    pre = load_config(demo_yaml, [*common, f"train.epochs={s['pretrain_epochs']}", "finetune.mode=conventional",
                                  "model.num_classes=16", f"run.dir={out / 'pretrain'}", "train.test_at_end=false"])
    pre.dataset = {"name": "modelnet40", "root": str(out / "data" / "modelnet40_ply_hdf5_2048"),
                   "num_points": s["num_points"]}
    return pre, ft


def _generate_data(out: Path, size: str) -> None:
    from pointdr2.data.synthetic import write_layout

    jobs = [("modelnet40-h5", out / "data"), ("scanobjectnn", out / "data" / "scanobjectnn")]
    for layout, where in tqdm(jobs, desc="synthetic data", unit="set"):
        path, seconds = write_layout(layout, where, size=size, seed=0)
        log.info("wrote %s (%s) in %.1f s", path, layout, seconds)


def _export_encoder(best: Path, dest: Path) -> Path:
    """The pretrained weights without the classification head (the finetuning task has other classes)."""
    from pointdr2.engine.checkpoint import load_checkpoint, save_atomic

    state = load_checkpoint(best)["model"]
    encoder = {k: v for k, v in state.items() if not k.startswith("cls_head_finetune.")}
    save_atomic({"base_model": encoder}, dest)
    return dest


def _measure_step(cfg, pretrained: Path, mode: str, coefficients: tuple[float, float], warmup: bool = True) -> dict:
    """Activation bytes and time of one training step (forward + backward) on one batch."""
    from pointdr2.data import build_dataset
    from pointdr2.engine.memory import SavedTensorMeter
    from pointdr2.engine.trainer import build_network
    from pointdr2.models import build_model, load_pretrained

    torch.manual_seed(0)
    dataset = build_dataset(cfg.dataset, "train", val_fraction=float(cfg.train.val_fraction), seed=0)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(int(cfg.train.batch_size))])
    model_cfg = dict(cfg.model)
    model_cfg["num_classes"] = int(dataset.num_classes)
    model_cfg.pop("pretrained", None)
    model = build_model(model_cfg)
    load_pretrained(model, pretrained)
    ft = dict(cfg.finetune)
    ft["mode"] = mode
    net = build_network(model, ft, *coefficients, train=True)
    net.train()
    # Warm-up step (first-call allocations, lazy initialisation), then the measured one.
    times, saved = [], 0
    for _ in range(2 if warmup else 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with SavedTensorMeter(model) as meter:
            logits = net(batch["points"])
            loss = torch.nn.functional.cross_entropy(logits, batch["label"])
        loss.backward()
        times.append(time.perf_counter() - start)
        saved = meter.bytes
    return {"activation_bytes": saved, "step_seconds": times[-1]}


def _render_predictions(cfg, run_dir: Path, out_png: Path, count: int) -> dict:
    from pointdr2.engine.commands import load_for_eval
    from pointdr2.viz import ERROR_COLORS, color_by_labels, palette, render_png

    dataset, _, net, _, device = load_for_eval(cfg, run_dir / "best.pth", "test")
    colors = palette(int(dataset.num_classes))
    step = max(len(dataset) // count, 1)
    indices = list(range(0, len(dataset), step))[:count]
    clouds, errors, correct = [], [], 0
    with torch.no_grad():
        for i in tqdm(indices, desc="render predictions", leave=False):
            sample = dataset[i]
            pred = int(net(sample["points"].unsqueeze(0).to(device)).argmax(dim=1))
            xyz = sample["points"][:, :3].numpy()
            ok = pred == int(sample["label"])
            correct += ok
            clouds.append((xyz, color_by_labels(pred, len(xyz), colors)))
            errors.append((xyz, np.tile(ERROR_COLORS[0 if ok else 1], (len(xyz), 1))))
    render_png(out_png, clouds, up_axis="y")
    render_png(out_png.with_name(out_png.stem + "_errors.png"), errors, up_axis="y")
    return {"rendered": len(indices), "correct": correct}


def _table(rows: list[tuple[str, list[str]]], header: list[str]) -> str:
    widths = [max(len(header[0]), *(len(r[0]) for r in rows))]
    for j in range(1, len(header)):
        widths.append(max(len(header[j]), *(len(r[1][j - 1]) for r in rows)))
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for name, cells in rows:
        lines.append("  ".join([name.ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells, widths[1:])]))
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    from pointdr2.engine.commands import stopped_training_exit
    from pointdr2.engine.trainer import TrainingDiverged, TrainingInterrupted

    try:
        return _run_demo(args)
    except (TrainingDiverged, TrainingInterrupted) as exc:
        return stopped_training_exit(exc, "demo")


def _run_demo(args: argparse.Namespace) -> int:
    from pointdr2.engine.trainer import train

    s = SETTINGS["quick" if args.quick else "full"]
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise ValueError(f"demo output directory {out} already exists; pass --force to overwrite it or --out DIR")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    torch.manual_seed(0)

    log.info("[1/5] synthetic data (%s size) in %s", s["data_size"], out / "data")
    _generate_data(out, s["data_size"])
    pre_cfg, ft_cfg = _configs(out, s)

    log.info("[2/5] pretraining a point transformer on synthetic ModelNet40-layout objects")
    t0 = time.perf_counter()
    pre = train(pre_cfg, force=True)
    pretrain_seconds = time.perf_counter() - t0
    encoder = _export_encoder(out / "pretrain" / "best.pth", out / "pretrain" / "encoder.pth")

    log.info("[3/5] finetuning on synthetic ScanObjectNN (OBJ_BG, with clutter): dr2net and conventional")
    results = {}
    for mode in ("dr2net", "conventional"):
        cfg = ft_cfg.__deepcopy__({})
        cfg.finetune.mode = mode
        cfg.model["pretrained"] = str(encoder)
        cfg.run.dir = str(out / f"finetune-{mode}")
        t0 = time.perf_counter()
        res = train(cfg, force=True)
        results[mode] = {"test": res.test_metrics, "best_val_oa": res.best_metric, "best_epoch": res.best_epoch,
                         "train_seconds": time.perf_counter() - t0, "cfg": cfg}

    log.info("[4/5] activation memory and time of one training step")
    a0, b0 = float(ft_cfg.finetune.alpha[0]), float(ft_cfg.finetune.beta[0])
    a1, b1 = float(ft_cfg.finetune.alpha[1]), float(ft_cfg.finetune.beta[1])
    cases = [("conventional", "conventional", (1.0, 0.0)), ("checkpoint", "checkpoint", (1.0, 0.0)),
             (f"dr2net start ({a0:g},{b0:g})", "dr2net", (a0, b0)), (f"dr2net end ({a1:g},{b1:g})", "dr2net", (a1, b1))]
    memory = {}
    for label, mode, coeffs in tqdm(cases, desc="memory per step", unit="mode"):
        memory[label] = _measure_step(ft_cfg, encoder, mode, coeffs, s["warmup_step"])

    log.info("[5/5] rendering test predictions of the dr2net model")
    png = out / "predictions.png"
    rendered = _render_predictions(results["dr2net"]["cfg"], out / "finetune-dr2net", png, s["render"])

    conv_bytes = memory["conventional"]["activation_bytes"]
    rows = []
    for mode in ("conventional", "dr2net"):
        r = results[mode]
        rows.append((mode, [f"{r['test'].get('oa', float('nan')):.2f} / "
                                                   f"{r['test'].get('macc', float('nan')):.2f}",
                                                   f"{r['best_val_oa']:.2f} (ep {r['best_epoch']})",
                                                   f"{r['train_seconds']:.0f}"]))
    acc_table = _table(rows, ["finetuning", "test OA / mAcc %", "best val OA %", "train s"])
    mem_rows = [(label, [f"{m['activation_bytes'] / 2**20:.2f}", f"{100 * m['activation_bytes'] / conv_bytes:.0f}%",
                         f"{m['step_seconds']:.2f}"]) for label, m in memory.items()]
    mem_table = _table(mem_rows, ["one training step", "activation MiB", "vs conv", "step s"])
    total = time.perf_counter() - t_start
    summary = {
        "pretrain": {"best_val_oa": pre.best_metric, "epochs": s["pretrain_epochs"], "seconds": pretrain_seconds},
        "finetune": {m: {k: v for k, v in r.items() if k != "cfg"} for m, r in results.items()},
        "memory": memory, "png": str(png), "rendered": rendered, "total_seconds": total,
        "settings": s,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    print(f"\npointdr2 demo ({'quick' if args.quick else 'full'}): synthetic ModelNet40-layout pretraining "
          f"(val OA {pre.best_metric:.2f}%), synthetic ScanObjectNN OBJ_BG finetuning, batch {s['batch_size']}, "
          f"{s['num_points']} points\n")
    print(acc_table + "\n")
    print(mem_table + "\n")
    print(f"predictions: {png} ({rendered['correct']}/{rendered['rendered']} correct; errors in "
          f"{png.with_name(png.stem + '_errors.png').name}); runs, logs and tensorboard events in {out}; "
          f"total {total:.0f} s")
    return 0
