"""One run per run directory: an advisory lock held while ``pointdr2 train`` uses it, and the
housekeeping only the lock holder may do (temp files of a killed checkpoint save).

Two ``pointdr2 train`` processes on one ``run.dir`` would interleave their checkpoints (``best.pth``
of one seed, ``last.pth`` of the other). The lock is ``flock`` on ``RUN/.pointdr2.lock``: the kernel
drops it when the holder exits, however it exits, so a killed run never leaves a stale lock. The file
stays; it says who holds (or last held) the directory and does not make a fresh directory "used".
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

__all__ = ["LOCK_NAME", "RunDirectoryInUse", "RunLock", "remove_stale_temp_files"]

LOCK_NAME = ".pointdr2.lock"
log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # not POSIX: no lock (documented; pointdr2 targets Linux)
    fcntl = None  # type: ignore[assignment]


class RunDirectoryInUse(ValueError):
    """Another process holds the run directory (a usage error: exit 2 like the other refusals)."""


class RunLock:
    """``with RunLock(run_dir):`` or ``acquire()`` / ``release()``; raises :class:`RunDirectoryInUse`."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None or fcntl is None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = self._in_use(fd)
            os.close(fd)
            raise error from None
        except OSError as exc:  # a filesystem without flock (some network mounts): run unlocked
            os.close(fd)
            log.warning("cannot lock %s (%s); two runs on this directory would not be stopped", self.path, exc)
            return self
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  .encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _in_use(self, fd: int) -> RunDirectoryInUse:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        return RunDirectoryInUse(f"run directory {self.run_dir} is in use by another run ({holder}); wait for it to "
                                 "end, or give this run another run.dir")

    def probe(self) -> None:
        """Raise :class:`RunDirectoryInUse` if another process holds the directory; write nothing."""
        if fcntl is None or self.held or not self.path.is_file():
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            raise self._in_use(fd) from None
        except OSError:  # no flock here: nothing to probe
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # a trainer dropped without release (an exception in set-up)
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def remove_stale_temp_files(run_dir: str | os.PathLike) -> list[str]:
    """Delete ``.NAME.*.tmp`` files (``save_atomic``'s temp files) that a killed save left in
    ``run_dir``. Only the lock holder calls this: no save of another run can be in flight."""
    removed = []
    for path in sorted(Path(run_dir).glob(".*.tmp")):
        if path.is_file():
            try:
                path.unlink()
                removed.append(path.name)
            except OSError as exc:
                log.warning("could not remove stale temp file %s: %s", path, exc)
    if removed:
        log.info("removed %d temp file(s) left by a killed checkpoint save in %s: %s", len(removed), run_dir,
                 ", ".join(removed))
    return removed
