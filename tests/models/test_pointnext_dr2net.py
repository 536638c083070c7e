"""PointNeXt's Dr²Net surrogate: exactness at (1, 0), reversible gradients at (0, 1), BatchNorm
statistics updated once per step, shared weights and state-dict keys, saved activations."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pointdr2.models.pointnext import PointNeXtDr2Net, build_pointnext
from pointdr2.reversible import Dr2Stack

SEG = {"name": "pointnext", "width": 8, "blocks": [1, 3, 2, 1, 1], "radius": 0.15, "nsample": 8}
CLS = {"name": "pointnext", "task": "cls", "num_classes": 5, "width": 8, "blocks": [1, 3, 2, 1],
       "strides": [1, 2, 2, 1], "radius": 0.2, "nsample": 8, "sa_layers": 2, "sa_use_res": True,
       "head_mlps": [16], "height_dim": 1}


def _randomise_bn(model, seed):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return model


def _seg(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return _randomise_bn(build_pointnext(SEG), seed).to(dtype)


def _inputs(dtype=torch.float32, b=2, n=1024, seed=1):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(b, n, 3, generator=g, dtype=torch.float64).to(dtype)
    feats = torch.rand(b, 4, n, generator=g, dtype=torch.float64).to(dtype)
    return pos, feats


def _bn_stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_standard_surrogate_at_alpha1_beta0_equals_source_in_eval():
    model = _seg().eval()
    sur = model.dr2net_surrogate(1.0, 0.0, "standard").eval()
    assert isinstance(sur, PointNeXtDr2Net)
    pos, feats = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(sur(pos, feats), model(pos, feats), rtol=1e-5, atol=1e-5)

    torch.manual_seed(2)
    cls = _randomise_bn(build_pointnext(CLS), 3).eval()
    points = torch.rand(2, 256, 3)
    with torch.no_grad():
        torch.testing.assert_close(cls.dr2net_surrogate(1.0, 0.0, "standard").eval()(points), cls(points),
                                   rtol=1e-5, atol=1e-5)


def test_one_stack_per_stage_sharing_weights_and_keys():
    model = _seg()
    sur = model.dr2net_surrogate(0.0, 1.0, "reversible")
    stacks = [m for m in sur.modules() if isinstance(m, Dr2Stack)]
    assert len(stacks) == 2  # stages 1 and 2 have InvResMLP blocks; stages 3 and 4 have none
    assert sorted(len(s.blocks) for s in stacks) == [1, 2]
    assert {id(p) for p in sur.parameters()} == {id(p) for p in model.parameters()}
    assert list(sur.state_dict()) == list(model.state_dict())
    # A surrogate's checkpoint loads strictly into a plain model and back.
    with torch.no_grad():
        next(sur.parameters()).add_(1.0)
    fresh = build_pointnext(SEG)
    fresh.load_state_dict(sur.state_dict(), strict=True)
    for (k, a), b in zip(fresh.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    sur2 = fresh.dr2net_surrogate(0.0, 1.0, "reversible")
    sur2.load_state_dict(model.state_dict(), strict=True)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _step(module, pos, feats, target):
    torch.manual_seed(123)  # the same dropout masks in the head
    feats = feats.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(module(pos, feats), target)
    loss.backward()
    return loss.detach(), feats.grad


@pytest.mark.parametrize("mode", ["reversible", "checkpoint"])
def test_backprop_modes_match_standard_and_update_bn_stats_once(mode):
    alpha, beta = (0.0, 1.0) if mode == "reversible" else (1.0, 0.0)
    pos, feats = _inputs(torch.float64)
    target = torch.randint(0, 13, (2, 1024), generator=torch.Generator().manual_seed(0))
    ref_model = _seg(torch.float64).train()
    test_model = copy.deepcopy(ref_model)
    loss_ref, gin_ref = _step(ref_model.dr2net_surrogate(alpha, beta, "standard"), pos, feats, target)
    sur = test_model.dr2net_surrogate(alpha, beta, mode)
    assert sur.recompute_stem
    loss, gin = _step(sur, pos, feats, target)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gin, gin_ref, rtol=1e-7, atol=1e-9)
    g_ref, g = _grads(ref_model), _grads(test_model)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-7, atol=1e-9, msg=name)
    # Running statistics saw exactly one update, the same as without recomputation.
    s_ref, s = _bn_stats(ref_model), _bn_stats(test_model)
    for name in s_ref:
        torch.testing.assert_close(s[name], s_ref[name], rtol=1e-12, atol=1e-12, msg=name)
    assert all(int(v) == 1 for k, v in s.items() if k.endswith("num_batches_tracked"))


def test_checkpoint_mode_at_alpha1_beta0_is_the_pretrained_network_in_training():
    pos, feats = _inputs(torch.float64)
    target = torch.randint(0, 13, (2, 1024), generator=torch.Generator().manual_seed(1))
    conventional = _seg(torch.float64).train()
    wrapped = copy.deepcopy(conventional)
    loss_ref, _ = _step(conventional, pos, feats, target)
    loss, _ = _step(wrapped.dr2net_surrogate(1.0, 0.0, "checkpoint"), pos, feats, target)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=1e-12)
    g_ref, g = _grads(conventional), _grads(wrapped)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-8, atol=1e-10, msg=name)


def test_reversible_classifier_gradients_match_standard():
    torch.manual_seed(4)
    ref = _randomise_bn(build_pointnext(CLS), 5).double().train()
    test = copy.deepcopy(ref)
    points = torch.rand(2, 256, 3, dtype=torch.float64)
    target = torch.tensor([1, 3])
    for model, mode in ((ref, "standard"), (test, "reversible")):
        torch.manual_seed(123)
        nn.functional.cross_entropy(model.dr2net_surrogate(0.0, 1.0, mode)(points), target).backward()
    g_ref, g = _grads(ref), _grads(test)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-7, atol=1e-9, msg=name)


def _saved_bytes(fn):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_reversible_stages_store_no_per_block_activations():
    pos, feats = _inputs(n=512)

    def measure(blocks, which):
        torch.manual_seed(0)
        model = build_pointnext({**SEG, "blocks": blocks}).train()
        module = model if which == "conventional" else model.dr2net_surrogate(0.0, 1.0, "reversible")
        return _saved_bytes(lambda: module(pos, feats).sum())

    grow_conv = measure([1, 5, 4, 1, 1], "conventional") - measure([1, 2, 2, 1, 1], "conventional")
    grow_rev = measure([1, 5, 4, 1, 1], "dr2net") - measure([1, 2, 2, 1, 1], "dr2net")
    assert grow_conv > 0
    assert grow_rev <= 0.02 * grow_conv


def test_stack_coefficients_are_writable():
    sur = _seg().dr2net_surrogate(1.0, 0.1, "reversible")
    for stack in sur.stacks.values():
        stack.alpha, stack.beta = 0.5, 0.7
    assert all(s.alpha == 0.5 and s.beta == 0.7 for s in sur.stacks.values())


def test_memory_bench_case_rows_compute_the_same_loss():
    from pointdr2.bench.cases_pointnext import build_case

    losses, logits = {}, {}
    for mode in ("conventional", "checkpoint", "dr2net"):
        torch.manual_seed(0)
        module, inputs, loss_fn = build_case("pointnext-b", mode, 1, 1, 512, 1.0, 0.5, torch.device("cpu"))
        assert module.training and inputs[0].shape == (1, 512, 3) and inputs[1].shape == (1, 4, 512)
        module.eval()  # no dropout: the three rows must agree exactly at the start
        with torch.no_grad():
            logits[mode] = module(*inputs)
            losses[mode] = float(loss_fn(logits[mode]))
        if mode == "dr2net":
            assert [s.mode for s in module.stacks.values()] == ["reversible"] * 4
    assert losses["checkpoint"] == pytest.approx(losses["conventional"], rel=1e-6)
    torch.testing.assert_close(logits["checkpoint"], logits["conventional"])
    assert not torch.allclose(logits["dr2net"], logits["conventional"], atol=1e-3)  # beta=0.5 is another net
    with pytest.raises(ValueError, match="mode"):
        build_case("pointnext-b", "fast", None, 1, 512, 0.0, 1.0, torch.device("cpu"))


def test_models_without_invresmlp_blocks_only_checkpoint_their_set_abstractions():
    torch.manual_seed(6)
    model = _randomise_bn(build_pointnext({**SEG, "blocks": [1, 1, 1, 1, 1], "sa_layers": 2, "sa_use_res": True}), 7)
    sur = model.dr2net_surrogate(1.0, 0.1, "reversible")
    assert len(sur.stacks) == 0 and list(sur.state_dict()) == list(model.state_dict())
    pos, feats = _inputs(n=512)
    model.eval()
    sur.eval()
    with torch.no_grad():
        torch.testing.assert_close(sur(pos, feats), model(pos, feats))
    with pytest.raises(ValueError, match="cache_evry"):
        model.dr2net_surrogate(1.0, 0.1, "reversible", cache_evry=2)


def _freeze_bn(model, which):
    """``model.train()`` then ``bn.eval()`` for every BN ("all") or every other one ("mixed": frozen
    and training BN side by side inside the same set abstractions and InvResMLP blocks)."""
    model.train()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for i, bn in enumerate(bns):
        if which == "all" or i % 2 == 0:
            bn.eval()
    return model


@pytest.mark.parametrize("which", ["all", "mixed"])
@pytest.mark.parametrize("mode", ["checkpoint", "reversible"])
def test_recomputation_with_frozen_batchnorm_matches_the_plain_path(which, mode):
    """Checkpointed set abstractions and Dr2Net stacks (checkpoint at (1, 0) against the plain model,
    reversible at (0, 1) against plain autograd of the same surrogate) with frozen or mixed BN, float64:
    logits, every gradient, running statistics and num_batches_tracked agree."""
    alpha, beta = (1.0, 0.0) if mode == "checkpoint" else (0.0, 1.0)
    pos, feats = _inputs(torch.float64, n=512)
    plain = _freeze_bn(_seg(torch.float64), which)
    test_model = copy.deepcopy(plain)
    ref_net = plain if mode == "checkpoint" else plain.dr2net_surrogate(alpha, beta, "standard")
    sur = test_model.dr2net_surrogate(alpha, beta, mode)
    assert sur.recompute_stem
    w = torch.randn(2, 13, 512, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    outs = []
    for net in (ref_net, sur):
        torch.manual_seed(123)  # the same dropout masks in the head
        out = net(pos, feats)
        (out * w).sum().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-10)
    g_ref, g = _grads(plain), _grads(test_model)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-10, atol=1e-10, msg=name)
    s_ref, s = _bn_stats(plain), _bn_stats(test_model)
    for name in s_ref:
        assert torch.equal(s[name], s_ref[name]) if "num_batches" in name else \
            torch.allclose(s[name], s_ref[name], rtol=1e-12, atol=1e-12), name
    tracked = [int(v) for k, v in s.items() if k.endswith("num_batches_tracked")]
    assert tracked.count(0) == len(tracked) if which == "all" else 0 < tracked.count(0) < len(tracked)
