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

This module holds the training loop itself (epochs, micro-batch backward passes, optimizer steps, the
divergence check, step records, evaluation, the final test) and the entry points :func:`train` and
:func:`check`. The set-up it runs on is :mod:`pointdr2.engine.session`, where a run stands and what its
checkpoints hold is :mod:`pointdr2.engine.run_state`, the stop flag is :mod:`pointdr2.engine.signals`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pointdr2.config import Config, dump_config
from pointdr2.engine import distributed as dist_utils
from pointdr2.engine.checkpoint import derive_seed, load_checkpoint, restore_rng, seed_everything
from pointdr2.engine.evaluator import amp_context, default_room_predictor, evaluate, forward_batch, save_items
from pointdr2.engine.logger import RunLogger
from pointdr2.engine.memory import SavedTensorMeter, peak_memory_bytes, reset_peak_memory
from pointdr2.engine.network import build_network, load_model_weights, resolve_device, stack_stats
from pointdr2.engine.run_state import Progress, plain, restore, rewind_dataset, save_checkpoint
from pointdr2.engine.session import (
    Session,
    build_split,
    check_run_dir,
    default_dataset_fn,
    default_model_fn,
    loader_workers,
    primary_metric,
)
from pointdr2.engine.signals import StopFlag
from pointdr2.progress import bar as progress_bar

# the set-up helpers and the network helpers, re-exported: callers import them from here
__all__ = ["train", "check", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "resolve_device",
           "build_network", "build_split", "check_run_dir", "primary_metric", "load_model_weights", "loader_workers"]

log = logging.getLogger(__name__)

METRIC_KEYS = ("oa", "macc", "miou", "ins_miou", "cls_miou")  # logged scalars, when a task reports them


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


# ----------------------------------------------------------------------------- entry points
def train(cfg: Config, *, resume: bool = False, force: bool = False, stop_after_epochs: int | None = None,
          model_fn: Callable | None = None, dataset_fn: Callable | None = None) -> TrainResult:
    """Run the training job described by ``cfg`` (see the module docstring). Returns a :class:`TrainResult`.

    ``model_fn(cfg.model)`` and ``dataset_fn(cfg.dataset, split, **kw)`` default to
    ``pointdr2.models.build_model`` and ``pointdr2.data.build_dataset``. ``stop_after_epochs``
    ends this invocation after that many epochs (as if interrupted at the epoch boundary).
    """
    session = Session(cfg, resume=resume, force=force, model_fn=model_fn or default_model_fn,
                      dataset_fn=dataset_fn or default_dataset_fn)
    return _Trainer(session, stop_after_epochs=stop_after_epochs).run()


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
    session = Session(cfg, resume=resume, force=force, model_fn=model_fn or default_model_fn,
                      dataset_fn=dataset_fn or default_dataset_fn)
    _Trainer(session, stop_after_epochs=None).set_up(check_world=world_size)
    if session.memory_fit_text:
        log.info("%s", session.memory_fit_text)
    return {"run_dir": str(session.run_dir), "processes": world_size, "train": len(session.train_set),
            session.select_split: len(session.select_set), "select_split": session.select_split, "task": session.task,
            "steps_per_epoch": session.steps_per_epoch, "micro_batch": session.micro}


