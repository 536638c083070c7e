"""Run state and resume: what a training checkpoint holds, reading the one to resume from, checking the
resumed config against the checkpoint's, and putting a dataset's augmentation stream back where an
uninterrupted run would be.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from pointdr2.config import Config
from pointdr2.data.common import AugmentedDataset
from pointdr2.engine.checkpoint import load_checkpoint

__all__ = ["load_resume_checkpoint", "check_resumed_config", "rewind_dataset", "plain"]

log = logging.getLogger("pointdr2.engine.trainer")  # the training job's logger: train.log names it as before


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
