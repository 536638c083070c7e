"""Finetuning loop: conventional, checkpointed or Dr2Net finetuning with exact resume and DDP.

``train(cfg)`` runs one training job described by a resolved config (see ``pointdr2.config``):

- model: ``build_model(cfg.model)``, ``model.pretrained`` loaded with ``load_pretrained`` before any
  conversion; ``finetune.mode`` picks the network that is trained: ``conventional`` (the model),
  ``dr2net`` (``to_dr2net(model, alpha0, beta0, mode=finetune.backprop)``, its coefficients moved by
  a ``CoefficientSchedule`` every step at fractional epochs) or ``checkpoint``
  (``to_dr2net(model, 1, 0, mode="checkpoint")``). Surrogates share the model's weights, so the
  optimizer and the checkpoints hold the base model's parameters.
- data: ``build_dataset(cfg.dataset, split)``; model selection on ``val`` (carved from the training
  data, the honest protocol) unless ``train.select_on: test`` (as the papers did; logged loudly).
- optimisation: AdamW without decay on 1-D params, biases and tokens; cosine with warm-up per
  optimizer step; label smoothing; grad-norm clipping; gradient accumulation; AMP (bf16/fp16).
  ``train.batch_size`` is the global batch: each of W processes runs micro-batches of
  ``batch_size / (accumulate * W)``, so the maths does not change with W or ``accumulate``.
- run directory (``run.dir``): ``config.yaml``, ``train.log``, ``tensorboard/``, ``last.pth`` (every
  epoch and on interruption) and ``best.pth``, written atomically by rank 0.
- exact resume: data order, augmentation and dropout depend on ``(train.seed, epoch, rank)`` only
  (all RNGs are reseeded at every epoch start, DataLoader workers from ``(seed, epoch, worker)``),
  and the checkpoint holds model, optimizer, lr schedule, grad scaler, coefficients, RNG states,
  epoch, step and best metric. Resuming at an epoch boundary reproduces an uninterrupted run
  bit for bit; resuming inside an epoch (after Ctrl-C) does too when ``train.num_workers == 0``.
- bad states: NaN/inf loss stops with :class:`TrainingDiverged` (the last good ``last.pth`` is
  kept); SIGINT/SIGTERM finish the current optimizer step, save ``last.pth`` and raise
  :class:`TrainingInterrupted`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from pointdr2.config import CHOICES, Config, carved_fraction, dump_config, parse_size
from pointdr2.data import build_dataset
from pointdr2.engine import distributed as dist_utils
from pointdr2.engine import plan as memory_plan  # by module: tests stand in for measure_plan
from pointdr2.engine.checkpoint import (
    FORMAT,
    VERSION,
    capture_rng,
    derive_seed,
    is_own_checkpoint,
    load_checkpoint,
    restore_rng,
    save_atomic,
    seed_everything,
)
from pointdr2.engine.evaluator import (
    amp_context,
    default_room_predictor,
    evaluate,
    forward_batch,
    save_items,
    task_of,
)
from pointdr2.engine.logger import RunLogger
from pointdr2.engine.memory import (
    SavedTensorMeter,
    cache_freed_blocks,
    peak_memory_bytes,
    reset_peak_memory,
    return_freed_blocks,
)
from pointdr2.engine.network import (
    FINETUNE_MODES,
    build_network,
    coefficient_schedule,
    load_model_weights,
    resolve_device,
    stack_stats,
)
from pointdr2.engine.optim import CosineWarmup, build_optimizer
from pointdr2.engine.run_lock import LOCK_NAME, RunLock, remove_stale_temp_files
from pointdr2.engine.run_state import check_resumed_config, load_resume_checkpoint, plain, rewind_dataset
from pointdr2.engine.signals import StopFlag
from pointdr2.engine.weights import resolve_weights
from pointdr2.models import build_model, load_pretrained
from pointdr2.progress import bar as progress_bar
from pointdr2.reversible import apply_coefficients, iter_stacks

__all__ = ["train", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "resolve_device", "build_network",
           "build_split", "check_run_dir", "primary_metric", "load_model_weights"]  # the network helpers re-exported

log = logging.getLogger(__name__)

METRIC_KEYS = ("oa", "macc", "miou", "ins_miou", "cls_miou")  # logged scalars, when a task reports them
RUN_FILES = ("config.yaml", "last.pth", "best.pth", "train.log", "metrics.json")


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the run directory keeps the last good checkpoint."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM (or a planned stop) ended training after saving ``last.pth``."""


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    global_step: int
    best_metric: float
    best_epoch: int
    last_metrics: dict = field(default_factory=dict)
    test_metrics: dict = field(default_factory=dict)
    stopped_early: bool = False
    metric_name: str = "oa"


# ----------------------------------------------------------------------------- small helpers
def primary_metric(task: str) -> str:
    """The model-selection metric: OA (classification), mIoU (segmentation), instance mIoU (part segmentation)."""
    return {"classification": "oa", "partseg": "ins_miou"}.get(task, "miou")


def check_run_dir(run_dir: Path, *, resume: bool, force: bool) -> None:
    """Refuse to write into an existing run directory unless resuming or forced (nothing is touched)."""
    if resume:
        if not (run_dir / "last.pth").is_file():
            raise FileNotFoundError(f"cannot resume: {run_dir / 'last.pth'} not found")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"run.dir {run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(p.name != LOCK_NAME for p in run_dir.iterdir()) and not force:
        present = [n for n in RUN_FILES if (run_dir / n).exists()] or sorted(p.name for p in run_dir.iterdir())[:3]
        raise ValueError(f"run directory {run_dir} already exists (holds {', '.join(present)}); "
                         f"pass --resume {run_dir} to continue it or --force to overwrite it")


