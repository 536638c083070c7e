"""Stage 4 of the study: memory and time of the study's own networks, memory sweeps, the gradient error.

- :func:`harness_rows`: one training step per mode of the finetuning config through the memory harness
  (``pointdr2.bench.memory``'s worker; a fresh subprocess per row, case ``pointdr2.bench.cases_study``):
  bytes saved for backward, peak RSS and step time side by side. dr2net is measured at the start and
  at the end of its schedule (auto mode: the guard's anchor spacing there).
- :func:`sweeps`: bytes saved for backward in one forward against transformer depth and PointNeXt points.
- :func:`grad_grid`: relative gradient error of the reversible backward against plain autograd over an
  (alpha, beta) grid on the pretrained transformer surrogate (float32), with what auto mode chose.

Run these on a quiet machine: the study runs them after every training run has finished.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pointdr2.bench import cases_study, memory
from pointdr2.bench.cases_study import sized_configs, study_batch
from pointdr2.bench.memory import model_for_mode
from pointdr2.engine.evaluator import default_room_predictor, evaluate
from pointdr2.engine.inference import load_for_eval
from pointdr2.engine.memory import SavedTensorMeter
from pointdr2.models import build_model, load_pretrained, to_dr2net
from pointdr2.progress import bar as progress_bar
from pointdr2.reversible import iter_stacks
from pointdr2.study.runs import RunSpec

MEMORY_MODES = ("conventional", "checkpoint", "dr2net")


def _case_spec(spec: RunSpec, encoder: Path | None, where: Path) -> Path:
    cfg = spec.resolved()
    case = {"model": {k: v for k, v in cfg.model.to_dict().items() if k != "pretrained"},
            "dataset": cfg.dataset.to_dict(), "finetune": cfg.finetune.to_dict(),
            "pretrained": str(encoder) if encoder is not None and encoder.is_file() else None, "seed": 0}
    where.write_text(json.dumps(case, indent=2) + "\n")
    return where


def harness_rows(spec: RunSpec, encoder: Path, cache: Path, steps: int, in_process: bool, threads: int | None,
                 force: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Saved bytes, peak and step time per mode for the finetuning config of ``spec`` (see the module)."""
    if cache.is_file() and not force:
        return json.loads(cache.read_text())
    cfg = spec.resolved()
    case_file = _case_spec(spec, encoder, cache.with_name("case.json"))
    (a0, a1), (b0, b1) = ((float(v) for v in cfg.finetune.alpha), (float(v) for v in cfg.finetune.beta))
    points_key = "crop_points" if "crop_points" in cfg.dataset else "num_points"
    base = {"model": "study", "batch": int(cfg.train.batch_size), "points": int(cfg.dataset[points_key]),
            "steps": int(steps), "device": "cpu", "threads": threads, "depth": None}
    rows_cfg = [{**base, "mode": "conventional", "alpha": 1.0, "beta": 0.0, "label": "conventional"},
                {**base, "mode": "checkpoint", "alpha": 1.0, "beta": 0.0, "label": "checkpoint"},
                {**base, "mode": "dr2net-auto", "alpha": a0, "beta": b0, "label": "dr2net@start"},
                {**base, "mode": "dr2net-auto", "alpha": a1, "beta": b1, "label": "dr2net@end"}]
    if in_process:
        # --quick: the harness' worker in this process (same measurement code, no torch start-up per row);
        # peak RSS is then not a fresh process's: a smoke test, not a measurement.
        memory.CASE_MODULES.setdefault("study", "pointdr2.bench.cases_study")

        def run_row(row):
            return memory.measure_row(row)
    else:
        def run_row(row):
            return cases_study.run_row(row, timeout=1800)
    old = os.environ.get(cases_study.ENV)
    os.environ[cases_study.ENV] = str(case_file)
    try:
        rows = []
        for row in progress_bar(rows_cfg, desc=f"{spec.meta.get('track', '')} memory", unit="mode", leave=False, enabled=progress):
            result = run_row(row)
            if "error" in result:
                raise RuntimeError(f"memory harness failed for {spec.key} {row['label']}: {result['error']}")
            rows.append(result)
    finally:
        if old is None:
            os.environ.pop(cases_study.ENV, None)
        else:
            os.environ[cases_study.ENV] = old
    cache.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def saved_bytes(case: Mapping, mode: str, depth: int | None, points: int | None, batch: int) -> int:
    """Bytes autograd saves for backward in one forward of the study model (``SavedTensorMeter``);
    ``dr2net`` is the reversible surrogate at alpha=0, beta=1 (the end of the schedule)."""
    model_cfg, dataset_cfg = sized_configs(case, depth, points)
    torch.manual_seed(0)
    net = build_model(model_cfg)
    module = model_for_mode(net, mode, 0.0, 1.0, "study", case.get("finetune")).train()
    data = study_batch(dataset_cfg, batch)
    inputs = (data["points"],) if "points" in data else (data["pos"], data["feats"])
    with SavedTensorMeter(net) as meter:
        logits = module(*inputs)
    del logits
    return int(meter.bytes)


