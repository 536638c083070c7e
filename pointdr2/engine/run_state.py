"""Run state and resume: where a run stands (:class:`Progress`), what a training checkpoint holds
(:func:`checkpoint_state`, the format of :mod:`pointdr2.engine.checkpoint`) and saving it, restoring a run from
it, reading the one to resume from, checking the resumed config against the checkpoint's, and putting a
dataset's augmentation stream back where an uninterrupted run would be.

The functions that read or write a run's parts take its ``session``, the
:class:`~pointdr2.engine.session.Session` that built them (model, optimizer, lr schedule, grad scaler,
coefficients, process group); they do not import it, so the set-up can use this module.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pointdr2.config import Config
from pointdr2.data.common import AugmentedDataset
from pointdr2.engine import distributed as dist_utils
from pointdr2.engine.checkpoint import FORMAT, VERSION, capture_rng, load_checkpoint, save_atomic

__all__ = ["Progress", "checkpoint_state", "save_checkpoint", "restore", "load_resume_checkpoint",
           "check_resumed_config", "rewind_dataset", "plain"]

log = logging.getLogger("pointdr2.engine.trainer")  # the training job's logger: train.log names it as before


@dataclass
class Progress:
    """Where a run stands, beside its session's parts: the epoch this invocation starts at, optimizer steps
    done, optimizer steps done in an interrupted epoch (0 at epoch boundaries), the best selection metric and
    its epoch, the last selection metrics, and after a resume this rank's RNG states (the interrupted
    epoch continues with them)."""

    start_epoch: int = 0
    global_step: int = 0
    step_in_epoch: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    last_metrics: dict = field(default_factory=dict)
    resumed_rng: dict | None = None


def checkpoint_state(session, progress: Progress, epoch: int, step_in_epoch: int) -> dict:
    """What a checkpoint holds after ``epoch`` epochs and ``step_in_epoch`` optimizer steps of the next."""
    s = session
    # RNG states of every rank (rank 0 writes the file): each rank resumes its own streams.
    rng = capture_rng()
    if s.dist.enabled:
        gathered = [None] * s.dist.world_size
        torch.distributed.all_gather_object(gathered, rng)
        rngs = {str(r): state for r, state in enumerate(gathered)}
    else:
        rngs = {"0": rng}
    alpha, beta = s.coefficients
    return {
        "format": FORMAT, "version": VERSION,
        "model": {k: v.detach().cpu() for k, v in s.model.state_dict().items()},
        "optimizer": s.optimizer.state_dict(),
        "scheduler": s.lr_schedule.state_dict(),
        "scaler": s.scaler.state_dict() if s.scaler is not None else None,
        "schedule": {"alpha": alpha, "beta": beta,
                     "t": epoch + step_in_epoch / s.steps_per_epoch},
        "rng": rngs,
        "epoch": epoch, "global_step": progress.global_step, "step_in_epoch": step_in_epoch,
        "best_metric": progress.best_metric, "best_epoch": progress.best_epoch,
        "metrics": plain(progress.last_metrics),
        "finetune": {"mode": s.cfg.finetune.mode, "alpha": alpha, "beta": beta,
                     "output": s.cfg.finetune.output, "residual": s.cfg.finetune.residual,
                     "gain": s.cfg.finetune.gain},
        "task": s.task,
        "memory_fit": s.memory_fit,
        "config": s.cfg.to_dict(),
    }


def save_checkpoint(session, progress: Progress, name: str, epoch: int, step_in_epoch: int = 0) -> None:
    """``run_dir/name``, written atomically by rank 0 (every rank takes part: the RNG states are gathered)."""
    state = checkpoint_state(session, progress, epoch, step_in_epoch)
    if session.main:
        save_atomic(state, session.run_dir / name)
    dist_utils.barrier()


def restore(session, ckpt: Mapping) -> Progress:
    """Put the session's optimizer, lr schedule, grad scaler and coefficients back to the checkpoint's; return
    where the run stands (the model's weights are loaded by the set-up, before the network is built)."""
    s = session
    s.optimizer.load_state_dict(ckpt["optimizer"])
    s.lr_schedule.load_state_dict(ckpt["scheduler"])
    if s.scaler is not None and ckpt.get("scaler"):
        s.scaler.load_state_dict(ckpt["scaler"])
    progress = Progress(start_epoch=int(ckpt["epoch"]), global_step=int(ckpt["global_step"]),
                        step_in_epoch=int(ckpt.get("step_in_epoch", 0)),
                        best_metric=float(ckpt.get("best_metric", -math.inf)),
                        best_epoch=int(ckpt.get("best_epoch", -1)), last_metrics=dict(ckpt.get("metrics") or {}))
    sched = ckpt.get("schedule") or {}
    if s.schedule is not None and "alpha" in sched:
        s.set_coefficients(float(sched["alpha"]), float(sched["beta"]))
    progress.resumed_rng = (ckpt.get("rng") or {}).get(str(s.dist.rank))
    log.info("resumed %s at epoch %d (+%d steps), global step %d, best %s %.4f (epoch %d)",
             s.run_dir, progress.start_epoch, progress.step_in_epoch, progress.global_step, s.metric_name,
             progress.best_metric, progress.best_epoch)
    return progress


def load_resume_checkpoint(run_dir: Path) -> dict:
    """``run_dir/last.pth``; when it is unreadable, the error says so and points at a readable best.pth."""
    try:
        return load_checkpoint(run_dir / "last.pth")
    except ValueError as exc:
        hint = "start over with --force"
        best = run_dir / "best.pth"
        if best.is_file():
            try:
                epoch = load_checkpoint(best).get("epoch")
                hint = (f"{best} (epoch {epoch}) is intact: copy it to last.pth to resume from there "
                        f"(cp {best} {run_dir / 'last.pth'}), or start over with --force")
            except ValueError:
                hint = f"{best} is unreadable too; start over with --force"
        raise ValueError(f"cannot resume: {exc}; {hint}") from None


def check_resumed_config(ckpt: Mapping, cfg: Config) -> None:
    """Warn (once, listing every key) where ``cfg`` differs from the config the checkpoint was written with
    (``run.dir`` aside: a run directory may move)."""
    saved = ckpt.get("config") or {}
    now = cfg.to_dict()
    diffs = []

    def walk(a, b, prefix=""):
        for key in sorted(set(a) | set(b)):
            path = prefix + str(key)
            va, vb = a.get(key), b.get(key)
            if isinstance(va, Mapping) and isinstance(vb, Mapping):
                walk(va, vb, path + ".")
            elif va != vb and path != "run.dir":
                diffs.append(f"{path}: {va!r} -> {vb!r}")

    walk(saved, now)
    if diffs:
        log.warning("resuming with a config that differs from the checkpoint's: %s", "; ".join(diffs))


def rewind_dataset(dataset, epoch: int, fetched: int) -> None:
    """Make a dataset's own augmentation state depend on the epoch only (exact resume).

    pointdr2's loaders (:class:`~pointdr2.data.common.AugmentedDataset`) draw augmentations from
    ``(torch.initial_seed(), items fetched so far, index)``; the trainer reseeds torch every epoch, so
    ``set_epoch(epoch, fetched)`` puts the stream where an uninterrupted run would be. Other datasets
    may expose ``set_epoch(epoch)``.
    """
    if isinstance(dataset, AugmentedDataset):
        dataset.set_epoch(epoch, int(fetched))
    elif hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


def plain(obj):
    """Numbers, strings, lists and dicts only (checkpoints load with weights_only=True)."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
