"""Recomputation helpers: what a forward recomputed in the backward pass must see again as it was.

The one home of the state a recomputation replays, used by the reversible stacks, checkpointing, the
chunked tokenizer and the chunked grouping: the autocast state of the forward (:func:`autocast_states`,
:func:`replay_autocast`), its random draws (:func:`rng_state`, :func:`replay_rng`), and BatchNorm
running statistics that a second forward must not update (:func:`frozen_running_stats`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["autocast_states", "replay_autocast", "rng_state", "replay_rng", "frozen_running_stats"]


def autocast_states(device_type: str) -> list[tuple[str, bool, torch.dtype, bool]]:
    """The autocast state (device type, enabled, dtype, cache) of the devices involved, to replay it."""
    states = []
    for dev in dict.fromkeys(("cpu", device_type)):
        states.append(
            (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev), torch.is_autocast_cache_enabled())
        )
    return states


@contextlib.contextmanager
def replay_autocast(states: list[tuple[str, bool, torch.dtype, bool]]) -> Iterator[None]:
    """Run under the autocast state :func:`autocast_states` captured (a backward runs outside the forward's)."""
    with contextlib.ExitStack() as stack:
        for dev, enabled, dtype, cache in states:
            stack.enter_context(torch.autocast(device_type=dev, dtype=dtype, enabled=enabled, cache_enabled=cache))
        yield


def rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CPU RNG state, and ``device``'s when it is a CUDA device, to replay a forward's random draws."""
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda_state


@contextlib.contextmanager
def replay_rng(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> Iterator[None]:
    """Run with the RNG state saved before the block's forward, then restore the current state."""
    current = rng_state(device)
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
    try:
        yield
    finally:
        torch.set_rng_state(current[0])
        if current[1] is not None:
            torch.cuda.set_rng_state(current[1], device)


@contextlib.contextmanager
def frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """Recompute without touching BatchNorm running statistics.

    In train mode BatchNorm normalises with the batch's own statistics, and the recomputation sees the
    same batch, so only the running-stat update must be kept out of the real buffers. The buffers are
    swapped for throwaway copies (not saved and copied back: batch_norm saves the buffers for its
    backward, and writing into them before that backward would trip autograd's version check;
    momentum=0 would not help with momentum=None's cumulative average).
    """
    names = ("running_mean", "running_var", "num_batches_tracked")
    swapped = []
    for m in module.modules():
        if isinstance(m, _BatchNorm) and m.training and m.track_running_stats:
            originals = [getattr(m, n) for n in names]
            swapped.append((m, originals))
            for n, buf in zip(names, originals):
                setattr(m, n, None if buf is None else buf.clone())
    try:
        yield
    finally:
        for m, originals in swapped:
            for n, buf in zip(names, originals):
                setattr(m, n, buf)
