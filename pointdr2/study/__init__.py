"""The evidence study: does Dr²Net finetuning reach conventional finetuning's accuracy, at what memory?

An experiment pipeline in stages, one module each:

1. :mod:`~pointdr2.study.data` - synthetic data in the official layouts (ModelNet40 h5, ScanObjectNN
   OBJ_BG, raw S3DIS converted by ``prepare s3dis``).
2. :mod:`~pointdr2.study.plan` / :mod:`~pointdr2.study.runs` - per track, a pretraining, then finetuning
   in every mode (conventional, checkpoint, dr2net, dr2net-exact) x seeds, a from-scratch control and
   the recipe ablation; each run a real ``pointdr2 train`` process on the shipped ``configs/study``.
3. :mod:`~pointdr2.study.analysis` / :mod:`~pointdr2.study.stats` - means, paired bootstrap intervals
   over seeds and test items, the decision rule, what the precision guard chose per stack.
4. :mod:`~pointdr2.study.measure` - memory and step time per mode (memory harness), memory sweeps,
   the gradient-error grid, on a quiet machine after the runs.
5. :mod:`~pointdr2.study.plots` and :mod:`~pointdr2.study.report` - PNGs, ``results.md``, ``study.json``.

``run_study(StudyOptions(...))`` runs them all; finished pieces are reused (``force`` redoes them).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pointdr2.study import analysis, data, measure, plan, plots, report
from pointdr2.study.runs import execute, read_run
from pointdr2.study.settings import MARGIN, MODES, TRACKS, Settings, full_settings, quick_settings

__all__ = ["StudyOptions", "run_study", "Ledger"]

log = logging.getLogger(__name__)


class Ledger:
    """``invocations.json``: the wall time of every invocation of a study continued over several.

    The entry of the running invocation is rewritten (atomically) at every :meth:`tick`, after each stage
    and each finished run, so an invocation that is killed still counts up to its last tick.
    """

    def __init__(self, path: Path, command: str, fresh: bool) -> None:
        self.path = Path(path)
        self.calls: list[dict[str, Any]] = [] if fresh or not self.path.is_file() \
            else json.loads(self.path.read_text())
        self._t0 = time.perf_counter()
        self.entry: dict[str, Any] = {"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                      "seconds": 0.0, "last": "started", "finished": None}
        self.calls.append(self.entry)
        self.tick("started")

    def tick(self, what: str, finished: bool = False) -> None:
        self.entry["seconds"] = time.perf_counter() - self._t0
        self.entry["last"] = what
        if finished:
            self.entry["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.calls, indent=2) + "\n")
        os.replace(tmp, self.path)

    @property
    def total_seconds(self) -> float:
        return float(sum(c["seconds"] for c in self.calls))


@dataclass
class StudyOptions:
    out: Path = Path("runs/study")
    quick: bool = False
    seeds: int | None = None
    ablation_seeds: int | None = None
    workers: int = 2
    threads: int = 1
    force: bool = False
    docs: Path | None = None
    only: str | None = None
    progress: bool = True
    command: str = "pointdr2 bench study"

    def check(self) -> None:
        for name in ("seeds", "ablation_seeds"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        for name in ("workers", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.only is not None and self.only not in TRACKS:
            raise ValueError(f"--only must be one of {', '.join(TRACKS)}, got {self.only!r}")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise ValueError(f"--out {self.out} exists and is not a directory")


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def _settings(opts: StudyOptions) -> Settings:
    s = quick_settings() if opts.quick else full_settings()
    if opts.seeds is not None:
        s.seeds = int(opts.seeds)
    if opts.ablation_seeds is not None:
        s.ablation_seeds = int(opts.ablation_seeds)
    s.workers = int(opts.workers)
    return s


def run_study(opts: StudyOptions) -> dict[str, Any]:
    """Run (or continue) the study in ``opts.out``; returns ``study.json``'s content."""
    opts.check()
    s = _settings(opts)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out / "invocations.json", opts.command, fresh=bool(opts.force))
    tracks = [opts.only] if opts.only else list(TRACKS)
    layouts = tuple(dict.fromkeys(lay for t in tracks for lay in TRACKS[t].layouts))

    log.info("[1/4] synthetic data (%s size) in %s", s.data_size, out / "data")
    data_info = data.generate(out, s.data_size, layouts, opts.force, progress=opts.progress)
    ledger.tick("data")

    pre = {t: plan.pretrain_spec(out, t, s) for t in tracks}
    finetune = {t: plan.finetune_specs(out, t, s) for t in tracks}
    scratch = {t: plan.scratch_spec(out, t, s) for t in tracks} if s.scratch_control else {}
    epochs = {t: int(finetune[t][0].resolved().train.epochs) for t in tracks}
    ablation = {"transformer": plan.ablation_specs(out, "transformer", s, epochs["transformer"])} \
        if "transformer" in tracks and s.ablation_variants else {}
    # the ablation's "recipe" variant is the main dr2net-exact runs where those exist
    for t, variants in ablation.items():
        exact = {sp.meta["seed"]: sp for sp in finetune[t] if sp.meta["mode"] == "dr2net-exact"}
        if "recipe" in variants:
            variants["recipe"] = [exact.get(sp.meta["seed"], sp) for sp in variants["recipe"]]
    jobs = [*pre.values(), *(sp for t in tracks for sp in finetune[t]), *scratch.values()]
    jobs += [sp for v in ablation.values() for specs in v.values() for sp in specs if sp not in jobs]
    log.info("[2/4] pretraining, then finetuning: %d runs (%s x %d modes x %d seeds%s%s), %d at a time", len(jobs),
             ", ".join(tracks), len(MODES), s.seeds, ", scratch controls" if scratch else "",
             ", recipe ablation" if ablation else "", s.workers)
    execute(jobs, workers=s.workers, threads=opts.threads, force=opts.force, progress=opts.progress, desc="runs",
            on_done=lambda spec: ledger.tick(f"run {spec.key}"))
    ledger.tick("runs")

    study: dict[str, Any] = {"command": opts.command, "quick": bool(opts.quick), "seeds": s.seeds,
                             "workers": s.workers, "threads": opts.threads, "bootstrap": s.bootstrap,
                             "decision_rule": analysis.decision_rule(), "margin": MARGIN, "data": data_info,
                             "tracks": {}}
    for t in tracks:
        track = TRACKS[t]
        by_mode = {mode: [sp for sp in finetune[t] if sp.meta["mode"] == mode] for mode in MODES}
        results = {mode: [read_run(sp, track.metric) for sp in specs] for mode, specs in by_mode.items()}
        if t in scratch:
            results["scratch"] = [read_run(scratch[t], track.metric)]
        pre_run = read_run(pre[t], track.metric)
        entry: dict[str, Any] = {
            "name": t, "pretrain_config": pre[t].resolved().to_dict(),
            "finetune_config": finetune[t][0].resolved().to_dict(),
            "pretrain": {"best_val": max(pre_run.curve, default=math.nan), "metric": track.metric,
                         "seconds": pre_run.seconds, "curve": pre_run.curve},
            "modes": analysis.mode_table(results, track.metric),
            "comparisons": analysis.comparisons(by_mode, t, s.bootstrap),
            "guard": analysis.guard_report(results["dr2net"]),
            "reduced_modes": analysis.reduced_modes(by_mode),
            "runs": {mode: [r.as_dict() for r in rs] for mode, rs in results.items()},
        }
        entry["test_items"] = entry["comparisons"][0]["items"] if entry["comparisons"] else None
        if t in ablation:
            ab_results = {name: [read_run(sp, track.metric) for sp in specs] for name, specs in ablation[t].items()}
            entry["ablation"] = {"seeds": s.ablation_seeds, "variants": analysis.ablation_table(ab_results,
                                                                                             track.metric)}
        study["tracks"][t] = entry

    log.info("[3/4] memory and time per mode, memory sweeps, gradient error grid")
    ft_spec = {t: next(sp for sp in finetune[t] if sp.meta["mode"] == "dr2net") for t in tracks}
    for t in tracks:
        study["tracks"][t]["memory"] = measure.harness_rows(
            ft_spec[t], out / t / "pretrain" / "encoder.pth", out / t / "memory.json", s.harness_steps,
            s.harness_in_process, opts.threads * s.workers, opts.force, opts.progress)
    study["sweeps"] = measure.sweeps(ft_spec, s.depths, s.points, s.points_batch, out / "sweeps.json", opts.force,
                                     opts.progress)
    for t in tracks:
        ft_cfg = ft_spec[t].resolved().finetune
        recipe = {"alpha": list(ft_cfg.alpha), "beta": list(ft_cfg.beta), "output": str(ft_cfg.output),
                  "residual": str(ft_cfg.residual), "gain": str(ft_cfg.gain)}
        # the recipe, each of its two choices undone (the end alpha 0, beta 1; the other gain), the reference's
        variants = {"recipe": recipe}
        if (recipe["alpha"][1], recipe["beta"][1]) != (0.0, 1.0):
            variants["end 0/1"] = {**recipe, "alpha": [recipe["alpha"][0], 0.0], "beta": [recipe["beta"][0], 1.0]}
        other = "plain" if recipe["gain"] == "balanced" else "balanced"
        if recipe["residual"] == "block":
            variants[f"gain {other}"] = {**recipe, "gain": other}
        variants["reference"] = {"alpha": [1.0, 0.0], "beta": [0.1, 1.0], "output": "last", "residual": "branch",
                                 "gain": "plain"}
        study["tracks"][t]["preservation"] = measure.preservation(pre[t], variants, s.preservation_points,
                                                                  out / t / "preservation.json", opts.force,
                                                                  opts.progress)
    if "transformer" in tracks:
        study["grad_grid"] = measure.grad_grid(ft_spec["transformer"], out / "transformer" / "pretrain" / "encoder.pth",
                                               s.grid_alphas, s.grid_betas, s.grid_batch, out / "grad_grid.json",
                                               opts.force, opts.progress)
    ledger.tick("measurements", finished=True)
    study["wall_seconds"] = ledger.entry["seconds"]
    study["invocations"] = ledger.calls
    study["wall_seconds_total"] = ledger.total_seconds
    study["machine"] = machine_info()

    log.info("[4/4] plots and results.md")
    pngs = write_plots(study, out)
    study["plots"] = {k: Path(v).name for k, v in pngs.items()}
    (out / "study.json").write_text(json.dumps(study, indent=2, default=float) + "\n")
    md = report.results_markdown(study, pngs)
    (out / "results.md").write_text(md + "\n", encoding="utf-8")
    if opts.docs:
        docs = Path(opts.docs)
        docs.mkdir(parents=True, exist_ok=True)
        (docs / "results.md").write_text(md + "\n", encoding="utf-8")
        for p in pngs.values():
            shutil.copy2(p, docs / Path(p).name)
    return study


