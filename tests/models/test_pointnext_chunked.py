"""PointNeXt S/B/L/XL (seg and cls) with chunked set abstractions and local aggregations against the
plain unchunked autograd model, float64, training-mode BatchNorm: logits, every gradient (and the input
gradient), running statistics; chunk counts 1, 3 and one centre per chunk; model.chunk_points checked.

Widths are reduced to 8 (float64 at the official widths is too slow for the suite); the presets' stage
depths, strides, set-abstraction layers and residual forms are the official ones."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from torch import nn

from pointdr2.models.pointnext import build_pointnext

NAMES = ("pointnext-s", "pointnext-b", "pointnext-l", "pointnext-xl")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(name, task, chunk_points):
    cfg = {"name": name, "task": task, "width": 8, "nsample": 8, "chunk_points": chunk_points}
    if task == "cls":
        cfg.update(num_classes=5, head_mlps=[16], in_channels=4 if name == "pointnext-s" else 3)
        if name != "pointnext-s":
            cfg.update(radius=0.2)
    else:
        cfg.update(radius=0.15)
    return cfg


def _points(name, task):
    # s cls: strides 1,2,2,2,2,1; the others 1,4,4,4,4. With 256 points the last stage has one point
    # and its BatchNorms see 2 values: XL then amplifies a 1e-15 input change to 1e-6 in the logits
    # (chunked or not); 512 points keep the plain model's own conditioning near 1e-9.
    return 64 if (name, task) == ("pointnext-s", "cls") else 512


def _model(name, task, chunk_points):
    torch.manual_seed(0)
    model = build_pointnext(_cfg(name, task, chunk_points)).double().train()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return model


def _inputs(name, task):
    g = torch.Generator().manual_seed(2)
    n = _points(name, task)
    if task == "cls":
        return (torch.rand(2, n, 3, dtype=torch.float64, generator=g),)
    return (torch.rand(2, n, 3, dtype=torch.float64, generator=g),
            torch.rand(2, 4, n, dtype=torch.float64, generator=g))


def _step(net, model, inputs):
    """Logits, input gradient, parameter gradients and buffers after one weighted-sum backward."""
    inputs = [t.clone() for t in inputs]
    inputs[-1].requires_grad_(True)  # seg: the features; cls: the points (positions and features)
    torch.manual_seed(123)  # the same dropout masks in the head
    out = net(*inputs)
    w = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(3))
    (out * w).sum().backward()
    return {"logits": out.detach(), "input": inputs[-1].grad,
            **{"grad " + n: p.grad for n, p in model.named_parameters()},
            **{"buffer " + n: b.clone() for n, b in model.named_buffers()}}


@functools.cache
def _conditioning(name, task, surrogate=False):
    """Per result, its relative change in the plain model when the input moves by 1e-15 (relative):
    how precisely the plain model defines it at all. Measured: below 1e-9 for S and B, up to 5e-8 for
    XL seg, 6e-7 for L cls and 5e-6 for XL cls (BatchNorms over the last stages' few points, at width
    8), and O(1) for the stem's bias, whose gradient is zero in exact arithmetic. A chunked result must
    be within 1e-6 or 20x this, whichever is larger. ``surrogate``: of the plain autograd surrogate at
    (alpha, beta) = (0, 1), the reference of the reversible test."""
    inputs = _inputs(name, task)
    noise = torch.randn(inputs[-1].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    moved = (*inputs[:-1], inputs[-1] * (1 + 1e-15 * noise))
    a, b = _model(name, task, None), _model(name, task, None)
    net_a, net_b = (m.dr2net_surrogate(0.0, 1.0, "standard") if surrogate else m for m in (a, b))
    ra, rb = _step(net_a, a, inputs), _step(net_b, b, moved)
    return {k: float((ra[k] - rb[k]).norm() / rb[k].norm().clamp_min(1e-300))
            for k in ra if ra[k].is_floating_point()}


def _assert_same(got, ref, name, task, surrogate=False, rtol=1e-6):
    scale = max(float(t.norm()) for k, t in ref.items() if k.startswith("grad "))
    conditioning = _conditioning(name, task, surrogate)
    for key, r in ref.items():
        g = got[key]
        if not r.is_floating_point():
            assert torch.equal(g, r), key
            continue
        err = float((g - r).norm())
        # a gradient that is zero in exact arithmetic (the stem's bias feeds only training BNs) is
        # rounding noise in both: measured against the model's gradient scale
        floor = 1e-9 * scale if key.startswith("grad ") else 0.0
        tol = max(rtol, 20 * conditioning[key])
        assert err <= tol * float(r.norm()) + floor, f"{key}: {err:.3g} vs norm {float(r.norm()):.3g}"


def _first_stage_centres(name, task):
    return _points(name, task) // (2 if (name, task) == ("pointnext-s", "cls") else 4)


@pytest.mark.parametrize("task", ["seg", "cls"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunks", ["one", "three", "point"])
def test_checkpoint_surrogate_with_chunks_equals_the_plain_model(name, task, chunks):
    """finetune.mode=checkpoint's network (alpha 1, beta 0) is the plain model: chunked, it must give
    the plain model's logits, gradients and running statistics."""
    s1 = _first_stage_centres(name, task)
    chunk = {"one": 10**6, "three": math.ceil(s1 / 3), "point": 1}[chunks]
    plain = _model(name, task, None)
    chunked = copy.deepcopy(plain)
    chunked.cfg["chunk_points"] = chunk
    inputs = _inputs(name, task)
    ref = _step(plain, plain, inputs)
    sur = chunked.dr2net_surrogate(1.0, 0.0, "checkpoint")
    assert sur.chunk_points == chunk
    _assert_same(_step(sur, chunked, inputs), ref, name, task)
    tracked = [int(v) for k, v in chunked.state_dict().items() if k.endswith("num_batches_tracked")]
    assert tracked == [1] * len(tracked)


