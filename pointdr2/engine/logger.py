"""Run logging on rank 0 only: ``train.log`` for people, TensorBoard scalars, and ``metrics.jsonl``.

``metrics.jsonl`` is the structured record of a run that programs read (the evidence study does): one
JSON object per line with a ``kind`` ("step", "epoch", "test") and plain numbers, strings, lists and
dicts; non-finite floats are written as null. A resumed run appends to it, so a step can appear twice
(the interrupted and the repeated one); readers keep the last record of each step.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
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
                 log_name: str = "train.log", records: str | None = "metrics.jsonl") -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._root = logging.getLogger("pointdr2")
        self._handler: logging.Handler | None = None
        self._old_level = self._root.level
        self.writer = None
        self._records = None
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
        if records:
            self._records = open(self.run_dir / records, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def record(self, kind: str, **fields) -> None:
        """Append one ``{"kind": kind, **fields}`` line to ``metrics.jsonl`` (a no-op off rank 0)."""
        if self._records is None:
            return
        self._records.write(json.dumps({"kind": kind, **_plain(fields)}, allow_nan=False) + "\n")

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
        if self._records is not None:
            self._records.flush()
        if self.writer is not None:
            self.writer.flush()
        if self._handler is not None:
            self._handler.flush()

    def close(self) -> None:
        if self._records is not None:
            self._records.close()
            self._records = None
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


def _plain(obj):
    """JSON-safe values: finite floats (others -> None), ints, strings, lists and dicts."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    try:
        value = float(obj)
    except (TypeError, ValueError):
        return str(obj)
    return value if math.isfinite(value) else None


def read_records(path: str | os.PathLike, kind: str | None = None) -> list[dict]:
    """The records of a ``metrics.jsonl`` (only ``kind`` ones if given), in order, the last of each
    (kind, step/epoch) kept; a torn last line (a run killed mid-write) is skipped."""
    out: dict[tuple, dict] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict) or (kind is not None and rec.get("kind") != kind):
                continue
            key = (rec.get("kind"), rec.get("step"), rec.get("epoch"))
            out.pop(key, None)
            out[key] = rec
    return list(out.values())
