"""Every index op against brute-force NumPy float64 references, on the CPU backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ops_reference import random_cloud, ref_ball_query, ref_fps, ref_knn, ref_origin_skip

from pointdr2 import ops

CPU_BACKENDS = [b for b in ("torch", "cpp") if b in ops.available_backends()]
SHAPES = [(1, 1), (1, 37), (3, 101), (2, 300)]  # N deliberately not a multiple of any block size


@pytest.fixture(params=CPU_BACKENDS)
def cpu_backend(request, backend):
    backend(request.param)
    return request.param


@pytest.mark.parametrize("B,N", SHAPES)
def test_fps_matches_reference(cpu_backend, B, N):
    xyz = random_cloud(B, N, seed=N, duplicates=N // 5)
    for npoint in sorted({1, max(1, N // 3), N}):
        idx = ops.furthest_point_sample(xyz, npoint)
        assert idx.dtype == torch.int64 and idx.shape == (B, npoint)
        np.testing.assert_array_equal(idx.numpy(), ref_fps(xyz.numpy(), npoint))


def test_fps_ties_and_no_origin_skip(cpu_backend):
    # From 0 the furthest is 4; then points 1 and 3 tie at min squared distance 4: the lower
    # index (1) wins. Point 2 sits at the origin, which pointnet2_ops would skip; the contract does not.
    xyz = torch.tensor([[[1.0, 0, 0], [-1.0, 0, 0], [0.0, 0, 0], [3.0, 0, 0], [-1.0, 2, 0]]])
    assert ops.furthest_point_sample(xyz, 5).tolist() == [[0, 4, 1, 3, 2]]
    assert ref_fps(xyz.numpy(), 5).tolist() == [[0, 4, 1, 3, 2]]
    # all points identical: every further pick ties at distance 0 -> index 0 again
    same = torch.ones(1, 6, 3)
    assert ops.furthest_point_sample(same, 4).tolist() == [[0, 0, 0, 0]]
    # cloud at the origin (pointnet2_ops would never pick the zero point at index 1)
    xyz = torch.tensor([[[1.0, 1, 1], [0.0, 0, 0], [0.5, 0.5, 0.5]]])
    assert ops.furthest_point_sample(xyz, 2).tolist() == [[0, 1]]


# ----------------------------------------------------------------------------- FPS origin skip
def test_fps_origin_skip_by_hand(cpu_backend):
    # pointnet2_ops' rule: |p|^2 <= 1e-3 is never picked after the first. Point 1 (the origin) and
    # point 3 (|p|^2 = 9e-4) are skipped; point 4 (|p|^2 = 1.1e-3) is not.
    xyz = torch.tensor([[[1.0, 1, 1], [0.0, 0, 0], [0.9, 1, 1], [0.03, 0, 0], [0, 0.0331662, 0]]])
    assert ops.furthest_point_sample(xyz, 5).tolist() == [[0, 1, 2, 4, 3]]  # no skip: the origin is next
    assert ops.furthest_point_sample(xyz, 5, skip_origin=True).tolist() == [[0, 4, 2, 0, 0]]
    # index 0 starts the sample even at the origin; then only the far points are candidates
    xyz = torch.tensor([[[0.0, 0, 0], [0.5, 0, 0], [0.01, 0.01, 0], [-1.0, 0, 0]]])
    assert ops.furthest_point_sample(xyz, 4, skip_origin=True).tolist() == [[0, 3, 1, 1]]
    # no candidate at all: every point in the origin ball -> index 0 for every pick
    tiny_cloud = torch.tensor([[[0.0, 0, 0], [0.01, 0, 0], [0, -0.02, 0.01], [0.0, 0, 0.0316]]])
    assert ops.furthest_point_sample(tiny_cloud, 4, skip_origin=True).tolist() == [[0, 0, 0, 0]]
    # index 0 the only point outside the ball: it is the one candidate, picked again
    xyz = torch.tensor([[[1.0, 0, 0], [0.01, 0, 0], [0.0, 0, 0]]])
    assert ops.furthest_point_sample(xyz, 3, skip_origin=True).tolist() == [[0, 0, 0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,N", [(1, 37), (3, 101), (2, 300)])
def test_fps_origin_skip_matches_reference(cpu_backend, B, N, dtype):
    xyz = random_cloud(B, N, seed=N + 7, duplicates=N // 5, near_origin=N // 6, dtype=dtype)
    assert 0 < ref_origin_skip(xyz.numpy()).sum() < B * N  # the cloud really has skipped points
    for npoint in sorted({1, N // 3, N}):  # N: every candidate chosen, then repeats
        got = ops.furthest_point_sample(xyz, npoint, skip_origin=True)
        np.testing.assert_array_equal(got.numpy(), ref_fps(xyz.numpy(), npoint, skip_origin=True))
        np.testing.assert_array_equal(ops.furthest_point_sample(xyz, npoint).numpy(), ref_fps(xyz.numpy(), npoint))
    assert not ref_origin_skip(xyz.numpy())[0][ops.furthest_point_sample(xyz, N, skip_origin=True)[0, 1:]].any()


def test_fps_origin_skip_threshold_is_the_kernels_float32_test(cpu_backend):
    # |p|^2 straddling 1e-3 by one float32 ulp: the decision is float32 (x*x + y*y) + z*z <= 1e-3 (double).
    r = np.float32(np.sqrt(1e-3))
    xs = [np.nextafter(r, np.float32(0)), r, np.nextafter(r, np.float32(1))]
    pts = [[1.0, 1.0, 1.0]] + [[float(x), 0.0, 0.0] for x in xs] + [[0.0, float(x) * 0.6, float(x) * 0.8] for x in xs]
    xyz = torch.tensor([pts], dtype=torch.float32)
    skip = ref_origin_skip(xyz.numpy())[0]
    assert skip[1] and not skip[3]  # one ulp below the radius is skipped, one above is not
    assert ops.origin_skip_mask(xyz)[0].tolist() == skip.tolist()
    got = ops.furthest_point_sample(xyz, len(pts), skip_origin=True)
    np.testing.assert_array_equal(got.numpy(), ref_fps(xyz.numpy(), len(pts), skip_origin=True))


def test_fps_skip_origin_must_be_a_bool(cpu_backend):
    with pytest.raises(ValueError, match="skip_origin must be True or False; got 'yes'"):
        ops.furthest_point_sample(torch.rand(1, 4, 3), 2, skip_origin="yes")


@pytest.mark.parametrize("B,N", SHAPES)
@pytest.mark.parametrize("nsample", [1, 5, 40])
def test_ball_query_matches_reference(cpu_backend, B, N, nsample):
    xyz = random_cloud(B, N, seed=10 + N, duplicates=N // 4)
    new_xyz = torch.cat([xyz[:, : max(1, N // 4)], random_cloud(B, 7, seed=3)], dim=1)
    for radius in (0.05, 0.5, 4.0):  # few, some, all hits
        idx = ops.ball_query(xyz, new_xyz, radius, nsample)
        assert idx.dtype == torch.int64 and idx.shape == (B, new_xyz.shape[1], nsample)
        np.testing.assert_array_equal(idx.numpy(), ref_ball_query(xyz.numpy(), new_xyz.numpy(), radius, nsample))


def test_ball_query_radius_boundary_is_strict(cpu_backend):
    # Offsets of exactly representable values: d^2 == r^2 exactly in float32 and float64.
    r = 0.625
    c = np.array([0.5, 0.25, -0.125], dtype=np.float32)
    offsets = np.array([
        [r, 0, 0],             # 0: on the sphere (excluded)
        [0, -r, 0],            # 1: on the sphere (excluded)
        [0.375, 0.5, 0],       # 2: 3/8, 1/2 -> d^2 = 25/64 = r^2 (excluded)
        [0.5, 0, 0],           # 3: inside
        [r - 2**-10, 0, 0],    # 4: just inside
        [0, 0, r + 2**-10],    # 5: just outside
        [0, 0, 0],             # 6: the centre itself
        [0, 0, -r],            # 7: on the sphere (excluded)
    ], dtype=np.float32)
    xyz = torch.from_numpy((c + offsets)[None])
    assert np.all(((xyz.numpy()[0].astype(np.float64) - c) ** 2).sum(1)[[0, 1, 2, 7]] == r * r)
    idx = ops.ball_query(xyz, torch.from_numpy(c[None, None]), r, 5)
    assert idx.tolist() == [[[3, 4, 6, 3, 3]]]
    np.testing.assert_array_equal(idx.numpy(), ref_ball_query(xyz.numpy(), c[None, None], r, 5))
    # a ball without hits gives zeros; nsample larger than N repeats the first hit
    far = torch.tensor([[[50.0, 50, 50]]])
    assert ops.ball_query(xyz, far, r, 3).tolist() == [[[0, 0, 0]]]
    assert ops.ball_query(xyz, torch.from_numpy(c[None, None]), r, 12)[0, 0, 3:].tolist() == [3] * 9


@pytest.mark.parametrize("B,N", SHAPES)
def test_knn_matches_reference(cpu_backend, B, N):
    support = random_cloud(B, N, seed=20 + N, duplicates=N // 3)
    query = torch.cat([support[:, : max(1, N // 5)], random_cloud(B, 5, seed=4)], dim=1)
    for k in sorted({1, min(N, 3), N}):  # includes k == N (a full sort)
        sq, idx = ops.knn(query, support, k)
        ref_sq, ref_idx = ref_knn(query.numpy(), support.numpy(), k)
        assert idx.dtype == torch.int64 and sq.dtype == torch.float32 and idx.shape == (B, query.shape[1], k)
        np.testing.assert_array_equal(idx.numpy(), ref_idx)
        np.testing.assert_allclose(sq.numpy(), ref_sq, rtol=1e-5, atol=1e-6)
        assert bool((sq[..., 1:] >= sq[..., :-1]).all())


def test_knn_ties_go_to_lower_index(cpu_backend):
    # support points 1, 2, 4 are all at distance 1 from the query; 3 duplicates 1
    support = torch.tensor([[[5.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, -1], [0.5, 0, 0]]])
    sq, idx = ops.knn(torch.zeros(1, 1, 3), support, 5)
    assert idx.tolist() == [[[5, 1, 2, 3, 4]]]
    assert sq.tolist() == [[[0.25, 1.0, 1.0, 1.0, 1.0]]]


@pytest.mark.parametrize("B,n,m", [(1, 1, 3), (2, 50, 7), (3, 129, 40)])
def test_three_nn_matches_reference(cpu_backend, B, n, m):
    known = random_cloud(B, m, seed=m, duplicates=m // 4)
    unknown = torch.cat([known[:, : min(m, 4)], random_cloud(B, n, seed=n + 1)], dim=1)
    dist, idx = ops.three_nn(unknown, known)
    ref_sq, ref_idx = ref_knn(unknown.numpy(), known.numpy(), 3)
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    np.testing.assert_allclose(dist.numpy(), np.sqrt(ref_sq), rtol=1e-5, atol=1e-6)  # Euclidean, not squared


def test_float64_inputs_match_reference(cpu_backend):
    xyz = random_cloud(2, 77, seed=5, duplicates=10, dtype=torch.float64)
    np.testing.assert_array_equal(ops.furthest_point_sample(xyz, 20).numpy(), ref_fps(xyz.numpy(), 20))
    np.testing.assert_array_equal(ops.ball_query(xyz, xyz[:, :9], 0.7, 6).numpy(),
                                  ref_ball_query(xyz.numpy(), xyz[:, :9].numpy(), 0.7, 6))
    sq, idx = ops.knn(xyz[:, :9], xyz, 77)
    ref_sq, ref_idx = ref_knn(xyz[:, :9].numpy(), xyz.numpy(), 77)
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    np.testing.assert_allclose(sq.numpy(), ref_sq, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_uses_float32_distances(backend, dtype):
    # Half inputs are upcast: results equal those of the rounded coordinates in float32.
    backend("auto")
    xyz = random_cloud(2, 90, seed=6).to(dtype)
    exact = xyz.float()
    assert torch.equal(ops.furthest_point_sample(xyz, 30), ops.furthest_point_sample(exact, 30))
    assert torch.equal(ops.ball_query(xyz, xyz[:, :10], 0.5, 8), ops.ball_query(exact, exact[:, :10], 0.5, 8))
    sq, idx = ops.knn(xyz[:, :10], xyz, 12)
    sq32, idx32 = ops.knn(exact[:, :10], exact, 12)
    assert sq.dtype == dtype and torch.equal(idx, idx32) and torch.equal(sq, sq32.to(dtype))
    dist, idx = ops.three_nn(xyz[:, :10], xyz)
    assert torch.equal(idx, ops.three_nn(exact[:, :10], exact)[1])


def test_chunked_queries_match_unchunked(backend):
    # A budget so small that every query is its own chunk must not change any result.
    backend("torch")
    xyz = random_cloud(2, 150, seed=7, duplicates=20)
    q = xyz[:, :33]
    full = ops.ball_query(xyz, q, 0.4, 9), ops.knn(q, xyz, 11)
    try:
        ops.set_memory_budget(1)
        small = ops.ball_query(xyz, q, 0.4, 9), ops.knn(q, xyz, 11)
    finally:
        ops.set_memory_budget(None)
    assert torch.equal(full[0], small[0])
    assert torch.equal(full[1][0], small[1][0]) and torch.equal(full[1][1], small[1][1])


def test_chunking_bounds_peak_memory(backend, monkeypatch):
    # The [B, s, N] blocks must respect the budget: record every tensor the backend allocates via
    # the distance helper and check its size.
    from pointdr2.ops import torch_backend

    backend("torch")
    seen = []
    original = torch_backend._sqdist_block

    def spy(q, p):
        out = original(q, p)
        seen.append(out.numel() * out.element_size())
        return out

    monkeypatch.setattr(torch_backend, "_sqdist_block", spy)
    monkeypatch.setenv("POINTDR2_OPS_CHUNK_MB", "0.25")
    xyz = random_cloud(2, 1500, seed=8)
    ops.ball_query(xyz, xyz[:, :100], 0.2, 16)
    ops.knn(xyz[:, :100], xyz, 8)
    assert len(seen) > 2 and max(seen) * 3 <= 0.25 * 2**20  # distance block is ~1/3 of the temporaries
