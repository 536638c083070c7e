"""Activation memory: bytes of tensors autograd saves for the backward pass.

:class:`SavedTensorMeter` is a context manager around one forward pass (use it with the backward
outside it, or inside; only packing is counted). It counts each distinct storage once and leaves
out parameters and buffers of the model (weights are not activations), so it measures what
Dr2Net saves: a conventional network keeps every block's activations, a reversible surrogate only
its stack's last states.
"""

from __future__ import annotations

import resource
import sys

import torch
from torch import nn

__all__ = ["SavedTensorMeter", "peak_memory_bytes", "reset_peak_memory"]


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
