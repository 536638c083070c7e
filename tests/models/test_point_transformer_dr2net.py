"""Dr2Net surrogate of the point transformer and the recomputed tokenizer."""

from __future__ import annotations

import copy

import pytest
import torch
from test_point_transformer import _randomise, tiny

from pointdr2.models import to_dr2net
from pointdr2.nn.tokenizer import Group, recompute_tokens


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _step(net: torch.nn.Module, model: torch.nn.Module, pts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    out = net(pts)
    (out * weights).sum().backward()
    return out.detach()


def test_surrogate_shares_weights_and_equals_model_at_alpha1_beta0():
    model = tiny(depth=3).eval()
    _randomise(model)
    sur = to_dr2net(model, alpha=1.0, beta=0.0, mode="standard")
    assert len(sur.stack.blocks) == 6
    ids = {id(p) for p in model.parameters()}
    assert {id(p) for p in sur.parameters()} == ids  # no copies, nothing new
    pts = torch.randn(3, 50, 3)
    with torch.no_grad():
        torch.testing.assert_close(sur(pts), model(pts), rtol=1e-5, atol=1e-5)
    # the stack really is in the path: changing a shared weight changes both outputs identically
    with torch.no_grad():
        model.blocks.blocks[1].mlp.fc2.bias.add_(0.3)
        torch.testing.assert_close(sur(pts), model(pts), rtol=1e-5, atol=1e-5)


def test_surrogate_other_coefficients_follow_the_dual_residual_recurrence():
    """x_i = beta x_{i-2} + G_i(x_{i-1}; alpha), computed by hand from the model's sub-functions."""
    model = tiny(depth=2).double().eval()
    alpha, beta = 0.6, 0.3
    sur = to_dr2net(model, alpha=alpha, beta=beta, mode="standard")
    pts = torch.randn(2, 40, 3, dtype=torch.float64)
    with torch.no_grad():
        x, pos = model.embed(*model.tokenize(pts))
        prev2 = prev1 = x
        for blk in model.blocks.blocks:
            u = prev1 + pos
            cur = beta * prev2 + alpha * u + blk.attention_branch(u)
            prev2, prev1 = prev1, cur
            cur = beta * prev2 + alpha * prev1 + blk.mlp_branch(prev1)
            prev2, prev1 = prev1, cur
        torch.testing.assert_close(sur(pts), model.classify(prev1), rtol=1e-12, atol=1e-12)


def test_reversible_gradients_match_standard_at_0_1():
    model = tiny(depth=3, drop_path_rate=0.2).double().train()
    pts = torch.randn(4, 40, 3, dtype=torch.float64)
    w = torch.randn(4, 5, dtype=torch.float64)
    sur = to_dr2net(model, alpha=0.0, beta=1.0, mode="standard")
    torch.manual_seed(5)
    ref_out = _step(sur, model, pts, w)
    ref = _grads(model)
    state = copy.deepcopy(model.state_dict())
    sur.stack.mode = "reversible"
    model.load_state_dict(state)  # BN running stats as before the first step
    torch.manual_seed(5)
    out = _step(sur, model, pts, w)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    got = _grads(model)
    assert got.keys() == ref.keys() and len(got) > 20
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-7, atol=1e-9, msg=name)
    assert sur.stack.last_reconstruction_error is not None and sur.stack.last_reconstruction_error < 1e-10


@pytest.mark.parametrize("chunk,train", [(3, True), (1, True), (8, True), (3, False)])
def test_recomputed_tokenizer_matches_autograd(chunk, train):
    """Chunked recomputation (train-mode BN couples the chunks) == plain autograd, values and grads."""
    model = tiny(in_channels=4).double()
    _randomise(model)
    enc = model.encoder.train(train)
    pts = torch.randn(3, 40, 4, dtype=torch.float64)
    center_idx, knn_idx = model.group_divider.indices(pts)
    dout = torch.randn(3, 8, enc.out_channels, dtype=torch.float64)
    ref_enc = copy.deepcopy(enc)
    ref = ref_enc(Group.gather(pts, center_idx, knn_idx)[0])
    ref_params = list(ref_enc.parameters())
    ref_grads = torch.autograd.grad(ref, ref_params, dout)
    out = recompute_tokens(enc, pts, center_idx, knn_idx, chunk)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert out.grad_fn is not None
    grads = torch.autograd.grad(out, list(enc.parameters()), dout)
    for (name, _), g, r in zip(enc.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11, msg=name)
    # running statistics updated exactly once, like the plain forward (and only in training)
    for (name, b), (_, rb) in zip(enc.named_buffers(), ref_enc.named_buffers()):
        torch.testing.assert_close(b, rb, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("name", ["pointmae", "pointbert"])
def test_checkpoint_mode_with_recomputed_stem_equals_conventional_step(name):
    """finetune.mode=checkpoint: to_dr2net(model, 1, 0, 'checkpoint', recompute_stem=True) is the
    pretrained network: same logits, same gradients, same BN running statistics after a step."""
    model = tiny(name, depth=2).double().train()
    _randomise(model)
    twin = copy.deepcopy(model)
    pts = torch.randn(4, 40, 3, dtype=torch.float64)
    w = torch.randn(4, 5, dtype=torch.float64)
    torch.manual_seed(7)  # same head dropout masks in both runs
    ref_out = _step(twin, twin, pts, w)
    sur = to_dr2net(model, 1.0, 0.0, mode="checkpoint", recompute_stem=True, stem_chunk_groups=3)
    torch.manual_seed(7)
    out = _step(sur, model, pts, w)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    ref = _grads(twin)
    got = _grads(model)
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-8, atol=1e-10, msg=k)
    for (k, b), (_, rb) in zip(model.named_buffers(), twin.named_buffers()):
        torch.testing.assert_close(b, rb, rtol=1e-12, atol=0, msg=k)