def build_split(cfg: Config, split: str, dataset_fn: Callable, val_fraction: float):
    """``dataset_fn(cfg.dataset, split, val_fraction=..., seed=...)``, falling back to the bare contract."""
    try:
        return dataset_fn(cfg.dataset, split, val_fraction=val_fraction, seed=int(cfg.train.seed))
    except TypeError as exc:
        if "unexpected keyword" not in str(exc):
            raise
        return dataset_fn(cfg.dataset, split)


def _default_model_fn(cfg_model):
    return build_model(cfg_model)


def _default_dataset_fn(cfg_dataset, split, **kw):
    return build_dataset(cfg_dataset, split, **kw)


def loader_workers(requested: int) -> int:
    """``train.num_workers`` capped at the CPUs this process may use (more only adds contention and
    torch's warning on every DataLoader)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    if requested > cpus:
        log.debug("train.num_workers=%d capped at %d CPUs", requested, cpus)
    return max(0, min(int(requested), cpus))


def _seed_worker(worker_id: int) -> None:  # noqa: ARG001 - DataLoader's worker_init_fn signature
    # torch seeds each worker with base_seed + worker_id (base_seed from the loader's generator,
    # itself seeded from (seed, epoch)); numpy and random follow from it.
    import random

    # Ctrl-C reaches the whole process group: workers ignore it so the main process can finish the
    # current step and save (a worker killed mid-fetch would abort the loader instead).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    s = torch.initial_seed()
    np.random.seed(s % (2**32))  # noqa: NPY002 - the global RNG is what datasets draw from
    random.seed(s)


# ----------------------------------------------------------------------------- the loop
def train(cfg: Config, *, resume: bool = False, force: bool = False, stop_after_epochs: int | None = None,
          model_fn: Callable | None = None, dataset_fn: Callable | None = None) -> TrainResult:
    """Run the training job described by ``cfg`` (see the module docstring). Returns a :class:`TrainResult`.

    ``model_fn(cfg.model)`` and ``dataset_fn(cfg.dataset, split, **kw)`` default to
    ``pointdr2.models.build_model`` and ``pointdr2.data.build_dataset``. ``stop_after_epochs``
    ends this invocation after that many epochs (as if interrupted at the epoch boundary).
    """
    return _Trainer(cfg, resume=resume, force=force, stop_after_epochs=stop_after_epochs,
                    model_fn=model_fn or _default_model_fn, dataset_fn=dataset_fn or _default_dataset_fn).run()


def check(cfg: Config, *, world_size: int = 1, resume: bool = False, force: bool = False,
          model_fn: Callable | None = None, dataset_fn: Callable | None = None) -> dict:
    """Everything :func:`train` sets up before its first step, as ``world_size`` processes would,
    without joining a process group or touching the run directory: the run directory policy, the
    global batch against the processes, the data splits, the model, its pretrained or resumed
    weights and the finetuning network. Raises what ``train`` would raise; returns a summary.
    ``scripts/dist_train.sh`` runs it (``pointdr2 train --check --nproc N``) before spawning processes, so a
    mistake is one line from one process instead of one per rank and a torchrun traceback."""
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"--nproc must be a positive integer, got {world_size!r}")
    trainer = _Trainer(cfg, resume=resume, force=force, stop_after_epochs=None,
                       model_fn=model_fn or _default_model_fn, dataset_fn=dataset_fn or _default_dataset_fn)
    trainer._setup(check_world=world_size)
    if getattr(trainer, "memory_fit_text", None):
        log.info("%s", trainer.memory_fit_text)
    return {"run_dir": str(trainer.run_dir), "processes": world_size, "train": len(trainer.train_set),
            trainer.select_split: len(trainer.select_set), "select_split": trainer.select_split, "task": trainer.task,
            "steps_per_epoch": trainer.steps_per_epoch, "micro_batch": trainer.micro}


class _Trainer:
    def __init__(self, cfg: Config, *, resume: bool, force: bool, stop_after_epochs: int | None,
                 model_fn: Callable, dataset_fn: Callable) -> None:
        self.cfg = cfg
        self.resume, self.force, self.stop_after_epochs = resume, force, stop_after_epochs
        self.model_fn, self.dataset_fn = model_fn, dataset_fn
        self.run_dir = Path(os.path.expanduser(str(cfg.run.dir)))
        t = cfg.train
        budget = t.get("memory_budget")
        if cfg.finetune.mode == "auto" and budget is None:
            raise ValueError("finetune.mode=auto needs train.memory_budget (e.g. train.memory_budget=12GB): it picks the "
                             "cheapest mode that fits it")
        if cfg.finetune.mode not in FINETUNE_MODES + ("auto",):
            raise ValueError(f"finetune.mode must be one of {', '.join(FINETUNE_MODES)} or auto, got {cfg.finetune.mode!r}")
        if t.batch_size == "auto" and budget is None:
            raise ValueError("train.batch_size=auto needs train.memory_budget (e.g. train.memory_budget=12GB): it picks "
                             "the largest batch that fits it")
        if budget is not None:

            parse_size(budget, "train.memory_budget")
        if t.select_on not in CHOICES["train.select_on"]:
            raise ValueError(f"train.select_on must be one of {', '.join(CHOICES['train.select_on'])}, "
                             f"got {t.select_on!r}")
        for key in ("epochs", "batch_size", "accumulate"):
            if key == "batch_size" and t[key] == "auto":
                continue
            if not isinstance(t[key], int) or t[key] < 1:
                raise ValueError(f"train.{key} must be a positive integer, got {t[key]!r}")
        if not 0.0 <= float(t.label_smoothing) < 1.0:
            raise ValueError(f"train.label_smoothing must lie in [0, 1), got {t.label_smoothing!r}")
        if t.select_on != "test" and not 0.0 < float(t.val_fraction) < 1.0:
            raise ValueError(f"train.val_fraction must lie in (0, 1) when train.select_on={t.select_on}, "
                             f"got {t.val_fraction!r}")

    # -- set-up ---------------------------------------------------------------------------------
    def _setup(self, check_world: int | None = None) -> None:
        """Build everything before the first step. ``check_world``: only check, as that many processes
        would (no process group, no DDP wrapper, nothing removed by --force; see :func:`check`)."""
        checking = check_world is not None
        self._setup_process(check_world)
        # Data first: a missing dataset root should fail before any model work (and before the run directory
        # is claimed: a bad dataset or a memory budget nothing fits leaves nothing behind).
        self._setup_data()
        self._setup_run_dir(checking)
        self._setup_model()
        self._setup_network(checking)
        self._setup_optimization()
        self._setup_loader(checking)
        self.start_epoch, self.global_step, self.step_in_epoch = 0, 0, 0
        self.best_metric, self.best_epoch, self.last_metrics = -math.inf, -1, {}
        if self.ckpt is not None:
            self._restore(self.ckpt)

    def _setup_process(self, check_world: int | None) -> None:
        """Device, process group (or the world a check assumes), determinism and seeds."""
        t = self.cfg.train
        self.device = resolve_device(t.device)
        check_run_dir(self.run_dir, resume=self.resume, force=self.force)
        self.dist = dist_utils.DistInfo(world_size=check_world) if check_world is not None \
            else dist_utils.init_distributed(self.device.type)
        self.main = self.dist.is_main
        if t.deterministic:
            torch.use_deterministic_algorithms(True)
        seed_everything(t.seed)

    def _setup_data(self) -> None:
        """The train and selection splits, the task, the class count; the resume checkpoint; the memory fit."""
        cfg, t, world = self.cfg, self.cfg.train, self.dist.world_size
        vf = carved_fraction(t)
        self.train_set = build_split(cfg, "train", self.dataset_fn, vf)
        # select_on=last evaluates the carved split too (the curve) but keeps the final weights
        self.select_split = "test" if t.select_on == "test" else "val"
        self.select_last = t.select_on == "last"
        self.select_set = build_split(cfg, self.select_split, self.dataset_fn, vf)
        self.task = task_of(self.train_set[0])
        self.metric_name = primary_metric(self.task)
        num_classes = int(self.train_set.num_classes)
        if "num_classes" not in cfg.model:
            cfg.model["num_classes"] = num_classes
        elif int(cfg.model.num_classes) != num_classes:
            raise ValueError(f"model.num_classes={cfg.model.num_classes} but dataset {cfg.dataset.get('name')!r} "
                             f"has {num_classes} classes")
        self.ckpt = load_resume_checkpoint(self.run_dir) if self.resume else None
        self.memory_fit = self._fit_memory(world) if t.get("memory_budget") is not None else None

    def _setup_run_dir(self, checking: bool) -> None:
        """Claim (or, checking, probe) the run directory; the per-process micro-batch."""
        t, world = self.cfg.train, self.dist.world_size
        if self.main and checking:
            RunLock(self.run_dir).probe()
        elif self.main:
            self._claim_run_dir()
        dist_utils.barrier()
        if t.batch_size % (t.accumulate * world):
            raise ValueError(f"train.batch_size={t.batch_size} must be divisible by train.accumulate={t.accumulate} "
                             f"x {world} processes")
        self.micro = t.batch_size // (t.accumulate * world)

    def _setup_model(self) -> None:
        """The model, with the resumed weights or the pretrained ones."""
        cfg = self.cfg
        self.model = self.model_fn(cfg.model).to(self.device)
        if self.resume:
            if not is_own_checkpoint(self.ckpt):
                raise ValueError(f"{self.run_dir / 'last.pth'} is not a pointdr2 training checkpoint")
            check_resumed_config(self.ckpt, self.cfg)
            self.model.load_state_dict(self.ckpt["model"])
        else:
            self.ckpt = None
            pretrained = cfg.model.get("pretrained")
            if pretrained:
                # a path, or an https:// / file:// URL downloaded once into the weights cache
                path = resolve_weights(pretrained, cfg.model.get("pretrained_sha256"),
                                       progress=bool(cfg.run.progress) and self.main)
                report = load_pretrained(self.model, path)
                log.info("loaded pretrained weights from %s (%d missing, %d unexpected keys)", path,
                         len(getattr(report, "missing", [])), len(getattr(report, "unexpected", [])))

    def _setup_network(self, checking: bool) -> None:
        """The trained network (the model or its surrogate) at the schedule's first coefficients."""
        cfg, t = self.cfg, self.cfg.train
        ft = cfg.finetune
        self.schedule = coefficient_schedule(ft) if ft.mode == "dr2net" else None
        a0, b0 = self.schedule(0.0) if self.schedule is not None else (1.0, 0.0)
        self.net = build_network(self.model, ft, a0, b0, train=True).to(self.device)
        cap = (self.memory_fit or {}).get("min_cache_every")
        if cap:
            for stack in iter_stacks(self.net):
                stack.guard.min_cache_every = int(cap)
        if t.get("sync_bn") and self.dist.enabled and not checking:
            self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
        self.coefficients = (float(a0), float(b0))

    def _setup_optimization(self) -> None:
        """Optimizer (the surrogate's own parameters included), learning-rate schedule, mixed precision."""
        t = self.cfg.train
        extra = []
        own = {id(p) for p in self.model.parameters()}
        for name, p in self.net.named_parameters():
            if id(p) not in own:
                extra.append((f"surrogate.{name}", p))
        self.optimizer = build_optimizer(self.model, t, extra=extra)
        self.steps_per_epoch = len(self.train_set) // t.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"train split has {len(self.train_set)} samples, fewer than train.batch_size={t.batch_size}")
        total = self.steps_per_epoch * t.epochs
        warm = min(int(round(float(t.warmup_epochs) * self.steps_per_epoch)), total)
        self.lr_schedule = CosineWarmup(self.optimizer, float(t.lr), total, warm, float(t.min_lr))
        amp = str(t.amp).lower()
        amp_context(self.device, amp)  # validates train.amp
        self.amp = amp
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None

    def _setup_loader(self, checking: bool) -> None:
        """The DDP wrapper and the train loader with its resumable epoch sampler."""
        t, world = self.cfg.train, self.dist.world_size
        self.ddp = None
        if self.dist.enabled and not checking:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(self.net, device_ids=ids)
        self.train_net = self.ddp if self.ddp is not None else self.net

        self.sampler = dist_utils.EpochSampler(len(self.train_set), self.micro, seed=int(t.seed),
                                               rank=self.dist.rank, world_size=world,
                                               batches_multiple_of=int(t.accumulate))
        self.loader_gen = torch.Generator()
        self.loader = DataLoader(self.train_set, batch_size=self.micro, sampler=self.sampler,
                                 num_workers=loader_workers(int(t.num_workers)), worker_init_fn=_seed_worker,
                                 generator=self.loader_gen, pin_memory=self.device.type == "cuda", drop_last=True)

    def _fit_memory(self, world: int) -> dict:
        """``train.memory_budget``: measure the plan (``pointdr2.engine.plan``) on this device with the training
        data's own samples and apply :func:`~pointdr2.engine.plan.choose_fit` to the config: ``finetune.mode``
        (``auto``: the cheapest that fits), ``train.batch_size`` (``auto``: the largest that fits) and
        ``train.accumulate`` (a smaller micro-batch keeps the effective batch), plus the guard's spacing cap.
        Rank 0 measures and every rank gets its choice; a resumed run keeps the choice it started with.
        Raises :class:`~pointdr2.engine.plan.MemoryBudgetError` (nothing written yet) when nothing fits."""

        cfg, t = self.cfg, self.cfg.train
        budget = parse_size(t.memory_budget, "train.memory_budget")
        fit = (self.ckpt or {}).get("memory_fit")
        if fit:
            self.memory_fit_text = (f"train.memory_budget: resuming with the choice of the run's start (finetune.mode "
                                    f"{fit['mode']}, batch {fit['batch_size']} = {fit['micro_batch']} x "
                                    f"{fit['accumulate']} accumulation)")
        else:
            result: list = [None]
            if self.main:
                sample = self.train_set[0]
                points = int((sample["points"] if self.task == "classification" else sample["pos"]).shape[0])
                freed = self.device.type == "cpu" and return_freed_blocks()
                try:
                    mode = str(cfg.finetune.mode)
                    plan = memory_plan.measure_plan(cfg, device=self.device, model_fn=self.model_fn, points=points,
                                        sample_fn=lambda n, i: self.train_set[i % len(self.train_set)],
                                        modes=FINETUNE_MODES if mode == "auto" else (mode,))
                finally:
                    if freed:
                        cache_freed_blocks()
                try:
                    result[0] = memory_plan.choose_fit(plan, budget, mode=str(cfg.finetune.mode), batch_size=t.batch_size,
                                           processes=world, max_batch=max(1, len(self.train_set) // world)).to_dict()
                except ValueError as exc:
                    result[0] = {"error": str(exc)}
            if self.dist.enabled:
                torch.distributed.broadcast_object_list(result, src=0)
            fit = result[0]
            if "error" in fit:
                raise memory_plan.MemoryBudgetError(fit["error"])
            # logged by _announce, once train.log exists (and by pointdr2 train --check)
            self.memory_fit_text = (
                f"train.memory_budget {memory_plan.format_bytes(budget)}: finetune.mode {fit['mode']}, batch {fit['batch_size']} = "
                f"{fit['micro_batch']} x {fit['accumulate']} accumulation x {world} processes; predicted "
                f"{memory_plan.format_bytes(fit['total_bytes'])} per process ({fit['reason']})"
                + (f"; Dr2Net anchor spacing kept >= {fit['min_cache_every']}" if fit["min_cache_every"] else ""))
            if t.batch_size != "auto" and fit["batch_size"] != t.batch_size:  # pragma: no cover - choose_fit keeps it
                raise RuntimeError(f"memory fit changed the effective batch {t.batch_size} -> {fit['batch_size']}")
        cfg.finetune["mode"] = fit["mode"]
        t["batch_size"] = int(fit["batch_size"])
        t["accumulate"] = int(fit["accumulate"])
        return fit

    def _claim_run_dir(self) -> None:
        """Rank 0, for every rank: lock the run directory (one run per directory), then the housekeeping
        only the holder may do: temp files of a killed save, and --force's start over."""
        self.lock = RunLock(self.run_dir).acquire()
        remove_stale_temp_files(self.run_dir)
        if self.force and not self.resume:
            # stale checkpoints, metrics, log and events of the old run would mislead
            removed = [n for n in ("last.pth", "best.pth", "metrics.json", "metrics.jsonl", "test_items.npz", "train.log")
                       if (self.run_dir / n).is_file()]
            for name in removed:
                (self.run_dir / name).unlink()
            if (self.run_dir / "tensorboard").is_dir():
                shutil.rmtree(self.run_dir / "tensorboard")
                removed.append("tensorboard/")
            if removed:
                log.warning("--force: removed %s from %s", ", ".join(removed), self.run_dir)

    def _restore(self, ckpt: dict) -> None:
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.lr_schedule.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt["global_step"])
        self.step_in_epoch = int(ckpt.get("step_in_epoch", 0))
        self.best_metric = float(ckpt.get("best_metric", -math.inf))
        self.best_epoch = int(ckpt.get("best_epoch", -1))
        self.last_metrics = dict(ckpt.get("metrics") or {})
        sched = ckpt.get("schedule") or {}
        if self.schedule is not None and "alpha" in sched:
            self._set_coefficients(float(sched["alpha"]), float(sched["beta"]))
        self.resumed_rng = (ckpt.get("rng") or {}).get(str(self.dist.rank))
        log.info("resumed %s at epoch %d (+%d steps), global step %d, best %s %.4f (epoch %d)",
                 self.run_dir, self.start_epoch, self.step_in_epoch, self.global_step, self.metric_name,
                 self.best_metric, self.best_epoch)

    # -- coefficients ---------------------------------------------------------------------------
    def _set_coefficients(self, alpha: float, beta: float) -> None:

        apply_coefficients(self.net, alpha, beta)
        self.coefficients = (alpha, beta)

    def _update_coefficients(self, epoch: int, step_in_epoch: int) -> None:
        if self.schedule is None:
            return
        t = float(epoch) + (step_in_epoch / self.steps_per_epoch if self.cfg.finetune.per_step else 0.0)
        alpha, beta = self.schedule(t)
        if (alpha, beta) != self.coefficients:
            self._set_coefficients(float(alpha), float(beta))

    # -- checkpoints ----------------------------------------------------------------------------
    def _state(self, epoch: int, step_in_epoch: int) -> dict:
        # RNG states of every rank (rank 0 writes the file): each rank resumes its own streams.
        rng = capture_rng()
        if self.dist.enabled:
            gathered = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, rng)
            rngs = {str(r): s for r, s in enumerate(gathered)}
        else:
            rngs = {"0": rng}
        alpha, beta = self.coefficients
        return {
            "format": FORMAT, "version": VERSION,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.lr_schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "schedule": {"alpha": alpha, "beta": beta,
                         "t": epoch + step_in_epoch / self.steps_per_epoch},
            "rng": rngs,
            "epoch": epoch, "global_step": self.global_step, "step_in_epoch": step_in_epoch,
            "best_metric": self.best_metric, "best_epoch": self.best_epoch,
            "metrics": plain(self.last_metrics),
            "finetune": {"mode": self.cfg.finetune.mode, "alpha": alpha, "beta": beta,
                         "output": self.cfg.finetune.output, "residual": self.cfg.finetune.residual,
                         "gain": self.cfg.finetune.gain},
            "task": self.task,
            "memory_fit": self.memory_fit,
            "config": self.cfg.to_dict(),
        }

    def _save(self, name: str, epoch: int, step_in_epoch: int = 0) -> None:
        state = self._state(epoch, step_in_epoch)
        if self.main:
            save_atomic(state, self.run_dir / name)
        dist_utils.barrier()

    # -- one epoch ------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int, stop: StopFlag, logger: RunLogger) -> str | None:
        """One epoch (or the rest of an interrupted one); "signal" when a stop was requested."""
        t = self.cfg.train
        accum = int(t.accumulate)
        step = self.step_in_epoch
        self._start_epoch(epoch, step)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        # loss sum, correct, seen (samples or points), micro-batches
        totals = [torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64),
                  torch.zeros((), dtype=torch.int64), torch.zeros((), dtype=torch.int64)]
        samples_since, t_since = 0, time.perf_counter()
        reset_peak_memory(self.device)
        show = self.main and bool(self.cfg.run.progress)
        # off a terminal the run.log_every lines are the progress: no bar in a redirected log
        bar = progress_bar(total=self.steps_per_epoch, initial=step, desc=f"epoch {epoch + 1}/{t.epochs}",
                           enabled=show, log_lines=False, leave=False, dynamic_ncols=True)
        micro_i, act_bytes = 0, None
        self._update_coefficients(epoch, step)
        try:
            for batch in self.loader:
                last_micro = micro_i == accum - 1
                loss, measured = self._backward_micro(batch, last_micro, act_bytes is None and micro_i == 0, totals)
                act_bytes = measured if measured is not None else act_bytes
                micro_i += 1
                if not last_micro:
                    continue
                micro_i = 0
                gnorm, stop_now = self._optimizer_step(params, loss, stop, epoch, step)
                step += 1
                samples_since += t.batch_size
                bar.update(1)
                if self.global_step % max(int(self.cfg.run.log_every), 1) == 0 or step == self.steps_per_epoch:
                    stats = self._step_record(loss, gnorm, samples_since / max(time.perf_counter() - t_since, 1e-9),
                                              act_bytes, epoch + step / self.steps_per_epoch)
                    self._log_step(logger, stats)
                    bar.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{stats['lr']:.2e}")
                    samples_since, t_since = 0, time.perf_counter()
                if stop_now and step < self.steps_per_epoch:
                    self.step_in_epoch = step
                    return "signal"
                self._update_coefficients(epoch, step)
        finally:
            bar.close()
        self.step_in_epoch = 0
        loss_sum, correct, seen, batches = dist_utils.all_reduce_sum(torch.stack([v.double() for v in totals]))
        self.epoch_train = {"loss": float(loss_sum / max(batches, 1)), "acc": float(100.0 * correct / max(seen, 1)),
                            "activation_bytes": act_bytes}
        return "signal" if stop.requested is not None else None

    def _start_epoch(self, epoch: int, start_step: int) -> None:
        """Random streams, sampler and dataset positioned where an uninterrupted run is at ``start_step``."""
        t = self.cfg.train
        accum = int(t.accumulate)
        if start_step and getattr(self, "resumed_rng", None) is not None:
            restore_rng(self.resumed_rng)  # continue the interrupted epoch's random streams
        else:
            seed_everything(derive_seed(t.seed, epoch, self.dist.rank))
        self.resumed_rng = None
        self.sampler.set_epoch(epoch, start_batch=start_step * accum)
        rewind_dataset(self.train_set, epoch, start_step * accum * self.micro)
        self.loader_gen.manual_seed(derive_seed(t.seed, epoch, self.dist.rank, 1))
        self.train_net.train()

    def _backward_micro(self, batch: dict, last_micro: bool, measure: bool, totals: list) -> tuple[torch.Tensor, int | None]:
        """Forward and backward of one micro-batch (gradients accumulate); its loss, and with ``measure`` the
        bytes autograd saved for its backward. ``totals`` (loss sum, correct, seen, batches) grows in place."""
        accum = int(self.cfg.train.accumulate)
        sync = self.ddp.no_sync() if (self.ddp is not None and not last_micro) else contextlib.nullcontext()
        meter = SavedTensorMeter(self.model) if measure else contextlib.nullcontext()
        with sync:
            with meter, amp_context(self.device, self.amp):
                logits = forward_batch(self.train_net, batch, self.task, self.device)
                target = batch["label"].to(self.device, non_blocking=True)
                loss = F.cross_entropy(logits.float(), target, label_smoothing=float(self.cfg.train.label_smoothing))
            scaled = loss / accum
            if self.scaler is not None:
                scaled = self.scaler.scale(scaled)
            scaled.backward()
        with torch.no_grad():
            totals[0] += loss.detach().double().cpu()
            totals[3] += 1
            totals[1] += (logits.detach().argmax(dim=1) == target).sum().cpu()
            totals[2] += target.numel()  # samples (classification) or points (segmentation)
        return loss, (meter.bytes if measure else None)

    def _optimizer_step(self, params: list, loss: torch.Tensor, stop: StopFlag, epoch: int, step: int
                        ) -> tuple[torch.Tensor, bool]:
        """Clip, check for divergence, step. Flags agree across ranks so every process stops together.
        Returns the gradient norm and whether a stop was requested on any rank."""
        clip = float(self.cfg.train.grad_clip)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        gnorm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        flags = torch.tensor([float(not torch.isfinite(loss.detach()).item()), float(stop.requested is not None)])
        flags = dist_utils.all_reduce_sum(flags)
        if flags[0] > 0 or (self.scaler is None and not torch.isfinite(gnorm).item()):
            self.optimizer.zero_grad(set_to_none=True)
            raise self._diverged(loss, gnorm, epoch, step)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_schedule.step()
        self.global_step += 1
        return gnorm, bool(flags[1] > 0)

    def _diverged(self, loss: torch.Tensor, gnorm: torch.Tensor, epoch: int, step: int) -> TrainingDiverged:
        coeffs = (f", alpha/beta {self.coefficients[0]:.3g}/{self.coefficients[1]:.3g}"
                  if self.schedule is not None else "")
        kept = (f"the last good checkpoint {self.run_dir / 'last.pth'} (epoch {epoch}) is kept"
                if (self.run_dir / "last.pth").is_file() else "no checkpoint had been written yet")
        return TrainingDiverged(
            f"loss became {float(loss.detach()):.4g} at epoch {epoch + 1} step {step + 1} (grad norm "
            f"{float(gnorm):.4g}, lr {self.lr_schedule.get_last_lr():.3g}{coeffs}); training stopped and "
            f"{kept}; try a lower train.lr, train.amp=none or finetune.backprop=auto")

    def _step_record(self, loss: torch.Tensor, gnorm: torch.Tensor, samples_per_s: float, act_bytes: int | None,
                     epoch: float) -> dict:
        """The structured record of one logged step (metrics.jsonl, tensorboard, the log line)."""
        stats = {"loss": float(loss.detach()), "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": float(gnorm),
                 "samples_per_s": samples_per_s, "peak_memory_bytes": peak_memory_bytes(self.device)}
        if act_bytes is not None:
            stats["activation_bytes"] = act_bytes
        stats.update(stack_stats(self.net))
        if self.schedule is not None:
            stats["alpha"], stats["beta"] = self.coefficients
        stats["epoch"] = epoch
        return stats

    def _log_step(self, logger: RunLogger, stats: dict) -> None:
        step = self.global_step
        logger.scalar("train/loss", stats["loss"], step)
        logger.scalar("train/lr", stats["lr"], step)
        logger.scalar("train/grad_norm", stats["grad_norm"], step)
        logger.scalar("speed/samples_per_s", stats["samples_per_s"], step)
        logger.scalar("memory/peak_bytes", stats["peak_memory_bytes"], step)
        logger.scalar("memory/activation_bytes", stats.get("activation_bytes"), step)
        for key in ("alpha", "beta", "reconstruction_error", "cache_every"):
            logger.scalar(f"dr2net/{key}", stats.get(key), step)
        if "backprop_mode" in stats:
            # TensorBoard scalars are numbers: 1 = fully reversible, 0 = anything else (auto/checkpoint).
            logger.scalar("dr2net/reversible", float(stats["backprop_mode"] == "reversible"), step)
        for name, rep in stats.get("stacks", {}).items():
            if len(stats["stacks"]) > 1:
                logger.scalar(f"dr2net/cache_every/{name or 'stack'}", rep["cache_every"], step)
        logger.record("step", step=step, **{k: v for k, v in stats.items() if k != "backprop_mode"})
        extras = " ".join(f"{k}={_fmt(stats[k])}" for k in ("alpha", "beta", "reconstruction_error", "cache_every",
                                                            "backprop_mode", "activation_bytes") if k in stats)
        log.info("step %d loss %.4f lr %.3g grad_norm %.3g %.1f samples/s %s", step, stats["loss"], stats["lr"],
                 stats["grad_norm"], stats["samples_per_s"], extras)

    def _evaluate(self, dataset, desc: str, items: bool = False) -> dict:
        t = self.cfg.train
        return evaluate(self.net, dataset, device=self.device, batch_size=int(self.cfg.eval.batch_size),
                        num_workers=loader_workers(int(t.num_workers)), amp=self.amp, seed=int(t.seed),
                        progress=bool(self.cfg.run.progress), desc=desc,
                        room_predictor=_room_predictor(self.cfg), items=items)

    # -- main -----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        try:
            self._setup()
        except BaseException:
            self._release_lock()
            raise
        cfg, t = self.cfg, self.cfg.train
        logger = RunLogger(self.run_dir, enabled=self.main, tensorboard=bool(cfg.run.tensorboard))
        stopped = False
        try:
            if self.main:
                dump_config(cfg, self.run_dir / "config.yaml")
            self._announce()
            epochs_run = 0
            with StopFlag() as stop:
                for epoch in range(self.start_epoch, int(t.epochs)):
                    t0 = time.perf_counter()
                    reason = self._train_epoch(epoch, stop, logger)
                    if reason == "signal" and self.step_in_epoch:
                        self._save("last.pth", epoch, self.step_in_epoch)
                        raise TrainingInterrupted(f"interrupted by {stop.requested} in epoch {epoch + 1}; state saved to "
                                                  f"{self.run_dir / 'last.pth'}; continue with: pointdr2 train --resume {self.run_dir}")
                    self._end_epoch(epoch, time.perf_counter() - t0, logger)
                    epochs_run += 1
                    if reason == "signal":
                        raise TrainingInterrupted(f"interrupted by {stop.requested} after epoch {epoch + 1}; state saved "
                                                  f"to {self.run_dir / 'last.pth'}; continue with: pointdr2 train --resume {self.run_dir}")
                    if self.stop_after_epochs is not None and epochs_run >= self.stop_after_epochs \
                            and epoch + 1 < int(t.epochs):
                        log.info("stopping after %d epoch(s) as asked; continue with: pointdr2 train --resume %s", epochs_run,
                                 self.run_dir)
                        stopped = True
                        break
            test_metrics = {} if stopped else self._final_test(logger)
            epochs_done = self.start_epoch + epochs_run
            return TrainResult(self.run_dir, epochs_done, self.global_step, self.best_metric, self.best_epoch,
                               self.last_metrics, test_metrics, stopped, self.metric_name)
        finally:
            logger.close()
            self._release_ddp()
            self._release_lock()

    def _release_lock(self) -> None:
        lock = getattr(self, "lock", None)
        if lock is not None:
            lock.release()
            self.lock = None

    def _release_ddp(self) -> None:
        """Drop the DDP wrapper now, while the process group lives: a Reducer left to the garbage
        collector (modules with hooks sit in reference cycles) may be destroyed only at interpreter exit,
        after destroy_process_group, with gloo work still holding tensors -> SIGABRT ("terminate called
        without an active exception")."""
        if getattr(self, "ddp", None) is not None:
            self.ddp = None
            self.train_net = self.net
            gc.collect()

    def _announce(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        if getattr(self, "memory_fit_text", None):
            log.info("%s", self.memory_fit_text)
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info("run %s: %s on %s (%d process%s), task %s, model %s (%.2fM params), finetune.mode %s",
                 self.run_dir, "resuming" if self.resume else "training", self.device, self.dist.world_size,
                 "es" if self.dist.world_size > 1 else "", self.task, cfg.model.get("name"), n_params / 1e6,
                 cfg.finetune.mode)
        log.info("data: %d train / %d %s samples; global batch %d = %d x %d accumulation x %d processes; "
                 "%d steps per epoch", len(self.train_set), len(self.select_set), self.select_split, t.batch_size,
                 self.micro, t.accumulate, self.dist.world_size, self.steps_per_epoch)
        if self.select_split == "test":
            log.warning("MODEL SELECTION ON THE TEST SET (train.select_on=test), as the Point-BERT/Point-MAE papers "
                        "did: best.pth and its accuracy are chosen on test data and are optimistically biased")
        elif self.select_last:
            log.info("no model selection (train.select_on=last): best.pth holds the final weights and the test set is "
                     "evaluated once with them at the end; a validation split (%.0f%% of the training data) is "
                     "evaluated for the curve only", 100 * float(t.val_fraction))
        else:
            log.info("model selection on a validation split carved from the training data (%.0f%%); the test "
                     "set is evaluated once, with best.pth, at the end", 100 * float(t.val_fraction))

    def _end_epoch(self, epoch: int, seconds: float, logger: RunLogger) -> None:
        t = self.cfg.train
        logger.scalar("train/epoch_loss", self.epoch_train["loss"], epoch + 1)
        logger.scalar("train/acc", self.epoch_train["acc"], epoch + 1)
        logger.scalar("speed/epoch_seconds", seconds, epoch + 1)
        metrics = None
        if (epoch + 1) % max(int(t.val_every), 1) == 0 or epoch + 1 == int(t.epochs):
            metrics = self._evaluate(self.select_set, f"{self.select_split} {epoch + 1}")
            metrics.pop("confusion", None)
            self.last_metrics = metrics
            for key in METRIC_KEYS:
                if key in metrics:
                    logger.scalar(f"{self.select_split}/{key}", metrics[key], epoch + 1)
            value = float(metrics[self.metric_name])
            improved = epoch + 1 == int(t.epochs) if self.select_last else value > self.best_metric
            if improved:
                self.best_metric, self.best_epoch = value, epoch + 1
            logger.record("epoch", epoch=epoch + 1, seconds=seconds, train=self.epoch_train,
                          **{self.select_split: {k: v for k, v in metrics.items() if k != "task"}})
            second = "cls_miou" if self.task == "partseg" else "macc"
            log.info("epoch %d/%d: train loss %.4f acc %.2f | %s %s %.2f %s %.2f | best %.2f (epoch %d) | %.1f s",
                     epoch + 1, t.epochs, self.epoch_train["loss"], self.epoch_train["acc"], self.select_split,
                     self.metric_name, value, second, metrics[second], self.best_metric, self.best_epoch, seconds)
            if improved:
                self._save("best.pth", epoch + 1)
        else:
            logger.record("epoch", epoch=epoch + 1, seconds=seconds, train=self.epoch_train)
            log.info("epoch %d/%d: train loss %.4f acc %.2f | %.1f s", epoch + 1, t.epochs, self.epoch_train["loss"],
                     self.epoch_train["acc"], seconds)
        self._save("last.pth", epoch + 1)
        logger.flush()

    def _final_test(self, logger: RunLogger) -> dict:
        """With val selection: evaluate best.pth once on the test split; write metrics.json."""
        result: dict = {"best_epoch": self.best_epoch, f"best_{self.select_split}_{self.metric_name}": self.best_metric,
                        "select_on": self.cfg.train.select_on, "last_" + self.select_split: plain(self.last_metrics)}
        if self.select_split == "val" and self.cfg.train.get("test_at_end", True) and self.best_epoch > 0:
            best = load_checkpoint(self.run_dir / "best.pth")
            current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(best["model"])
            if self.schedule is not None:
                saved = self.coefficients
                self._set_coefficients(best["finetune"]["alpha"], best["finetune"]["beta"])
            test_set = build_split(self.cfg, "test", self.dataset_fn, float(self.cfg.train.val_fraction))
            test = self._evaluate(test_set, "test", items=True)
            test.pop("confusion", None)
            items = test.pop("items", None)
            if self.main and items is not None:
                # per-object predictions / per-room confusion matrices: paired statistics across runs
                save_items(self.run_dir / "test_items.npz", items)
            self.model.load_state_dict(current)
            if self.schedule is not None:
                self._set_coefficients(*saved)
            log.info("test with best.pth (epoch %d, %s): %s", self.best_epoch,
                     "the last epoch" if self.select_last else "selected on val",
                     " ".join(f"{k} {test[k]:.2f}" for k in METRIC_KEYS if k in test))
            for key in METRIC_KEYS:
                if key in test:
                    logger.scalar(f"test/{key}", test[key], self.best_epoch)
            result["test"] = plain(test)
            logger.record("test", best_epoch=self.best_epoch, **{k: v for k, v in result["test"].items() if k != "task"})
        if self.main:
            (self.run_dir / "metrics.json").write_text(json.dumps(result, indent=2, allow_nan=True) + "\n")
        return result.get("test", {})


def _room_predictor(cfg: Config):
    crop = cfg.dataset.get("crop_points")
    return default_room_predictor(int(crop) if crop else None)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