def sweeps(specs: Mapping[str, RunSpec], depths: list[int], points: list[int], points_batch: int, cache: Path,
           force: bool = False, progress: bool = True) -> dict[str, Any]:
    """``{"depth": ...}`` for the transformer spec and ``{"points": ...}`` for the PointNeXt spec."""
    result = json.loads(cache.read_text()) if cache.is_file() and not force else {}
    if "transformer" in specs and "depth" not in result:
        cfg = specs["transformer"].resolved()
        case = {"model": cfg.model.to_dict(), "dataset": cfg.dataset.to_dict(), "finetune": cfg.finetune.to_dict()}
        series = {m: [saved_bytes(case, m, d, None, int(cfg.train.batch_size))
                      for d in progress_bar(depths, desc=f"depth sweep {m}", leave=False, enabled=progress)]
                  for m in MEMORY_MODES}
        result["depth"] = {"depths": list(depths), "bytes": series, "batch": int(cfg.train.batch_size),
                           "points": int(cfg.dataset.num_points)}
    if "pointnext" in specs and "points" not in result:
        cfg = specs["pointnext"].resolved()
        case = {"model": cfg.model.to_dict(), "dataset": cfg.dataset.to_dict(), "finetune": cfg.finetune.to_dict()}
        series = {m: [saved_bytes(case, m, None, n, points_batch)
                      for n in progress_bar(points, desc=f"points sweep {m}", leave=False, enabled=progress)]
                  for m in MEMORY_MODES}
        result["points"] = {"points": list(points), "bytes": series, "batch": int(points_batch),
                            "model": str(cfg.model.name)}
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _flat_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1).double() for p in model.parameters() if p.grad is not None])


