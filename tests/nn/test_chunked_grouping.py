"""grouped_max: PointNeXt's grouped MLP + max in chunks of centres against the plain layers (float64):
values, gradients (parameters, features, positions), running statistics; frozen and mixed BN; per-chunk
statistics would be caught; what is kept for backward."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from pointdr2 import ops
from pointdr2.nn import chunked_grouping
from pointdr2.nn.chunked_grouping import chunk_points_for, grouped_max
from pointdr2.nn.pointnext_layers import LocalAggregation, SetAbstraction

B, N, C = 2, 240, 6

FORMS = {
    "sa-1layer": lambda: SetAbstraction(C, 16, layers=1, stride=4, radius=0.3, nsample=8),
    "sa-2layers-res": lambda: SetAbstraction(C, 16, layers=2, stride=4, radius=0.3, nsample=8, use_res=True),
    "sa-3layers": lambda: SetAbstraction(C, 16, layers=3, stride=4, radius=0.3, nsample=8),
    "la-1layer": lambda: LocalAggregation([C, C], 0.3, 8),
    "la-2layers-noact": lambda: LocalAggregation([C, 10, C], 0.3, 8, last_act=False),
}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _bns(module):
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _module(form, freeze=None):
    torch.manual_seed(0)
    m = FORMS[form]().double().train()
    g = torch.Generator().manual_seed(1)
    for i, bn in enumerate(_bns(m)):
        bn.running_mean.copy_(0.1 * torch.randn(bn.running_mean.shape, generator=g))
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) + 0.5)
        bn.weight.data.copy_(1 + 0.2 * torch.randn(bn.weight.shape, generator=g))
        bn.bias.data.copy_(0.2 * torch.randn(bn.bias.shape, generator=g))
        if freeze == "all" or (freeze == "mixed" and i % 2 == 0):
            bn.eval()
    return m


def _inputs():
    g = torch.Generator().manual_seed(2)
    return (torch.rand(B, N, 3, dtype=torch.float64, generator=g),
            torch.randn(B, C, N, dtype=torch.float64, generator=g))


def _centres(module):
    return N // module.stride if isinstance(module, SetAbstraction) else N


def _run(module, p, f, chunk, per_chunk_reference=None):
    """Output, weighted-sum gradients (features, positions, parameters) and buffers of one step."""
    p = p.clone().requires_grad_(True)
    f = f.clone().requires_grad_(True)
    if isinstance(module, SetAbstraction):
        new_p, centre_idx, idx = module.sample(p)
        out = module.aggregate(p, f, new_p, centre_idx, idx, chunk)
    else:
        out = module(p, f, None, chunk)
    w = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(3))
    (out * w).sum().backward()
    return {"out": out.detach(), "features": f.grad, "positions": p.grad,
            **{"grad " + n: t.grad for n, t in module.named_parameters()},
            **{"buffer " + n: t.clone() for n, t in module.named_buffers()}}


def _per_chunk_plain(module, p, f, chunk):
    """What a wrong chunking computes: each chunk of centres through the plain layers, so every
    training BatchNorm normalises with (and updates running stats from) that chunk's statistics."""
    p = p.clone().requires_grad_(True)
    f = f.clone().requires_grad_(True)
    new_p, centre_idx, idx = module.sample(p)
    outs = [module.aggregate(p, f, new_p[:, sl], centre_idx[:, sl], idx[:, sl])
            for sl in chunked_grouping._chunks(new_p.shape[1], chunk)]
    out = torch.cat(outs, dim=2)
    w = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(3))
    (out * w).sum().backward()
    return {"out": out.detach(), "features": f.grad, "positions": p.grad,
            **{"grad " + n: t.grad for n, t in module.named_parameters()}}


