"""Dr2Stack against independent references: a hand-written dual-residual loop differentiated by autograd."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pointdr2.reversible import Dr2Stack, ResidualBlock
from pointdr2.reversible.stack import anchor_positions


# --------------------------------------------------------------------------- test blocks and references
class Mlp(nn.Module):
    """Residual function fn(x, pos) = W2 tanh(W1 LN(x + pos)) / 2 on tokens [B, T, C]."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)

    def forward(self, x, pos=None):
        u = x if pos is None else x + pos
        return 0.5 * self.fc2(torch.tanh(self.fc1(self.ln(u))))


class Attn(nn.Module):
    """A one-head attention residual function, to have token mixing in the stack."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d)

    def forward(self, x, pos=None):
        u = x if pos is None else x + pos
        q, k, v = self.qkv(self.ln(u)).chunk(3, dim=-1)
        a = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
        return self.proj(a @ v)


def make_blocks(n: int, d: int, seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [ResidualBlock(Attn(d) if i % 2 == 0 else Mlp(d)) for i in range(n)]


def reference(blocks, x, alpha, beta, *extras, output="last"):
    """x_{-1} = x_0 = x; x_i = beta x_{i-2} + G_i(x_{i-1}; alpha): written out, plain autograd."""
    states = [x, x]
    for b in blocks:
        states.append(beta * states[-2] + b(states[-1], alpha, *extras))
    if output == "sum":  # x_N + beta*(x_{N-1} - x_0)
        return states[-1] + beta * (states[-2] - x)
    return states[-1] if output == "last" else 0.5 * (states[-1] + states[-2])


def grads_of(fn, module, *inputs):
    """All gradients (inputs first, then parameters) of sum(fn(*inputs) * w) for a fixed weight w."""
    for t in inputs:
        t.grad = None
    module.zero_grad(set_to_none=True)
    out = fn(*inputs)
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * w).sum().backward()
    return [t.grad.clone() for t in inputs] + [p.grad.clone() for p in module.parameters()]


def max_rel(a_list, b_list):
    return max(float((a - b).norm() / b.norm()) for a, b in zip(a_list, b_list))


def saved_bytes(fn, exclude: nn.Module) -> int:
    """Bytes of tensors saved for backward by fn(); each storage once, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in exclude.parameters()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.sum().backward()
    return sum(seen.values())


def inputs(d=8, dtype=torch.float64, b=2, t=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, d, generator=g, dtype=dtype).requires_grad_(True)
    pos = torch.randn(b, t, d, generator=g, dtype=dtype).requires_grad_(True)
    return x, pos


# --------------------------------------------------------------------------- equivalence and gradients
def test_alpha1_beta0_standard_is_the_plain_residual_network():
    d = 8
    blocks = make_blocks(6, d)
    stack = Dr2Stack(blocks, alpha=1.0, beta=0.0, mode="standard").double()
    x, pos = inputs(d)
    y = x
    for b in blocks:  # x_i = x_{i-1} + F_i(x_{i-1}), the pretrained network
        y = y + b.fn(y, pos)
    assert torch.equal(stack(x, pos), y)
    ref = grads_of(lambda a, p: _plain(blocks, a, p), stack, x, pos)
    got = grads_of(stack, stack, x, pos)
    assert max_rel(got, ref) < 1e-14


def _plain(blocks, x, pos):
    for b in blocks:
        x = x + b.fn(x, pos)
    return x


@pytest.mark.parametrize(
    "dtype,alpha,beta,tol",
    [(torch.float64, 0.0, 1.0, 1e-6), (torch.float32, 0.0, 1.0, 1e-4), (torch.float64, 0.5, 0.7, 1e-6)],
)
def test_reversible_gradients_match_autograd_for_24_blocks(dtype, alpha, beta, tol):
    d = 8
    blocks = make_blocks(24, d)
    stack = Dr2Stack(blocks, alpha=alpha, beta=beta, mode="reversible").to(dtype)
    x, pos = inputs(d, dtype)
    ref = grads_of(lambda a, p: reference(blocks, a, alpha, beta, p), stack, x, pos)
    got = grads_of(stack, stack, x, pos)
    assert len(got) == 2 + len(list(stack.parameters()))
    assert max_rel(got, ref) <= tol
    assert stack.last_mode == "reversible" and stack.last_cache_every == 24
    assert stack.last_reconstruction_error is not None and stack.last_reconstruction_error < tol