@pytest.mark.parametrize("task", ["seg", "cls"])
@pytest.mark.parametrize("name", ["pointnext-b", "pointnext-xl"])
@pytest.mark.parametrize("chunks", ["three", "point"])
def test_reversible_surrogate_with_chunks_equals_plain_autograd(name, task, chunks):
    """The reversible surrogate at (0, 1), chunked, against plain autograd of the same surrogate."""
    chunk = {"three": math.ceil(_first_stage_centres(name, task) / 3), "point": 1}[chunks]
    plain = _model(name, task, None)
    chunked = copy.deepcopy(plain)
    inputs = _inputs(name, task)
    ref = _step(plain.dr2net_surrogate(0.0, 1.0, "standard"), plain, inputs)
    sur = chunked.dr2net_surrogate(0.0, 1.0, "reversible", chunk_points=chunk)
    _assert_same(_step(sur, chunked, inputs), ref, name, task, surrogate=True)


def test_chunks_are_sized_by_the_memory_budget_without_model_chunk_points(monkeypatch):
    """model.chunk_points null: each stage's chunk comes from the ops budget; a tiny budget means one
    centre per chunk and still the plain model's result."""
    from pointdr2 import ops

    plain = _model("pointnext-b", "seg", None)
    chunked = copy.deepcopy(plain)
    inputs = _inputs("pointnext-b", "seg")
    ref = _step(plain, plain, inputs)
    sur = chunked.dr2net_surrogate(1.0, 0.0, "checkpoint")
    assert sur.chunk_points is None
    calls = []
    import pointdr2.models.pointnext as pn

    real = pn.chunk_points_for

    def spy(*args, **kw):
        calls.append(real(*args, **kw))
        return calls[-1]

    monkeypatch.setattr(pn, "chunk_points_for", spy)
    monkeypatch.setattr(ops, "get_memory_budget", lambda: 1)
    _assert_same(_step(sur, chunked, inputs), ref, "pointnext-b", "seg")
    assert calls and set(calls) == {1}


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "many"])
def test_bad_model_chunk_points_is_a_one_line_error(value):
    with pytest.raises(ValueError, match=r"^model\.chunk_points must be null or a positive integer") as exc:
        build_pointnext({"name": "pointnext-b", "chunk_points": value})
    assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="model.chunk_points"):
        build_pointnext({"name": "pointnext-b", "chunk_point": 4})
    with pytest.raises(ValueError, match="chunk_points"):
        build_pointnext({"name": "pointnext-b"}).dr2net_surrogate(0.0, 1.0, "reversible", chunk_points=0)
