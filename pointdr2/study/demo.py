"""``pointdr2 demo``: the embedded default, end to end on synthetic data in the official layouts.

1. writes synthetic ModelNet40 (h5 layout) and ScanObjectNN (OBJ_BG and OBJ_ONLY; no PB_T50_RS) data;
2. pretrains the evidence study's Point-MAE-layout transformer (12 blocks, reduced widths) on the
   ModelNet40-layout objects (supervised classification);
3. finetunes the pretrained encoder on ScanObjectNN (the variant of ``configs/demo.yaml``: OBJ_ONLY) twice,
   conventionally and with Dr²Net (the shipped recipe), side by side as two ``pointdr2 train`` processes;
   each tests its final weights (no model selection, the study's protocol) once on 600 test objects;
4. measures, alone on the machine, the activation memory (bytes autograd saves for backward) and the time
   of one training step per mode (Dr²Net at the start and at the end of its schedule);
5. prints accuracy, memory and time side by side with one line saying what it means, writes
   ``summary.json`` and ``predictions.png`` (a grid of test clouds titled with predicted / true class).

``--quick`` runs every step at toy sizes (for tests).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pointdr2.config import find_config
from pointdr2.data import build_dataset
from pointdr2.engine.inference import load_for_eval
from pointdr2.engine.memory import SavedTensorMeter
from pointdr2.engine.network import build_network
from pointdr2.models import build_model, load_pretrained
from pointdr2.study.data import generate
from pointdr2.study.runs import RunSpec, execute, read_run

__all__ = ["DemoOptions", "run_demo", "summary_text", "SETTINGS"]

log = logging.getLogger(__name__)


@dataclass
class DemoSettings:
    data_size: str
    pretrain: list[str]
    finetune: list[str]
    common: list[str] = field(default_factory=list)
    render: int = 24
    time_steps: int = 3


SETTINGS = {
    "full": DemoSettings("demo", ["train.epochs=12"], []),
    "quick": DemoSettings("test", ["train.epochs=1"], ["train.epochs=1", "finetune.end_epoch=1"],
                          ["model.trans_dim=32", "model.depth=2", "model.num_heads=2", "model.encoder_dims=32",
                           "model.encoder_hidden=16", "model.num_group=8", "model.group_size=8",
                           "model.head_hidden=32", "dataset.num_points=64", "train.batch_size=8"],
                          render=6, time_steps=1),
}


@dataclass
class DemoOptions:
    out: Path = Path("runs/demo")
    quick: bool = False
    force: bool = False
    workers: int = 2
    progress: bool = True


def _specs(out: Path, s: DemoSettings) -> tuple[RunSpec, dict[str, RunSpec]]:
    data = out / "data"
    pre = RunSpec("demo/pretrain", find_config("study/transformer-pretrain"),
                  [*s.common, *s.pretrain, f"dataset.root={data / 'modelnet40_ply_hdf5_2048'}", "train.seed=0"],
                  out / "pretrain", kind="pretrain")
    encoder = out / "pretrain" / "encoder.pth"
    runs = {mode: RunSpec(f"demo/{mode}", find_config("demo.yaml"),
                          [*s.common, *s.finetune, f"dataset.root={data / 'scanobjectnn'}", f"finetune.mode={mode}",
                           f"model.pretrained={encoder}", "train.seed=0"],
                          out / f"finetune-{mode}", meta={"cost": 2.0 if mode == "dr2net" else 1.0})
            for mode in ("conventional", "dr2net")}
    return pre, runs


def measure_step(cfg, encoder: Path, mode: str, coefficients: tuple[float, float], steps: int) -> dict[str, Any]:
    """Activation bytes of one training step and its time (median of ``steps`` after a warm-up step)."""
    torch.manual_seed(0)
    dataset = build_dataset(cfg.dataset, "train", val_fraction=float(cfg.train.val_fraction), seed=0)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(int(cfg.train.batch_size))])
    model = build_model({**{k: v for k, v in cfg.model.to_dict().items() if k != "pretrained"},
                         "num_classes": int(dataset.num_classes)})
    load_pretrained(model, encoder)
    net = build_network(model, {**cfg.finetune.to_dict(), "mode": mode}, *coefficients, train=True).train()
    times, saved = [], 0
    for i in range(steps + 1):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with SavedTensorMeter(model) as meter:
            loss = torch.nn.functional.cross_entropy(net(batch["points"]), batch["label"])
        loss.backward()
        if i:  # the first step pays for first-call allocations
            times.append(time.perf_counter() - t0)
        saved = meter.bytes
    k = [st.last_cache_every for st in net.modules() if hasattr(st, "last_cache_every")]
    return {"activation_bytes": int(saved), "step_seconds": float(np.median(times)), "cache_every": k[0] if k else None}


def render_predictions(cfg, run_dir: Path, out_png: Path, count: int, draw: Callable[..., Any]) -> dict[str, Any]:
    """A labelled grid of ``count`` test clouds (every len/count-th), titled predicted / true, drawn by
    ``draw(out_png, tiles, up_axis=..., title=...)`` (the command layer passes
    :func:`pointdr2.viz.figures.classification_grid`)."""
    dataset, _, net, _, device = load_for_eval(cfg, run_dir / "best.pth", "test")
    names = list(getattr(dataset, "class_names", [str(i) for i in range(int(dataset.num_classes))]))
    step = max(len(dataset) // count, 1)
    tiles = []
    with torch.no_grad():
        for i in list(range(0, len(dataset), step))[:count]:
            sample = dataset[i]
            pred = int(net(sample["points"].unsqueeze(0).to(device)).argmax(dim=1))
            tiles.append({"xyz": sample["points"][:, :3].numpy(), "pred": names[pred], "true": names[int(sample["label"])]})
    draw(out_png, tiles, up_axis=1, title="pointdr2 demo: the Dr²Net-finetuned model on test objects")
    return {"rendered": len(tiles), "correct": sum(t["pred"] == t["true"] for t in tiles), "png": str(out_png)}


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[j])) for r in [header, *rows]) for j in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if j == 0 else str(c).rjust(w) for j, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)])


def run_demo(opts: DemoOptions, draw: Callable[..., Any]) -> dict[str, Any]:
    """Run the demo into ``opts.out``; returns ``summary.json``'s content (:func:`summary_text` says it for
    people). ``draw`` renders the PNG of test predictions (see :func:`render_predictions`)."""
    s = SETTINGS["quick" if opts.quick else "full"]
    out = Path(opts.out)
    if out.exists() and any(out.iterdir()) and not opts.force:
        raise ValueError(f"demo output directory {out} already exists; pass --force to overwrite it or --out DIR")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    log.info("[1/5] synthetic data (%s size) in %s", s.data_size, out / "data")
    generate(out, s.data_size, ("modelnet40-h5", "scanobjectnn"), force=True, progress=opts.progress,
             workers=opts.workers, pb_t50_rs=False)
    pre, runs = _specs(out, s)
    log.info("[2/5] pretraining the point transformer on ModelNet40-layout objects")
    execute([pre], workers=1, threads=opts.workers, force=True, progress=opts.progress, desc="pretraining")
    cfg = runs["dr2net"].resolved()  # the finetuning config, read once: its variant here, the step harness below
    variant = str(cfg.dataset.variant)
    log.info("[3/5] finetuning on ScanObjectNN %s: conventional and dr2net side by side", variant)
    execute(list(runs.values()), workers=opts.workers, threads=1, force=True, progress=opts.progress,
            desc="finetuning")
    results = {m: read_run(spec, "oa") for m, spec in runs.items()}

    log.info("[4/5] activation memory and time of one training step")
    torch.set_num_threads(opts.workers)
    (a0, a1), (b0, b1) = ((float(v) for v in cfg.finetune.alpha), (float(v) for v in cfg.finetune.beta))
    cases = [("conventional", "conventional", (1.0, 0.0)), (f"dr2net start ({a0:g}, {b0:g})", "dr2net", (a0, b0)),
             (f"dr2net end ({a1:g}, {b1:g})", "dr2net", (a1, b1))]
    memory = {label: measure_step(cfg, out / "pretrain" / "encoder.pth", mode, co, s.time_steps)
              for label, mode, co in cases}

    log.info("[5/5] rendering test predictions of the dr2net model")
    rendered = render_predictions(cfg, runs["dr2net"].run_dir, out / "predictions.png", s.render, draw)

    conv, dr2 = results["conventional"], results["dr2net"]
    mem_conv = memory["conventional"]["activation_bytes"]
    worst = max((m for k, m in memory.items() if k.startswith("dr2net")), key=lambda m: m["activation_bytes"])
    ratio = worst["activation_bytes"] / mem_conv
    step_ratio = memory[cases[-1][0]]["step_seconds"] / memory["conventional"]["step_seconds"]
    delta = dr2.test["oa"] - conv.test["oa"]
    meaning = (f"Dr²Net reached {dr2.test['oa']:.1f}% test OA against conventional's {conv.test['oa']:.1f}% "
               f"({delta:+.1f} points on {dr2.test.get('count', '?')} test objects, one seed) while keeping at most "
               f"{100 * ratio:.1f}% of the activation memory, at {step_ratio:.2f}x the step time; "
               "`pointdr2 bench study` measures the difference over seeds with a confidence interval.")
    pre_run = read_run(pre, "oa")
    summary = {
        "pretrain": {"best_val_oa": max(pre_run.curve, default=float("nan")), "seconds": pre_run.seconds},
        "finetune": {m: {"test": r.test, "best_epoch": r.best_epoch, "train_seconds": r.seconds,
                         "curve": r.curve} for m, r in results.items()},
        "memory": memory, "activation_ratio_worst": ratio, "step_time_ratio_end": step_ratio,
        "rendered": rendered, "png": str(out / "predictions.png"), "meaning": meaning,
        "total_seconds": time.perf_counter() - t_start, "quick": bool(opts.quick), "variant": variant,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def summary_text(summary: dict[str, Any], out: Path) -> str:
    """The demo's result for people: accuracy, memory and time side by side, and what that means."""
    memory = summary["memory"]
    mem_conv = memory["conventional"]["activation_bytes"]
    t_conv = memory["conventional"]["step_seconds"]
    rows = [[m, f"{r['test']['oa']:.2f}", f"{r['test']['macc']:.2f}", str(r["test"].get("count", "")),
             f"{r['train_seconds']:.0f}"] for m, r in summary["finetune"].items()]
    mem_rows = [[k, f"{m['activation_bytes'] / 2**20:.2f}", f"{100 * m['activation_bytes'] / mem_conv:.1f}%",
                 "-" if m["cache_every"] is None else str(m["cache_every"]), f"{1000 * m['step_seconds']:.0f}",
                 f"{m['step_seconds'] / t_conv:.2f}"] for k, m in memory.items()]
    rendered = summary["rendered"]
    return "\n".join([
        f"\npointdr2 demo ({'quick' if summary['quick'] else 'full'}): pretraining val OA "
        f"{summary['pretrain']['best_val_oa']:.2f}%, finetuning on synthetic ScanObjectNN {summary['variant']}\n",
        _table(["finetuning", "test OA %", "test mAcc %", "test objects", "train s"], rows) + "\n",
        _table(["one training step", "activation MiB", "vs conventional", "k", "step ms", "vs conventional"],
               mem_rows) + "\n",
        summary["meaning"],
        f"\npredictions: {out / 'predictions.png'} ({rendered['correct']}/{rendered['rendered']} shown correct); "
        f"runs, logs and tensorboard events in {out}; total {summary['total_seconds']:.0f} s"])
