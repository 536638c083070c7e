"""Progress for long waits: a tqdm bar on a terminal, log lines everywhere else.

A bar redraws itself with carriage returns, which turns a log file (``pointdr2 train ... > run.out
2>&1``, a study's log, CI output) into one unreadable line. So :func:`bar` draws a bar only when
standard error is a terminal; elsewhere the same object writes an INFO line through :mod:`logging` at
most every ``every`` seconds (``eval: 1,204,331/2,310,000 pt (52%), 41 s, ~38 s left``), and nothing for
waits shorter than that. ``POINTDR2_PROGRESS=bar|log|off`` overrides the choice.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Iterable, Optional

from tqdm.auto import tqdm

__all__ = ["bar", "style", "LogProgress"]

STYLES = ("bar", "log", "off")
_log = logging.getLogger("pointdr2.progress")


def style() -> str:
    """``"bar"`` on a terminal, ``"log"`` otherwise; ``POINTDR2_PROGRESS`` overrides."""
    forced = os.environ.get("POINTDR2_PROGRESS", "").strip().lower()
    if forced:
        if forced not in STYLES:
            raise ValueError(f"POINTDR2_PROGRESS must be one of {', '.join(STYLES)}, got {forced!r}")
        return forced
    try:
        return "bar" if sys.stderr is not None and sys.stderr.isatty() else "log"
    except (AttributeError, ValueError):  # a closed or replaced stream
        return "log"


def _size(n: float, scale: bool) -> str:
    return tqdm.format_sizeof(n) if scale else f"{int(n):,}"


class LogProgress:
    """The part of tqdm's interface used in pointdr2 (iterate, ``update``, ``set_description``,
    ``set_postfix_str``, ``total``, ``n``, ``close``, context manager), reported as log lines."""

    def __init__(self, iterable: Optional[Iterable] = None, *, total: Optional[float] = None, desc: str = "",
                 unit: str = "it", unit_scale: bool = False, initial: float = 0, every: float = 30.0,
                 logger: Optional[logging.Logger] = None) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.unit_scale, self.every = unit_scale, float(every)
        self.n = initial
        self.postfix = ""
        self.logger = logger or _log
        self._start = self._last = time.monotonic()
        self._initial = initial
        self.lines = 0  # log lines written (tests read it)

    def __iter__(self):
        if self.iterable is None:
            raise TypeError("LogProgress without an iterable cannot be iterated")
        for item in self.iterable:
            yield item
            self.update(1)

    def __len__(self) -> int:
        return int(self.total or 0)

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self.logger.info("%s", self.line(now))
            self.lines += 1

    def line(self, now: Optional[float] = None) -> str:
        elapsed = (time.monotonic() if now is None else now) - self._start
        done = f"{_size(self.n, self.unit_scale)}"
        if self.total:
            done += f"/{_size(self.total, self.unit_scale)} {self.unit} ({100.0 * self.n / self.total:.0f}%)"
        else:
            done += f" {self.unit}"
        text = f"{self.desc}: {done}, {elapsed:.0f} s"
        rate_n = self.n - self._initial
        if self.total and rate_n > 0 and self.n < self.total:
            text += f", ~{elapsed * (self.total - self.n) / rate_n:.0f} s left"
        return text + (f" [{self.postfix}]" if self.postfix else "")

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(dict(ordered_dict) if ordered_dict else {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def bar(iterable: Optional[Iterable] = None, *, total: Optional[float] = None, desc: str = "", unit: str = "it",
        enabled: bool = True, log_lines: bool = True, every: float = 30.0, logger: Optional[logging.Logger] = None,
        **tqdm_kwargs: Any):
    """A progress object for ``iterable`` (or for manual ``update`` calls with ``total``).

    ``enabled=False`` (or ``POINTDR2_PROGRESS=off``) gives a silent one. Off a terminal, log lines
    every ``every`` seconds, or silence with ``log_lines=False`` (a loop that logs on its own, such as
    the trainer's ``run.log_every`` lines). ``tqdm_kwargs`` (``leave``, ``initial``, ``unit_scale``,
    ``dynamic_ncols``, ...) go to tqdm.
    """
    kind = style() if enabled else "off"
    if kind == "log" and not log_lines:
        kind = "off"
    if kind == "bar":
        return tqdm(iterable, total=total, desc=desc, unit=unit, **tqdm_kwargs)
    if kind == "log":
        return LogProgress(iterable, total=total, desc=desc, unit=unit, unit_scale=bool(tqdm_kwargs.get("unit_scale")),
                           initial=tqdm_kwargs.get("initial", 0), every=every, logger=logger)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=True, **tqdm_kwargs)
