"""Bad input raises one-line ValueErrors naming the argument and the expected shape."""

from __future__ import annotations

import pytest
import torch

from pointdr2 import ops

XYZ = torch.rand(2, 10, 3)


@pytest.mark.parametrize("call, match", [
    (lambda: ops.furthest_point_sample(XYZ, 11), r"npoint must be in \[1, N=10\]"),
    (lambda: ops.furthest_point_sample(XYZ, 0), r"npoint must be in \[1, N=10\]"),
    (lambda: ops.furthest_point_sample(XYZ, 2.5), "npoint must be an integer"),
    (lambda: ops.furthest_point_sample(XYZ, True), "npoint must be an integer"),
    (lambda: ops.furthest_point_sample(torch.rand(10, 3), 2), r"xyz must have shape \[B, N, 3\]; got \(10, 3\)"),
    (lambda: ops.furthest_point_sample(torch.rand(2, 10, 4), 2), r"xyz must have shape \[B, N, 3\]; got \(2, 10, 4\)"),
    (lambda: ops.furthest_point_sample(torch.rand(2, 0, 3), 1), r"xyz is empty: shape \(2, 0, 3\)"),
    (lambda: ops.furthest_point_sample(torch.rand(0, 5, 3), 1), r"xyz is empty"),
    (lambda: ops.furthest_point_sample(torch.ones(1, 4, 3, dtype=torch.int64), 1), "xyz must be a floating-point"),
    (lambda: ops.furthest_point_sample(XYZ.numpy(), 2), r"xyz must be a torch.Tensor of shape \[B, N, 3\]"),
    (lambda: ops.ball_query(XYZ, torch.rand(3, 4, 3), 0.1, 4), "batch sizes differ: xyz has B=2, new_xyz has B=3"),
    (lambda: ops.ball_query(XYZ, torch.rand(2, 4), 0.1, 4), r"new_xyz must have shape \[B, S, 3\]"),
    (lambda: ops.ball_query(XYZ, XYZ.double(), 0.1, 4), "xyz is torch.float32 but new_xyz is torch.float64"),
    (lambda: ops.ball_query(XYZ, XYZ, 0.0, 4), "radius must be a finite number > 0"),
    (lambda: ops.ball_query(XYZ, XYZ, float("nan"), 4), "radius must be a finite number > 0"),
    (lambda: ops.ball_query(XYZ, XYZ, "0.1", 4), "radius must be a finite number > 0"),
    (lambda: ops.ball_query(XYZ, XYZ, 0.1, 0), "nsample must be >= 1"),
    (lambda: ops.knn(XYZ, XYZ, 11), r"k must be in \[1, N=10\]"),
    (lambda: ops.knn(torch.rand(2, 4, 3), torch.rand(1, 10, 3), 2), "batch sizes differ: query has B=2, support has B=1"),
    (lambda: ops.knn(torch.rand(2, 4, 2), XYZ, 2), r"query must have shape \[B, S, 3\]"),
    (lambda: ops.three_nn(XYZ, torch.rand(2, 2, 3)), r"known must have shape \[B, m, 3\] with m >= 3"),
    (lambda: ops.three_nn(torch.rand(1, 5, 3), XYZ), "batch sizes differ: unknown has B=1, known has B=2"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_coordinates(bad):
    xyz = torch.rand(2, 10, 3)
    xyz[1, 7, 2] = bad
    with pytest.raises(ValueError, match="xyz contains NaN or inf"):
        ops.furthest_point_sample(xyz, 3)
    with pytest.raises(ValueError, match="new_xyz contains NaN or inf"):
        ops.ball_query(torch.rand(2, 10, 3), xyz, 0.2, 4)
    with pytest.raises(ValueError, match="support contains NaN or inf"):
        ops.knn(torch.rand(2, 3, 3), xyz, 2)
    with pytest.raises(ValueError, match="unknown contains NaN or inf"):
        ops.three_nn(xyz, torch.rand(2, 10, 3))


def test_feature_op_validation():
    f = torch.rand(2, 4, 10)
    with pytest.raises(ValueError, match=r"idx holds indices in \[0, 10\]; expected values in \[0, 9\]"):
        ops.gather_points(f, torch.tensor([[0, 10], [1, 2]]))
    with pytest.raises(ValueError, match=r"idx holds indices in \[-1, 2\]"):
        ops.group_points(f, torch.tensor([[[0, -1]], [[1, 2]]]))
    with pytest.raises(ValueError, match=r"idx must have shape \[B, S\]"):
        ops.gather_points(f, torch.zeros(2, 3, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="idx must be an integer tensor"):
        ops.gather_points(f, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="batch sizes differ: features has B=2, idx has B=1"):
        ops.group_points(f, torch.zeros(1, 3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"features must have shape \[B, C, N\]"):
        ops.gather_points(torch.rand(4, 10), torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"idx must have shape \[B, n, 3\]"):
        ops.three_interpolate(f, torch.zeros(2, 5, 2, dtype=torch.int64), torch.rand(2, 5, 2))
    with pytest.raises(ValueError, match=r"weight must have shape \[B, n, 3\] = \(2, 5, 3\)"):
        ops.three_interpolate(f, torch.zeros(2, 5, 3, dtype=torch.int64), torch.rand(2, 4, 3))
    # int32 indices are accepted (pointnet2_ops habits) and give the same result as int64
    idx = torch.tensor([[3, 1], [0, 9]])
    assert torch.equal(ops.gather_points(f, idx.int()), ops.gather_points(f, idx))


def test_memory_budget_validation(monkeypatch):
    with pytest.raises(ValueError, match="nbytes must be a positive number of bytes"):
        ops.set_memory_budget(0)
    monkeypatch.setenv("POINTDR2_OPS_CHUNK_MB", "lots")
    with pytest.raises(ValueError, match="POINTDR2_OPS_CHUNK_MB must be a positive number of MB"):
        ops.get_memory_budget()
    monkeypatch.setenv("POINTDR2_OPS_CHUNK_MB", "64")
    assert ops.get_memory_budget() == 64 * 2**20
    monkeypatch.delenv("POINTDR2_OPS_CHUNK_MB")
    assert ops.get_memory_budget() == 256 * 2**20


def test_index_ops_record_no_autograd():
    xyz = torch.rand(1, 12, 3, requires_grad=True)
    sq, idx = ops.knn(xyz, xyz, 4)
    assert not sq.requires_grad and sq.grad_fn is None
    assert not ops.three_nn(xyz, xyz)[0].requires_grad