def _mismatches(got, ref, rtol=1e-6):
    """Names whose relative error exceeds rtol (num_batches_tracked compared exactly)."""
    scale = max(float(t.double().norm()) for k, t in ref.items() if k.startswith("grad "))
    bad = []
    for key, r in ref.items():
        g = got[key]
        if not r.is_floating_point():
            if not torch.equal(g, r):
                bad.append(key)
            continue
        err = float((g.double() - r.double()).norm())
        # a gradient that is zero in exact arithmetic (a bias in front of a training BN) is rounding
        # noise in both: measured against the model's gradient scale
        floor = 1e-9 * scale if key.startswith("grad ") else 0.0
        if err > rtol * float(r.double().norm()) + floor:
            bad.append(key)
    return bad


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("chunks", ["one", "three", "point"])
def test_chunked_equals_plain_in_training(form, chunks):
    p, f = _inputs()
    plain = _module(form)
    chunked = copy.deepcopy(plain)
    s = _centres(plain)
    chunk = {"one": s, "three": math.ceil(s / 3), "point": 1}[chunks]
    ref = _run(plain, p, f, None)
    got = _run(chunked, p, f, chunk)
    assert _mismatches(got, ref) == []
    tracked = [int(bn.num_batches_tracked) for bn in _bns(chunked)]
    assert tracked == [1] * len(tracked)  # one running-statistics update per forward, never per chunk


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("freeze", ["all", "mixed"])
def test_frozen_and_mixed_batchnorm(form, freeze):
    p, f = _inputs()
    plain = _module(form, freeze)
    chunked = copy.deepcopy(plain)
    ref = _run(plain, p, f, None)
    got = _run(chunked, p, f, 7)
    assert _mismatches(got, ref) == []


@pytest.mark.parametrize("form", ["sa-1layer", "sa-2layers-res"])
def test_per_chunk_statistics_would_be_caught(form):
    """The comparison above is sharp enough to reject chunking with per-chunk BN statistics."""
    p, f = _inputs()
    plain = _module(form)
    ref = _run(plain, p, f, None)
    wrong = _per_chunk_plain(copy.deepcopy(plain), p, f, math.ceil(_centres(plain) / 3))
    bad = _mismatches(wrong, {k: v for k, v in ref.items() if k in wrong})
    assert "out" in bad and "features" in bad and any(k.startswith("grad ") for k in bad)


def test_backward_keeps_nothing_per_slot():
    p, f = _inputs()
    la = _module("la-1layer")
    sizes = []

    def pack(t):
        if t.is_floating_point():  # the neighbour indices (int64 [B, S, K]) are kept, as by the plain layer
            sizes.append(t.numel())
        return t

    idx = la.neighbours(p)
    f = f.requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        la(p, f, idx)
    plain_largest = max(sizes)
    sizes.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        grouped_max(la.convs, p, p, f, idx, la.radius, 17)
    assert sizes and max(sizes) <= B * C * N  # the largest kept tensor is per point (the features)
    assert plain_largest >= la.nsample * max(sizes)  # the plain layer keeps [B, C, S, K] activations


def test_bad_arguments_raise_value_error():
    p, f = _inputs()
    la = _module("la-1layer")
    idx = la.neighbours(p)
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match="chunk_points"):
            grouped_max(la.convs, p, p, f, idx, la.radius, bad)
    with pytest.raises(ValueError, match="1x1 Conv2d"):
        grouped_max(nn.Sequential(nn.Linear(3, 3)), p, p, f, idx, la.radius, 4)
    with pytest.raises(ValueError, match="Dropout"):
        grouped_max(nn.Sequential(nn.Sequential(nn.Conv2d(C + 3, 4, 1), nn.Dropout())), p, p, f, idx, 0.3, 4)
    with pytest.raises(ValueError, match="channels"):
        grouped_max(la.convs, p, p, f[:, :3], idx, la.radius, 4)


def test_chunk_size_follows_the_budget():
    la = LocalAggregation([64, 64], 0.1, 32)
    per_centre = 3 * (67 + 64) * 2 * 32 * 4  # three live tensors of the widest layer per slot, float32
    assert chunk_points_for(2, 32, la.convs, torch.float32, budget=100 * per_centre) == 100
    assert chunk_points_for(2, 32, la.convs, torch.float64, budget=100 * per_centre) == 50
    assert chunk_points_for(2, 32, la.convs, torch.float32, budget=1) == 1
    # default: a quarter of the ops budget
    ops.set_memory_budget(400 * per_centre)
    try:
        assert chunk_points_for(2, 32, la.convs, torch.float32) == 100
    finally:
        ops.set_memory_budget(None)


def test_autocast_bfloat16_matches_plain_within_bfloat16_precision():
    p, f = (t.float() for t in _inputs())
    plain = _module("la-1layer").float()
    chunked = copy.deepcopy(plain)
    res = []
    for m, chunk in ((plain, None), (chunked, 50)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            res.append(_run(m, p, f, chunk))
    ref, got = res
    for key in ("out", "features", "grad convs.0.0.weight"):
        err = float((got[key].float() - ref[key].float()).norm() / ref[key].float().norm())
        assert err < 3e-2, key