# ----------------------------------------------------------------------------- the loop
class _Trainer:
    """The training loop over a :class:`~pointdr2.engine.session.Session`: epochs of micro-batch backward
    passes and optimizer steps, the divergence check, step records and logs, evaluation on the selection
    split, checkpoints, and the final test."""

    def __init__(self, session: Session, *, stop_after_epochs: int | None) -> None:
        self.session = session
        self.stop_after_epochs = stop_after_epochs
        self.progress = Progress()  # where the run stands: set by set_up, moved by the loop, saved in checkpoints

    def set_up(self, check_world: int | None = None) -> None:
        """The session's set-up, then where the run starts: step 0, or the resumed checkpoint's state."""
        s = self.session
        s.setup(check_world)
        self.progress = restore(s, s.ckpt) if s.ckpt is not None else Progress()

    # -- one epoch ------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int, stop: StopFlag, logger: RunLogger) -> str | None:
        """One epoch (or the rest of an interrupted one); "signal" when a stop was requested."""
        s, t = self.session, self.session.cfg.train
        accum = int(t.accumulate)
        step = self.progress.step_in_epoch
        self._start_epoch(epoch, step)
        params = [p for g in s.optimizer.param_groups for p in g["params"]]
        # loss sum, correct, seen (samples or points), micro-batches
        totals = [torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64),
                  torch.zeros((), dtype=torch.int64), torch.zeros((), dtype=torch.int64)]
        samples_since, t_since = 0, time.perf_counter()
        reset_peak_memory(s.device)
        show = s.main and bool(s.cfg.run.progress)
        # off a terminal the run.log_every lines are the progress: no bar in a redirected log
        bar = progress_bar(total=s.steps_per_epoch, initial=step, desc=f"epoch {epoch + 1}/{t.epochs}",
                           enabled=show, log_lines=False, leave=False, dynamic_ncols=True)
        micro_i, act_bytes = 0, None
        s.update_coefficients(epoch, step)
        try:
            for batch in s.loader:
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
                if self.progress.global_step % max(int(s.cfg.run.log_every), 1) == 0 or step == s.steps_per_epoch:
                    stats = self._step_record(loss, gnorm, samples_since / max(time.perf_counter() - t_since, 1e-9),
                                              act_bytes, epoch + step / s.steps_per_epoch)
                    self._log_step(logger, stats)
                    bar.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{stats['lr']:.2e}")
                    samples_since, t_since = 0, time.perf_counter()
                if stop_now and step < s.steps_per_epoch:
                    self.progress.step_in_epoch = step
                    return "signal"
                s.update_coefficients(epoch, step)
        finally:
            bar.close()
        self.progress.step_in_epoch = 0
        loss_sum, correct, seen, batches = dist_utils.all_reduce_sum(torch.stack([v.double() for v in totals]))
        self.epoch_train = {"loss": float(loss_sum / max(batches, 1)), "acc": float(100.0 * correct / max(seen, 1)),
                            "activation_bytes": act_bytes}
        return "signal" if stop.requested is not None else None

    def _start_epoch(self, epoch: int, start_step: int) -> None:
        """Random streams, sampler and dataset positioned where an uninterrupted run is at ``start_step``."""
        s, t = self.session, self.session.cfg.train
        accum = int(t.accumulate)
        if start_step and self.progress.resumed_rng is not None:
            restore_rng(self.progress.resumed_rng)  # continue the interrupted epoch's random streams
        else:
            seed_everything(derive_seed(t.seed, epoch, s.dist.rank))
        self.progress.resumed_rng = None
        s.sampler.set_epoch(epoch, start_batch=start_step * accum)
        rewind_dataset(s.train_set, epoch, start_step * accum * s.micro)
        s.loader_gen.manual_seed(derive_seed(t.seed, epoch, s.dist.rank, 1))
        s.train_net.train()

    def _backward_micro(self, batch: dict, last_micro: bool, measure: bool, totals: list) -> tuple[torch.Tensor, int | None]:
        """Forward and backward of one micro-batch (gradients accumulate); its loss, and with ``measure`` the
        bytes autograd saved for its backward. ``totals`` (loss sum, correct, seen, batches) grows in place."""
        s = self.session
        accum = int(s.cfg.train.accumulate)
        sync = s.ddp.no_sync() if (s.ddp is not None and not last_micro) else contextlib.nullcontext()
        meter = SavedTensorMeter(s.model) if measure else contextlib.nullcontext()
        with sync:
            with meter, amp_context(s.device, s.amp):
                logits = forward_batch(s.train_net, batch, s.task, s.device)
                target = batch["label"].to(s.device, non_blocking=True)
                loss = s.loss_fn(logits, target)
            scaled = loss / accum
            if s.scaler is not None:
                scaled = s.scaler.scale(scaled)
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
        s = self.session
        clip = float(s.cfg.train.grad_clip)
        if s.scaler is not None:
            s.scaler.unscale_(s.optimizer)
        gnorm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        flags = torch.tensor([float(not torch.isfinite(loss.detach()).item()), float(stop.requested is not None)])
        flags = dist_utils.all_reduce_sum(flags)
        if flags[0] > 0 or (s.scaler is None and not torch.isfinite(gnorm).item()):
            s.optimizer.zero_grad(set_to_none=True)
            raise self._diverged(loss, gnorm, epoch, step)
        if s.scaler is not None:
            s.scaler.step(s.optimizer)
            s.scaler.update()
        else:
            s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
        s.lr_schedule.step()
        self.progress.global_step += 1
        return gnorm, bool(flags[1] > 0)

    def _diverged(self, loss: torch.Tensor, gnorm: torch.Tensor, epoch: int, step: int) -> TrainingDiverged:
        """The error for a NaN/inf loss or gradient norm: where it happened and what was kept."""
        s = self.session
        coeffs = (f", alpha/beta {s.coefficients[0]:.3g}/{s.coefficients[1]:.3g}"
                  if s.schedule is not None else "")
        kept = (f"the last good checkpoint {s.run_dir / 'last.pth'} (epoch {epoch}) is kept"
                if (s.run_dir / "last.pth").is_file() else "no checkpoint had been written yet")
        return TrainingDiverged(
            f"loss became {float(loss.detach()):.4g} at epoch {epoch + 1} step {step + 1} (grad norm "
            f"{float(gnorm):.4g}, lr {s.lr_schedule.get_last_lr():.3g}{coeffs}); training stopped and "
            f"{kept}; try a lower train.lr, train.amp=none or finetune.backprop=auto")

    def _step_record(self, loss: torch.Tensor, gnorm: torch.Tensor, samples_per_s: float, act_bytes: int | None,
                     epoch: float) -> dict:
        """The structured record of one logged step (metrics.jsonl, tensorboard, the log line)."""
        s = self.session
        stats = {"loss": float(loss.detach()), "lr": s.optimizer.param_groups[0]["lr"], "grad_norm": float(gnorm),
                 "samples_per_s": samples_per_s, "peak_memory_bytes": peak_memory_bytes(s.device)}
        if act_bytes is not None:
            stats["activation_bytes"] = act_bytes
        stats.update(stack_stats(s.net))
        if s.schedule is not None:
            stats["alpha"], stats["beta"] = s.coefficients
        stats["epoch"] = epoch
        return stats

    def _log_step(self, logger: RunLogger, stats: dict) -> None:
        """One step's record to tensorboard, metrics.jsonl and the log."""
        step = self.progress.global_step
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
        """The network's metrics on ``dataset`` (with per-item predictions when ``items``)."""
        s = self.session
        t = s.cfg.train
        return evaluate(s.net, dataset, device=s.device, batch_size=int(s.cfg.eval.batch_size),
                        num_workers=loader_workers(int(t.num_workers)), amp=s.amp, seed=int(t.seed),
                        progress=bool(s.cfg.run.progress), desc=desc,
                        room_predictor=_room_predictor(s.cfg), items=items)

    # -- main -----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Set up, train the remaining epochs, test; the DDP wrapper and the run directory's lock are
        released however it ends."""
        s = self.session
        try:
            self.set_up()
        except BaseException:
            s.release_lock()
            raise
        cfg, t, p = s.cfg, s.cfg.train, self.progress
        logger = RunLogger(s.run_dir, enabled=s.main, tensorboard=bool(cfg.run.tensorboard))
        stopped = False
        try:
            if s.main:
                dump_config(cfg, s.run_dir / "config.yaml")
            s.announce()
            epochs_run = 0
            with StopFlag() as stop:
                for epoch in range(p.start_epoch, int(t.epochs)):
                    t0 = time.perf_counter()
                    reason = self._train_epoch(epoch, stop, logger)
                    if reason == "signal" and p.step_in_epoch:
                        save_checkpoint(s, p, "last.pth", epoch, p.step_in_epoch)
                        raise TrainingInterrupted(f"interrupted by {stop.requested} in epoch {epoch + 1}; state saved to "
                                                  f"{s.run_dir / 'last.pth'}; continue with: pointdr2 train --resume {s.run_dir}")
                    self._end_epoch(epoch, time.perf_counter() - t0, logger)
                    epochs_run += 1
                    if reason == "signal":
                        raise TrainingInterrupted(f"interrupted by {stop.requested} after epoch {epoch + 1}; state saved "
                                                  f"to {s.run_dir / 'last.pth'}; continue with: pointdr2 train --resume {s.run_dir}")
                    if self.stop_after_epochs is not None and epochs_run >= self.stop_after_epochs \
                            and epoch + 1 < int(t.epochs):
                        log.info("stopping after %d epoch(s) as asked; continue with: pointdr2 train --resume %s", epochs_run,
                                 s.run_dir)
                        stopped = True
                        break
            test_metrics = {} if stopped else self._final_test(logger)
            epochs_done = p.start_epoch + epochs_run
            return TrainResult(s.run_dir, epochs_done, p.global_step, p.best_metric, p.best_epoch, p.last_metrics,
                               test_metrics, stopped, s.metric_name)
        finally:
            logger.close()
            s.release_ddp()
            s.release_lock()

    def _end_epoch(self, epoch: int, seconds: float, logger: RunLogger) -> None:
        """Epoch records; every ``train.val_every`` epochs (and the last) evaluation on the selection split,
        best.pth when it improved; last.pth."""
        s, t, p = self.session, self.session.cfg.train, self.progress
        logger.scalar("train/epoch_loss", self.epoch_train["loss"], epoch + 1)
        logger.scalar("train/acc", self.epoch_train["acc"], epoch + 1)
        logger.scalar("speed/epoch_seconds", seconds, epoch + 1)
        metrics = None
        if (epoch + 1) % max(int(t.val_every), 1) == 0 or epoch + 1 == int(t.epochs):
            metrics = self._evaluate(s.select_set, f"{s.select_split} {epoch + 1}")
            metrics.pop("confusion", None)
            p.last_metrics = metrics
            for key in METRIC_KEYS:
                if key in metrics:
                    logger.scalar(f"{s.select_split}/{key}", metrics[key], epoch + 1)
            value = float(metrics[s.metric_name])
            improved = epoch + 1 == int(t.epochs) if s.select_last else value > p.best_metric
            if improved:
                p.best_metric, p.best_epoch = value, epoch + 1
            logger.record("epoch", epoch=epoch + 1, seconds=seconds, train=self.epoch_train,
                          **{s.select_split: {k: v for k, v in metrics.items() if k != "task"}})
            second = "cls_miou" if s.task == "partseg" else "macc"
            log.info("epoch %d/%d: train loss %.4f acc %.2f | %s %s %.2f %s %.2f | best %.2f (epoch %d) | %.1f s",
                     epoch + 1, t.epochs, self.epoch_train["loss"], self.epoch_train["acc"], s.select_split,
                     s.metric_name, value, second, metrics[second], p.best_metric, p.best_epoch, seconds)
            if improved:
                save_checkpoint(s, p, "best.pth", epoch + 1)
        else:
            logger.record("epoch", epoch=epoch + 1, seconds=seconds, train=self.epoch_train)
            log.info("epoch %d/%d: train loss %.4f acc %.2f | %.1f s", epoch + 1, t.epochs, self.epoch_train["loss"],
                     self.epoch_train["acc"], seconds)
        save_checkpoint(s, p, "last.pth", epoch + 1)
        logger.flush()

    def _final_test(self, logger: RunLogger) -> dict:
        """With val selection: evaluate best.pth once on the test split; write metrics.json."""
        s, p = self.session, self.progress
        result: dict = {"best_epoch": p.best_epoch, f"best_{s.select_split}_{s.metric_name}": p.best_metric,
                        "select_on": s.cfg.train.select_on, "last_" + s.select_split: plain(p.last_metrics)}
        if s.select_split == "val" and s.cfg.train.get("test_at_end", True) and p.best_epoch > 0:
            best = load_checkpoint(s.run_dir / "best.pth")
            current = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
            s.model.load_state_dict(best["model"])
            if s.schedule is not None:
                saved = s.coefficients
                s.set_coefficients(best["finetune"]["alpha"], best["finetune"]["beta"])
            test_set = build_split(s.cfg, "test", s.dataset_fn, float(s.cfg.train.val_fraction))
            test = self._evaluate(test_set, "test", items=True)
            test.pop("confusion", None)
            items = test.pop("items", None)
            if s.main and items is not None:
                # per-object predictions / per-room confusion matrices: paired statistics across runs
                save_items(s.run_dir / "test_items.npz", items)
            s.model.load_state_dict(current)
            if s.schedule is not None:
                s.set_coefficients(*saved)
            log.info("test with best.pth (epoch %d, %s): %s", p.best_epoch,
                     "the last epoch" if s.select_last else "selected on val",
                     " ".join(f"{k} {test[k]:.2f}" for k in METRIC_KEYS if k in test))
            for key in METRIC_KEYS:
                if key in test:
                    logger.scalar(f"test/{key}", test[key], p.best_epoch)
            result["test"] = plain(test)
            logger.record("test", best_epoch=p.best_epoch, **{k: v for k, v in result["test"].items() if k != "task"})
        if s.main:
            (s.run_dir / "metrics.json").write_text(json.dumps(result, indent=2, allow_nan=True) + "\n")
        return result.get("test", {})


def _room_predictor(cfg: Config):
    crop = cfg.dataset.get("crop_points")
    return default_room_predictor(int(crop) if crop else None)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
