"""``pointdr2 bench memory``: activation memory and step time of conventional, checkpoint and Dr2Net training.

Case interface (model families plug in here)
--------------------------------------------
A case module ``pointdr2/bench/cases_<family>.py`` exposes::

    build_case(model: str, mode: str, depth: int | None, batch: int, points: int,
               alpha: float, beta: float, device: torch.device) -> (module, inputs: tuple, loss_fn)

- ``model``: the ``--model`` value the case was chosen for (``"pointmae"``, ``"pointnext-b"``, ...).
- ``mode``: what the row measures:
  ``"conventional"``: the model as is (``finetune.mode=conventional``);
  ``"checkpoint"``: what ``finetune.mode=checkpoint`` runs, ``to_dr2net(model, 1.0, 0.0, mode="checkpoint")``
  (the stack case checkpoints at the given alpha/beta);
  ``"dr2net"``: ``to_dr2net(model, alpha, beta, mode="reversible")`` (fully reversible);
  ``"dr2net-auto"``: ``to_dr2net(model, alpha, beta, mode="auto")`` (anchor spacing chosen by the guard).
  A case raises ValueError for a mode it cannot build.
- ``depth``: number of residual blocks to build (ViT blocks for transformers, InvResMLP blocks per
  stage scale for PointNeXt as the case documents); ``None`` means the model's published depth.
- ``batch``, ``points``: batch size and points per sample (tokens for the ``stack`` case).
- ``alpha``, ``beta``: Dr2Net coefficients (ignored by ``conventional``).
- ``device``: where module and inputs must live.

It returns the module in train mode on ``device``, a tuple of input tensors on ``device`` and
``loss_fn`` such that ``loss_fn(module(*inputs))`` is a scalar loss. The harness owns the rest: it
creates AdamW over the parameters that require grad, runs one warm-up step (so gradients and optimizer
state exist), then measures. Cases must not print; they may log.

Measurement (each configuration in a fresh subprocess started with ``MALLOC_MMAP_THRESHOLD_=65536``, so
that glibc returns every freed block of 64 KiB or more to the OS and RSS follows live memory):

- saved: bytes of tensors saved for backward during one forward after the warm-up step
  (``saved_tensors_hooks``; each storage counted once; parameter and buffer storages excluded, they are
  not activations);
- peak: on CPU, peak RSS of one training step (forward+backward+optimizer step) above the RSS before it
  (``/proc/self/clear_refs`` resets the high-water mark); on CUDA, ``max_memory_allocated`` above
  ``memory_allocated`` before the step;
- peak at: the operation running when the peak was reached (``_PeakByOperation``: the innermost
  module's forward, recomputation or backward, the loss backward or the optimizer step), printed below
  the table;
- step: median wall time of ``--steps`` training steps, measured last, after the worker has put glibc
  back to caching freed blocks (``mallopt``) and run one untimed step. Under the 64 KiB threshold every
  large allocation costs a page-fault round trip, which would charge the recomputing modes (they
  allocate per chunk) up to 2x on CPU; ordinary programs do not run that way.

``k`` in the table is the anchor spacing of the forward whose saved bytes are shown (auto mode).
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pointdr2.config import DEFAULTS
from pointdr2.engine.memory import PeakByOperation as _PeakByOperation
from pointdr2.engine.memory import PeakRSS as _PeakRSS
from pointdr2.engine.memory import backward_and_step as _backward_and_step
from pointdr2.engine.memory import cache_freed_blocks as _cache_freed_blocks
from pointdr2.engine.memory import proc_status_kb as _proc_status_kb
from pointdr2.engine.network import bench_finetune, build_network
from pointdr2.progress import bar as progress_bar

log = logging.getLogger(__name__)

# --model -> case module (lazy import by string: the transformer/PointNeXt cases come from other modules)
CASE_MODULES = {
    "stack": "pointdr2.bench.cases_stack",
    "pointmae": "pointdr2.bench.cases_transformer",
    "pointbert": "pointdr2.bench.cases_transformer",
    "pointmae-partseg": "pointdr2.bench.cases_transformer",
    "pointbert-partseg": "pointdr2.bench.cases_transformer",
    "pointnext-b": "pointdr2.bench.cases_pointnext",
    "pointnext-l": "pointdr2.bench.cases_pointnext",
    "pointnext-xl": "pointdr2.bench.cases_pointnext",
    "pointnext-s-partseg": "pointdr2.bench.cases_pointnext",
    # any pointdr2 config (``bench plan`` measures with it; its settings travel in the row's ``case_args``)
    "config": "pointdr2.bench.cases_config",
}
MODES = ("conventional", "checkpoint", "dr2net", "dr2net-auto")
MEASURES = ("saved", "peak", "time")
def model_for_mode(net, mode: str, alpha: float, beta: float, case: str, finetune=None):
    """The module a model case measures in ``mode`` (see the case interface above).

    Built by the one mapping of :mod:`pointdr2.engine.network` (``build_network`` of the row's finetune
    settings, :data:`~pointdr2.engine.network.BENCH_MODES`) on top of the config's ``finetune`` defaults
    updated with ``finetune`` (e.g. a study config's output and residual unit), so a benchmark measures
    exactly the network ``pointdr2 train`` trains.
    """
    if mode not in MODES:
        raise ValueError(f"{case}: unknown mode {mode!r}; expected {', '.join(MODES)}")
    ft = bench_finetune(mode, {**DEFAULTS["finetune"], **dict(finetune or {}), "recompute_stem": True})
    return build_network(net, ft, alpha, beta, train=True)


# points of the default schedule (CoefficientSchedule() at epochs 0, 10, 20)
SCHEDULE_POINTS = {"start": (1.0, 0.1), "middle": (0.5, 0.55), "end": (0.0, 1.0)}


@dataclass(frozen=True)
class Options:
    """What ``pointdr2 bench memory`` (and ``bench speed``) measures (its command-line options)."""

    model: str = "stack"  # case to measure (a key of CASE_MODULES other than "config")
    modes: str = "conventional,checkpoint,dr2net"  # comma list of MODES
    depths: str | None = None  # comma list of depths (stack default 6,12,24; models: their own)
    batch: int = 32
    points: int | None = None  # points per sample (stack: tokens, default 65)
    alpha: float = 0.0  # alpha of the dr2net/checkpoint rows
    beta: float = 1.0  # beta of the dr2net/checkpoint rows
    auto: str = "start,middle,end"  # schedule points of the dr2net-auto rows at auto_depth; "none" to skip
    auto_depth: int | None = None  # depth of the auto rows (stack default 12)
    steps: int = 5  # timed steps per configuration (median reported)
    measure: str = "saved,peak,time"  # comma list of MEASURES
    device: str = "auto"  # cpu | cuda | auto
    threads: int | None = None  # torch intra-op threads in each worker
    quick: bool = False  # CI smoke run: tiny sizes, 2 steps
    timeout: float = 1800  # seconds per configuration


def _csv(value: str, name: str, cast=str) -> list:
    try:
        items = [cast(v.strip()) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be a comma-separated list, got {value!r}") from None
    if not items:
        raise ValueError(f"--{name} is empty")
    return items


def row_configs(args: Options) -> list[dict[str, Any]]:
    """One worker configuration per row :func:`measure` runs; ValueError for options it would refuse."""
    if args.model not in CASE_MODULES or args.model == "config":
        raise ValueError(f"--model: unknown case {args.model!r}; expected one of "
                         f"{', '.join(sorted(set(CASE_MODULES) - {'config'}))}")
    modes = _csv(args.modes, "modes")
    for m in modes:
        if m not in MODES:
            raise ValueError(f"--modes: unknown mode {m!r}; expected some of {', '.join(MODES)}")
    is_stack = args.model == "stack"
    if args.quick:
        depths = [2] if is_stack else [None]
        batch, steps, auto_depth = 4, 2, (2 if is_stack else None)
        points = args.points or (65 if is_stack else 256)
        auto = ["start"]
    else:
        depths = _csv(args.depths, "depths", int) if args.depths else ([6, 12, 24] if is_stack else [None])
        batch, steps = args.batch, args.steps
        auto_depth = args.auto_depth if args.auto_depth is not None else (12 if is_stack else None)
        points = args.points or (65 if is_stack else 1024)
        auto = [] if args.auto.strip().lower() == "none" else _csv(args.auto, "auto")
    for a in auto:
        if a not in SCHEDULE_POINTS:
            raise ValueError(f"--auto: unknown schedule point {a!r}; expected some of {', '.join(SCHEDULE_POINTS)}")
    measure = _csv(args.measure, "measure")
    unknown = sorted(set(measure) - set(MEASURES))
    if unknown:
        raise ValueError(f"--measure: unknown {', '.join(unknown)}; expected some of {', '.join(MEASURES)}")
    if batch < 1 or points < 1 or steps < 1:
        raise ValueError(f"--batch, --points and --steps must be >= 1, got {batch}, {points}, {steps}")
    if any(d is not None and d < 1 for d in depths):
        raise ValueError(f"--depths must be >= 1, got {depths}")
    base = {"model": args.model, "batch": batch, "points": points, "steps": steps, "device": args.device,
            "threads": args.threads, "measure": measure}
    rows = []
    for d in depths:
        for m in modes:
            rows.append({**base, "mode": m, "depth": d, "alpha": args.alpha, "beta": args.beta, "label": m})
    for a in auto:
        alpha, beta = SCHEDULE_POINTS[a]
        rows.append({**base, "mode": "dr2net-auto", "depth": auto_depth, "alpha": alpha, "beta": beta,
                     "label": f"auto@{a}"})
    return rows


# --------------------------------------------------------------------------- worker (fresh process)
# The meters (peak RSS / peak per operation, glibc's caching) live in pointdr2.engine.memory: ``pointdr2 plan``
# and the trainer's memory budget measure with the same ones.


def measure_row(cfg: dict[str, Any]) -> dict[str, Any]:
    """One harness row in this process (warm-up, timed steps, bytes saved for backward, peak memory)."""
    import torch

    from pointdr2.reversible import iter_stacks

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    dev = cfg["device"]
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    case = importlib.import_module(CASE_MODULES[cfg["model"]])
    module, inputs, loss_fn = case.build_case(
        cfg["model"], cfg["mode"], cfg["depth"], cfg["batch"], cfg["points"], cfg["alpha"], cfg["beta"], device,
        **(cfg.get("case_args") or {}),  # a case's own settings (the "config" case: config file and finetune keys)
    )
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def step(tracker: _PeakByOperation | None = None) -> float:
        opt.zero_grad(set_to_none=False)  # keep grads allocated: they belong to the baseline
        loss = loss_fn(module(*inputs))
        _backward_and_step(loss, opt, tracker)
        return float(loss.detach())

    measure = set(cfg.get("measure") or MEASURES)
    if measure != {"saved"} or cfg["mode"] == "dr2net-auto":
        step()  # warm-up: grads and optimizer state now exist (and auto mode's guard has measured once)
        sync()
    stacks = list(iter_stacks(module))

    # 1) bytes saved for backward during one forward
    excluded = {t.untyped_storage().data_ptr() for t in list(module.parameters()) + list(module.buffers())}
    seen: dict[tuple[str, int], int] = {}

    def pack(t):
        try:
            s = t.untyped_storage()
            if s.data_ptr() not in excluded:
                seen[(str(t.device), s.data_ptr())] = s.nbytes()
        except (RuntimeError, NotImplementedError):  # tensor subclasses without a plain storage
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(module(*inputs))
    # what this forward ran (auto mode may change its spacing after each backward)
    first = stacks[0] if stacks else None
    ran = (getattr(first, "last_cache_every", None), getattr(first, "last_mode", None))
    if measure != {"saved"}:
        loss.backward()
        opt.zero_grad(set_to_none=False)
    del loss
    saved = sum(seen.values())
    rec_error = getattr(first, "last_reconstruction_error", None)
    gc.collect()
    sync()

    # 2) peak memory of one step above the baseline before it, and the operation that set it
    peak = peak_at = None
    if "peak" not in measure:
        pass
    elif cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        tracker = _PeakByOperation(module, device)
        step(tracker)
        sync()
        tracker.close()
        peak, peak_at = tracker.peak - base, tracker.peak_at
    else:
        base_kb = _proc_status_kb("VmRSS") or 0
        tracker = _PeakByOperation(module, device)
        if tracker.ok:
            step(tracker)
            tracker.close()
            peak, peak_at = max(0, tracker.peak - base_kb * 1024), tracker.peak_at
        else:
            with _PeakRSS() as meter:
                step()
            peak = max(0, meter.peak_kb - base_kb) * 1024

    # 3) step time with the allocator caching freed blocks again (one untimed step fills its cache)
    if not cuda and "time" in measure:
        _cache_freed_blocks()
        step()
    times = []
    for _ in range(cfg["steps"] if "time" in measure else 0):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)

    return {
        **cfg,
        "device": str(device),
        "saved_bytes": saved,
        "peak_bytes": peak,
        "peak_at": peak_at,
        "step_s": statistics.median(times) if times else None,
        "cache_every": ran[0],
        "ran": ran[1],
        "rec_error": rec_error,
        "sub_blocks": sum(len(s.blocks) for s in stacks),
        # the depth the case built (--depths unset: the published one, e.g. 12 or 1-3-5-3-3)
        "depth_label": str(getattr(module, "depth_label", None) or cfg["depth"]),
    }


# --------------------------------------------------------------------------- parent
def run_row(cfg: dict[str, Any], timeout: float, cases: dict[str, str] | None = None) -> dict[str, Any]:
    """One configuration in a fresh ``python -m pointdr2.commands.worker`` process (:func:`measure_row` there),
    with ``cases`` ({name: module}) registered as harness cases first; its result, or ``{..., "error": why}``."""
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "pointdr2.commands.worker"]
    for name, module in (cases or {}).items():
        cmd += ["--case", f"{name}={module}"]
    cmd += ["--worker", json.dumps(cfg)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {**cfg, "error": f"timed out after {timeout:g} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**cfg, "error": tail}
    return json.loads(lines[-1])


def _fmt(value: float | None, scale: float, spec: str) -> str:
    return "-" if value is None else format(value * scale, spec)


def _fmt_ratio(num: float | None, den: float | None) -> str:
    if num is None or not den:
        return "-"
    return f"{num / den:.3f}"


def _depth(row: dict[str, Any]) -> str:
    label = row.get("depth_label") or row.get("depth")
    return "-" if label is None else str(label)


def _coefficient(row: dict[str, Any], key: str) -> str:
    """alpha/beta of a Dr2Net row; '-' for conventional and checkpoint, which run the plain network."""
    if row.get("mode") in ("conventional", "checkpoint") or row.get(key) is None:
        return "-"
    return f"{float(row[key]):.2f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows with ratios against the conventional and checkpoint rows of the same depth."""
    ref: dict[tuple[Any, str], dict[str, Any]] = {}
    for r in rows:
        if "error" not in r and r["label"] in ("conventional", "checkpoint"):
            ref[(r["depth"], r["label"])] = r
    width = max([5] + [len(_depth(r)) for r in rows])
    head = (f"{'mode':<13} {'depth':>{width}} {'alpha':>5} {'beta':>5} {'k':>3} {'saved MiB':>10} {'/conv':>6} "
            f"{'/ckpt':>6} {'peak MiB':>9} {'/conv':>6} {'/ckpt':>6} {'step ms':>8} {'/conv':>6} {'/ckpt':>6} "
            f"{'rec.err':>8}")
    out = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            out.append(f"{r['label']:<13} {_depth(r):>{width}} error: {r['error']}")
            continue
        conv, ckpt = ref.get((r["depth"], "conventional"), {}), ref.get((r["depth"], "checkpoint"), {})
        err = r.get("rec_error")
        out.append(
            f"{r['label']:<13} {_depth(r):>{width}} {_coefficient(r, 'alpha'):>5} {_coefficient(r, 'beta'):>5} "
            f"{str(r.get('cache_every') or '-'):>3} {r['saved_bytes'] / 2**20:>10.2f} "
            f"{_fmt_ratio(r['saved_bytes'], conv.get('saved_bytes')):>6} "
            f"{_fmt_ratio(r['saved_bytes'], ckpt.get('saved_bytes')):>6} {_fmt(r['peak_bytes'], 2**-20, '.1f'):>9} "
            f"{_fmt_ratio(r['peak_bytes'], conv.get('peak_bytes')):>6} "
            f"{_fmt_ratio(r['peak_bytes'], ckpt.get('peak_bytes')):>6} {_fmt(r['step_s'], 1e3, '.1f'):>8} "
            f"{_fmt_ratio(r['step_s'], conv.get('step_s')):>6} {_fmt_ratio(r['step_s'], ckpt.get('step_s')):>6} "
            f"{'-' if err is None else f'{err:.1e}':>8}"
        )
    return "\n".join(out)


def measure(args: Options, progress: bool = True) -> list[dict[str, Any]]:
    """Every row of :func:`row_configs`, each in a fresh worker process; a failed row holds ``"error"``."""
    rows = row_configs(args)
    results = []
    for cfg in progress_bar(rows, desc="bench memory", unit="config", enabled=progress):
        res = run_row(cfg, args.timeout)
        if "error" in res:
            log.warning("%s depth %s failed: %s", cfg["label"], _depth(cfg), res["error"])
        results.append(res)
    return results


def format_report(results: list[dict[str, Any]], args: Options) -> str:
    """The table of :func:`measure`'s rows, what was measured above it and where each peak was set below it."""
    rows = row_configs(args)
    first = next((r for r in results if "error" not in r), None)
    device = first["device"] if first else args.device
    peak_kind = "CUDA max_memory_allocated" if device.startswith("cuda") else "peak RSS"
    lines = [f"bench memory: model={args.model} batch={rows[0]['batch']} points={rows[0]['points']} "
             f"device={device} (peak = {peak_kind} above the post-warm-up baseline)", format_table(results)]
    lines += [f"peak of {r['label']} (depth {_depth(r)}): {r['peak_at']}" for r in results if r.get("peak_at")]
    return "\n".join(lines)
