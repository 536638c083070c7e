"""CUDA: Dr2Stack's reversible gradients (drop-path masks replayed from the saved CUDA RNG state) and bf16
autocast against plain autograd on the GPU. Skipped without a GPU; ``scripts/gpu_check.sh`` runs them."""

from __future__ import annotations

import pytest
import torch

from pointdr2.bench.cases_stack import vit_stack

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _grads(stack, x, pos, seed: int):
    torch.manual_seed(seed)  # the same drop-path masks for both modes (CUDA generator included)
    stack.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out = stack(x, pos)
    out.square().mean().backward()
    return out.detach(), x.grad.detach(), [p.grad.detach().clone() for p in stack.parameters()]


@pytest.mark.parametrize("cache_every", [None, 3])
def test_reversible_gradients_with_drop_path_match_standard_on_cuda(cache_every):
    torch.manual_seed(0)
    stack = vit_stack(depth=4, dim=64, heads=4, drop_path=0.3, alpha=0.0, beta=1.0).cuda().train()
    stack.cache_every = cache_every
    x = torch.randn(4, 17, 64, device="cuda")
    pos = torch.randn(4, 17, 64, device="cuda")
    stack.mode = "standard"
    ref = _grads(stack, x, pos, seed=7)
    stack.mode = "reversible"
    got = _grads(stack, x, pos, seed=7)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-4, atol=1e-5)
    for a, b in zip(got[2], ref[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert stack.last_reconstruction_error is not None and stack.last_reconstruction_error < 1e-5
    # a different seed draws different masks: the replay is per step, not fixed at construction
    other = _grads(stack, x, pos, seed=8)
    assert not torch.allclose(other[0], got[0])


def test_bf16_autocast_recomputes_in_bf16_on_cuda():
    torch.manual_seed(0)
    stack = vit_stack(depth=4, dim=64, heads=4, drop_path=0.0, alpha=0.0, beta=1.0).cuda().train()
    x = torch.randn(4, 17, 64, device="cuda")
    pos = torch.randn(4, 17, 64, device="cuda")
    results = {}
    for mode in ("standard", "reversible"):
        stack.mode = mode
        with torch.autocast("cuda", dtype=torch.bfloat16):
            results[mode] = _grads(stack, x, pos, seed=1)
    out_ref, gx_ref, gp_ref = results["standard"]
    out, gx, gp = results["reversible"]
    assert out.dtype == torch.float32  # the streams stay float32 for a float32 input
    torch.testing.assert_close(out, out_ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gx, gx_ref, rtol=5e-2, atol=5e-3)
    cos = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in gp]),
                                                torch.cat([g.flatten() for g in gp_ref]), dim=0)
    assert cos > 0.999
