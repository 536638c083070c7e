"""The cpp backend's bucketed (kd-tree) paths against an independent NumPy brute force.

The reference evaluates the op definitions literally in float32 (``(dx*dx + dy*dy) + dz*dz``, one
rounding per operation, as every backend does), so indices and distances must agree bit for bit.
The tree is forced on small clouds with tiny buckets, so deep trees, bucket boundaries, pruning
and the tie rules across buckets are all exercised on inputs the reference can check quickly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ops_reference import random_cloud, ref_ball_query, ref_fps, ref_knn, ref_origin_skip

from pointdr2 import ops
from pointdr2.ops import cpp_backend

pytestmark = pytest.mark.skipif("cpp" not in ops.available_backends(), reason="no C++ compiler/ninja")

LEAVES = [1, 2, 5, 16, None]  # None: the op's own bucket size


# ----------------------------------------------------------------------------- float32 reference
def sqdist32(p: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 squared distances of points p [N, 3] to c [3], the definition's operation order."""
    p = p.astype(np.float32)
    c = c.astype(np.float32)
    dx, dy, dz = p[:, 0] - c[0], p[:, 1] - c[1], p[:, 2] - c[2]
    return (dx * dx + dy * dy) + dz * dz


def fps32(xyz: np.ndarray, npoint: int, skip_origin: bool = False) -> np.ndarray:
    skip = ref_origin_skip(xyz) if skip_origin else np.zeros(xyz.shape[:2], dtype=bool)
    out = np.zeros((len(xyz), npoint), dtype=np.int64)
    for b, p in enumerate(xyz):
        mind = np.full(len(p), np.inf, dtype=np.float32)
        cand = np.flatnonzero(~skip[b])
        last = 0
        for i in range(1, npoint):
            mind = np.minimum(mind, sqdist32(p, p[last]))
            last = int(cand[np.argmax(mind[cand])]) if len(cand) else 0  # first maximum
            out[b, i] = last
    return out


def ball32(xyz: np.ndarray, centres: np.ndarray, radius: float, nsample: int) -> np.ndarray:
    r2 = np.float32(radius) * np.float32(radius)
    out = np.zeros(centres.shape[:2] + (nsample,), dtype=np.int64)
    for b in range(len(xyz)):
        for s, c in enumerate(centres[b]):
            hits = np.flatnonzero(sqdist32(xyz[b], c) < r2)[:nsample]
            if len(hits):
                out[b, s] = hits[0]
                out[b, s, : len(hits)] = hits
    return out


