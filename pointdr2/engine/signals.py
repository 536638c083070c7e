"""Stopping a training run cleanly: SIGINT/SIGTERM set a flag that the training loop checks at
optimizer-step boundaries (it then finishes the step, saves ``last.pth`` and raises
:class:`~pointdr2.engine.trainer.TrainingInterrupted`); a second signal aborts at once.

The handlers are installed only in the main thread (Python allows no other) and the caller's handlers
are restored on exit.
"""

from __future__ import annotations

import logging
import signal
import threading

__all__ = ["StopFlag"]

log = logging.getLogger("pointdr2.engine.trainer")  # the training job's logger: train.log names it as before


class StopFlag:
    """SIGINT/SIGTERM set a flag checked at optimizer-step boundaries; a second signal aborts at once."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict = {}

    def _handler(self, signum, frame):  # noqa: ARG002 - signal handler signature
        name = signal.Signals(signum).name
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = name
        log.warning("%s received: finishing this step, saving last.pth and stopping (send again to abort now)", name)

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
