"""Training checkpoints: atomic writes, validated loads, and RNG state capture.

A checkpoint written here is a dict (``FORMAT`` marks it as ours)::

    {"format": "pointdr2-checkpoint", "version": 1,
     "model": base model state dict (never the Dr2Net surrogate wrapper; same weights),
     "optimizer", "scheduler", "scaler", "schedule": {...}, "rng": {...},
     "epoch": epochs completed, "global_step": optimizer steps, "step_in_epoch": optimizer steps
     done in the interrupted epoch (0 at epoch boundaries), "best_metric", "best_epoch",
     "metrics": last validation metrics, "finetune": {"mode", "alpha", "beta", ...},
     "config": the resolved config as a plain dict}

Only tensors, numbers, strings, lists, tuples and dicts are stored, so ``torch.load`` runs with
``weights_only=True`` (no arbitrary code from a downloaded file). Every checkpoint the engine reads
(resume, ``eval``, ``visualize``, ``model.pretrained``) goes through ``load_checkpoint``, which is
``pointdr2.models.checkpoints.read_checkpoint``: one loading policy for every entry point
(``POINTDR2_TRUST_CHECKPOINTS=1`` allows full unpickling of a trusted file).
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pointdr2.models.checkpoints import OWN_FORMAT, read_checkpoint

__all__ = ["FORMAT", "save_atomic", "load_checkpoint", "is_own_checkpoint", "capture_rng", "restore_rng"]

log = logging.getLogger(__name__)

FORMAT = OWN_FORMAT  # the one format tag, defined beside the one reader
VERSION = 1


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    A crash or kill at any moment leaves either the old file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # Persist the rename itself (the directory entry).
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint file as a dict; one-line errors for missing or unreadable files.

    The project's single reader (:func:`pointdr2.models.checkpoints.read_checkpoint`): weights-only
    unpickling with harmless NumPy globals allowed, full unpickling only with
    ``POINTDR2_TRUST_CHECKPOINTS=1``.
    """
    return read_checkpoint(path, map_location=map_location)


def is_own_checkpoint(ckpt: Mapping) -> bool:
    return ckpt.get("format") == FORMAT


# ----------------------------------------------------------------------------- RNG states
def capture_rng() -> dict:
    """Python, NumPy, torch CPU and (when present) CUDA RNG states, as weights_only-safe values."""
    # The legacy global NumPy RNG is what datasets and user transforms draw from; it must be saved.
    np_state = np.random.get_state()  # noqa: NPY002
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    # weights_only loading may return lists where tuples were saved.
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],  # noqa: NPY002
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            log.warning("checkpoint holds CUDA RNG states of %d devices, this machine has %d; not restored",
                        len(cuda), torch.cuda.device_count())


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one integer."""
    seed = int(seed) % (2**63)
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - seeds the global RNG datasets draw from
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends only on ``parts`` (e.g. (seed, epoch, rank)); stable across runs."""
    ss = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts])
    return int(ss.generate_state(1, dtype=np.uint64)[0]) >> 1