def write_plots(study: dict[str, Any], where: Path) -> dict[str, str]:
    pngs: dict[str, str] = {}
    guard_series = {}
    for name, t in study["tracks"].items():
        metric = TRACKS[name].metric
        curves = {mode: [r["curve"] for r in runs] for mode, runs in t["runs"].items()}
        pngs[f"curves_{name}"] = str(plots.plot_curves(where / f"curves_{name}.png", curves, f"validation {metric} %",
                                                       f"{name}: finetuning, mean ± std over seeds"))
        rows = [{"label": f"{c['a']} − {c['b']}", **c} for c in t["comparisons"]]
        if rows:
            pngs[f"intervals_{name}"] = str(plots.plot_intervals(
                where / f"intervals_{name}.png", rows, study["margin"],
                f"{name}: paired differences of test {metric} ({rows[0]['seeds']} seeds, {rows[0]['items']} items)"))
        if t.get("guard"):
            guard_series[name] = {k: {**g["series"], "depth": g["depth"]} for k, g in t["guard"].items()}
    pres = {name: t["preservation"] for name, t in study["tracks"].items() if t.get("preservation")}
    if pres:
        pngs["preservation"] = str(plots.plot_preservation(where / "preservation.png", pres))
    if guard_series:
        pngs["guard"] = str(plots.plot_guard(where / "guard.png", guard_series))
    sw = study.get("sweeps", {})
    if "depth" in sw:
        d = sw["depth"]
        pngs["memory_depth"] = str(plots.plot_memory_sweep(where / "memory_depth.png", d["depths"], d["bytes"],
                                                           "transformer depth (blocks)",
                                                           f"transformer: batch {d['batch']}, {d['points']} points"))
    if "points" in sw:
        p = sw["points"]
        pngs["memory_points"] = str(plots.plot_memory_sweep(where / "memory_points.png", p["points"], p["bytes"],
                                                            "points per sample", f"{p['model']}: batch {p['batch']}"))
    g = study.get("grad_grid")
    if g:
        labels = [[("ckpt" if m == "checkpoint" else f"auto k={k}") for k, m in zip(kr, mr)]
                  for kr, mr in zip(g["auto_cache_every"], g["auto_mode"])]
        pngs["grad_error"] = str(plots.plot_grad_grid(
            where / "grad_error.png", g["alphas"], g["betas"], g["reversible_rel_error"], labels,
            f"reversible vs autograd gradient, float32, {g['units']} units (cell: error; auto's choice)"))
    return pngs
