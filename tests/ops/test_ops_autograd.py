"""Feature ops: values against NumPy, gradients with gradcheck in float64."""

from __future__ import annotations

import numpy as np
import torch
from torch.autograd import gradcheck

from pointdr2 import ops


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=torch.float64)


def test_gather_and_group_values():
    f = _rand(2, 4, 11)
    idx = torch.randint(0, 11, (2, 5, 3), generator=torch.Generator().manual_seed(1))
    fn, ix = f.numpy(), idx.numpy()
    want_group = np.stack([fn[b][:, ix[b]] for b in range(2)])  # [B, C, S, K]
    np.testing.assert_array_equal(ops.group_points(f, idx).numpy(), want_group)
    want_gather = np.stack([fn[b][:, ix[b, :, 0]] for b in range(2)])
    np.testing.assert_array_equal(ops.gather_points(f, idx[:, :, 0]).numpy(), want_gather)


def test_three_interpolate_values():
    f = _rand(2, 3, 9)
    idx = torch.randint(0, 9, (2, 7, 3), generator=torch.Generator().manual_seed(2))
    w = _rand(2, 7, 3, seed=3)
    out = ops.three_interpolate(f, idx, w).numpy()
    fn, ix, wn = f.numpy(), idx.numpy(), w.numpy()
    want = np.zeros((2, 3, 7))
    for b in range(2):
        for i in range(7):
            for j in range(3):
                want[b, :, i] += wn[b, i, j] * fn[b, :, ix[b, i, j]]
    np.testing.assert_allclose(out, want, rtol=1e-12)


def test_gradcheck_gather_points():
    f = _rand(2, 3, 8).requires_grad_()
    idx = torch.tensor([[0, 7, 7, 2], [5, 5, 1, 0]])  # repeated indices accumulate gradients
    assert gradcheck(lambda x: ops.gather_points(x, idx), (f,))


def test_gradcheck_group_points():
    f = _rand(2, 3, 8).requires_grad_()
    idx = torch.randint(0, 8, (2, 4, 5), generator=torch.Generator().manual_seed(4))
    assert gradcheck(lambda x: ops.group_points(x, idx), (f,))


def test_gradcheck_three_interpolate():
    f = _rand(2, 4, 6).requires_grad_()
    w = _rand(2, 5, 3, seed=5).requires_grad_()
    idx = torch.randint(0, 6, (2, 5, 3), generator=torch.Generator().manual_seed(6))
    assert gradcheck(lambda x, y: ops.three_interpolate(x, idx, y), (f, w))


def test_interpolation_from_three_nn_reproduces_linear_fields():
    # Inverse-distance weights that sum to one reproduce a constant field exactly.
    known = _rand(1, 20, 3, seed=7)
    unknown = _rand(1, 9, 3, seed=8)
    dist, idx = ops.three_nn(unknown, known)
    w = 1.0 / (dist + 1e-8)
    w = w / w.sum(-1, keepdim=True)
    const = torch.full((1, 2, 20), 3.5, dtype=torch.float64)
    np.testing.assert_allclose(ops.three_interpolate(const, idx, w).numpy(), 3.5, rtol=1e-12)
