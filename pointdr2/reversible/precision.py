"""How fast reconstruction errors grow, and the guard that picks the anchor spacing in ``auto`` mode.

The backward pass of a Dr2Net stack reconstructs ``x_{i-2} = (x_i - G_i(x_{i-1}; alpha)) / beta``.
Ignoring the Jacobian of the block's residual function (``G(x) ~ alpha*x``), an error ``e`` in the
states obeys ``beta*e_{i-2} = e_i - alpha*e_{i-1}``, whose dominant root is

    rho(alpha, beta) = (alpha + sqrt(alpha^2 + 4*beta)) / (2*beta)

so k reconstruction steps amplify the dtype's rounding error ``eps`` by about ``rho**k``.

With anchor spacing k (see ``Dr2Stack``), block inputs are reconstructed over at most k-1 steps (what
the gradients see) and each exact anchor is compared with its k-step reconstruction (what is measured).
"""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger(__name__)


def reconstruction_growth(alpha: float, beta: float) -> float:
    """Per-step growth factor of reconstruction errors, ``(|alpha| + sqrt(alpha^2 + 4 beta)) / (2 beta)``.

    Equal to 1 only at ``alpha=0, beta=1``; ``inf`` for ``beta == 0`` (nothing can be reconstructed).
    """
    alpha, beta = float(alpha), float(beta)
    if not (math.isfinite(alpha) and math.isfinite(beta)):
        raise ValueError(f"alpha and beta must be finite, got alpha={alpha}, beta={beta}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta == 0:
        return math.inf
    a = abs(alpha)
    return (a + math.sqrt(a * a + 4.0 * beta)) / (2.0 * beta)


def predicted_error(alpha: float, beta: float, steps: int, dtype: torch.dtype) -> float:
    """Predicted relative reconstruction error after ``steps`` reconstruction steps in ``dtype``."""
    rho = reconstruction_growth(alpha, beta)
    if math.isinf(rho):
        return math.inf
    eps = torch.finfo(dtype).eps
    # log space: rho**steps overflows float for long stacks early in the schedule
    log_err = steps * math.log(rho) + math.log(eps)
    return math.exp(log_err) if log_err < 700 else math.inf


def choose_cache_every(
    alpha: float,
    beta: float,
    depth: int,
    dtype: torch.dtype,
    tolerance: float = 1e-4,
    correction: float = 1.0,
) -> int:
    """Largest anchor spacing k in [1, depth] with ``correction * rho**(k-1) * eps(dtype) <= tolerance``.

    rho**(k-1) * eps is the predicted error of the block inputs (reconstructed over at most k-1 steps).
    k = depth means fully reversible (no anchors), k = 1 means every block input is kept (checkpointing).
    ``beta == 0`` always gives 1.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    rho = reconstruction_growth(alpha, beta)
    if math.isinf(rho):
        return 1
    eps = torch.finfo(dtype).eps
    budget = math.log(tolerance) - math.log(eps) - math.log(max(correction, 1e-30))
    if budget < 0:
        return 1
    if rho <= 1.0 + 1e-12:
        return depth
    return int(max(1, min(depth, 1 + math.floor(budget / math.log(rho) + 1e-9))))


class PrecisionGuard:
    """Chooses the anchor spacing before each step and learns from the error measured after it.

    The prediction ``rho**k * eps`` ignores the blocks' Jacobians; the measured error of each reversible
    backward corrects it by a multiplicative factor: raised at once when a step was worse than predicted
    (safety first), lowered geometrically when steps are better (so spacing recovers slowly).

    ``min_cache_every`` (None: no limit) is a memory cap: smaller spacings keep more anchor states, and the
    trainer sets the smallest spacing whose memory fits ``train.memory_budget`` (``pointdr2.engine.plan``).
    The guard never chooses below it; when the precision asks for less, the spacing stays at the cap (the
    memory budget wins: reconstruction error may then exceed ``tolerance``), ``capped`` counts those steps
    and one warning says so.
    """

    def __init__(self, tolerance: float = 1e-4, min_cache_every: int | None = None) -> None:
        if not tolerance > 0:
            raise ValueError(f"tolerance must be > 0, got {tolerance}")
        self.tolerance = float(tolerance)
        self.correction = 1.0
        self.cache_every: int | None = None
        self.min_cache_every = min_cache_every
        self.capped = 0

    @property
    def min_cache_every(self) -> int | None:
        return self._min_cache_every

    @min_cache_every.setter
    def min_cache_every(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"min_cache_every must be None or an int >= 1, got {value!r}")
        self._min_cache_every = value

    def choose(self, alpha: float, beta: float, depth: int, dtype: torch.dtype) -> int:
        k = choose_cache_every(alpha, beta, depth, dtype, self.tolerance, self.correction)
        floor = None if self.min_cache_every is None else min(self.min_cache_every, depth)
        if floor is not None and k < floor:
            if beta == 0:
                raise ValueError(f"beta == 0 cannot be reconstructed: the memory cap min_cache_every={floor} needs "
                                 "a beta > 0 (start the schedule with beta > 0 or raise train.memory_budget)")
            if not self.capped:
                log.warning("Dr2Net auto mode: precision asks for an anchor every %d of %d blocks (alpha=%.3g, "
                            "beta=%.3g) but the memory budget allows no fewer than every %d: keeping %d; the "
                            "reconstruction error may exceed the tolerance %.3g until the schedule allows it",
                            k, depth, alpha, beta, floor, floor, self.tolerance)
            self.capped += 1
            k = floor
        if k != self.cache_every:
            log.info(
                "Dr2Net auto mode: anchor every %d of %d blocks (alpha=%.3g, beta=%.3g, growth=%.3g, "
                "correction=%.3g)",
                k,
                depth,
                alpha,
                beta,
                reconstruction_growth(alpha, beta),
                self.correction,
            )
            self.cache_every = k
        return k

    def update(self, measured: float | None, alpha: float, beta: float, steps: int, dtype: torch.dtype) -> None:
        """Fold the error measured over segments of ``steps`` reconstruction steps into the correction."""
        if measured is None or not math.isfinite(measured) or measured <= 0 or steps < 1:
            if measured is not None and not math.isfinite(measured):
                self.correction = 1e12
            return
        predicted = predicted_error(alpha, beta, steps, dtype)
        if not math.isfinite(predicted) or predicted <= 0:
            return
        ratio = measured / predicted
        if ratio > self.correction:
            self.correction = ratio
        else:
            self.correction = math.sqrt(self.correction * ratio)
        self.correction = min(max(self.correction, 1e-6), 1e12)
