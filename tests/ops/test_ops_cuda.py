"""CUDA: every index op on the torch and Triton backends against the brute-force NumPy references (the
CPU answer), and the differentiable ops' gradients against the CPU backend. Skipped without a GPU;
``scripts/gpu_check.sh`` runs them on one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ops_reference import random_cloud, ref_ball_query, ref_fps, ref_knn

from pointdr2 import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA_BACKENDS = ["torch", "triton"]
SHAPES = [(1, 37), (3, 101), (2, 1000)]  # N deliberately not a multiple of any block size


@pytest.fixture(params=CUDA_BACKENDS)
def cuda_backend(request, backend):
    if request.param not in ops.available_backends():
        pytest.fail(f"backend {request.param} is not available on this CUDA machine: {ops.backend_status()}")
    backend(request.param)
    return request.param


@pytest.mark.parametrize("B,N", SHAPES)
def test_index_ops_match_the_cpu_brute_force(cuda_backend, B, N):
    xyz = random_cloud(B, N, seed=N, duplicates=N // 7)
    gpu = xyz.cuda()
    for npoint in sorted({1, max(1, N // 4), N}):
        idx = ops.furthest_point_sample(gpu, npoint)
        assert idx.is_cuda and idx.dtype == torch.int64
        np.testing.assert_array_equal(idx.cpu().numpy(), ref_fps(xyz.numpy(), npoint))
    centres = xyz[:, : max(1, N // 4)].contiguous()
    for radius, nsample in ((0.2, 8), (0.5, 32)):
        idx = ops.ball_query(gpu, centres.cuda(), radius, nsample)
        np.testing.assert_array_equal(idx.cpu().numpy(), ref_ball_query(xyz.numpy(), centres.numpy(), radius, nsample))
    k = min(16, N)
    d2, idx = ops.knn(centres.cuda(), gpu, k)
    ref_d2, ref_idx = ref_knn(centres.numpy(), xyz.numpy(), k)
    np.testing.assert_allclose(d2.cpu().numpy(), ref_d2, rtol=1e-5, atol=1e-6)
    # the neighbours returned are at the reference's distances (exact ties, e.g. duplicates, go to the
    # lower index on every backend, as on the CPU)
    np.testing.assert_array_equal(idx.cpu().numpy(), ref_idx)


def test_differentiable_ops_match_cpu_values_and_gradients(cuda_backend):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 5, 300, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 300, (2, 40, 8), generator=g)
    known, unknown = torch.rand(2, 50, 3, generator=g), torch.rand(2, 300, 3, generator=g)
    results = {}
    for device in ("cpu", "cuda"):
        ops.set_backend("torch" if device == "cpu" else cuda_backend)
        f = feats.to(device).float().requires_grad_(True)
        grouped = ops.group_points(f, idx.to(device))
        gathered = ops.gather_points(f, idx[:, :, 0].to(device))
        dist, nn_idx = ops.three_nn(unknown.to(device), known.to(device))
        w = 1.0 / (dist + 1e-8)
        w = w / w.sum(-1, keepdim=True)
        fk = f[:, :, :50].contiguous()
        interp = ops.three_interpolate(fk, nn_idx, w)
        (grouped.square().sum() + gathered.sum() + interp.square().sum()).backward()
        results[device] = [t.detach().cpu() for t in (grouped, gathered, dist, nn_idx, interp, f.grad)]
    for a, b in zip(results["cpu"], results["cuda"]):
        if a.dtype == torch.int64:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