def _surrogate_grads(model, surrogate, mode: str, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:

    for stack in iter_stacks(surrogate):
        stack.mode = mode
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(surrogate(points), labels).backward()
    return _flat_grads(model)


def grad_grid(spec: RunSpec, encoder: Path, alphas: list[float], betas: list[float], batch: int, cache: Path,
              force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Relative gradient error, reversible (whole stack) and auto against standard, float32, per (alpha, beta)."""
    if cache.is_file() and not force:
        return json.loads(cache.read_text())
    cfg = spec.resolved()
    ft = cfg.finetune
    torch.manual_seed(0)
    model = build_model({k: v for k, v in cfg.model.to_dict().items() if k != "pretrained"})
    load_pretrained(model, encoder)
    model.eval()  # drop-path and dropout off: every mode computes the same function
    data = study_batch(cfg.dataset.to_dict(), batch, split="test")
    points, labels = data["points"], data["label"]
    kw = {"output": str(ft.output), "residual": str(ft.residual), "gain": str(ft.gain)}
    rev_err, auto_err, auto_k, auto_mode = [], [], [], []
    for a in progress_bar(alphas, desc="gradient error grid", leave=False, enabled=progress):
        rows: tuple[list, list, list, list] = ([], [], [], [])
        for b in betas:
            sur = to_dr2net(model, a, b, mode="standard", **kw)
            ref = _surrogate_grads(model, sur, "standard", points, labels)
            rev = _surrogate_grads(model, sur, "reversible", points, labels) if b > 0 else ref * float("nan")
            auto_sur = to_dr2net(model, a, b, mode="auto", tolerance=float(ft.tolerance), **kw)  # a fresh guard
            auto = _surrogate_grads(model, auto_sur, "auto", points, labels)
            first = next(iter(iter_stacks(auto_sur)))
            norm = float(torch.linalg.vector_norm(ref))
            rows[0].append(float(torch.linalg.vector_norm(rev - ref)) / norm)
            rows[1].append(float(torch.linalg.vector_norm(auto - ref)) / norm)
            rows[2].append(first.last_cache_every)
            rows[3].append(first.last_mode)
        for target, row in zip((rev_err, auto_err, auto_k, auto_mode), rows):
            target.append(row)
    units = sum(len(st.blocks) for st in iter_stacks(to_dr2net(model, 1.0, 0.1, mode="standard", **kw)))
    result = {"alphas": list(alphas), "betas": list(betas), "reversible_rel_error": rev_err,
              "auto_rel_error": auto_err, "auto_cache_every": auto_k, "auto_mode": auto_mode, "dtype": "float32",
              "batch": int(batch), "units": units, "residual": kw["residual"], "output": kw["output"],
              "gain": kw["gain"],
              "tolerance": float(ft.tolerance)}
    cache.write_text(json.dumps(result, indent=2, allow_nan=True) + "\n")
    return result


def preservation(pre: RunSpec, variants: Mapping[str, Mapping[str, Any]], points: int, cache: Path,
                 force: bool = False, progress: bool = True) -> dict[str, Any]:
    """How much of the pretrained function a surrogate keeps before any finetuning.

    The pretrained model with its own head, evaluated on its pretraining task's validation split through the
    surrogate of each variant (``{"alpha": [a0, a1], "beta": [b0, b1], "output", "residual"}``) at ``points``
    evenly spaced points of the coefficient schedule (standard mode: no backward). The study's variants are
    the finetuning config's recipe and the reference implementation's.
    """
    if cache.is_file() and not force:
        return json.loads(cache.read_text())
    cfg = pre.resolved()
    dataset, model, _, _, device = load_for_eval(cfg, pre.run_dir / "best.pth", "val")
    crop = cfg.dataset.get("crop_points")
    predictor = default_room_predictor(int(crop) if crop else None)
    metric = "miou" if getattr(dataset, "whole_room", False) else "oa"

    def score(net) -> float:
        return float(evaluate(net, dataset, device=device, batch_size=int(cfg.eval.batch_size), progress=False,
                              room_predictor=predictor)[metric])

    result: dict[str, Any] = {"metric": metric, "split": "val", "pretrained": score(model), "variants": {}}
    ts = [i / (points - 1) for i in range(points)] if points > 1 else [0.0]
    for name, v in variants.items():
        (a0, a1), (b0, b1) = v["alpha"], v["beta"]
        rows = []
        for t in progress_bar(ts, desc=f"preservation {name}", leave=False, enabled=progress):
            alpha, beta = a0 + (a1 - a0) * t, b0 + (b1 - b0) * t
            net = to_dr2net(model, alpha, beta, mode="standard", output=v["output"], residual=v["residual"],
                            gain=v.get("gain", "plain")).eval()
            rows.append({"t": t, "alpha": alpha, "beta": beta, metric: score(net)})
        result["variants"][name] = {**{k: v[k] for k in ("alpha", "beta", "output", "residual")},
                                    "gain": v.get("gain", "plain"), "points": rows}
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return result