def test_mean_output_and_standard_checkpoint_modes_match_reference():
    d, alpha, beta = 8, 0.3, 0.8
    blocks = make_blocks(6, d)
    stack = Dr2Stack(blocks, alpha=alpha, beta=beta, output="mean").double()
    x, pos = inputs(d)
    ref = grads_of(lambda a, p: reference(blocks, a, alpha, beta, p, output="mean"), stack, x, pos)
    for mode in ("standard", "checkpoint", "reversible", "auto"):
        stack.mode = mode
        assert max_rel(grads_of(stack, stack, x, pos), ref) < 1e-10, mode


@pytest.mark.parametrize("cache_every", [None, 1, 3])
def test_sum_output_matches_reference_in_every_mode(cache_every):
    d, alpha, beta = 8, 0.25, 0.75
    blocks = make_blocks(8, d)
    stack = Dr2Stack(blocks, alpha=alpha, beta=beta, output="sum", cache_every=cache_every).double()
    x, pos = inputs(d)
    ref = grads_of(lambda a, p: reference(blocks, a, alpha, beta, p, output="sum"), stack, x, pos)
    for mode in ("standard", "checkpoint", "reversible", "auto"):
        stack.mode = mode
        assert max_rel(grads_of(stack, stack, x, pos), ref) < 1e-10, mode


def test_sum_output_is_the_residual_stream_when_alpha_plus_beta_is_one():
    """x_N + beta*(x_{N-1} - x_0) = x + sum_i F_i(x_{i-1}) for alpha + beta = 1 (the states x_i recorded
    from a hand-written loop): the output keeps every residual function, where "last" keeps half."""
    d, n = 8, 6
    blocks = [b.double() for b in make_blocks(n, d)]
    x, pos = inputs(d)
    for alpha in (1.0, 0.6, 0.0):
        beta = 1.0 - alpha
        states, residuals = [x, x], []
        for b in blocks:
            residuals.append(b.fn(states[-1], pos))
            states.append(beta * states[-2] + alpha * states[-1] + residuals[-1])
        stack = Dr2Stack(blocks, alpha=alpha, beta=beta, output="sum", mode="standard").double()
        with torch.no_grad():
            assert torch.allclose(stack(x, pos), x + sum(residuals), rtol=0, atol=1e-12)
            last = Dr2Stack(blocks, alpha=alpha, beta=beta, output="last", mode="standard")(x, pos)
            if beta > 0:
                assert not torch.allclose(last, x + sum(residuals), rtol=0, atol=1e-3)
    # alpha=1, beta=0: exactly the pretrained network, as "last"
    stack = Dr2Stack(blocks, alpha=1.0, beta=0.0, output="sum", mode="standard").double()
    assert torch.equal(stack(x, pos), _plain(blocks, x, pos))


