"""Activation memory: bytes of tensors autograd saves for the backward pass.

:class:`SavedTensorMeter` is a context manager around one forward pass (use it with the backward
outside it, or inside; only packing is counted). It counts each distinct storage once and leaves
out parameters and buffers of the model (weights are not activations), so it measures what
Dr2Net saves: a conventional network keeps every block's activations, a reversible surrogate only
its stack's last states.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource
import sys
import threading
import time
from pathlib import Path

import torch
from torch import nn

__all__ = ["SavedTensorMeter", "PeakByOperation", "PeakRSS", "peak_memory_bytes", "reset_peak_memory",
           "return_freed_blocks", "cache_freed_blocks", "proc_status_kb", "backward_and_step"]

log = logging.getLogger(__name__)


def _storage_key(t: torch.Tensor) -> tuple:
    try:
        storage = t.untyped_storage()
        return (t.device.type, t.device.index, storage.data_ptr())
    except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. some wrappers)
        return (t.device.type, t.device.index, id(t))


class SavedTensorMeter:
    """Count bytes of distinct storages saved for backward while active.

    ``exclude``: modules whose parameters and buffers are not counted. ``bytes`` after exit.
    """

    def __init__(self, exclude: nn.Module | None = None) -> None:
        self._excluded: set = set()
        if exclude is not None:
            for t in list(exclude.parameters()) + list(exclude.buffers()):
                self._excluded.add(_storage_key(t))
        self._seen: set = set()
        self.bytes = 0
        self.count = 0
        self._hooks = None

    def _pack(self, t: torch.Tensor):
        key = _storage_key(t)
        if key not in self._seen and key not in self._excluded:
            self._seen.add(key)
            try:
                self.bytes += t.untyped_storage().nbytes()
            except (RuntimeError, NotImplementedError):
                self.bytes += t.numel() * t.element_size()
            self.count += 1
        return t

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._hooks = None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak CUDA allocator bytes since the last reset, or this process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


# --------------------------------------------------------------------------- peak of one step (bench memory, plan)
def proc_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakRSS:
    """Peak RSS during a block of code: kernel high-water mark when resettable, else a 1 ms sampler."""

    def __init__(self) -> None:
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRSS:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self._hwm = True
        except OSError:
            self._hwm = False
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, proc_status_kb("VmRSS") or 0)
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        if self._hwm:
            self.peak_kb = proc_status_kb("VmHWM") or 0
        else:
            self._stop.set()
            self._thread.join()


def backward_and_step(loss: torch.Tensor, optimizer, tracker: PeakByOperation | None = None) -> None:
    """``loss.backward()`` then ``optimizer.step()``, with ``tracker`` (if any) marking where each starts."""
    if tracker is not None:
        tracker.mark("loss backward")
    loss.backward()
    if tracker is not None:
        tracker.mark("optimizer step")
    optimizer.step()


class PeakByOperation:
    """Peak memory of one step, split at every module call and module backward: which operation set it.

    A segment starts when a module's forward starts (``forward NAME``; ``recompute NAME`` when it runs
    inside a backward pass: a checkpoint's or a reversible stack's recomputation), when the gradient of
    a module's output arrives (``backward NAME``: that module's backward starts) and at the optimizer
    step. At each boundary the high-water mark since the last boundary is read and reset (CPU: VmHWM via
    ``/proc/self/clear_refs``; CUDA: ``max_memory_allocated``), so the largest segment is the step's
    peak and its label the innermost module running then (operations inside a module that are not
    modules themselves, such as a chunked grouping, are charged to that module). ``peak`` is absolute
    (bytes, RSS or allocated); ``None`` where the high-water mark cannot be reset. ``segments`` holds every
    segment's ``(label, high-water mark)`` in order (``pointdr2.engine.plan`` fits each one).
    """

    def __init__(self, module, device) -> None:
        self.torch = torch
        self.cuda = device.type == "cuda"
        self.device = device
        self.label = "step start"
        self.peak: int | None = None
        self.peak_at: str | None = None
        self.segments: list[tuple[str, int]] = []
        self.handles = []
        self.ok = self.cuda or self._reset_cpu()
        if not self.ok:
            return
        for name, mod in module.named_modules():
            if name:
                self.handles.append(mod.register_forward_pre_hook(self._pre(name)))
                self.handles.append(mod.register_forward_hook(self._post(name)))

    @staticmethod
    def _reset_cpu() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def mark(self, label: str) -> None:
        if not self.ok:
            return
        if self.cuda:
            high = self.torch.cuda.max_memory_allocated(self.device)
            self.torch.cuda.reset_peak_memory_stats(self.device)
        else:
            high = (proc_status_kb("VmHWM") or 0) * 1024
            self._reset_cpu()
        self.segments.append((self.label, high))
        if self.peak is None or high > self.peak:
            self.peak, self.peak_at = high, self.label
        self.label = label

    def _pre(self, name: str):
        def hook(mod, args):
            task = getattr(self.torch._C, "_current_graph_task_id", lambda: -1)()
            self.mark(("recompute " if task != -1 else "forward ") + name)
        return hook

    def _post(self, name: str):
        def grad_hook(grad):
            self.mark("backward " + name)

        def hook(mod, args, output):
            outs = output if isinstance(output, (tuple, list)) else (output,)
            for t in outs:
                if isinstance(t, self.torch.Tensor) and t.requires_grad:
                    t.register_hook(grad_hook)
                    break
        return hook

    def close(self) -> None:
        self.mark("step end")
        for h in self.handles:
            h.remove()


def cache_freed_blocks() -> None:
    """Undo ``MALLOC_MMAP_THRESHOLD_=65536`` for the rest of the process (glibc ``mallopt``): blocks up
    to 32 MiB come from the heap and freed ones are reused, as under glibc's default dynamic threshold
    once a program has freed a few large blocks. No-op where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 * 2**20)
        libc.mallopt(m_trim_threshold, 64 * 2**20)
    except (OSError, AttributeError):
        log.debug("no glibc mallopt: timing with the allocator as configured")




def return_freed_blocks() -> bool:
    """What ``MALLOC_MMAP_THRESHOLD_=65536`` does at start-up, from now on (glibc ``mallopt``): every block of
    64 KiB or more is mapped on its own and returned to the OS when freed, so RSS follows live memory and a
    high-water mark measures a step's peak. :func:`cache_freed_blocks` undoes it. False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 65536) == 1
        libc.mallopt(m_trim_threshold, 128 * 1024)
        libc.malloc_trim(0)
        return ok
    except (OSError, AttributeError):
        return False
