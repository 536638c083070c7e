"""The dynamic part of Dr2Net: moving (alpha, beta) from the pretrained network towards a precise one.

Finetuning starts near the pretrained network (alpha=1, beta small), where reconstruction is imprecise,
and moves to alpha=0, beta=1, where it is exact up to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from torch import nn

from pointdr2.reversible.stack import Dr2Stack

SHAPES = ("linear", "cosine", "step")


def _pair(name: str, value) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (initial, final) of numbers, got {value!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return a, b


class CoefficientSchedule:
    """(alpha, beta) as a function of training time t in epochs (fractional for per-step updates).

    Values are clamped: the initial pair before ``start``, the final pair from ``end`` on.

    - ``linear``: both move linearly from start to end.
    - ``cosine``: both follow a half cosine (slow at both ends).
    - ``step``: the reference implementation's schedule: piecewise constant, one change every 2 epochs
      (``n = max(2, floor((end-start)/2))`` equal intervals), alternating: changes 1, 3, 5, ... move alpha
      by one step, changes 2, 4, ... move beta; both reach their final values at ``end``.
    """

    def __init__(
        self,
        alpha: tuple[float, float] = (1.0, 0.0),
        beta: tuple[float, float] = (0.1, 1.0),
        start: float = 0,
        end: float = 20,
        shape: str = "linear",
    ) -> None:
        self.alpha = _pair("alpha", alpha)
        self.beta = _pair("beta", beta)
        if min(self.beta) < 0:
            raise ValueError(f"beta values must be >= 0, got {beta!r}")
        if shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
        start, end = float(start), float(end)
        if not end > start:
            raise ValueError(f"end must be greater than start, got start={start}, end={end}")
        self.start, self.end, self.shape = start, end, shape

    def __repr__(self) -> str:
        return (
            f"CoefficientSchedule(alpha={self.alpha}, beta={self.beta}, start={self.start:g}, "
            f"end={self.end:g}, shape={self.shape!r})"
        )

    def __call__(self, t: float) -> tuple[float, float]:
        t = float(t)
        if not math.isfinite(t):
            raise ValueError(f"t must be a finite number of epochs, got {t}")
        span = self.end - self.start
        p = min(max((t - self.start) / span, 0.0), 1.0)
        (a0, a1), (b0, b1) = self.alpha, self.beta
        if self.shape == "step":
            n = max(2, int(span // 2))
            changes = min(n, int(math.floor(p * n + 1e-9)))
            n_alpha, n_beta = (n + 1) // 2, n // 2
            done_alpha, done_beta = (changes + 1) // 2, changes // 2
            return a0 + (a1 - a0) * done_alpha / n_alpha, b0 + (b1 - b0) * done_beta / n_beta
        if self.shape == "cosine":
            p = 0.5 * (1.0 - math.cos(math.pi * p))
        return a0 + (a1 - a0) * p, b0 + (b1 - b0) * p

    def apply(self, model: nn.Module, t: float) -> tuple[float, float]:
        """Set every Dr2Stack in ``model`` to the coefficients at time ``t``; returns them."""
        alpha, beta = self(t)
        apply_coefficients(model, alpha, beta)
        return alpha, beta


def iter_stacks(model: nn.Module) -> Iterator[Dr2Stack]:
    """Every Dr2Stack inside ``model`` (including model itself), each once."""
    for m in model.modules():
        if isinstance(m, Dr2Stack):
            yield m


def stack_reports(model: nn.Module) -> dict[str, dict]:
    """``{module path: Dr2Stack.report()}`` for every Dr2Stack inside ``model`` ("" for model itself)."""
    return {name: m.report() for name, m in model.named_modules() if isinstance(m, Dr2Stack)}


def apply_coefficients(model: nn.Module, alpha: float, beta: float) -> int:
    """Set alpha and beta on every Dr2Stack inside ``model``; returns how many stacks were set."""
    alpha, beta = float(alpha), float(beta)
    if not (math.isfinite(alpha) and math.isfinite(beta)) or beta < 0:
        raise ValueError(f"alpha must be finite and beta finite and >= 0, got alpha={alpha}, beta={beta}")
    count = 0
    for stack in iter_stacks(model):
        stack.alpha, stack.beta = alpha, beta
        count += 1
    return count
