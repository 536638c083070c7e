"""Memory plan: what one training step of each finetuning mode needs, measured, at any batch size.

``measure_plan(cfg)`` builds the network ``pointdr2 train`` would train in each mode (``build_network``, the
trainer's own mapping), runs training steps of it at two small batch sizes on the target device and
measures, per mode:

- ``static``: bytes of the parameters, their gradients and the optimizer state (AdamW: two moments and a
  step counter per tensor), read from the tensors after a real optimizer step;
- ``saved``: bytes autograd keeps for the backward pass during the forward (:class:`SavedTensorMeter`,
  the trainer's meter: each storage once, parameters and buffers excluded);
- ``transient``: the step's peak above the memory before it, less ``saved``: what one block's
  recomputation, the tokenizer or a set-abstraction chunk, a block's backward or the optimizer step
  allocates on top (CPU: RSS high-water mark with every freed block of 64 KiB or more returned to the
  OS, as ``bench memory`` measures; CUDA: ``torch.cuda.max_memory_allocated``). ``peak_at`` names the
  operation that set the peak.

In the recomputing modes (checkpoint, Dr2Net) the step's peak is the largest of its segments (a module's
forward, recomputation or backward: :class:`~pointdr2.engine.memory.PeakByOperation`), and each segment is
fitted on its own (:class:`Segment`): which segment peaks moves with the size (a first-stage recomputation at
small crops, the head's backward at large ones), so one fit of the whole step's transient cannot follow it.
Models that group in chunks sized to the ops memory budget (PointNeXt's set abstractions and local
aggregations) hold one chunk of grouped tensors at a time, so that part of a segment stops growing once
chunking starts: each probe also runs with chunks of a few MiB (``FLOOR_BUDGET``), which measures what does
not depend on the chunk size (the floor), and a segment's growth above its floor is capped at the chunk
budget (:data:`pointdr2.nn.chunked_grouping.RECOMPUTE_BUDGET_SHARE` of the ops budget).

``saved`` and ``transient`` are fitted affine in the batch size ``b`` (every activation has a batch
dimension); with ``probe_points`` the probes also run at a second point count and the per-sample part
is fitted affine in the points ``n``: ``value(b, n) = fixed + b * (per_sample + per_point * n)``.
``total = static + saved + transient`` is what a step needs.

Dr2Net rows: ``worst`` is the schedule point where the precision guard keeps the most anchor states (the
smallest spacing k it chooses along ``finetune.alpha/beta``, usually the schedule's start) and ``end``
the schedule's end (k = the stack depth: fully reversible). Each row also records every stack's depth
and per-sample state bytes, so the cost of any spacing follows from the anchors it keeps
(:func:`pointdr2.reversible.stack.anchor_positions`): the trainer caps the guard's spacing with it.

:func:`choose_fit` turns a plan and a budget into the trainer's choice (mode, micro-batch, gradient
accumulation, guard cap) or a one-line :class:`MemoryBudgetError` naming the smallest budget that works.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from pointdr2 import ops
from pointdr2.data.classes import SHAPENETPART_PARTS
from pointdr2.data.synthetic import indoor_crop
from pointdr2.engine.checkpoint import capture_rng, restore_rng
from pointdr2.engine.evaluator import amp_context, forward_batch
from pointdr2.engine.losses import build_loss
from pointdr2.engine.memory import (
    PeakByOperation,
    PeakRSS,
    SavedTensorMeter,
    backward_and_step,
    proc_status_kb,
)
from pointdr2.engine.network import build_network, coefficient_schedule
from pointdr2.engine.optim import build_optimizer
from pointdr2.models import build_model
from pointdr2.nn.chunked_grouping import RECOMPUTE_BUDGET_SHARE
from pointdr2.reversible import choose_cache_every, iter_stacks
from pointdr2.reversible.stack import anchor_positions

__all__ = ["Affine", "ModeRow", "MemoryPlan", "Fit", "MemoryBudgetError", "measure_plan", "choose_fit",
           "plan_points", "synthetic_sample", "format_bytes", "MODES", "PREFERENCE"]

log = logging.getLogger(__name__)

MODES = ("conventional", "checkpoint", "dr2net")
# finetune.mode: auto takes the first of these that fits (fastest first: no recomputation, then Dr2Net's
# near-constant memory, then checkpointing)
PREFERENCE = ("conventional", "dr2net", "checkpoint")
DATASET_CLASSES = {"scanobjectnn": 15, "modelnet40": 40, "s3dis": 13, "shapenetpart": 50}


class MemoryBudgetError(ValueError):
    """Nothing fits ``train.memory_budget``; the message names the smallest budget that would."""


def format_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    if abs(n) >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB"


def _budget_text(n: float) -> str:
    """A budget rounded up to 0.01 GiB (or 1 MiB), written as train.memory_budget accepts it."""
    if n >= 2**30:
        return f"{math.ceil(n / 2**30 * 100) / 100:.2f}GiB"
    return f"{math.ceil(n / 2**20)}MiB"


# ----------------------------------------------------------------------------- fits
@dataclass
class Affine:
    """``value(b, n) = fixed + b * (per_sample + per_point * n)`` fitted to probes ``(b, n, value)``.

    ``points``: the point count the probes ran at when they all ran at one (then ``per_point`` is 0 and the
    fit holds at that count only); None when the probes spanned two counts.
    """

    fixed: float
    per_sample: float
    per_point: float = 0.0
    points: int | None = None

    @classmethod
    def fit(cls, probes: Sequence[tuple[int, int, float]], per_sample: bool = True) -> Affine:
        """Least squares through the probes. ``per_sample=False`` (probes at two point counts): no term in
        ``b`` alone, ``fixed + b * per_point * n``: one slope fitted through three probes instead of two
        from three, so a high-water mark's few MiB of noise at the probes is not magnified by the
        extrapolation (what a step's segment holds grows with the points it carries)."""
        counts = sorted({n for _, n, _ in probes})
        if len(counts) == 1:
            bs = torch.tensor([float(b) for b, _, _ in probes], dtype=torch.float64)
            vs = torch.tensor([float(v) for _, _, v in probes], dtype=torch.float64)
            if len(set(bs.tolist())) < 2:
                raise ValueError("a memory fit needs probes at two batch sizes")
            a = torch.stack([torch.ones_like(bs), bs], 1)
            sol = torch.linalg.lstsq(a, vs.unsqueeze(1)).solution.squeeze(1)
            return cls(float(sol[0]), float(sol[1]), 0.0, counts[0])
        rows = torch.tensor([[1.0, float(b), float(b) * n] for b, n, _ in probes], dtype=torch.float64)
        if not per_sample:
            rows = rows[:, [0, 2]]
        vs = torch.tensor([float(v) for _, _, v in probes], dtype=torch.float64)
        sol = torch.linalg.lstsq(rows, vs.unsqueeze(1)).solution.squeeze(1).tolist()
        if not per_sample:
            sol.insert(1, 0.0)
        return cls(float(sol[0]), float(sol[1]), float(sol[2]), None)

    def __call__(self, batch: int, points: int) -> float:
        if self.points is not None and points != self.points:
            raise ValueError(f"this plan was measured at {self.points} points only; measure it at {points} points "
                             "(--points) or with --probe-points to extrapolate in points")
        return self.fixed + batch * (self.per_sample + self.per_point * points)


@dataclass
class Segment:
    """One segment of a step (``label``: the operation running; ``#i`` counts repeats), fitted as bytes
    above the step's start: ``full`` at the ops memory budget, ``floor`` with chunks of ``FLOOR_BUDGET``.

    ``peak(b, n, cap) = floor + min(max(full - floor, 0), max(cap, seen))``: what grows above the floor is one
    chunk's grouped tensors, which stay within the chunk budget ``cap`` (None: no cap), unless the probes
    themselves saw more grow (``seen``: the largest growth measured at a probe; e.g. a ball query's
    temporaries, bounded by the whole ops budget): the model never predicts less than its own probes measured.
    """

    label: str
    full: Affine
    floor: Affine
    seen: float = 0.0

    def peak(self, batch: int, points: int, cap: float | None) -> float:
        floor = self.floor(batch, points)
        grow = max(0.0, self.full(batch, points) - floor)
        return floor + (grow if cap is None else min(grow, max(cap, self.seen)))


@dataclass
class ModeRow:
    """One finetuning mode (Dr2Net: one schedule point) of a plan; bytes per process."""

    mode: str
    point: str | None  # dr2net: "worst" | "end"; None otherwise
    alpha: float | None
    beta: float | None
    cache_every: int | None  # the spacing k the row ran (dr2net reversible rows); None: no reversible stack
    static: int
    saved: Affine
    transient: Affine
    stacks: list[tuple[int, Affine]] = field(default_factory=list)  # (depth, per-sample state bytes) per stack
    peak_at: str | None = None
    probes: list[dict] = field(default_factory=list)
    backprop: str | None = None
    segments: list[Segment] = field(default_factory=list)  # recomputing modes: the step's peak is their max
    chunk_cap: float | None = None  # bytes one chunk of grouped tensors may hold (Segment.peak's cap)

    @property
    def label(self) -> str:
        if self.point is None:
            return self.mode
        return f"{self.mode}@{self.point}"

    def saved_bytes(self, batch: int, points: int, cache_every: int | None = None) -> float:
        value = self.saved(batch, points)
        if cache_every is not None and self.cache_every is not None:

            for depth, state in self.stacks:
                more = (len(anchor_positions(depth, min(cache_every, depth)))
                        - len(anchor_positions(depth, min(self.cache_every, depth))))
                value += more * batch * (state(1, points) - state(0, points))
        return max(0.0, value)

    def peak_segment(self, batch: int, points: int) -> tuple[str | None, float]:
        """The segment that peaks at this size and its bytes above the step's start (None, 0 without segments)."""
        if not self.segments:
            return None, 0.0
        return max(((s.label, s.peak(batch, points, self.chunk_cap)) for s in self.segments), key=lambda t: t[1])

    def transient_bytes(self, batch: int, points: int) -> float:
        if self.segments:
            return max(0.0, self.peak_segment(batch, points)[1] - self.saved(batch, points))
        return max(0.0, self.transient(batch, points))

    def total_bytes(self, batch: int, points: int, cache_every: int | None = None) -> float:
        return self.static + self.saved_bytes(batch, points, cache_every) + self.transient_bytes(batch, points)

    def max_batch(self, budget: float, points: int, limit: int = 1 << 16, cache_every: int | None = None) -> int:
        """Largest batch size b <= ``limit`` with ``total_bytes(b) <= budget`` (0 when not even 1 fits)."""
        def fits(b: int) -> bool:
            return self.total_bytes(b, points, cache_every) <= budget

        if not fits(1):
            return 0
        lo, hi = 1, 2
        while hi <= limit and fits(hi):
            lo, hi = hi, hi * 2
        hi = min(hi, limit + 1)
        while hi - lo > 1:  # total is non-decreasing in b: bisect between a fit and a miss
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo

    def max_depth(self) -> int:
        return max((d for d, _ in self.stacks), default=0)

    def to_dict(self, batch_sizes: Sequence[int], points: int, budget: float | None = None) -> dict:
        out = {"mode": self.mode, "point": self.point, "label": self.label, "alpha": self.alpha, "beta": self.beta,
               "cache_every": self.cache_every, "backprop": self.backprop, "chunk_cap_bytes": self.chunk_cap,
               "segments": len(self.segments),
               "static_bytes": int(self.static), "peak_at": self.peak_at,
               "fit": {"saved": asdict(self.saved), "transient": asdict(self.transient)},
               "stacks": [{"depth": d, "state_bytes_per_sample": s(1, points) - s(0, points)} for d, s in self.stacks],
               "probes": self.probes,
               "batches": [{"batch": int(b), "saved_bytes": int(round(self.saved_bytes(b, points))),
                            "transient_bytes": int(round(self.transient_bytes(b, points))),
                            "total_bytes": int(round(self.total_bytes(b, points))),
                            "peak_at": self.peak_segment(b, points)[0] or self.peak_at} for b in batch_sizes]}
        if budget is not None:
            out["max_batch"] = self.max_batch(budget, points)
        return out


@dataclass
class MemoryPlan:
    """Rows per mode, measured for one config at ``points`` points per sample on ``device``."""

    model: str
    task: str
    device: str
    points: int
    amp: str
    rows: list[ModeRow]
    probe_batches: tuple[int, ...]
    probe_points: tuple[int, ...]
    config: str | None = None
    batch_size: int | str | None = None
    finetune_mode: str | None = None

    def row(self, mode: str, point: str | None = None) -> ModeRow:
        """The row of ``mode``; dr2net: ``point`` ("worst" by default: what a budget must allow)."""
        for r in self.rows:
            if r.mode == mode and (mode != "dr2net" or r.point in (point or "worst", None)):
                return r
        raise KeyError(f"the plan has no {mode} row")

    def fit_row(self, mode: str) -> ModeRow:
        return self.row(mode, "worst")

    def to_dict(self, batch_sizes: Sequence[int], budget: float | None = None, fit: Fit | None = None,
                points: int | None = None) -> dict:
        n = self.points if points is None else points
        out = {"config": self.config, "model": self.model, "task": self.task, "device": self.device,
               "points": n, "amp": self.amp, "probe_batches": list(self.probe_batches),
               "probe_points": list(self.probe_points), "batch_sizes": [int(b) for b in batch_sizes],
               "budget_bytes": None if budget is None else int(budget),
               "rows": [r.to_dict(batch_sizes, n, budget) for r in self.rows]}
        if fit is not None:
            out["choice"] = fit.to_dict()
        return out


@dataclass
class Fit:
    """The trainer's choice under a budget: mode, micro-batch per process, accumulation, guard cap."""

    mode: str
    micro_batch: int
    accumulate: int
    batch_size: int  # global: micro_batch * accumulate * processes
    total_bytes: int
    budget: int
    min_cache_every: int | None
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def _divisors_desc(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def choose_fit(plan: MemoryPlan, budget: float, *, mode: str, batch_size: int | str, processes: int = 1,
               max_batch: int | None = None, points: int | None = None) -> Fit:
    """What to train under ``budget`` bytes per process.

    ``mode``: a finetuning mode, or ``"auto"``: the first of conventional, dr2net, checkpoint that fits.
    ``batch_size``: the global batch (int): its per-process part ``batch_size / processes`` if it fits, else
    the largest divisor of it that fits, with gradient accumulation making up the rest (the effective batch
    stays ``batch_size``); ``"auto"``: the largest batch that fits (at most ``max_batch`` per process); with
    mode auto too, the mode allowing the largest batch. Dr2Net fits at its worst schedule point, and
    ``min_cache_every`` is the smallest anchor spacing whose memory still fits at the chosen micro-batch (the
    guard's floor; None when every spacing fits). Raises :class:`MemoryBudgetError` when nothing fits.
    """
    n = plan.points if points is None else points
    modes = list(PREFERENCE) if mode == "auto" else [mode]
    modes = [m for m in modes if any(r.mode == m for r in plan.rows)]
    if not modes:
        raise ValueError(f"finetune.mode={mode}: the plan has no such row")
    limit = max_batch or (1 << 16)

    def cost(m: str, b: int) -> float:
        return plan.fit_row(m).total_bytes(b, n)

    choice: tuple[str, int, int] | None = None
    if batch_size == "auto":
        best = [(plan.fit_row(m).max_batch(budget, n, limit), -i, m) for i, m in enumerate(modes)]
        b, _, m = max(best)
        if b >= 1:
            choice = (m, b, 1)
            reason = (f"largest batch that fits: {b} per process" if len(modes) == 1 else
                      f"largest batch of any mode: {b} per process (" +
                      ", ".join(f"{mm} {bb}" for bb, _, mm in best) + ")")
    else:
        per = int(batch_size) // processes
        for d in _divisors_desc(per):
            fitting = [m for m in modes if cost(m, d) <= budget]
            if fitting:
                choice = (fitting[0], d, per // d)
                skipped = [m for m in modes[: modes.index(fitting[0])]]
                reason = (f"batch {per} per process fits" if d == per else
                          f"batch {per} per process does not fit; {d} x {per // d} accumulation steps does")
                if skipped:
                    reason += f" ({', '.join(skipped)} needs {format_bytes(cost(skipped[0], d))})"
                break
    if choice is None:
        smallest = min(cost(m, 1) for m in modes)
        m1 = min(modes, key=lambda m: cost(m, 1))
        r = plan.fit_row(m1)
        raise MemoryBudgetError(
            f"train.memory_budget={_budget_text(budget) if budget >= 2**20 else int(budget)} is too small for "
            f"{plan.model} ({'any mode' if len(modes) > 1 else mode}): {m1} needs {format_bytes(smallest)} at batch 1 "
            f"(weights+grads+optimizer {format_bytes(r.static)}, activations {format_bytes(r.saved_bytes(1, n))}, "
            f"transient {format_bytes(r.transient_bytes(1, n))}); the smallest budget that would work is "
            f"{_budget_text(smallest)}")
    m, micro, accumulate = choice
    row = plan.fit_row(m)
    cap = None
    if m == "dr2net" and row.cache_every is not None and row.backprop == "auto" and row.stacks:
        for k in range(1, row.max_depth() + 1):
            if row.total_bytes(micro, n, cache_every=k) <= budget:
                cap = k if k > 1 else None
                break
    return Fit(mode=m, micro_batch=micro, accumulate=accumulate, batch_size=micro * accumulate * processes,
               total_bytes=int(round(cost(m, micro))), budget=int(budget), min_cache_every=cap, reason=reason)


# ----------------------------------------------------------------------------- inputs
def task_of_config(cfg: Mapping) -> str:
    """``classification``, ``segmentation`` (S3DIS-like scenes) or ``partseg`` (ShapeNetPart-like shapes)."""
    model = cfg.get("model") or {}
    if str(model.get("task", "")).lower() == "partseg" or str(model.get("name", "")).lower().endswith("-partseg") \
            or str((cfg.get("dataset") or {}).get("name", "")).lower() == "shapenetpart":
        return "partseg"
    if str(model.get("task", "")).lower() in ("seg", "segmentation"):
        return "segmentation"
    if str((cfg.get("dataset") or {}).get("name", "")).lower() == "s3dis":
        return "segmentation"
    return "classification"


def plan_points(cfg: Mapping) -> int:
    """Points per training sample the config feeds the model: a train subsampling transform's ``npoints``,
    else ``dataset.crop_points`` (S3DIS crops) or ``dataset.num_points``, else 1024."""
    ds = cfg.get("dataset") or {}
    for t in ((ds.get("transforms") or {}).get("train") or []):
        if isinstance(t, Mapping) and t.get("npoints"):
            return int(t["npoints"])
    for key in ("crop_points", "num_points"):
        if ds.get(key):
            return int(ds[key])
    return 1024


def synthetic_sample(cfg: Mapping, task: str, points: int, index: int) -> dict:
    """One training sample in the dataset's format, without data on disk: ``points [N, in_channels]`` and a
    label (classification), an indoor-like crop ``pos [N, 3]``, ``feats [C, N]``, ``label [N]``
    (segmentation), or a shape ``points [N, 3 (+3 normals)]`` with its ``category`` and a part ``label [N]``
    of that category (part segmentation, ShapeNetPart's 16 categories)."""
    model = cfg.get("model") or {}
    num_classes = int(model.get("num_classes") or 2)
    g = torch.Generator().manual_seed(1000 + index)
    if task == "partseg":
        category = index % len(SHAPENETPART_PARTS)
        parts = torch.tensor(SHAPENETPART_PARTS[category])
        channels = 6 if (cfg.get("dataset") or {}).get("use_normals") else 3
        xyz = torch.rand(points, 3, generator=g) * 2 - 1
        extra = torch.nn.functional.normalize(torch.randn(points, channels - 3, generator=g), dim=1) \
            if channels > 3 else xyz[:, :0]
        return {"points": torch.cat([xyz, extra], 1), "category": torch.tensor(category),
                "label": parts[torch.randint(0, len(parts), (points,), generator=g)]}
    channels = int(model.get("in_channels") or (4 if task == "segmentation" else 3))
    if task == "segmentation":
        pos, feats = indoor_crop(1, points, g)
        if feats.shape[1] != channels:
            feats = torch.rand(1, channels, points, generator=g)
        return {"pos": pos[0], "feats": feats[0], "label": torch.randint(0, num_classes, (points,), generator=g)}
    xyz = torch.randn(points, 3, generator=g)
    xyz = xyz / xyz.norm(dim=1, keepdim=True) * torch.rand(points, 1, generator=g) ** (1 / 3)
    extra = torch.randn(points, channels - 3, generator=g)
    return {"points": torch.cat([xyz, extra], 1), "label": torch.tensor(index % num_classes)}


# ----------------------------------------------------------------------------- measurement
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _schedule_worst(cfg_finetune: Mapping, depth: int, dtype: torch.dtype) -> tuple[dict, dict]:
    """(worst, end) schedule points ``{"alpha", "beta", "k"}``: the guard's smallest spacing along the schedule
    (the earliest such point) and its spacing at the end, both with no measured correction yet."""
    sched = coefficient_schedule(cfg_finetune)
    start, end = float(cfg_finetune["start_epoch"]), float(cfg_finetune["end_epoch"])
    tol = float(cfg_finetune.get("tolerance", 1e-4))
    worst = None
    for i in range(201):
        t = start + (end - start) * i / 200
        a, b = sched(t)
        k = choose_cache_every(a, b, depth, dtype, tol)
        if worst is None or k < worst["k"]:
            worst = {"alpha": float(a), "beta": float(b), "k": k, "t": t}
    a, b = sched(end)
    return worst, {"alpha": float(a), "beta": float(b), "k": choose_cache_every(a, b, depth, dtype, tol), "t": end}


class _StackStates:
    """Per-sample bytes of one stream state of every Dr2Stack (what one kept anchor costs), from its input."""

    def __init__(self, net: nn.Module) -> None:

        self.stacks = list(iter_stacks(net))
        self.bytes = [0.0] * len(self.stacks)
        self.handles = [s.register_forward_pre_hook(self._hook(i)) for i, s in enumerate(self.stacks)]

    def _hook(self, i: int):
        def hook(mod, args):
            x = args[0]
            size = 4 if x.element_size() < 4 else x.element_size()  # streams are float32 for bf16/fp16 input
            self.bytes[i] = x.numel() * size / max(1, x.shape[0])
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _static_bytes(params: list[nn.Parameter], optimizer: torch.optim.Optimizer) -> int:
    seen: set = set()
    total = 0
    for p in params:
        if p.untyped_storage().data_ptr() in seen:
            continue
        seen.add(p.untyped_storage().data_ptr())
        total += p.numel() * p.element_size()
        if p.requires_grad:
            total += p.numel() * p.element_size()  # its gradient
    for state in optimizer.state.values():
        for v in state.values():
            if torch.is_tensor(v):
                total += v.numel() * v.element_size()
    return total


def _measure_row(cfg, ft: dict, alpha: float, beta: float, *, model_fn: Callable, sample_fn: Callable,
                 task: str, probes: Sequence[tuple[int, int]], device: torch.device, name_peak: bool = False,
                 segments: bool = False) -> dict:
    """Probe one network: static bytes, and saved/transient bytes/peak op/stack states per probe.

    ``segments``: also every segment's high-water mark per probe, and the same probes again with the ops
    memory budget at ``FLOOR_BUDGET`` (``floor_probes``), for :class:`Segment` fits."""
    torch.manual_seed(0)
    model = model_fn(copy.deepcopy(cfg.model)).to(device)
    net = build_network(model, ft, alpha, beta, train=True).to(device).train()
    own = {id(p) for p in model.parameters()}
    extra = [(f"surrogate.{n}", p) for n, p in net.named_parameters() if id(p) not in own]
    optimizer = build_optimizer(model, cfg.train, extra=extra)
    params = list(model.parameters()) + [p for _, p in extra]
    amp = str(cfg.train.get("amp", "none")).lower()
    loss_fn = build_loss(cfg.train)
    states = _StackStates(net)
    out: dict[str, Any] = {"probes": [], "depths": [len(s.blocks) for s in states.stacks]}
    def probe(b: int, n: int) -> dict:
        batch = torch.utils.data.default_collate([sample_fn(n, i) for i in range(b)])
        target = batch["label"].to(device)

        def forward(batch=batch, target=target):
            with amp_context(device, amp):
                logits = forward_batch(net, batch, task, device)
                return loss_fn(logits, target)

        optimizer.zero_grad(set_to_none=False)
        forward().backward()  # warm-up: gradients and optimizer state exist, as in the steps that follow
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        gc.collect()
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        else:
            base = (proc_status_kb("VmRSS") or 0) * 1024
        # naming the operation at the peak resets the high-water mark at every module boundary (a page-table
        # walk per reset on CPU: seconds for a large model); the peak alone needs one reset
        tracker = PeakByOperation(net, device) if segments or name_peak or device.type == "cuda" else None
        rss = PeakRSS() if tracker is None or not tracker.ok else contextlib.nullcontext()
        with rss:
            meter = SavedTensorMeter(net)
            with meter:
                loss = forward()
            backward_and_step(loss, optimizer, tracker)
            _sync(device)
            if tracker is not None:
                tracker.close()
        del loss
        marks = {}
        if tracker is not None and tracker.ok:
            peak, peak_at = tracker.peak - base, tracker.peak_at
            repeats: dict[str, int] = {}
            for label, high in tracker.segments:
                repeats[label] = repeats.get(label, 0) + 1
                marks[label if repeats[label] == 1 else f"{label}#{repeats[label]}"] = int(high - base)
        else:
            peak, peak_at = rss.peak_kb * 1024 - base, None
        return {"batch": b, "points": n, "saved_bytes": int(meter.bytes), "segments": marks,
                "peak_bytes": int(max(0, peak)), "transient_bytes": int(max(0, peak - meter.bytes)),
                "peak_at": peak_at, "state_bytes": list(states.bytes),
                "cache_every": [s.last_cache_every for s in states.stacks]}

    try:
        for b, n in probes:
            out["probes"].append(probe(b, n))
        out["static"] = _static_bytes(params, optimizer)
        if segments and all(p["segments"] for p in out["probes"]):
            old = ops._budget
            try:
                ops.set_memory_budget(FLOOR_BUDGET)
                out["floor_probes"] = [probe(b, n) for b, n in probes]
            finally:
                ops.set_memory_budget(old)
    finally:
        states.close()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


# The ops memory budget of the floor probes: chunks of grouped tensors of FLOOR_BUDGET / RECOMPUTE_BUDGET_SHARE
# (2 MiB), small beside any step that chunks, large enough that a chunk still holds several centres.
FLOOR_BUDGET = 8 * 2**20


def _segments(measured: dict) -> list[Segment]:
    """Per-segment fits of the probes at the ops budget and of the floor probes (segments seen in all)."""
    full, floor = measured["probes"], measured.get("floor_probes")
    if not floor:
        return []
    keys = set.intersection(*(set(p["segments"]) for p in full + floor))
    order = [k for k in full[-1]["segments"] if k in keys]
    return [Segment(k, Affine.fit([(p["batch"], p["points"], p["segments"][k]) for p in full], per_sample=False),
                    Affine.fit([(p["batch"], p["points"], p["segments"][k]) for p in floor], per_sample=False),
                    float(max(0, *(a["segments"][k] - b["segments"][k] for a, b in zip(full, floor)))))
            for k in order]


def _row_from(mode: str, point: str | None, alpha, beta, k, backprop, measured: dict) -> ModeRow:
    probes = measured["probes"]
    saved = Affine.fit([(p["batch"], p["points"], p["saved_bytes"]) for p in probes])
    transient = Affine.fit([(p["batch"], p["points"], p["transient_bytes"]) for p in probes])
    stacks = []
    for i, depth in enumerate(measured["depths"]):
        stacks.append((depth, Affine.fit([(p["batch"], p["points"], p["batch"] * p["state_bytes"][i])
                                          for p in probes])))
    peak_at = max(probes, key=lambda p: p["transient_bytes"])["peak_at"]
    segments = _segments(measured)
    return ModeRow(mode, point, alpha, beta, k, int(measured["static"]), saved, transient, stacks, peak_at,
                   [{k: v for k, v in p.items() if k != "segments"} for p in probes], backprop, segments,
                   float(ops.get_memory_budget() // RECOMPUTE_BUDGET_SHARE) if segments else None)


def measure_plan(cfg, *, device: torch.device | str = "cpu", model_fn: Callable | None = None,
                 sample_fn: Callable | None = None, points: int | None = None, probe_batches: Sequence[int] | None = None,
                 probe_points: int | None = None, modes: Sequence[str] = MODES, name_peak: bool = False) -> MemoryPlan:
    """Measure the plan of ``cfg`` (a resolved :class:`~pointdr2.config.Config`) on ``device``.

    ``model_fn(cfg.model)`` builds the base model (default ``build_model``); ``sample_fn(points, index)`` one
    training sample as the dataset returns it (default :func:`synthetic_sample`). ``points``: points per
    sample (default :func:`plan_points`). ``probe_batches``: the two batch sizes measured (default 2 and 4
    for classification, whose heads hold BatchNorm over the batch, 1 and 2 for segmentation).
    ``probe_points``: measure at this smaller point count (and at half of it) instead of ``points`` and
    extrapolate in points. ``name_peak``: also name the operation that set each peak (on CPU it resets the
    high-water mark at every module boundary, which slows the probes; always on for CUDA, where it is free).
    RNG states are restored afterwards; the caller's model is not touched.
    """
    device = torch.device(device)
    task = task_of_config(cfg)
    n = int(points or plan_points(cfg))
    if probe_batches is None:
        probe_batches = (1, 2) if task == "segmentation" else (2, 4)
    probe_batches = tuple(int(b) for b in probe_batches)
    if len(set(probe_batches)) < 2 or min(probe_batches) < 1:
        raise ValueError(f"probe batch sizes must be two different positive integers, got {probe_batches}")
    if probe_points and probe_points != n:
        pp = (int(probe_points), max(1, int(probe_points) // 2))
        probes = [(b, pp[0]) for b in probe_batches] + [(probe_batches[0], pp[1])]
    else:
        pp = (n,)
        probes = [(b, n) for b in probe_batches]
    model_fn = model_fn or build_model
    if sample_fn is None:
        def sample_fn(pts: int, index: int) -> dict:
            return synthetic_sample(cfg, task, pts, index)

    ft_cfg = dict(cfg.finetune)
    amp = str(cfg.train.get("amp", "none")).lower()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp, torch.float32)
    rng = capture_rng()
    rows: list[ModeRow] = []
    try:
        for mode in modes:
            if mode in ("conventional", "checkpoint"):
                m = _measure_row(cfg, {**ft_cfg, "mode": mode}, 1.0, 0.0, model_fn=model_fn, sample_fn=sample_fn,
                                 task=task, probes=probes, device=device, name_peak=name_peak,
                                 segments=mode == "checkpoint")
                rows.append(_row_from(mode, None, None, None, None, None, m))
                continue
            backprop = str(ft_cfg.get("backprop", "auto"))
            a0, b0 = coefficient_schedule(ft_cfg)(float(ft_cfg["start_epoch"]))
            torch.manual_seed(0)
            depths = [len(s.blocks) for s in iter_stacks(build_network(model_fn(copy.deepcopy(cfg.model)),
                                                                       {**ft_cfg, "mode": "dr2net"}, a0, b0))]
            if backprop == "exact" or not depths:  # plain autograd, or a model without residual stacks
                m = _measure_row(cfg, {**ft_cfg, "mode": "dr2net"}, a0, b0, model_fn=model_fn, sample_fn=sample_fn,
                                 task=task, probes=probes, device=device, name_peak=name_peak,
                                 segments=backprop != "exact")
                rows.append(_row_from("dr2net", None, a0, b0, None, backprop, m))
                continue
            depth = max(depths)  # the stacks' depths bound the guard's spacings
            if backprop == "auto":
                worst, end = _schedule_worst(ft_cfg, depth, dtype)
            else:  # reversible: the configured spacing all along
                k = int(ft_cfg.get("cache_every") or depth)
                a1, b1 = coefficient_schedule(ft_cfg)(float(ft_cfg["end_epoch"]))
                worst, end = {"alpha": a0, "beta": b0, "k": k}, {"alpha": a1, "beta": b1, "k": k}
            measured = {}
            for point, where in (("worst", worst), ("end", end)):
                key = where["k"]
                if key not in measured:
                    ft = {**ft_cfg, "mode": "dr2net", "backprop": "reversible", "cache_every": key}
                    if where["beta"] == 0:  # nothing to reconstruct from: auto's spacing-1 path
                        ft.update(backprop="auto", cache_every=None)
                    measured[key] = _measure_row(cfg, ft, where["alpha"], where["beta"], model_fn=model_fn,
                                                 sample_fn=sample_fn, task=task, probes=probes, device=device,
                                                 name_peak=name_peak, segments=True)
                rows.append(_row_from("dr2net", point, where["alpha"], where["beta"], key, backprop, measured[key]))
    finally:
        restore_rng(rng)
    src = getattr(cfg, "_source_path", None)
    return MemoryPlan(model=str(cfg.model.get("name")), task=task, device=str(device), points=n, amp=amp, rows=rows,
                      probe_batches=probe_batches, probe_points=pp, config=src,
                      batch_size=cfg.train.get("batch_size"), finetune_mode=str(ft_cfg.get("mode")))


# ----------------------------------------------------------------------------- output
def format_plan(plan: MemoryPlan, batch_sizes: Sequence[int], budget: float | None = None, fit: Fit | None = None,
                points: int | None = None) -> str:
    """The table ``pointdr2 plan`` prints (MiB per process)."""
    n = plan.points if points is None else points
    lines = [f"plan: {plan.config or plan.model} ({plan.model}, {plan.task}), {n} points per sample, device "
             f"{plan.device}, amp {plan.amp}; measured at batch {' and '.join(map(str, plan.probe_batches))}"
             + (f", points {' and '.join(map(str, plan.probe_points))}" if len(plan.probe_points) > 1 else "")]
    head = (f"{'mode':<18} {'k':>3} {'alpha':>5} {'beta':>5} {'batch':>6} {'weights+grad+opt':>17} "
            f"{'activations':>12} {'transient':>10} {'total':>10}")
    lines += [head, "-" * len(head)]
    mib = 2**20
    for r in plan.rows:
        for b in batch_sizes:
            lines.append(
                f"{r.label:<18} {str(r.cache_every or '-'):>3} "
                f"{'-' if r.alpha is None else f'{r.alpha:.2f}':>5} {'-' if r.beta is None else f'{r.beta:.2f}':>5} "
                f"{b:>6} {r.static / mib:>13.1f} MiB {r.saved_bytes(b, n) / mib:>8.1f} MiB "
                f"{r.transient_bytes(b, n) / mib:>6.1f} MiB {r.total_bytes(b, n) / mib:>6.1f} MiB")
    lines.append("k: the Dr2Net anchor spacing (worst: the guard's smallest along the schedule; end: fully reversible)")
    for r in plan.rows:
        if r.peak_at:
            lines.append(f"transient peak of {r.label}: {r.peak_at}")
    if budget is not None:
        fits = ", ".join(f"{r.label} {r.max_batch(budget, n)}" for r in plan.rows)
        lines.append(f"largest batch per process within {format_bytes(budget)}: {fits}")
        if fit is not None:
            lines.append(f"choose finetune.mode={fit.mode} with batch {fit.micro_batch}"
                         + (f" x {fit.accumulate} accumulation steps" if fit.accumulate > 1 else "")
                         + f" ({format_bytes(fit.total_bytes)} predicted; {fit.reason})"
                         + (f"; guard spacing capped at >= {fit.min_cache_every}" if fit.min_cache_every else ""))
    return "\n".join(lines)
