"""CoefficientSchedule, apply_coefficients and iter_stacks against hand-computed values."""

from __future__ import annotations

import math

import pytest
from torch import nn

from pointdr2.reversible import CoefficientSchedule, Dr2Stack, ResidualBlock, apply_coefficients, iter_stacks


def close(a, b):
    return all(math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-12) for x, y in zip(a, b))


def test_linear_default_schedule_and_clamping():
    s = CoefficientSchedule()
    assert close(s(0), (1.0, 0.1))
    assert close(s(10), (0.5, 0.55))
    assert close(s(2.5), (0.875, 0.1 + 0.9 * 0.125))  # fractional epochs for per-step updates
    assert close(s(20), (0.0, 1.0))
    assert close(s(-3), (1.0, 0.1)) and close(s(100), (0.0, 1.0))


def test_cosine_schedule():
    s = CoefficientSchedule(alpha=(1, 0), beta=(0.1, 1), start=0, end=20, shape="cosine")
    p = (1 - math.cos(math.pi / 4)) / 2  # t=5 is a quarter of the way
    assert close(s(5), (1 - p, 0.1 + 0.9 * p))
    assert close(s(10), (0.5, 0.55))
    assert close(s(20), (0.0, 1.0)) and close(s(30), (0.0, 1.0))


def test_step_schedule_alternates_every_two_epochs():
    s = CoefficientSchedule(alpha=(1, 0), beta=(0.1, 1), start=0, end=20, shape="step")
    # 10 changes at t = 2, 4, ..., 20: odd ones move alpha by 1/5, even ones beta by 0.9/5
    assert close(s(0), (1.0, 0.1)) and close(s(1.99), (1.0, 0.1))
    assert close(s(2), (0.8, 0.1)) and close(s(3.5), (0.8, 0.1))
    assert close(s(4), (0.8, 0.28))
    assert close(s(6), (0.6, 0.28))
    assert close(s(10), (0.4, 0.46))
    assert close(s(19.9), (0.0, 0.82))
    assert close(s(20), (0.0, 1.0)) and close(s(50), (0.0, 1.0))


def test_step_schedule_with_offset_start():
    s = CoefficientSchedule(alpha=(1, 0.4), beta=(0.1, 0.7), start=1, end=9, shape="step")
    # span 8 -> 4 changes at t = 3, 5, 7, 9: alpha, beta, alpha, beta
    assert close(s(1), (1.0, 0.1))
    assert close(s(3), (0.7, 0.1))
    assert close(s(5), (0.7, 0.4))
    assert close(s(7), (0.4, 0.4))
    assert close(s(9), (0.4, 0.7))


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        CoefficientSchedule(shape="exp")
    with pytest.raises(ValueError, match="end"):
        CoefficientSchedule(start=5, end=5)
    with pytest.raises(ValueError, match="alpha"):
        CoefficientSchedule(alpha=1.0)
    with pytest.raises(ValueError, match="beta"):
        CoefficientSchedule(beta=(-0.1, 1))
    with pytest.raises(ValueError, match="t"):
        CoefficientSchedule()(float("nan"))


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = Dr2Stack([ResidualBlock(nn.Linear(2, 2))])
        self.inner = nn.Sequential(nn.Linear(2, 2), Dr2Stack([ResidualBlock(nn.Linear(2, 2))], alpha=0.3))


def test_apply_coefficients_sets_every_stack():
    model = Wrapper()
    assert len(list(iter_stacks(model))) == 2
    assert apply_coefficients(model, 0.25, 0.75) == 2
    assert all((s.alpha, s.beta) == (0.25, 0.75) for s in iter_stacks(model))
    sched = CoefficientSchedule()
    assert close(sched.apply(model, 10), (0.5, 0.55))
    assert all(close((s.alpha, s.beta), (0.5, 0.55)) for s in iter_stacks(model))
    with pytest.raises(ValueError, match="beta"):
        apply_coefficients(model, 0.5, -1)