def test_integer_extras_pass_through_and_input_without_grad():
    """Neighbour indices (int64) reach every block untouched; parameters still get gradients."""

    class Gather(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.lin = nn.Linear(d, d)

        def forward(self, x, alpha, idx):  # x [B, N, C], idx [B, N, K]
            b = torch.arange(x.shape[0])[:, None, None]
            return alpha * x + torch.tanh(self.lin(x[b, idx].mean(dim=2)))

    torch.manual_seed(0)
    d = 6
    blocks = [Gather(d) for _ in range(5)]
    stack = Dr2Stack(blocks, alpha=0.2, beta=0.9).double()
    x = torch.randn(2, 7, d, dtype=torch.float64)  # needs no gradient: only the parameters do
    idx = torch.randint(0, 7, (2, 7, 3))
    ref = grads_of(lambda: reference(blocks, x, 0.2, 0.9, idx), stack)
    got = grads_of(lambda: stack(x, idx), stack)
    assert max_rel(got, ref) < 1e-10
    assert idx.grad is None and x.grad is None


# --------------------------------------------------------------------------- memory
def test_saved_bytes_flat_in_depth_for_reversible_linear_for_standard():
    d = 16
    x, pos = inputs(d, torch.float32, b=2, t=8)
    counts = {}
    for mode in ("reversible", "standard"):
        for n in (4, 24):
            stack = Dr2Stack(make_blocks(n, d), alpha=0.0, beta=1.0, mode=mode)
            counts[mode, n] = saved_bytes(lambda s=stack: s(x, pos), stack)
    assert counts["reversible", 24] <= 1.1 * counts["reversible", 4]
    assert counts["standard", 24] >= 5 * counts["standard", 4]  # 6x the blocks
    state = x.numel() * 4
    assert counts["reversible", 24] <= 4 * state  # final pair + position embedding (+ slack)


def test_anchor_positions_bound_reconstruction_chains():
    """Brute force: every block input is exact or reconstructed over at most k-1 steps."""
    for n in (1, 2, 5, 12, 24):
        for k in range(1, n + 2):
            exact = anchor_positions(n, k) | {n - 1, n}
            # steps[p]: reconstruction steps behind x_p; x_p = (x_{p+2} - G(x_{p+1})) / beta
            steps = {n: 0, n - 1: 0}
            for p in range(n - 2, -1, -1):
                rebuilt = max(steps[p + 1], steps[p + 2]) + 1
                assert p not in exact or rebuilt <= k  # each anchor measures at most k steps
                steps[p] = 0 if p in exact else rebuilt
            assert max(steps[i - 1] for i in range(1, n + 1)) <= k - 1, (n, k)
        assert anchor_positions(n, n) == set()
        assert anchor_positions(n, 1) | {n - 1, n} == set(range(n + 1))
    # fewer states as k grows, about 2N/(k+1)
    sizes = [len(anchor_positions(24, k) | {23, 24}) for k in range(1, 25)]
    assert sizes[0] == 25 and sizes[-1] == 2 and all(a >= b for a, b in zip(sizes, sizes[1:]))
    assert sizes[3] <= 0.42 * 24  # k=4: at most 42% of what checkpointing keeps


def test_cache_every_matches_reference_and_saved_bytes_fall_with_k():
    d, n, alpha, beta = 8, 12, 0.5, 0.7
    blocks = make_blocks(n, d)
    x, pos = inputs(d)
    stack = Dr2Stack(blocks, alpha=alpha, beta=beta).double()
    ref = grads_of(lambda a, p: reference(blocks, a, alpha, beta, p), stack, x, pos)
    sizes = []
    for k in (1, 2, 3, 4, 6, 12):
        stack.cache_every = k
        assert max_rel(grads_of(stack, stack, x, pos), ref) < 1e-8, k
        assert stack.last_cache_every == k
        sizes.append(saved_bytes(lambda: stack(x, pos), stack))
    assert all(a >= b for a, b in zip(sizes, sizes[1:])) and sizes[0] > 3 * sizes[-1]
    # k=1 keeps every block input: as much as checkpointing, which keeps x_0..x_{N-1}
    stack.mode = "checkpoint"
    ckpt = saved_bytes(lambda: stack(x, pos), stack)
    assert abs(sizes[0] - ckpt) <= 2 * x.numel() * 8


# --------------------------------------------------------------------------- randomness
class DropPathRecorder(nn.Module):
    """alpha*x + DropPath(fn(x)) that records every mask it draws."""

    def __init__(self, d, p=0.5):
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.p = p
        self.masks = []

    def forward(self, x, alpha):
        mask = (torch.rand(x.shape[0], 1, 1, dtype=x.dtype) > self.p).to(x.dtype)
        self.masks.append(mask.flatten().clone())
        return alpha * x + mask * torch.tanh(self.lin(x)) / (1 - self.p)


def test_drop_path_masks_replayed_in_recomputation_and_fresh_each_step():
    torch.manual_seed(0)
    d = 4
    blocks = [DropPathRecorder(d) for _ in range(6)]
    stack = Dr2Stack(blocks, alpha=0.0, beta=1.0).double()
    x = torch.randn(16, 3, d, dtype=torch.float64, requires_grad=True)

    torch.manual_seed(123)
    ref = grads_of(lambda a: reference(blocks, a, 0.0, 1.0), stack, x)
    after_ref = torch.rand(3)
    for b in blocks:
        b.masks.clear()
    torch.manual_seed(123)
    got = grads_of(stack, stack, x)
    after_rev = torch.rand(3)
    assert max_rel(got, ref) < 1e-10
    assert torch.equal(after_ref, after_rev)  # the backward replays RNG states without consuming any
    for b in blocks:
        fwd, recomputed = b.masks
        assert torch.equal(fwd, recomputed)
    first = [b.masks[0] for b in blocks]
    for b in blocks:
        b.masks.clear()
    grads_of(stack, stack, x)  # a second step, no reseeding
    second = [b.masks[0] for b in blocks]
    assert any(not torch.equal(a, b) for a, b in zip(first, second))
    assert any(0 < float(m.mean()) < 1 for m in first)


# --------------------------------------------------------------------------- BatchNorm
class BnBlock(nn.Module):
    """ReLU(alpha*x + BN(conv(x))) on features [B, C, N], like PointNeXt's post-add activation."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv1d(c, c, 1, bias=False)  # a bias before BN has zero gradient
        self.bn = nn.BatchNorm1d(c)

    def forward(self, x, alpha):
        return torch.relu(alpha * x + self.bn(self.conv(x)))


@pytest.mark.parametrize("mode", ["reversible", "checkpoint", "auto"])
def test_batchnorm_running_stats_updated_once_and_batch_stats_used(mode):
    torch.manual_seed(0)
    c = 6
    blocks = [BnBlock(c) for _ in range(4)]
    stack = Dr2Stack(blocks, alpha=0.5, beta=0.7, mode=mode).double().train()
    ref_blocks = copy.deepcopy(blocks)
    ref_stack = Dr2Stack(ref_blocks).double()
    x = torch.randn(3, c, 20, dtype=torch.float64, requires_grad=True)
    ref = grads_of(lambda a: reference(ref_blocks, a, 0.5, 0.7), ref_stack, x)
    got = grads_of(stack, stack, x)
    assert max_rel(got, ref) < 1e-8
    for b, r in zip(blocks, ref_blocks):
        assert int(b.bn.num_batches_tracked) == 1
        assert torch.allclose(b.bn.running_mean, r.bn.running_mean, rtol=1e-12, atol=1e-14)
        assert torch.allclose(b.bn.running_var, r.bn.running_var, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- precision guard / auto
def test_auto_mode_guards_early_schedule_and_runs_fully_reversible_late():
    d, n = 8, 24
    blocks = make_blocks(n, d)
    x, pos = inputs(d, torch.float32)
    stack = Dr2Stack(blocks, alpha=1.0, beta=0.1, mode="reversible")
    ref = grads_of(lambda a, p: reference(blocks, a, 1.0, 0.1, p), stack, x, pos)
    unguarded = grads_of(stack, stack, x, pos)
    assert max_rel(unguarded, ref) > 1e-2  # whole-stack reconstruction at (1, 0.1) is garbage
    stack.mode = "auto"
    for _ in range(2):  # the second step uses the measured correction
        got = grads_of(stack, stack, x, pos)
        assert stack.last_cache_every <= 4
        assert max_rel(got, ref) <= stack.tolerance
        assert stack.last_reconstruction_error <= 10 * stack.tolerance

    stack.alpha, stack.beta = 0.0, 1.0
    ref = grads_of(lambda a, p: reference(blocks, a, 0.0, 1.0, p), stack, x, pos)
    got = grads_of(stack, stack, x, pos)
    assert stack.last_cache_every == n and stack.last_mode == "reversible"
    assert stack.last_reconstruction_error < 1e-5
    assert max_rel(got, ref) < 1e-4


def test_beta_zero_reversible_raises_and_auto_falls_back_to_checkpointing():
    d = 8
    blocks = make_blocks(5, d)
    stack = Dr2Stack(blocks, alpha=1.0, beta=0.0, mode="reversible").double()
    x, pos = inputs(d)
    with pytest.raises(ValueError, match="beta"):
        stack(x, pos)
    stack.mode = "auto"
    ref = grads_of(lambda a, p: _plain(blocks, a, p), stack, x, pos)
    got = grads_of(stack, stack, x, pos)
    assert stack.last_cache_every == 1 and stack.last_mode == "checkpoint"
    assert max_rel(got, ref) < 1e-12


# --------------------------------------------------------------------------- autocast
def test_autocast_bf16_recomputes_in_bf16_and_matches_float32():
    d = 16
    dtypes_seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.fn = Mlp(d)

        def forward(self, x, alpha, pos):
            h = self.fn.fc1(self.fn.ln(x + pos))
            dtypes_seen.append(h.dtype)
            return alpha * x + 0.5 * self.fn.fc2(torch.tanh(h))

    torch.manual_seed(0)
    blocks = [Probe() for _ in range(8)]
    stack = Dr2Stack(blocks, alpha=0.5, beta=0.7, mode="standard")
    x, pos = inputs(d, torch.float32, b=4, t=6)
    fp32 = grads_of(stack, stack, x, pos)
    grads = {}
    for mode in ("standard", "reversible"):
        stack.mode = mode
        dtypes_seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            grads[mode] = grads_of(stack, stack, x, pos)
        assert set(dtypes_seen) == {torch.bfloat16}
    assert len(dtypes_seen) == 16  # 8 forward + 8 recomputed calls, all under bf16 autocast
    assert all(g.dtype == torch.float32 for g in grads["reversible"])
    assert max_rel(grads["reversible"], fp32) < 5e-2  # bf16 has 8 mantissa bits
    # against the same network in bf16, only reconstruction (float32 streams) differs
    assert max_rel(grads["reversible"], grads["standard"]) < 1e-2


def test_bf16_model_without_autocast_keeps_float32_streams():
    d = 16
    torch.manual_seed(0)
    blocks = make_blocks(6, d)
    stack = Dr2Stack(blocks, alpha=0.5, beta=0.7)
    x, pos = inputs(d, torch.float32, b=4, t=6)
    fp32 = grads_of(stack, stack, x, pos)
    stack.to(torch.bfloat16)
    xb, pb = (t.detach().bfloat16().requires_grad_(True) for t in (x, pos))
    got = {}
    for mode in ("standard", "reversible"):
        stack.mode = mode
        assert stack(xb, pb).dtype == torch.bfloat16
        got[mode] = grads_of(stack, stack, xb, pb)
    assert all(g.dtype == torch.bfloat16 for g in got["reversible"])
    as32 = [[g.float() for g in got[m]] for m in got]
    assert max_rel(as32[1], as32[0]) < 5e-2  # a few bf16 roundings (eps 7.8e-3) apart
    assert max_rel(as32[1], fp32) < 1e-1  # bf16 weights and activations


# --------------------------------------------------------------------------- API behaviour
def test_bad_arguments_raise_value_error():
    blocks = make_blocks(2, 4)
    with pytest.raises(ValueError, match="mode"):
        Dr2Stack(blocks, mode="fast")
    with pytest.raises(ValueError, match="output"):
        Dr2Stack(blocks, output="first")
    with pytest.raises(ValueError, match="cache_every"):
        Dr2Stack(blocks, cache_every=0)
    with pytest.raises(ValueError, match="blocks"):
        Dr2Stack([])
    stack = Dr2Stack(blocks)
    with pytest.raises(ValueError, match="mode"):
        stack.mode = "revers"


def test_no_grad_forward_equals_reference_and_keeps_nothing():
    d = 8
    blocks = make_blocks(4, d)
    stack = Dr2Stack(blocks, alpha=0.4, beta=0.7).double()
    x, pos = inputs(d)
    with torch.no_grad():
        y = stack(x, pos)
        ref = reference(blocks, x, 0.4, 0.7, pos)
    assert y.grad_fn is None
    assert torch.allclose(y, ref, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------- taps
def _reference_with_taps(blocks, x, alpha, beta, pos, output, taps):
    states = [x, x]  # x_{-1}, x_0
    for b in blocks:
        states.append(beta * states[-2] + b(states[-1], alpha, pos))

    def read(t):  # state t (= states[t + 1]) read like the output
        cur, prev = states[t + 1], states[t]
        if output == "sum":
            return cur + beta * (prev - x)
        return cur if output == "last" else 0.5 * (cur + prev)

    return read(len(blocks)), [read(t) for t in taps]


def _tapped_loss(out, taps):
    total = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum()
    for j, t in enumerate(taps):
        total = total + (j + 2) * (t * torch.cos(torch.arange(t.numel(), dtype=t.dtype)).reshape(t.shape)).sum()
    return total


@pytest.mark.parametrize("output", ["last", "sum", "mean"])
@pytest.mark.parametrize("cache_every", [None, 3])
def test_taps_feed_gradients_into_the_middle_of_the_stack(output, cache_every):
    """Taps at the input, the first, a middle and the last unit: gradients of every mode equal autograd's on
    the written-out recurrence (float64, 1e-6 over every input and parameter)."""
    d, n, alpha, beta = 8, 12, 0.3, 0.7
    blocks = [b.double() for b in make_blocks(n, d)]
    stack = Dr2Stack(blocks, alpha=alpha, beta=beta, output=output, cache_every=cache_every).double()
    x, pos = inputs(d)
    taps = (0, 1, 6, 12)
    ref = grads_of(lambda a, p: _tapped_loss(*_reference_with_taps(blocks, a, alpha, beta, p, output, taps)), stack,
                   x, pos)
    for mode in ("standard", "checkpoint", "reversible", "auto"):
        stack.mode = mode
        got = grads_of(lambda a, p: _tapped_loss(*stack(a, p, taps=taps)), stack, x, pos)
        assert max_rel(got, ref) < 1e-6, mode
        out, tapped = stack(x, pos, taps=taps)
        ref_out, ref_taps = _reference_with_taps(blocks, x, alpha, beta, pos, output, taps)
        assert torch.allclose(out, ref_out, atol=1e-12) and all(torch.allclose(a, b, atol=1e-12)
                                                                for a, b in zip(tapped, ref_taps))


def test_taps_in_float32_within_the_guard_tolerance_and_at_alpha1_beta0_the_block_outputs():
    d, n = 8, 12
    blocks = make_blocks(n, d)
    x, pos = inputs(d, torch.float32)
    stack = Dr2Stack(blocks, alpha=0.0, beta=1.0, output="sum", mode="auto")
    taps = (4, 8, 12)
    ref = grads_of(lambda a, p: _tapped_loss(*_reference_with_taps(blocks, a, 0.0, 1.0, p, "sum", taps)), stack,
                   x, pos)
    got = grads_of(lambda a, p: _tapped_loss(*stack(a, p, taps=taps)), stack, x, pos)
    assert max_rel(got, ref) < 10 * stack.tolerance
    # the pretrained network's block outputs (Point-MAE's fetch_idx) at alpha=1, beta=0
    exact = Dr2Stack(blocks, alpha=1.0, beta=0.0, output="sum", mode="standard")
    _, tapped = exact(x, pos, taps=taps)
    y, plain = x, {}
    for i, b in enumerate(blocks, start=1):
        y = y + b.fn(y, pos)
        plain[i] = y
    assert all(torch.equal(t, plain[k]) for t, k in zip(tapped, taps))


def test_taps_keep_nothing_more_than_the_tapped_tensors():
    d, n = 8, 12
    blocks = make_blocks(n, d)
    x, pos = inputs(d, torch.float32)
    stack = Dr2Stack(blocks, alpha=0.0, beta=1.0, output="sum", mode="reversible")
    plain = saved_bytes(lambda: stack(x, pos), stack)
    def with_taps():
        out, taps = stack(x, pos, taps=(4, 8, 12))
        return out.sum() + sum(t.sum() for t in taps)  # sums save nothing for backward

    tapped = saved_bytes(with_taps, stack)
    assert tapped == plain  # the taps are outputs (the head holds them), not saved activations
    with pytest.raises(ValueError, match="taps must be state indices in 0..12"):
        stack(x, pos, taps=(13,))


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.9, 0.1)])
def test_taps_under_the_guard_early_in_the_schedule(alpha, beta):
    """auto mode early in the schedule, taps unordered and repeated: float64 gradients equal autograd's to 1e-6
    (the guard asked for 1e-8, so it keeps anchors: at beta = 0.1 an error grows 10x per step); in float32, where the guard keeps anchors (k < N; k = 1 at beta = 0), they equal float64 standard mode's
    within the guard's tolerance."""
    d, n = 8, 12
    taps = (12, 6, 1, 6)
    blocks = [b.double() for b in make_blocks(n, d)]
    stack = Dr2Stack(blocks, alpha=alpha, beta=beta, output="sum", mode="auto", tolerance=1e-8).double()
    x, pos = inputs(d)
    ref = grads_of(lambda a, p: _tapped_loss(*_reference_with_taps(blocks, a, alpha, beta, p, "sum", taps)), stack,
                   x, pos)
    got = grads_of(lambda a, p: _tapped_loss(*stack(a, p, taps=taps)), stack, x, pos)
    assert stack.last_cache_every < n
    assert max_rel(got, ref) < 1e-6

    stack32 = Dr2Stack(make_blocks(n, d), alpha=alpha, beta=beta, output="sum", mode="auto")
    exact = copy.deepcopy(stack32).double()
    exact.mode = "standard"
    x32, pos32 = inputs(d, torch.float32)
    ref64 = grads_of(lambda a, p: _tapped_loss(*exact(a, p, taps=taps)), exact, x32.detach().double().requires_grad_(),
                     pos32.detach().double().requires_grad_())
    for _ in range(3):  # the guard corrects its spacing from the measured error after each backward
        got32 = grads_of(lambda a, p: _tapped_loss(*stack32(a, p, taps=taps)), stack32, x32, pos32)
        assert stack32.last_cache_every < n
        assert max_rel([g.double() for g in got32], ref64) < 10 * stack32.tolerance


def test_a_tap_alone_carries_the_gradient_and_anchors_keep_nothing_more():
    """Only a middle tap enters the loss (the output's gradient is zero): every mode's gradients equal
    standard's; with anchors (cache_every=3) taps still add no saved bytes."""
    d, n = 8, 6
    blocks = [b.double() for b in make_blocks(n, d)]
    stack = Dr2Stack(blocks, alpha=0.3, beta=0.7, output="last", cache_every=2).double()
    x, pos = inputs(d)

    def tap_grads():  # x, pos and the parameters of blocks 1..3 (those after the tap get no gradient)
        x.grad = pos.grad = None
        stack.zero_grad(set_to_none=True)
        _, (t,) = stack(x, pos, taps=(3,))
        (t * torch.cos(torch.arange(t.numel(), dtype=t.dtype)).reshape(t.shape)).sum().backward()
        params = [p.grad for b in stack.blocks[:3] for p in b.parameters()]
        later = [p.grad for b in stack.blocks[3:] for p in b.parameters()]
        assert all(g is None or not g.any() for g in later)
        return [x.grad.clone(), pos.grad.clone(), *[g.clone() for g in params]]

    stack.mode = "standard"
    ref = tap_grads()
    for mode in ("checkpoint", "reversible", "auto"):
        stack.mode = mode
        assert max_rel(tap_grads(), ref) < 1e-6, mode

    stack.mode, stack.cache_every = "reversible", 3
    plain = saved_bytes(lambda: stack(x, pos), stack)

    def with_taps():
        out, taps = stack(x, pos, taps=(1, 3, 6))
        return out.sum() + sum(t.sum() for t in taps)

    assert saved_bytes(with_taps, stack) == plain > 0


# --------------------------------------------------------------------------- balanced updates
def _balanced_reference(blocks, x, alpha, beta, pos, taps=()):
    """x_i = beta x_{i-2} + alpha x_{i-1} + (1+beta) F_i(x_{i-1}), written out; output and taps read
    (x_t + beta x_{t-1})/(1+beta)."""
    states = [x, x]
    for b in blocks:
        states.append(beta * states[-2] + alpha * states[-1] + (1 + beta) * b.fn(states[-1], pos))

    def read(t):
        return (states[t + 1] + beta * states[t]) / (1 + beta)

    return read(len(blocks)), [read(t) for t in taps]


@pytest.mark.parametrize("cache_every", [None, 1, 3])
def test_balanced_update_matches_the_written_out_recurrence_in_every_mode(cache_every):
    """gain="balanced": every mode's output, taps and gradients equal autograd's on the hand-written
    recurrence (float64), anchors included."""
    d, n, alpha, beta = 8, 10, 0.3, 0.7
    blocks = [b.double() for b in make_blocks(n, d)]
    stack = Dr2Stack(blocks, alpha=alpha, beta=beta, output="sum", gain="balanced", cache_every=cache_every).double()
    x, pos = inputs(d)
    taps = (0, 1, 5, 10)
    ref = grads_of(lambda a, p: _tapped_loss(*_balanced_reference(blocks, a, alpha, beta, p, taps)), stack, x, pos)
    ref_out, ref_taps = _balanced_reference(blocks, x, alpha, beta, pos, taps)
    for mode in ("standard", "checkpoint", "reversible", "auto"):
        stack.mode = mode
        assert max_rel(grads_of(lambda a, p: _tapped_loss(*stack(a, p, taps=taps)), stack, x, pos), ref) < 1e-9, mode
        out, tapped = stack(x, pos, taps=taps)
        assert torch.allclose(out, ref_out, rtol=0, atol=1e-12), mode
        assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(tapped, ref_taps)), mode


