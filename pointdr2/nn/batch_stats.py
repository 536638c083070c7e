"""Exact training-mode BatchNorm over chunks: the pieces shared by chunked recomputations.

A training-mode BatchNorm normalises with the mean ``mu`` and biased variance ``var`` of the whole
batch, which couples every chunk of a chunked forward or backward pass. Two facts make chunking
exact anyway (used by :mod:`pointdr2.nn.tokenizer` and :mod:`pointdr2.nn.chunked_grouping`):

- the statistics of the whole batch are combined from per-chunk ones (:class:`ChunkMoments`);
- with ``g_mu = dL/dmu`` and ``g_var = dL/dvar`` summed over all chunks (the statistics treated as
  inputs), the exact gradient of a pre-BN value ``h`` adds ``g_mu/n + g_var * 2 (h - mu)/n``
  (:func:`coupling`), so each chunk's backward is exact once both sums are known.

The running statistics are updated once per forward with the whole batch's statistics, as
``nn.BatchNorm`` does (:func:`update_running_stats`).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ChunkMoments", "coupling", "update_running_stats", "uses_batch_stats"]


def uses_batch_stats(bn: nn.Module) -> bool:
    """nn.BatchNorm's rule: batch statistics in training mode, or when it keeps no running ones."""
    return bool(bn.training or (bn.running_mean is None and bn.running_var is None))


class ChunkMoments:
    """Per-channel mean and biased variance over chunks (Chan's parallel combination, float64).

    ``add(h)`` takes ``[M, C, K]`` (statistics over dims 0 and 2, as BatchNorm1d/2d after a reshape).
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, h: torch.Tensor) -> None:
        n = h.shape[0] * h.shape[2]
        var, mean = torch.var_mean(h.float() if h.dtype in (torch.float16, torch.bfloat16) else h,
                                   dim=(0, 2), correction=0)
        mean, m2 = mean.double(), var.double() * n
        if self.mean is None:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.n * n / total)
        self.n = total

    def result(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean.to(dtype), (self.m2 / self.n).to(dtype)


def update_running_stats(bn: nn.Module, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
    """The running-statistics update ``nn.BatchNorm`` does in a training forward (once); ``var`` is
    the biased batch variance over ``n`` values per channel."""
    if not bn.track_running_stats or bn.running_mean is None:
        return
    bn.num_batches_tracked.add_(1)
    factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    bn.running_mean.mul_(1 - factor).add_(mean.detach().to(bn.running_mean.dtype), alpha=factor)
    unbiased = var.detach() * (n / max(n - 1, 1))
    bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)


def coupling(h: torch.Tensor, mu: torch.Tensor, g_mu: torch.Tensor, g_var: torch.Tensor, n: int) -> torch.Tensor:
    """Scalar whose gradient w.r.t. h [M, C, K] is g_mu/n + g_var * 2 (h - mu)/n (mu held fixed)."""
    return ((g_mu / n) * h.sum(dim=(0, 2)) + (g_var / n) * (h - mu[:, None]).square().sum(dim=(0, 2))).sum()
