"""What the commands that run the engine share: a command's config and checkpoint from its arguments, the
exit status of a run that stopped early, JSON without NaN."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from pointdr2.config import Config
from pointdr2.engine.inference import default_checkpoint, resolve_config
from pointdr2.engine.trainer import TrainingDiverged

__all__ = ["command_config", "command_checkpoint", "stopped_training_exit", "nan_to_none"]


def _split_positional(args: argparse.Namespace) -> None:
    """``CONFIG`` is optional: a first positional ``key=value`` that names no file is an override."""
    config = getattr(args, "config", None)
    if config and "=" in config and not Path(config).exists():
        args.overrides = [config, *(args.overrides or [])]
        args.config = None


def command_config(args: argparse.Namespace, extra: list[str] | tuple = ()) -> Config:
    """The config of a command: CONFIG as given, or a run directory's config.yaml (a RUN positional,
    ``--resume RUN`` or the folder of ``--checkpoint RUN/best.pth``), plus the overrides."""
    _split_positional(args)
    return resolve_config(getattr(args, "config", None), [*(args.overrides or []), *extra],
                          resume=getattr(args, "resume", None), checkpoint=getattr(args, "checkpoint", None))


def command_checkpoint(args: argparse.Namespace) -> Path:
    """``--checkpoint`` (which must exist), defaulting to ``RUN/best.pth`` when the positional is a run directory."""
    if getattr(args, "checkpoint", None):
        path = Path(args.checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"--checkpoint: file not found: {path}")
        return path
    config = getattr(args, "config", None)
    if config and Path(config).is_dir():
        return default_checkpoint(config)
    raise ValueError("--checkpoint PATH is needed with a CONFIG file (or give a run directory instead of CONFIG)")


def stopped_training_exit(exc: BaseException, command: str) -> int:
    """One stderr line and the exit status for a run that stopped early: 3 diverged, 130 interrupted."""
    if isinstance(exc, TrainingDiverged):
        print(f"pointdr2 {command}: error: {exc}", file=sys.stderr)
        return 3
    print(f"pointdr2 {command}: {exc}", file=sys.stderr)
    return 130


def nan_to_none(obj):
    """JSON has no NaN: NaN / inf become None, recursively through dicts."""
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
