"""Run logging: a log file in the run directory plus TensorBoard scalars, on rank 0 only."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

__all__ = ["RunLogger", "LOG_FORMAT"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RunLogger:
    """Attach ``run_dir/train.log`` to the ``pointdr2`` logger and open a TensorBoard writer.

    On ranks other than 0 nothing is written (``scalar`` is a no-op) and the ``pointdr2`` logger
    is raised to WARNING so the console is not repeated W times. Use as a context manager or call
    :meth:`close`.
    """

    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True,
                 log_name: str = "train.log") -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._root = logging.getLogger("pointdr2")
        self._handler: logging.Handler | None = None
        self._old_level = self._root.level
        self.writer = None
        if not enabled:
            self._root.setLevel(logging.WARNING)
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._handler = logging.FileHandler(self.run_dir / log_name, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        self._handler.setLevel(logging.INFO)
        self._root.addHandler(self._handler)
        if self._root.getEffectiveLevel() > logging.INFO:
            self._root.setLevel(logging.INFO)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def scalar(self, tag: str, value, step: int) -> None:
        if self.writer is None or value is None:
            return
        value = float(value)
        if math.isfinite(value):
            self.writer.add_scalar(tag, value, step)

    def scalars(self, values: dict, step: int, prefix: str = "") -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.scalar(prefix + key, value, step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()
        if self._handler is not None:
            self._handler.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._handler is not None:
            self._root.removeHandler(self._handler)
            self._handler.close()
            self._handler = None
        self._root.setLevel(self._old_level)

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
