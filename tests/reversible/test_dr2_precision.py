"""reconstruction_growth, the spacing choice and the guard's correction, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from pointdr2.reversible import PrecisionGuard, choose_cache_every, predicted_error, reconstruction_growth


def test_reconstruction_growth_values():
    assert reconstruction_growth(0, 1) == 1.0
    assert math.isclose(reconstruction_growth(1, 0.1), (1 + math.sqrt(1.4)) / 0.2)
    assert math.isclose(reconstruction_growth(1, 1), (1 + math.sqrt(5)) / 2)  # golden ratio
    assert math.isclose(reconstruction_growth(0, 0.25), 2.0)
    assert reconstruction_growth(1, 0) == math.inf
    with pytest.raises(ValueError, match="beta"):
        reconstruction_growth(1, -0.5)


def test_growth_is_the_error_amplification_of_the_linear_recurrence():
    """For G(x) = alpha*x, e_{i-2} = (e_i - alpha e_{i-1}) / beta grows by rho per step."""
    alpha, beta = 0.7, 0.4
    e_cur, e_prev = 1.0, 1.0
    for _ in range(200):
        e_cur, e_prev = e_prev, (e_cur - alpha * e_prev) / beta
        e_cur, e_prev = e_cur / abs(e_prev), e_prev / abs(e_prev)  # renormalise
    rate = abs(((e_cur - alpha * e_prev) / beta) / e_prev)
    assert math.isclose(rate, reconstruction_growth(alpha, beta), rel_tol=1e-6)


def test_choose_cache_every_hand_computed():
    eps32 = torch.finfo(torch.float32).eps
    rho = reconstruction_growth(1, 0.1)
    # spacing k: block inputs reconstructed over at most k-1 steps, predicted error rho**(k-1) * eps
    assert rho**2 * eps32 <= 1e-4 < rho**3 * eps32
    assert choose_cache_every(1, 0.1, 24, torch.float32, 1e-4) == 3
    assert choose_cache_every(0, 1, 24, torch.float32, 1e-4) == 24
    assert choose_cache_every(1, 0.0, 24, torch.float32, 1e-4) == 1
    # float64: 1 + floor(log(1e-4 / eps64) / log(rho)) = 12
    assert choose_cache_every(1, 0.1, 24, torch.float64, 1e-4) == 12
    assert choose_cache_every(1, 0.1, 24, torch.float32, 1e-4, correction=1e-3) == 6
    assert choose_cache_every(1, 0.1, 24, torch.float32, 1e-9) == 1
    assert math.isclose(predicted_error(1, 0.1, 2, torch.float32), rho**2 * eps32)
    assert predicted_error(1, 0.1, 10_000, torch.float32) == math.inf


def test_guard_tightens_on_worse_than_predicted_and_relaxes_slowly():
    g = PrecisionGuard(1e-4)
    assert g.choose(1, 0.1, 24, torch.float32) == 3
    # measured over 3 steps, 100x worse than predicted: inputs now predicted at 100 rho^(k-1) eps
    g.update(100 * predicted_error(1, 0.1, 3, torch.float32), 1, 0.1, 3, torch.float32)
    assert math.isclose(g.correction, 100, rel_tol=1e-9)
    assert g.choose(1, 0.1, 24, torch.float32) == 1
    g.update(predicted_error(1, 0.1, 1, torch.float32), 1, 0.1, 1, torch.float32)
    assert math.isclose(g.correction, 10, rel_tol=1e-9)  # geometric mean of 100 and 1
    assert g.choose(1, 0.1, 24, torch.float32) == 2
    g.update(float("nan"), 1, 0.1, 1, torch.float32)  # a blown-up reconstruction: be safe
    assert g.choose(1, 0.1, 24, torch.float32) == 1
    with pytest.raises(ValueError, match="tolerance"):
        PrecisionGuard(0)