def knn32(query: np.ndarray, support: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    dist = np.zeros(query.shape[:2] + (k,), dtype=np.float32)
    idx = np.zeros(query.shape[:2] + (k,), dtype=np.int64)
    for b in range(len(query)):
        for s, c in enumerate(query[b]):
            d = sqdist32(support[b], c)
            order = np.lexsort((np.arange(len(d)), d))[:k]  # by distance, then index
            dist[b, s], idx[b, s] = d[order], order
    return dist, idx


# ----------------------------------------------------------------------------- clouds
def clustered(batch: int, n: int, seed: int) -> torch.Tensor:
    """Tight Gaussian blobs of very different sizes plus a few far outliers."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-5, 5, size=(batch, 6, 3))
    scales = np.array([1e-4, 1e-3, 0.01, 0.1, 0.5, 1.0])
    which = rng.integers(0, 6, size=(batch, n))
    p = centres[np.arange(batch)[:, None], which] + rng.normal(size=(batch, n, 3)) * scales[which][..., None]
    p[:, : max(1, n // 50)] = rng.uniform(-50, 50, size=(batch, max(1, n // 50), 3))
    return torch.from_numpy(p.astype(np.float32))


def integer_grid(batch: int, n: int, seed: int) -> torch.Tensor:
    """Points on a small integer lattice in shuffled order: masses of exactly equal distances."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(-3, 4, size=(batch, n, 3)).astype(np.float32))


def room(batch: int, n: int, seed: int) -> torch.Tensor:
    """Room-like: exact planes (floor z=0, walls x=0 and y=3), edges where they meet, and clutter."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 3, size=(batch, n, 3))
    part = rng.integers(0, 5, size=(batch, n))
    p[..., 2] = np.where(part == 0, 0.0, p[..., 2])
    p[..., 0] = np.where(part == 1, 0.0, p[..., 0])
    p[..., 1] = np.where(part == 2, 3.0, p[..., 1])
    edge = part == 3  # the floor/wall edge x = 0, z = 0
    p[..., 0] = np.where(edge, 0.0, p[..., 0])
    p[..., 2] = np.where(edge, 0.0, p[..., 2])
    return torch.from_numpy(p.astype(np.float32))


CLOUDS = {
    "uniform": lambda b, n, s: random_cloud(b, n, seed=s),
    "duplicates": lambda b, n, s: random_cloud(b, n, seed=s, duplicates=n // 2),
    "clustered": clustered,
    "grid": integer_grid,
    "room": room,
    "identical": lambda b, n, s: torch.full((b, n, 3), 0.25),
}


@pytest.fixture
def cpp(backend):
    backend("cpp")


# ----------------------------------------------------------------------------- FPS
@pytest.mark.parametrize("kind", sorted(CLOUDS))
@pytest.mark.parametrize("leaf", LEAVES)
def test_fps_tree_matches_float32_brute_force(cpp, kind, leaf):
    xyz = CLOUDS[kind](3, 301, 11)
    want = fps32(xyz.numpy(), 301)
    with cpp_backend.forced_path("tree", leaf):
        for npoint in (1, 2, 100, 301):  # 301 = N: every point, then the repeats of a spent cloud
            np.testing.assert_array_equal(ops.furthest_point_sample(xyz, npoint).numpy(), want[:, :npoint])


@pytest.mark.parametrize("leaf", [1, 3, None])
def test_fps_tree_single_point_and_tiny_clouds(cpp, leaf):
    with cpp_backend.forced_path("tree", leaf):
        assert ops.furthest_point_sample(torch.rand(2, 1, 3), 1).tolist() == [[0], [0]]
        xyz = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0]]])  # 1, 2, 3 tie at distance 1
        assert ops.furthest_point_sample(xyz, 4).tolist() == [[0, 1, 2, 3]]


@pytest.mark.parametrize("leaf", [1, 4, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fps_tree_origin_skip(cpp, leaf, dtype):
    xyz = random_cloud(3, 200, seed=5, duplicates=30, near_origin=40, dtype=dtype)
    tiny = random_cloud(1, 30, seed=6) * 0.001  # every point in the origin ball: all picks are 0
    with cpp_backend.forced_path("tree", leaf):
        for npoint in (1, 77, 200):
            got = ops.furthest_point_sample(xyz, npoint, skip_origin=True).numpy()
            np.testing.assert_array_equal(got, ref_fps(xyz.numpy(), npoint, skip_origin=True))
        assert not ops.furthest_point_sample(tiny, 30, skip_origin=True).any()
    if dtype == torch.float32:
        np.testing.assert_array_equal(got, fps32(xyz.numpy(), 200, skip_origin=True))


def test_fps_tree_float64_matches_float64_reference(cpp):
    xyz = clustered(2, 250, 3).double()
    with cpp_backend.forced_path("tree", 3):
        np.testing.assert_array_equal(ops.furthest_point_sample(xyz, 250).numpy(), ref_fps(xyz.numpy(), 250))


def test_fps_tree_equal_maxima_in_different_buckets_go_to_the_lowest_index(cpp):
    # Two far clusters whose points tie exactly; the lowest index must win although it sits in a
    # bucket the tree visits later (indices interleave the clusters in reverse spatial order).
    a = np.array([[10.0, 0, 0], [-10.0, 0, 0], [0, 10.0, 0], [0, -10.0, 0], [0, 0, 0]], dtype=np.float32)
    xyz = torch.from_numpy(a[[4, 3, 2, 1, 0]][None].copy())
    with cpp_backend.forced_path("tree", 1):
        got = ops.furthest_point_sample(xyz, 5)
    np.testing.assert_array_equal(got.numpy(), fps32(xyz.numpy(), 5))
    assert got.tolist() == [[0, 1, 2, 3, 4]]


@pytest.mark.parametrize("kind", sorted(CLOUDS))
@pytest.mark.parametrize("team", [2, 3, 5])
def test_fps_tree_on_a_team_of_threads_matches_float32_brute_force(cpp, kind, team):
    # one cloud shared by several threads (parts of the tree per thread, one barrier per pick)
    xyz = CLOUDS[kind](2, 301, 12)
    want = fps32(xyz.numpy(), 301)
    for leaf in (1, 4, None):
        with cpp_backend.forced_path("tree", leaf, team=team):
            for npoint in (1, 2, 100, 301):
                np.testing.assert_array_equal(ops.furthest_point_sample(xyz, npoint).numpy(), want[:, :npoint])


def test_fps_tree_team_origin_skip_float64_and_ties_across_parts(cpp):
    xyz = random_cloud(2, 200, seed=7, duplicates=30, near_origin=40, dtype=torch.float64)
    a = np.array([[10.0, 0, 0], [-10.0, 0, 0], [0, 10.0, 0], [0, -10.0, 0], [0, 0, 0]], dtype=np.float32)
    ties = torch.from_numpy(a[[4, 3, 2, 1, 0]][None].copy())  # equal maxima in different parts
    with cpp_backend.forced_path("tree", 1, team=4):
        got = ops.furthest_point_sample(xyz, 150, skip_origin=True).numpy()
        assert ops.furthest_point_sample(ties, 5).tolist() == [[0, 1, 2, 3, 4]]
        assert ops.furthest_point_sample(torch.rand(1, 1, 3), 1).tolist() == [[0]]  # one leaf: a team of one
    np.testing.assert_array_equal(got, ref_fps(xyz.numpy(), 150, skip_origin=True))
    with pytest.raises(ValueError, match="team must be a positive integer or None; got 0"):
        with cpp_backend.forced_path("tree", team=0):
            pass
    with pytest.raises(ValueError, match="prefix must be a non-negative integer or None; got -1"):
        with cpp_backend.forced_path("tree", prefix=-1):
            pass


# ----------------------------------------------------------------------------- ball query / kNN
@pytest.mark.parametrize("kind", sorted(CLOUDS))
@pytest.mark.parametrize("leaf", [1, 2, 7, None])
def test_ball_query_tree_matches_float32_brute_force(cpp, kind, leaf):
    # prefix: the points scanned in index order before the tree (0: the tree alone; 8: a prefix
    # that hands dense balls to the index-order scan and sparse ones to the tree; None: 256 > N)
    xyz = CLOUDS[kind](2, 257, 21)
    centres = torch.cat([xyz[:, :40], CLOUDS["uniform"](2, 10, 3) * 4], dim=1)
    want = {(r, k): ball32(xyz.numpy(), centres.numpy(), r, k)
            for r, k in ((0.3, 8), (1.0, 5), (1.0, 64), (2.0, 300), (100.0, 3))}
    for prefix in (0, 8, None):
        with cpp_backend.forced_path("tree", leaf, prefix=prefix):
            for (radius, nsample), expected in want.items():
                got = ops.ball_query(xyz, centres, radius, nsample).numpy()
                np.testing.assert_array_equal(got, expected, err_msg=f"prefix {prefix} r {radius} k {nsample}")


def test_ball_query_tree_radius_boundary_is_strict(cpp):
    # grid points at exactly d^2 == r^2 (1, 2) from lattice centres must be excluded
    xyz = integer_grid(1, 400, 2)
    with cpp_backend.forced_path("tree", 2):
        for r in (1.0, float(np.sqrt(np.float32(2.0)))):
            got = ops.ball_query(xyz, xyz[:, :50], r, 30).numpy()
            np.testing.assert_array_equal(got, ball32(xyz.numpy(), xyz[:, :50].numpy(), r, 30))


@pytest.mark.parametrize("kind", sorted(CLOUDS))
@pytest.mark.parametrize("leaf", [1, 2, 7, None])
def test_knn_tree_matches_float32_brute_force(cpp, kind, leaf):
    support = CLOUDS[kind](2, 203, 31)
    query = torch.cat([support[:, :30], CLOUDS["uniform"](2, 9, 4) * 3], dim=1)
    with cpp_backend.forced_path("tree", leaf):
        for k in (1, 3, 16, 203):  # 203 = N: a full sort
            sq, idx = ops.knn(query, support, k)
            want_sq, want_idx = knn32(query.numpy(), support.numpy(), k)
            np.testing.assert_array_equal(idx.numpy(), want_idx)
            np.testing.assert_array_equal(sq.numpy(), want_sq)  # the same float32 arithmetic: bitwise
        dist, idx3 = ops.three_nn(query, support)
        np.testing.assert_array_equal(idx3.numpy(), knn32(query.numpy(), support.numpy(), 3)[1])


def test_knn_tree_single_support_point_and_float64(cpp):
    with cpp_backend.forced_path("tree", 1):
        sq, idx = ops.knn(torch.rand(2, 5, 3), torch.rand(2, 1, 3), 1)
        assert idx.shape == (2, 5, 1) and not idx.any()
        support = clustered(2, 150, 8).double()
        query = support[:, :20]
        sq, idx = ops.knn(query, support, 12)
        ref_sq, ref_idx = ref_knn(query.numpy(), support.numpy(), 12)
        np.testing.assert_array_equal(idx.numpy(), ref_idx)
        np.testing.assert_array_equal(sq.numpy(), ref_sq)  # float64 in, float64 arithmetic
        got = ops.ball_query(support, query, 0.5, 9)
        np.testing.assert_array_equal(got.numpy(), ref_ball_query(support.numpy(), query.numpy(), 0.5, 9))


# ----------------------------------------------------------------------------- path selection
class _Spy:
    """Stands in for the compiled module and records the ``leaf`` argument of every call."""

    def __init__(self, real):
        self.real, self.leaves, self.teams = real, [], []

    def __getattr__(self, name):
        fn = getattr(self.real, name)

        def call(*args):
            fps = name == "furthest_point_sample"  # (xyz, npoint, skip, leaf, team)
            # ball_query: (xyz, new_xyz, r2, nsample, leaf, prefix); knn: (query, support, k, leaf)
            self.leaves.append((name, args[{"furthest_point_sample": 3, "ball_query": 4}.get(name, -1)]))
            if fps:
                self.teams.append(args[4])
            return fn(*args)
        return call


@pytest.fixture
def spy(cpp, monkeypatch):
    recorder = _Spy(cpp_backend.load())
    monkeypatch.setattr(cpp_backend, "load", lambda: recorder)
    return recorder


def test_forced_paths_reach_the_kernels(spy):
    xyz = random_cloud(1, 50, seed=1)
    with cpp_backend.forced_path("tree", 3):
        ops.furthest_point_sample(xyz, 5)
        ops.ball_query(xyz, xyz, 0.5, 4)
        ops.knn(xyz, xyz, 4)
    with cpp_backend.forced_path("brute"):
        ops.furthest_point_sample(xyz, 5)
    assert spy.leaves == [("furthest_point_sample", 3), ("ball_query", 3), ("knn", 3), ("furthest_point_sample", 0)]
    with cpp_backend.forced_path("tree", 500):  # a forced bucket is clamped to the search kernels' block
        ops.knn(xyz, xyz, 4)
    assert spy.leaves[-1] == ("knn", 64)
    with pytest.raises(ValueError, match="path must be 'tree' or 'brute'; got 'kd'"):
        with cpp_backend.forced_path("kd"):
            pass


def test_automatic_choice_uses_the_tree_on_large_inputs_only(spy):
    big = random_cloud(1, 8192, seed=2)
    small = random_cloud(1, 1024, seed=3)
    ops.furthest_point_sample(big, 2048)
    ops.furthest_point_sample(small, 64)
    ops.ball_query(big, big[:, :512], 0.1, 16)
    ops.ball_query(small, small[:, :16], 0.1, 16)
    ops.knn(big[:, :512], big, 16)
    ops.knn(small[:, :8], small, 16)
    assert spy.leaves == [("furthest_point_sample", cpp_backend.FPS_LEAF), ("furthest_point_sample", 0),
                          ("ball_query", cpp_backend.SEARCH_LEAF), ("ball_query", 0),
                          ("knn", cpp_backend.SEARCH_LEAF), ("knn", 0)]


def test_a_large_cloud_is_shared_by_all_threads_only_when_there_are_fewer_clouds_than_threads(spy):
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        big = random_cloud(2, cpp_backend.FPS_TEAM_MIN_N, seed=4)
        ops.furthest_point_sample(big[:1], 100)    # one large cloud, two threads: a team of 2
        ops.furthest_point_sample(big, 100)        # a cloud per thread: one thread each
        ops.furthest_point_sample(big[:1, :5000], 2000)  # below the team's size
        torch.set_num_threads(1)
        ops.furthest_point_sample(big[:1], 100)
    finally:
        torch.set_num_threads(old)
    assert spy.teams == [2, 1, 1, 1]
    assert [leaf for _, leaf in spy.leaves] == [cpp_backend.FPS_LEAF] * 4


def test_automatic_tree_on_a_large_cloud_matches_the_scan(cpp):
    # sizes where the automatic choice is the tree, with its real bucket sizes, against the brute path
    xyz = room(2, 6000, 9)
    xyz[:, 3000:3500] = xyz[:, :500]  # duplicates
    centres = xyz[:, ::10].contiguous()
    auto = (ops.furthest_point_sample(xyz, 1500), ops.ball_query(xyz, centres, 0.2, 24), ops.knn(centres, xyz, 16))
    with cpp_backend.forced_path("brute"):
        scan = (ops.furthest_point_sample(xyz, 1500), ops.ball_query(xyz, centres, 0.2, 24), ops.knn(centres, xyz, 16))
    assert torch.equal(auto[0], scan[0]) and torch.equal(auto[1], scan[1])
    assert torch.equal(auto[2][0], scan[2][0]) and torch.equal(auto[2][1], scan[2][1])
    # and the scan itself against the definition, on one cloud's first picks
    np.testing.assert_array_equal(auto[0][:1, :200].numpy(), fps32(xyz[:1].numpy(), 200))