def test_surrogate_rejects_bad_arguments():
    model = tiny()
    with pytest.raises(ValueError, match="stem_chunk_groups"):
        to_dr2net(model, recompute_stem=True, stem_chunk_groups=0)
    with pytest.raises(ValueError, match="mode"):
        to_dr2net(model, mode="fast")
    with pytest.raises(ValueError, match="no Dr2Net surrogate"):
        to_dr2net(torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------- frozen BatchNorm
def _freeze(model: torch.nn.Module, which: str) -> torch.nn.Module:
    """``model.train()``, then BN frozen (``bn.eval()``) as a finetuning recipe would: "all" (every
    BN, head included), "first"/"second" (one of the tokenizer's two: mixed modes)."""
    model.train()
    bns = {"first": [model.encoder.first_conv[1]], "second": [model.encoder.second_conv[1]],
           "all": [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]}[which]
    for bn in bns:
        bn.eval()
    return model


def _buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


@pytest.mark.parametrize("which", ["all", "first", "second"])
@pytest.mark.parametrize("chunk", [3, 8])  # several chunks (coupled by batch-statistics BN) and one
def test_recomputed_tokenizer_follows_each_batchnorm_mode(which, chunk):
    """Frozen and mixed BN: recompute_tokens == the plain encoder (nn.BatchNorm autograd), float64."""
    model = _freeze(tiny(in_channels=4).double(), which)
    _randomise(model)
    enc = model.encoder
    pts = torch.randn(3, 40, 4, dtype=torch.float64)
    center_idx, knn_idx = model.group_divider.indices(pts)
    dout = torch.randn(3, 8, enc.out_channels, dtype=torch.float64)
    ref_enc = copy.deepcopy(enc)
    ref = ref_enc(Group.gather(pts, center_idx, knn_idx)[0])
    ref_grads = torch.autograd.grad(ref, list(ref_enc.parameters()), dout)
    out = recompute_tokens(enc, pts, center_idx, knn_idx, chunk)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(out, list(enc.parameters()), dout)
    for (name, _), g, r in zip(enc.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10, msg=name)
    for (name, b), (_, rb) in zip(enc.named_buffers(), ref_enc.named_buffers()):
        assert torch.equal(b, rb) if "num_batches" in name else torch.allclose(b, rb, rtol=1e-12, atol=1e-12), name
    frozen = [enc.first_conv[1], enc.second_conv[1]] if which == "all" else \
        [enc.first_conv[1]] if which == "first" else [enc.second_conv[1]]
    assert all(int(bn.num_batches_tracked) == 0 for bn in frozen)  # a frozen BN is never updated


@pytest.mark.parametrize("which,name,mode,coeffs", [
    ("all", "pointmae", "checkpoint", (1.0, 0.0)), ("first", "pointmae", "checkpoint", (1.0, 0.0)),
    ("second", "pointmae", "checkpoint", (1.0, 0.0)), ("all", "pointbert", "checkpoint", (1.0, 0.0)),
    ("second", "pointmae", "reversible", (0.0, 1.0))])
def test_training_step_with_frozen_batchnorm_matches_the_plain_path(which, name, mode, coeffs):
    """A training step with frozen (or partly frozen) BN through the recomputing surrogate (tokenizer
    recomputed in chunks, blocks checkpointed or reversible) equals the plain path in float64: logits,
    every parameter gradient, running statistics and num_batches_tracked."""
    model = tiny(name, depth=2).double()
    _randomise(model)
    _freeze(model, which)
    plain = copy.deepcopy(model)
    ref_net = plain if mode == "checkpoint" else to_dr2net(plain, *coeffs, mode="standard")
    pts = torch.randn(4, 40, 3, dtype=torch.float64)
    w = torch.randn(4, 5, dtype=torch.float64)
    torch.manual_seed(7)  # same head dropout masks in both runs
    ref_out = _step(ref_net, plain, pts, w)
    sur = to_dr2net(model, *coeffs, mode=mode, recompute_stem=True, stem_chunk_groups=3)
    torch.manual_seed(7)
    out = _step(sur, model, pts, w)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    ref, got = _grads(plain), _grads(model)
    assert got.keys() == ref.keys() and len(got) > 20
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-10, atol=1e-10, msg=k)
    ref_b, got_b = _buffers(plain), _buffers(model)
    for k in ref_b:
        assert torch.equal(got_b[k], ref_b[k]) if "num_batches" in k else \
            torch.allclose(got_b[k], ref_b[k], rtol=1e-12, atol=1e-12), k
    assert int(model.encoder.first_conv[1].num_batches_tracked) == (0 if which in ("all", "first") else 1)
