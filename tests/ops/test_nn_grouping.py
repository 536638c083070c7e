"""QueryAndGroup / KNNGroup / GroupAll against NumPy gathers of the reference neighbourhoods."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ops_reference import random_cloud, ref_ball_query, ref_knn
from torch.autograd import gradcheck

from pointdr2.nn.grouping import GroupAll, KNNGroup, QueryAndGroup


def _expected(xyz, new_xyz, feats, idx, relative=True, scale=1.0, use_xyz=True):
    parts = []
    B = xyz.shape[0]
    if use_xyz:
        g = np.stack([xyz[b][idx[b]] for b in range(B)])  # [B, S, K, 3]
        if relative:
            g = (g - new_xyz[:, :, None, :]) / scale
        parts.append(g.transpose(0, 3, 1, 2))
    if feats is not None:
        parts.append(np.stack([feats[b][:, idx[b]] for b in range(B)]))
    return np.concatenate(parts, axis=1)


@pytest.fixture
def cloud():
    xyz = random_cloud(2, 60, seed=11, duplicates=5).double()
    new_xyz = xyz[:, :7].clone()
    feats = torch.rand(2, 4, 60, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return xyz, new_xyz, feats


@pytest.mark.parametrize("normalize_dp", [False, True])
@pytest.mark.parametrize("use_xyz", [True, False])
def test_query_and_group(cloud, normalize_dp, use_xyz):
    xyz, new_xyz, feats = cloud
    out = QueryAndGroup(0.6, 9, normalize_dp=normalize_dp, use_xyz=use_xyz)(xyz, new_xyz, feats)
    idx = ref_ball_query(xyz.numpy(), new_xyz.numpy(), 0.6, 9)
    want = _expected(xyz.numpy(), new_xyz.numpy(), feats.numpy(), idx, scale=0.6 if normalize_dp else 1.0,
                     use_xyz=use_xyz)
    assert out.shape == ((2, 3 + 4, 7, 9) if use_xyz else (2, 4, 7, 9))
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-12)
    if normalize_dp and use_xyz:
        assert float(out[:, :3].norm(dim=1).max()) < 1.0  # inside the unit ball


def test_query_and_group_without_features_and_absolute(cloud):
    xyz, new_xyz, _ = cloud
    out = QueryAndGroup(0.6, 5, relative_xyz=False)(xyz, new_xyz)
    idx = ref_ball_query(xyz.numpy(), new_xyz.numpy(), 0.6, 5)
    np.testing.assert_allclose(out.numpy(), _expected(xyz.numpy(), new_xyz.numpy(), None, idx, relative=False))


def test_knn_group(cloud):
    xyz, new_xyz, feats = cloud
    out = KNNGroup(6)(xyz, new_xyz, feats)
    _, idx = ref_knn(new_xyz.numpy(), xyz.numpy(), 6)
    np.testing.assert_allclose(out.numpy(), _expected(xyz.numpy(), new_xyz.numpy(), feats.numpy(), idx), rtol=1e-12)
    normed = KNNGroup(6, normalize_dp=True)(xyz, new_xyz, feats)
    dp = out[:, :3].numpy()
    scale = np.linalg.norm(dp, axis=1).max(axis=(1, 2))
    np.testing.assert_allclose(normed[:, :3].numpy(), dp / scale[:, None, None, None], rtol=1e-12)
    np.testing.assert_allclose(normed[:, 3:].numpy(), out[:, 3:].numpy())


def test_group_all(cloud):
    xyz, _, feats = cloud
    out = GroupAll()(xyz, None, feats)
    assert out.shape == (2, 7, 1, 60)
    np.testing.assert_array_equal(out[:, :3, 0].numpy(), xyz.numpy().transpose(0, 2, 1))
    np.testing.assert_array_equal(out[:, 3:, 0].numpy(), feats.numpy())
    assert GroupAll(use_xyz=False)(xyz, None, feats).shape == (2, 4, 1, 60)


def test_gradients_reach_coordinates_and_features(cloud):
    xyz, new_xyz, feats = cloud
    xyz = xyz[:1, :12].clone().requires_grad_()
    feats = feats[:1, :2, :12].clone().requires_grad_()
    centres = xyz.detach()[:, :3].clone().requires_grad_()
    group = QueryAndGroup(0.8, 4, normalize_dp=True)
    assert gradcheck(lambda a, b, c: group(a, b, c), (xyz, centres, feats), fast_mode=True)


def test_grouping_bad_input(cloud):
    xyz, new_xyz, feats = cloud
    with pytest.raises(ValueError, match=r"features must have shape \[B, C, N\] = \[2, C, 60\]"):
        QueryAndGroup(0.5, 4)(xyz, new_xyz, feats[:, :, :10])
    with pytest.raises(ValueError, match="features is required when use_xyz=False"):
        KNNGroup(3, use_xyz=False)(xyz, new_xyz)
    with pytest.raises(ValueError, match="radius must be > 0"):
        QueryAndGroup(0, 4)
    with pytest.raises(ValueError, match="k must be >= 1"):
        KNNGroup(0)
    with pytest.raises(ValueError, match=r"k must be in \[1, N=60\]"):
        KNNGroup(61)(xyz, new_xyz)
