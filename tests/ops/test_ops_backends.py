"""Backend selection, and every non-torch backend against the torch backend on the same inputs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from ops_reference import random_cloud, ref_ball_query, ref_fps

from pointdr2 import ops
from pointdr2.ops import cpp_backend, pointnet2_backend, torch_backend, triton_backend

needs_cpp = pytest.mark.skipif("cpp" not in ops.available_backends(), reason="no C++ compiler/ninja")


def _all_ops(xyz: torch.Tensor, queries: torch.Tensor) -> dict:
    return {
        "fps": ops.furthest_point_sample(xyz, xyz.shape[1] // 2),
        "fps_skip": ops.furthest_point_sample(xyz, xyz.shape[1], skip_origin=True),
        "ball": ops.ball_query(xyz, queries, 0.3, 13),
        "knn": ops.knn(queries, xyz, min(20, xyz.shape[1])),
        "three_nn": ops.three_nn(queries, xyz),
    }


def _assert_same(a: dict, b: dict) -> None:
    assert torch.equal(a["fps"], b["fps"])
    assert torch.equal(a["fps_skip"], b["fps_skip"])
    assert torch.equal(a["ball"], b["ball"])
    for key in ("knn", "three_nn"):
        assert torch.equal(a[key][1], b[key][1]), key
        assert torch.equal(a[key][0], b[key][0]), key  # same float32 arithmetic: bitwise equal


# ----------------------------------------------------------------------------- selection
def test_set_backend_and_environment(backend, monkeypatch):
    monkeypatch.delenv("POINTDR2_OPS_BACKEND", raising=False)
    assert ops.get_backend() == "auto"
    monkeypatch.setenv("POINTDR2_OPS_BACKEND", "torch")
    assert ops.get_backend() == "torch"
    backend("auto")  # set_backend wins over the environment
    assert ops.get_backend() == "auto"
    ops.set_backend(None)
    monkeypatch.setenv("POINTDR2_OPS_BACKEND", "cuda_magic")
    with pytest.raises(ValueError, match="POINTDR2_OPS_BACKEND.*torch"):
        ops.get_backend()
    with pytest.raises(ValueError, match="POINTDR2_OPS_BACKEND"):
        ops.furthest_point_sample(torch.rand(1, 4, 3), 2)


def test_unknown_or_unavailable_backend_names(backend):
    with pytest.raises(ValueError, match=r"one of auto, torch, cpp, triton, pointnet2_ops; got 'fast'"):
        ops.set_backend("fast")
    if "pointnet2_ops" not in ops.available_backends():
        with pytest.raises(ValueError, match="not available here; available: torch"):
            ops.set_backend("pointnet2_ops")
    assert "torch" in ops.available_backends()
    assert set(ops.backend_status()) == set(ops.BACKENDS)


def test_auto_backend_choice(monkeypatch):
    monkeypatch.setattr(cpp_backend, "is_available", lambda: True)
    assert ops.auto_backend("cpu", torch.float32) == "cpp"
    assert ops.auto_backend("cpu", torch.float16) == "torch"  # cpp has no half kernels
    monkeypatch.setattr(cpp_backend, "is_available", lambda: False)
    assert ops.auto_backend("cpu", torch.float32) == "torch"
    # CUDA preference order: pointnet2_ops (float32 only) > triton > torch
    monkeypatch.setattr(pointnet2_backend, "is_available", lambda: True)
    monkeypatch.setattr(triton_backend, "is_available", lambda: True)
    assert ops.auto_backend("cuda", torch.float32) == "pointnet2_ops"
    assert ops.auto_backend("cuda", torch.bfloat16) == "triton"
    monkeypatch.setattr(triton_backend, "is_available", lambda: False)
    assert ops.auto_backend("cuda", torch.bfloat16) == "torch"


def test_cpp_build_failure_falls_back_with_one_warning(backend, monkeypatch, caplog):
    import torch.utils.cpp_extension as cpp_extension

    def broken(**kwargs):
        raise RuntimeError("Error building extension 'pointdr2_ops_cpu': g++ not found")

    monkeypatch.setattr(cpp_backend, "_module", None)
    monkeypatch.setattr(cpp_backend, "_error", None)
    monkeypatch.setattr(cpp_backend, "is_built", lambda: False)
    monkeypatch.setattr(cpp_extension, "load", broken)
    monkeypatch.setattr(ops, "_reported", set())
    backend("auto")
    xyz = random_cloud(2, 40, seed=1)
    with caplog.at_level(logging.WARNING, logger="pointdr2.ops"):
        first = ops.furthest_point_sample(xyz, 10)
        second = ops.ball_query(xyz, xyz, 0.5, 4)
    np.testing.assert_array_equal(first.numpy(), ref_fps(xyz.numpy(), 10))
    np.testing.assert_array_equal(second.numpy(), ref_ball_query(xyz.numpy(), xyz.numpy(), 0.5, 4))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cpp is unavailable" in warnings[0].getMessage()
    assert "g++ not found" in warnings[0].getMessage()
    assert "cpp" not in ops.available_backends() and ops.auto_backend("cpu") == "torch"


# ----------------------------------------------------------------------------- cpp
@needs_cpp
@pytest.mark.parametrize("B,N", [(1, 5), (3, 257), (2, 1500)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_matches_torch(backend, B, N, dtype):
    xyz = random_cloud(B, N, seed=N, duplicates=N // 10, dtype=dtype, near_origin=max(1, N // 8))
    queries = torch.cat([xyz[:, : N // 3], random_cloud(B, 9, seed=2, dtype=dtype)], dim=1)
    backend("torch")
    expected = _all_ops(xyz, queries)
    backend("cpp")
    _assert_same(_all_ops(xyz, queries), expected)
    np.testing.assert_array_equal(expected["fps_skip"].numpy(), ref_fps(xyz.numpy(), N, skip_origin=True))


@needs_cpp
def test_cpp_build_is_cached(backend):
    backend("cpp")
    ops.furthest_point_sample(torch.rand(1, 8, 3), 3)
    assert cpp_backend.is_built() and cpp_backend.build_dir().is_dir()
    assert cpp_backend.status() == "loaded"
    assert cpp_backend.build_key() in cpp_backend.build_dir().name


# ----------------------------------------------------------------------------- triton (interpreter)
def triton_interpreter_check() -> None:
    """Triton kernels against torch, run by the interpreter on CPU tensors (TRITON_INTERPRET=1)."""
    assert triton_backend.is_available() and "triton" in ops.available_backends()
    xyz = random_cloud(2, 21, seed=3, duplicates=4)  # tiny: the interpreter runs every program in numpy
    xyz[1, 10:13] = torch.tensor([[0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]])  # on the r=0.5 sphere of the origin
    queries = torch.cat([xyz[:, :3], torch.zeros(2, 1, 3)], dim=1)
    assert torch.equal(triton_backend.furthest_point_sample(xyz, 8), torch_backend.furthest_point_sample(xyz, 8))
    assert torch.equal(triton_backend.ball_query(xyz, queries, 0.5, 6), torch_backend.ball_query(xyz, queries, 0.5, 6))
    for k in (1, 21):
        got, want = triton_backend.knn(queries, xyz, k), torch_backend.knn(queries, xyz, k)
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    got, want = triton_backend.three_nn(queries, xyz), torch_backend.three_nn(queries, xyz)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    half = xyz.to(torch.bfloat16)
    assert torch.equal(triton_backend.furthest_point_sample(half, 5), torch_backend.furthest_point_sample(half, 5))
    # pointnet2_ops' origin skip: points at / near the origin, duplicates, all picks (repeats included),
    # and a cloud with no candidate at all
    near = random_cloud(2, 21, seed=8, duplicates=3, near_origin=6)
    for cloud in (near, near.to(torch.bfloat16), near * 0.01):
        got = triton_backend.furthest_point_sample(cloud, 21, skip_origin=True)
        assert torch.equal(got, torch_backend.furthest_point_sample(cloud, 21, skip_origin=True))
    assert torch.equal(triton_backend.furthest_point_sample(near, 21, skip_origin=True),
                       torch.from_numpy(ref_fps(near.numpy(), 21, skip_origin=True)))
    assert not triton_backend.furthest_point_sample(near * 0.01, 21, skip_origin=True).any()


@pytest.mark.skipif(triton_backend._installed() is False, reason="triton not installed")
def test_triton_kernels_match_torch_in_interpreter():
    # Triton reads TRITON_INTERPRET when its language functions are first set up, so a process that
    # imported triton before (pointdr2 info does, to print its version) cannot switch to the
    # interpreter: the check runs in a fresh process with the variable set from the start.
    here = os.path.dirname(os.path.abspath(__file__))
    code = f"import sys; sys.path.insert(0, {here!r}); import test_ops_backends as t; t.triton_interpreter_check()"
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


# ----------------------------------------------------------------------------- pointnet2_ops adapter
def _fake_pointnet2(calls: list) -> types.ModuleType:
    """Mimics pointnet2_ops.pointnet2_utils on CPU: int32 outputs and the FPS origin skip."""

    def furthest_point_sample(xyz, npoint):
        calls.append("fps")
        p = xyz.double().numpy()
        out = np.zeros((p.shape[0], npoint), dtype=np.int32)
        for b in range(p.shape[0]):
            mind = np.full(p.shape[1], 1e10)
            skip = (p[b] ** 2).sum(1) <= 1e-3
            last = 0
            for i in range(1, npoint):
                d = ((p[b] - p[b, last]) ** 2).sum(1)
                mind = np.minimum(mind, d)
                last = int(np.argmax(np.where(skip, -1.0, mind)))
                out[b, i] = last
        return torch.from_numpy(out)

    def ball_query(radius, nsample, xyz, new_xyz):
        calls.append("ball")
        return torch.from_numpy(ref_ball_query(xyz.numpy(), new_xyz.numpy(), radius, nsample).astype(np.int32))

    def three_nn(unknown, known):
        calls.append("three_nn")
        sq, idx = torch_backend.knn(unknown, known, 3)
        return sq.sqrt(), idx.to(torch.int32)

    utils = types.ModuleType("pointnet2_ops.pointnet2_utils")
    utils.furthest_point_sample, utils.ball_query, utils.three_nn = furthest_point_sample, ball_query, three_nn
    package = types.ModuleType("pointnet2_ops")
    package.pointnet2_utils = utils
    return package


def test_pointnet2_adapter_converts_and_corrects_origin_skip(monkeypatch):
    calls: list = []
    fake = _fake_pointnet2(calls)
    monkeypatch.setitem(sys.modules, "pointnet2_ops", fake)
    monkeypatch.setitem(sys.modules, "pointnet2_ops.pointnet2_utils", fake.pointnet2_utils)
    xyz = random_cloud(2, 30, seed=4) + 2.0  # far from the origin: the kernel's skip never applies
    idx = pointnet2_backend.furthest_point_sample(xyz, 10)
    assert calls == ["fps"] and idx.dtype == torch.int64
    np.testing.assert_array_equal(idx.numpy(), ref_fps(xyz.numpy(), 10))

    # A point at the origin: the real kernel would never pick it; the adapter must still return
    # the contract's answer (it hands the cloud to another backend instead).
    xyz = torch.tensor([[[1.0, 1, 1], [0.0, 0, 0], [0.9, 1, 1], [0.02, 0, 0]]])
    assert fake.pointnet2_utils.furthest_point_sample(xyz, 2).tolist() == [[0, 2]]  # the bug being corrected
    calls.clear()
    assert pointnet2_backend.furthest_point_sample(xyz, 2).tolist() == [[0, 1]]
    assert calls == [] and pointnet2_backend.has_origin_points(xyz)

    # skip_origin=True asks for the kernel's own rule: the kernel runs on a cloud with origin points ...
    xyz = torch.tensor([[[1.0, 1, 1], [0.0, 0, 0], [0.9, 1, 1], [0.02, 0, 0]]])
    calls.clear()
    assert pointnet2_backend.furthest_point_sample(xyz, 3, skip_origin=True).tolist() == [[0, 2, 0]]
    assert calls == ["fps"]
    # ... except when a |p|^2 sits within float32 rounding of 1e-3: the shared mask decides instead
    r = float(np.sqrt(1e-3))
    xyz = torch.tensor([[[1.0, 1, 1], [r, 0, 0], [0.9, 1, 1]]])
    calls.clear()
    got = pointnet2_backend.furthest_point_sample(xyz, 3, skip_origin=True)
    assert calls == [] and pointnet2_backend.near_skip_threshold(xyz)
    np.testing.assert_array_equal(got.numpy(), ref_fps(xyz.numpy(), 3, skip_origin=True))

    xyz = random_cloud(2, 30, seed=5)
    ball = pointnet2_backend.ball_query(xyz, xyz[:, :6], 0.6, 7)
    assert ball.dtype == torch.int64
    np.testing.assert_array_equal(ball.numpy(), ref_ball_query(xyz.numpy(), xyz[:, :6].numpy(), 0.6, 7))
    dist, nn_idx = pointnet2_backend.three_nn(xyz[:, :6], xyz)
    assert nn_idx.dtype == torch.int64
    want = torch_backend.three_nn(xyz[:, :6], xyz)
    assert torch.equal(nn_idx, want[1]) and torch.allclose(dist, want[0])
    assert not hasattr(pointnet2_backend, "knn")  # kNN always goes to the next backend


def test_pointnet2_backend_only_claims_cuda_float32():
    assert pointnet2_backend.supports(torch.device("cuda"), torch.float32)
    assert not pointnet2_backend.supports(torch.device("cuda"), torch.float16)
    assert not pointnet2_backend.supports(torch.device("cpu"), torch.float32)


def _ptxas_available() -> bool:
    if not triton_backend._installed():
        return False
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("triton")
    return (Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "ptxas").exists()


@pytest.mark.skipif(not _ptxas_available(), reason="triton with its bundled ptxas not installed")
def test_triton_kernels_compile_for_cuda_without_fma():
    # The interpreter does not type-check like the compiler does; compile every kernel ahead of
    # time for an sm_90 GPU (no GPU needed) and check that no fused multiply-add slipped into the
    # distance arithmetic (it would change boundary decisions against the other backends).
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernels = triton_backend._get()
    signatures = {
        "fps": ({"xyz_ptr": "*fp32", "mind_ptr": "*fp32", "skip_ptr": "*u8", "out_ptr": "*i64", "N": "i32",
                 "npoint": "i32", "BLOCK": "constexpr", "SKIP": "constexpr"}, {"BLOCK": 1024, "SKIP": True}),
        "fps_plain": ({"xyz_ptr": "*fp32", "mind_ptr": "*fp32", "skip_ptr": "*u8", "out_ptr": "*i64", "N": "i32",
                       "npoint": "i32", "BLOCK": "constexpr", "SKIP": "constexpr"}, {"BLOCK": 1024, "SKIP": False}),
        "ball": ({"xyz_ptr": "*bf16", "q_ptr": "*bf16", "out_ptr": "*i64", "N": "i32", "S": "i32", "r2": "fp32",
                  "nsample": "i32", "BLOCK": "constexpr", "NS_BLOCK": "constexpr"}, {"BLOCK": 1024, "NS_BLOCK": 32}),
        "knn": ({"q_ptr": "*fp16", "xyz_ptr": "*fp16", "dist_ptr": "*fp32", "idx_ptr": "*i64", "N": "i32",
                 "S": "i32", "k": "i32", "BLOCK": "constexpr"}, {"BLOCK": 256}),
    }
    for name, (signature, constexprs) in signatures.items():
        positions = {(list(signature).index(key),): value for key, value in constexprs.items()}
        src = ASTSource(fn=kernels[name.split("_")[0]], signature=signature, constexprs=positions)
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False})
        assert "cubin" in compiled.asm, name
        assert "fma.rn.f32" not in compiled.asm["ptx"], name
