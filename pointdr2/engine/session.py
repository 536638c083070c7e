"""The set-up of a training job: everything ``pointdr2 train`` builds before its first step.

:class:`Session` checks the ``train``/``finetune`` settings it is given, then :meth:`Session.setup` builds,
in this order:

- process: device, process group (or the world ``pointdr2 train --check`` assumes), determinism, seeds;
- data: the train and selection splits, the task and class count, the checkpoint to resume from, and the
  fit of mode and batch to ``train.memory_budget`` (``pointdr2.engine.plan``);
- run directory: claimed with its lock (the refusals of :func:`check_run_dir` come first), the
  per-process micro-batch;
- model: its resumed or pretrained weights;
- network: the model or its Dr2Net/checkpointed surrogate (:func:`~pointdr2.engine.network.build_network`)
  at the coefficient schedule's start, and the coefficients it runs with from then on;
- optimization: optimizer, learning-rate schedule, mixed precision;
- loader: the DDP wrapper and the train loader with its resumable epoch sampler.

It also announces the set-up in ``train.log`` and releases the DDP wrapper and the run directory's lock.
Where the run stands (epoch, step, best metric) is not set up here: see :mod:`pointdr2.engine.run_state`.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pointdr2.config import CHOICES, Config, carved_fraction, parse_size
from pointdr2.data import build_dataset
from pointdr2.engine import distributed as dist_utils
from pointdr2.engine import plan as memory_plan  # by module: tests stand in for measure_plan
from pointdr2.engine.checkpoint import is_own_checkpoint, seed_everything
from pointdr2.engine.evaluator import amp_context, task_of
from pointdr2.engine.losses import build_loss
from pointdr2.engine.memory import cache_freed_blocks, return_freed_blocks
from pointdr2.engine.network import FINETUNE_MODES, build_network, coefficient_schedule, resolve_device
from pointdr2.engine.optim import build_lr_schedule, build_optimizer
from pointdr2.engine.run_lock import LOCK_NAME, RunLock, remove_stale_temp_files
from pointdr2.engine.run_state import check_resumed_config, load_resume_checkpoint
from pointdr2.engine.weights import resolve_weights
from pointdr2.models import build_model, load_pretrained
from pointdr2.reversible import apply_coefficients, iter_stacks

__all__ = ["Session", "RUN_FILES", "primary_metric", "check_run_dir", "build_split", "loader_workers",
           "default_model_fn", "default_dataset_fn"]

log = logging.getLogger("pointdr2.engine.trainer")  # the training job's logger: train.log names it as before

RUN_FILES = ("config.yaml", "last.pth", "best.pth", "train.log", "metrics.json")


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


def default_model_fn(cfg_model):
    return build_model(cfg_model)


def default_dataset_fn(cfg_dataset, split, **kw):
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
    # Ctrl-C reaches the whole process group: workers ignore it so the main process can finish the
    # current step and save (a worker killed mid-fetch would abort the loader instead).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    s = torch.initial_seed()
    np.random.seed(s % (2**32))  # noqa: NPY002 - the global RNG is what datasets draw from
    random.seed(s)


def _check_settings(cfg: Config) -> None:
    """The ``finetune.mode`` and ``train`` settings the set-up relies on, checked before anything is built."""
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


# ----------------------------------------------------------------------------- the session
class Session:
    """One training job's set-up (see the module docstring): the config it was checked against, and after
    :meth:`setup` the process, data, run directory, model, network, optimization and loader it trains with.
    ``model_fn(cfg.model)`` and ``dataset_fn(cfg.dataset, split, **kw)`` build the model and the splits."""

    def __init__(self, cfg: Config, *, resume: bool, force: bool, model_fn: Callable, dataset_fn: Callable) -> None:
        self.cfg = cfg
        self.resume, self.force = resume, force
        self.model_fn, self.dataset_fn = model_fn, dataset_fn
        self.run_dir = Path(os.path.expanduser(str(cfg.run.dir)))
        self.memory_fit_text: str | None = None  # what the memory fit chose, for train.log and --check
        self.lock: RunLock | None = None  # held by rank 0 from the run directory's claim to release_lock()
        self.ddp = None  # the DDP wrapper of the network, when training in a process group
        _check_settings(cfg)

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self, check_world: int | None = None) -> None:
        """Build everything before the first step. ``check_world``: only check, as that many processes
        would (no process group, no DDP wrapper, nothing removed by --force; see
        :func:`pointdr2.engine.trainer.check`). ``self.ckpt`` is then the checkpoint to resume from, or None."""
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
        self.lr_schedule = build_lr_schedule(self.optimizer, t, self.steps_per_epoch)
        self.loss_fn = build_loss(t)
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

    # -- memory fit -----------------------------------------------------------------------------
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
            result: list = [self._measure_fit(budget, world) if self.main else None]
            if self.dist.enabled:
                torch.distributed.broadcast_object_list(result, src=0)
            fit = result[0]
            if "error" in fit:
                raise memory_plan.MemoryBudgetError(fit["error"])
            # logged by announce(), once train.log exists (and by pointdr2 train --check)
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

    def _measure_fit(self, budget: int, world: int) -> dict:
        """Rank 0's part of the fit: the plan measured with the training data's samples (through the module
        attribute ``memory_plan.measure_plan``, which tests stand in for) and the choice under ``budget``,
        as a dict; ``{"error": ...}`` when nothing fits."""
        cfg, t = self.cfg, self.cfg.train
        sample = self.train_set[0]
        points = int((sample["points"] if "points" in sample else sample["pos"]).shape[0])
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
            return memory_plan.choose_fit(plan, budget, mode=str(cfg.finetune.mode), batch_size=t.batch_size,
                                          processes=world, max_batch=max(1, len(self.train_set) // world)).to_dict()
        except ValueError as exc:
            return {"error": str(exc)}

    # -- run directory --------------------------------------------------------------------------
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

    # -- coefficients ---------------------------------------------------------------------------
    def set_coefficients(self, alpha: float, beta: float) -> None:
        """Run the network at Dr2Net coefficients ``alpha``/``beta`` (``self.coefficients`` says which)."""
        apply_coefficients(self.net, alpha, beta)
        self.coefficients = (alpha, beta)

    def update_coefficients(self, epoch: int, step_in_epoch: int) -> None:
        """The schedule's coefficients at this point of training (fractional epochs with
        ``finetune.per_step``); nothing without a schedule or when they are unchanged."""
        if self.schedule is None:
            return
        t = float(epoch) + (step_in_epoch / self.steps_per_epoch if self.cfg.finetune.per_step else 0.0)
        alpha, beta = self.schedule(t)
        if (alpha, beta) != self.coefficients:
            self.set_coefficients(float(alpha), float(beta))

    # -- announce and release -------------------------------------------------------------------
    def announce(self) -> None:
        """The set-up in train.log: memory fit, process, model, data, batch and the model-selection protocol."""
        cfg, t = self.cfg, self.cfg.train
        if self.memory_fit_text:
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

    def release_ddp(self) -> None:
        """Drop the DDP wrapper now, while the process group lives: a Reducer left to the garbage
        collector (modules with hooks sit in reference cycles) may be destroyed only at interpreter exit,
        after destroy_process_group, with gloo work still holding tensors -> SIGABRT ("terminate called
        without an active exception")."""
        if self.ddp is not None:
            self.ddp = None
            self.train_net = self.net
            gc.collect()

    def release_lock(self) -> None:
        """Release the run directory's lock, if this process holds it (idempotent)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