def test_balanced_sum_is_the_residual_stream_and_units_read_the_full_weight_on_average():
    """With alpha + beta = 1 the balanced "sum" output is x + sum_i F_i(x_{i-1}); at (1, 0) it is the pretrained
    network. With constant residual functions F_j = u_j (hand-computed unrolling) unit i reads
    x + sum_j (1 - (-beta)^(i-j)) u_j: at beta = 1 the weights 2, 0, 2, 0, ... (plain: 1, 0, 1, 0, ...)."""
    d, n = 8, 6
    blocks = [b.double() for b in make_blocks(n, d)]
    x, pos = inputs(d)
    with torch.no_grad():
        for alpha in (0.6, 0.0):
            beta = 1.0 - alpha
            states, residuals = [x, x], []
            for b in blocks:
                residuals.append(b.fn(states[-1], pos))
                states.append(beta * states[-2] + alpha * states[-1] + (1 + beta) * residuals[-1])
            stack = Dr2Stack(blocks, alpha=alpha, beta=beta, output="sum", mode="standard", gain="balanced")
            assert torch.allclose(stack(x, pos), x + sum(residuals), rtol=0, atol=1e-12)
        assert torch.equal(Dr2Stack(blocks, 1.0, 0.0, output="sum", mode="standard", gain="balanced")(x, pos),
                           _plain(blocks, x, pos))

    class Const(nn.Module):  # F(x) = u, whatever x
        def __init__(self, u):
            super().__init__()
            self.u = nn.Parameter(u)

        def forward(self, x, pos=None):
            return self.u.expand_as(x)

    g = torch.Generator().manual_seed(3)
    us = [torch.randn(d, generator=g, dtype=torch.float64) for _ in range(n)]
    seen = []

    class Spy(ResidualBlock):
        def forward(self, x, alpha, *extras):
            seen.append(x.detach().clone())
            return super().forward(x, alpha, *extras)

    spies = [Spy(Const(u)) for u in us]
    x0 = torch.zeros(1, 1, d, dtype=torch.float64)
    for gain, beta, weight in (("balanced", 1.0, lambda m: 2.0 if m % 2 == 1 else 0.0),
                                 ("plain", 1.0, lambda m: 1.0 if m % 2 == 1 else 0.0),
                                 ("balanced", 0.4, lambda m: 1.0 - (-0.4) ** m)):
        seen.clear()
        with torch.no_grad():
            Dr2Stack(spies, 1.0 - beta, beta, output="sum", mode="standard", gain=gain)(x0)
        for i, read in enumerate(seen, start=1):  # unit i reads x_{i-1}
            want = sum(weight(i - j) * us[j - 1] for j in range(1, i)) if i > 1 else torch.zeros(d, dtype=torch.float64)
            assert torch.allclose(read.reshape(-1), want, rtol=0, atol=1e-12), (gain, beta, i)


def test_balanced_update_needs_block_units():
    from pointdr2.reversible import check_unit_form, unit_coefficients

    assert unit_coefficients(0.3, 0.7, "balanced") == pytest.approx((0.3 / 1.7, 1.7))
    assert unit_coefficients(0.3, 0.7, "plain") == (0.3, 1.0)
    check_unit_form("block", "balanced")
    check_unit_form("branch", "plain")
    with pytest.raises(ValueError, match="residual='block'"):
        check_unit_form("branch", "balanced")
    with pytest.raises(ValueError, match="gain must be one of"):
        Dr2Stack(make_blocks(2, 4), gain="scaled")
