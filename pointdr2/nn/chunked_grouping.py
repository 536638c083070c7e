"""Grouped MLP + max over neighbours, computed and backpropagated a chunk of centre points at a time.

PointNeXt's set abstraction and local aggregation both compute, for every centre ``s``,

    out[:, s] = max_k MLP(x_sk),    x_sk = cat[(p_{idx_sk} - q_s) / r, f_{idx_sk}]

where MLP is a sequence of 1x1 Conv2d layers, each followed by an optional BatchNorm and ReLU. The
grouped input x and every MLP activation are ``[B, C, S, K]``: K (32) times the stage's features,
the largest tensors of a PointNeXt step, and what sets its peak when they exist whole (in a plain
forward, in a checkpoint's recomputation, in a reversible stack's recomputation).
:func:`grouped_max` computes the same values and gradients over chunks of ``chunk_points`` centres
(all samples of the batch at once), so only one chunk's grouped tensors ever exist.

Kept for backward: the query and support positions, the features f, the neighbour indices, for
every output channel and centre which neighbour won the max (uint8 for K <= 256) and whether the
last ReLU passed it (bool), and per-channel BatchNorm statistics. Nothing of size ``[.., S, K]``.

Exactness. Each BatchNorm follows its own mode as in the plain forward: in training mode it
normalises with the statistics of the *whole stage* (all B*S*K slots, not of a chunk), in eval mode
with its running statistics; the running statistics of training-mode BN are updated once per
forward with the whole stage's statistics (never per chunk).

- First layer: ``h = W x + b`` is linear in x, so its batch statistics are ``mu = W m + b`` and
  ``var = diag(W Sigma W^T)`` with m, Sigma the mean and covariance of x over all slots. They need no
  grouped tensor: the feature part of x repeats point j's features ``cnt_j`` times (the slots that
  point j fills), so Sigma is a sum over points weighted by cnt plus the offsets scattered to their
  points (:func:`_input_moments`, centred, so no cancellation).
- Deeper training-mode BN: one pass over the chunks accumulates its statistics (Chan's
  combination, :class:`~pointdr2.nn.batch_stats.ChunkMoments`).
- Last layer's backward: its output reaches the loss only through the max, so dL/dy is one value
  per (channel, centre) at the winning neighbour (``argmax``), zero where the ReLU clipped it. Its
  weight gradient is ``diag(scale) G`` with ``G = dY x^T`` and its BN's gradient sums follow from
  ``sum dY h = <W, G> + b sum dY``: the last layer's forward is never recomputed.
- BatchNorm coupling: with ``g_mu``, ``g_var`` the gradients w.r.t. the statistics summed over all
  chunks, the exact gradient of a pre-BN value adds ``g_mu/n + 2 g_var (h - mu)/n``
  (:mod:`pointdr2.nn.batch_stats`). For the first layer this term is affine in x and is applied in
  closed form after the chunk loop (``dW += g_mu m^T + 2 diag(g_var) W Sigma``; the feature gradient
  per point from cnt and the scattered offsets). Deeper training-mode BN get their sums in extra
  passes from the top down, then enter each chunk's autograd recomputation as coupling terms (the
  tokenizer's multi-pass scheme).

Cost with one layer (every InvResMLP aggregation, PointNeXt-B/L/XL set abstractions): one chunked
pass forward, one backward (gather, two matmuls, no forward recomputation): the FLOPs of plain
autograd. The grouped MLP draws no random numbers (no RNG to replay); the backward replays the
forward's autocast state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pointdr2 import ops
from pointdr2.nn.batch_stats import ChunkMoments, coupling, update_running_stats, uses_batch_stats
from pointdr2.reversible.replay import autocast_states, replay_autocast

__all__ = ["group_offsets", "grouped_max", "mlp_layers", "chunk_points_for"]


def group_offsets(query: torch.Tensor, support: torch.Tensor, idx: torch.Tensor,
                  radius: Optional[float] = None) -> torch.Tensor:
    """Relative neighbour positions ``dp[B, 3, S, K] = support[idx] - query`` (divided by ``radius``
    when given: openpoints' ``normalize_dp``). ``query[B,S,3]``, ``support[B,N,3]``, ``idx[B,S,K]``."""
    grouped = ops.group_points(support.transpose(1, 2).contiguous(), idx)
    dp = grouped - query.transpose(1, 2).unsqueeze(-1)
    if radius is not None:
        dp = dp / radius
    return dp


class _Layer(NamedTuple):
    conv: nn.Conv2d
    bn: Optional[_BatchNorm]
    act: bool


def mlp_layers(convs: nn.Module) -> list[_Layer]:
    """``convs`` (a Sequential of ``Sequential(Conv2d 1x1, [BatchNorm2d], [ReLU])``) as layer specs;
    ValueError for anything else (such an MLP cannot be chunked by :func:`grouped_max`)."""
    layers = []
    for i, block in enumerate(convs):
        mods = list(block) if isinstance(block, nn.Sequential) else [block]
        conv = mods.pop(0) if mods else None
        if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (1, 1) or conv.stride != (1, 1) \
                or conv.padding != (0, 0) or conv.dilation != (1, 1) or conv.groups != 1:
            raise ValueError(f"grouped_max: layer {i} must start with a 1x1 Conv2d, got {type(conv).__name__}")
        bn = mods.pop(0) if mods and isinstance(mods[0], _BatchNorm) else None
        act = bool(mods) and type(mods[0]) is nn.ReLU
        if act:
            mods.pop(0)
        if mods:
            raise ValueError(f"grouped_max: layer {i} has {type(mods[0]).__name__} after conv/BN/ReLU; "
                             f"expected Sequential(Conv2d, [BatchNorm2d], [ReLU])")
        layers.append(_Layer(conv, bn, act))
    if not layers:
        raise ValueError("grouped_max: the MLP has no layers")
    return layers


# A training step holds one chunk's grouped tensors on top of everything the surrogate keeps, so the chunk
# gets a quarter of the ops memory budget (64 MB at the default 256 MB): with the whole budget, one chunk
# set the step's peak at 21 % of conventional's for PointNeXt-L on a 24,000-point crop (8 % with a quarter).
RECOMPUTE_BUDGET_SHARE = 4
# Tensors alive per grouped slot while a chunk is computed and backpropagated, each as wide as the widest
# layer's input plus output (the multi-pass BatchNorm backward holds one more than the forward).
LIVE_TENSORS = 3


def chunk_points_for(batch: int, nsample: int, convs: nn.Module, dtype: torch.dtype,
                     budget: Optional[int] = None) -> int:
    """Centres per chunk so that one chunk's grouped tensors fit ``budget`` bytes (default: a quarter of
    :func:`pointdr2.ops.get_memory_budget`): ``LIVE_TENSORS`` tensors as wide as the widest layer's input
    plus output per slot, ``batch * nsample`` slots per centre."""
    budget = ops.get_memory_budget() // RECOMPUTE_BUDGET_SHARE if budget is None else int(budget)
    widest = max(layer.conv.in_channels + layer.conv.out_channels for layer in mlp_layers(convs))
    per_centre = LIVE_TENSORS * widest * batch * nsample * torch.empty((), dtype=dtype).element_size()
    return max(1, budget // max(1, per_centre))


def _params(layer: _Layer) -> list[Optional[torch.Tensor]]:
    bn = layer.bn
    return [layer.conv.weight, layer.conv.bias, None if bn is None else bn.weight, None if bn is None else bn.bias]


def _bn(h: torch.Tensor, mu: torch.Tensor, var: torch.Tensor, weight: Optional[torch.Tensor],
        bias: Optional[torch.Tensor], eps: float, inplace: bool = False) -> torch.Tensor:
    """BatchNorm of ``h[B, C, S, K]`` with given statistics ``mu``/``var`` [C]."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    if inplace:
        h = h.sub_(mu[:, None, None]).mul_(scale[:, None, None])
        return h if bias is None else h.add_(bias[:, None, None])
    h = (h - mu[:, None, None]) * scale[:, None, None]
    return h if bias is None else h + bias[:, None, None]


def _layer(a: torch.Tensor, layer: _Layer, p: Sequence[Optional[torch.Tensor]], stats, inplace: bool = False
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (activation, pre-BN h) of one layer; ``h`` is overwritten when ``inplace``."""
    h = F.conv2d(a, p[0], p[1])
    y = h
    if layer.bn is not None:
        y = _bn(h, stats[0], stats[1], p[2], p[3], layer.bn.eps, inplace)
    if layer.act:
        y = y.relu_() if inplace else F.relu(y)
    return y, h


def _input(query: torch.Tensor, support: torch.Tensor, features: torch.Tensor, idx: torch.Tensor,
           radius: Optional[float]) -> torch.Tensor:
    """Grouped input ``x[B, 3+C, S, K] = cat[dp, f_j]`` of the centres in ``query``/``idx``."""
    return torch.cat([group_offsets(query, support, idx, radius), ops.group_points(features, idx)], dim=1)


class _Moments(NamedTuple):
    """Moments of the grouped input over all B*S*K slots, from per-point sums (see module docstring)."""

    n: int
    mean: torch.Tensor     # [C_in]
    cov: torch.Tensor      # [C_in, C_in], biased
    count: torch.Tensor    # [B, N]: slots filled by each point
    dp_c: torch.Tensor     # [B, 3, S, K]: offsets minus their mean
    f_c: torch.Tensor      # [B, C, N]: features minus their (slot-weighted) mean
    scattered: torch.Tensor  # [B, 3+C, N]: sum over the slots of point j of (x - mean)


def _input_moments(query, support, features, idx, radius, dtype) -> _Moments:
    b, c, n_pts = features.shape
    s, k = idx.shape[1:]
    n = b * s * k
    flat = idx.reshape(b, 1, s * k)
    dp = group_offsets(query, support, idx, radius).to(dtype)
    f = features.to(dtype)
    count = torch.zeros(b, n_pts, dtype=dtype, device=f.device).scatter_add_(
        1, flat[:, 0], torch.ones(b, s * k, dtype=dtype, device=f.device))
    m_dp = dp.sum(dim=(0, 2, 3)) / n
    m_f = torch.einsum("bcn,bn->c", f, count) / n
    dp_c = dp - m_dp[:, None, None]
    f_c = f - m_f[:, None]
    d_c = torch.zeros(b, 3, n_pts, dtype=dtype, device=f.device).scatter_add_(
        2, flat.expand(b, 3, s * k), dp_c.reshape(b, 3, s * k))
    scattered = torch.cat([d_c, f_c * count[:, None]], dim=1)  # [B, 3+C, N]
    cov = torch.empty(3 + c, 3 + c, dtype=dtype, device=f.device)
    cov[:3, :3] = torch.einsum("bisk,bjsk->ij", dp_c, dp_c)
    cov[:, 3:] = torch.einsum("bin,bjn->ij", scattered, f_c)
    cov[3:, :3] = cov[:3, 3:].t()
    return _Moments(n, torch.cat([m_dp, m_f]), cov / n, count, dp_c, f_c, scattered)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _ChunkedGroupedMax(torch.autograd.Function):
    """Inputs ``(query, support, features, idx, radius, chunk, layers, batch, *params)``; params are 4
    per layer (conv weight, conv bias, BN weight, BN bias; None where absent). See the module
    docstring for what is kept and why the result is exact."""

    @staticmethod
    def forward(ctx, query, support, features, idx, radius, chunk, layers, batch, *flat):  # noqa: ANN001
        params = [flat[4 * i:4 * i + 4] for i in range(len(layers))]
        b, s, k = idx.shape
        n = b * s * k
        slices = _chunks(s, chunk)
        sdt = _stat_dtype(features.dtype)
        ctx.autocast = autocast_states(features.device.type)
        stats: list[Optional[tuple[torch.Tensor, torch.Tensor]]] = []
        for i, layer in enumerate(layers):
            bn = layer.bn
            if bn is None:
                stats.append(None)
            elif not batch[i]:  # eval-mode BN: its running statistics are constants of this step
                stats.append((bn.running_mean.clone(), bn.running_var.clone()))
            elif i == 0:
                with torch.autocast(features.device.type, enabled=False):
                    mom = _input_moments(query, support, features, idx, radius, sdt)
                    w = params[0][0][:, :, 0, 0].to(sdt)
                    mu = w @ mom.mean + (0 if params[0][1] is None else params[0][1].to(sdt))
                    var = ((w @ mom.cov) * w).sum(dim=1).clamp_min(0)
                stats.append((mu, var))
                del mom
            else:
                acc = ChunkMoments()
                for sl in slices:
                    a = _input(query[:, sl], support, features, idx[:, sl], radius)
                    for j in range(i):
                        a, _ = _layer(a, layers[j], params[j], stats[j], inplace=True)
                    acc.add(F.conv2d(a, params[i][0], params[i][1]).flatten(2))
                    del a
                stats.append(acc.result(sdt))
        for i, layer in enumerate(layers):
            if batch[i] and layer.bn is not None and layer.bn.training:
                update_running_stats(layer.bn, stats[i][0], stats[i][1], n)
        outs, args = [], []
        index_dtype = torch.uint8 if k <= 256 else torch.int16 if k <= 32768 else torch.int64
        for sl in slices:
            a = _input(query[:, sl], support, features, idx[:, sl], radius)
            for j, layer in enumerate(layers):
                a, _ = _layer(a, layer, params[j], stats[j], inplace=True)
            val, arg = a.max(dim=-1)
            outs.append(val)
            args.append(arg.to(index_dtype))
            del a
        out = torch.cat(outs, dim=2)
        argmax = torch.cat(args, dim=2)
        active = out > 0 if layers[-1].act else None
        ctx.layers, ctx.batch, ctx.radius, ctx.chunk, ctx.n = layers, batch, radius, chunk, n
        ctx.same_positions = query is support
        ctx.has_stats = [st is not None for st in stats]
        ctx.has_active = active is not None
        kept = [t for st in stats if st is not None for t in st]
        ctx.save_for_backward(query, support, features, idx, argmax, *([active] if ctx.has_active else []),
                              *kept, *[p if p is not None else torch.empty(0) for p in flat])
        ctx.param_none = [p is None for p in flat]
        return out

    @staticmethod
    def backward(ctx, dout):  # noqa: ANN001
        with replay_autocast(ctx.autocast):
            return _backward(ctx, dout)


def _backward(ctx, dout: torch.Tensor):  # noqa: ANN001
    saved = list(ctx.saved_tensors)
    query, support, features, idx, argmax = saved[:5]
    pos = 5
    active = None
    if ctx.has_active:
        active = saved[5]
        pos = 6
    stats: list[Optional[tuple[torch.Tensor, torch.Tensor]]] = []
    for has in ctx.has_stats:
        stats.append((saved[pos], saved[pos + 1]) if has else None)
        pos += 2 if has else 0
    flat = [None if none else t for none, t in zip(ctx.param_none, saved[pos:])]
    layers, batch, radius, n = ctx.layers, ctx.batch, ctx.radius, ctx.n
    L = len(layers)
    params = [flat[4 * i:4 * i + 4] for i in range(L)]
    b, s, k = idx.shape
    slices = _chunks(s, ctx.chunk)
    sdt = _stat_dtype(features.dtype)
    need_q, need_p, need_f = ctx.needs_input_grad[:3]
    need_params = list(ctx.needs_input_grad[8:])
    grads: list[Optional[torch.Tensor]] = [None] * len(flat)

    def add_grad(i: int, g: Optional[torch.Tensor]) -> None:
        if g is None or not need_params[i]:
            return
        g = g.to(flat[i].dtype).reshape(flat[i].shape)
        grads[i] = g if grads[i] is None else grads[i] + g

    # The last layer: dL/dy at the winning neighbour, zero where its ReLU clipped the output.
    top = layers[-1]
    w_top = params[-1][0][:, :, 0, 0]
    d_y = dout if active is None else dout * active
    d_y = d_y.contiguous()
    if top.bn is not None:
        mu_t, var_t = stats[-1]
        r_t = torch.rsqrt(var_t + top.bn.eps)
        scale_t = r_t if params[-1][2] is None else r_t * params[-1][2]
    else:
        scale_t = None

    def scatter_dy(sl: slice) -> torch.Tensor:
        dy = d_y[:, :, sl]
        return dy.new_zeros(*dy.shape, k).scatter_(3, argmax[:, :, sl].long().unsqueeze(-1), dy.unsqueeze(-1))

    def below_top(sl: slice, p_list, st_list, grad: bool, leaves=None):
        """Grouped input and layers 1..L-1 of one chunk -> (input of the last layer, pre-BN h per layer)."""
        q, sp, f = leaves if leaves is not None else (query, support, features)
        a = _input(q[:, sl], sp, f, idx[:, sl], radius)
        hs = []
        for j in range(L - 1):
            a, h = _layer(a, layers[j], p_list[j], st_list[j], inplace=not grad)
            hs.append(h)
        return a, hs

    def top_h(a: torch.Tensor) -> torch.Tensor:
        return F.conv2d(a, params[-1][0], params[-1][1])

    # Gradient sums of the last layer's BN: from G = dY a^T (one pass when layers lie below it).
    s1 = d_y.sum(dim=(0, 2))
    g_top_full: Optional[torch.Tensor] = None
    top_coupling: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (g_mu, g_var) of the last BN

    def top_sums(g: torch.Tensor) -> torch.Tensor:
        s2 = (w_top * g).sum(dim=1)
        return s2 if params[-1][1] is None else s2 + params[-1][1] * s1

    if L > 1 and batch[-1] and top.bn is not None:
        g_top_full = 0
        with torch.no_grad():
            for sl in slices:
                a, _ = below_top(sl, params, stats, grad=False)
                g_top_full = g_top_full + torch.matmul(scatter_dy(sl).flatten(2), a.flatten(2).transpose(1, 2)).sum(0)
                del a
        s2 = top_sums(g_top_full)
        w_bn = 1 if params[-1][2] is None else params[-1][2]
        top_coupling = (-scale_t * s1, -0.5 * w_bn * r_t ** 3 * (s2 - mu_t * s1))

    def top_cotangent(sl: slice, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dL/dh of the last layer [B,C,S_c,K], scattered dY) for one chunk whose last-layer input is a."""
        dys = scatter_dy(sl)
        dh = dys if scale_t is None else dys * scale_t[:, None, None]
        if top_coupling is not None:
            g_mu, g_var = top_coupling
            dh = dh + (g_mu / n)[:, None, None] + (2 * g_var / n)[:, None, None] * (top_h(a) - mu_t[:, None, None])
        return dh, dys

    # Deeper training-mode BN below the last layer (three or more layers): sums from the top down.
    couplings: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for i in range(L - 2, 0, -1):
        if not (batch[i] and layers[i].bn is not None):
            continue
        g_mu, g_var = torch.zeros_like(stats[i][0]), torch.zeros_like(stats[i][1])
        for sl in slices:
            m_leaf, v_leaf = (t.detach().requires_grad_(True) for t in stats[i])
            st = list(stats)
            st[i] = (m_leaf, v_leaf)
            with torch.enable_grad():
                a, hs = below_top(sl, params, st, grad=True)
                with torch.no_grad():
                    dh, _ = top_cotangent(sl, a)
                    da = torch.matmul(w_top.t(), dh.flatten(2)).view_as(a)
                total = (a * da).sum()
                for j, (gm, gv) in couplings.items():
                    total = total + coupling(hs[j].flatten(2), stats[j][0], gm, gv, n)
                gm_c, gv_c = torch.autograd.grad(total, (m_leaf, v_leaf))
            g_mu += gm_c
            g_var += gv_c
        couplings[i] = (g_mu, g_var)

    # Main pass: the last layer by hand, everything below it by autograd on the chunk.
    first_bn_batch = batch[0] and layers[0].bn is not None
    q_leaf = query.detach().requires_grad_(need_q)
    same = ctx.same_positions
    p_leaf = q_leaf if same else support.detach().requires_grad_(need_p)
    if same and need_p:
        q_leaf.requires_grad_(True)
    f_leaf = features.detach().requires_grad_(need_f)
    p_leaves = [[t.detach().requires_grad_(True) if t is not None and need_params[4 * j + c] else t
                 for c, t in enumerate(params[j])] for j in range(L - 1)]
    st0_leaf = None
    st = list(stats)
    if L > 1 and first_bn_batch:
        st0_leaf = tuple(t.detach().requires_grad_(True) for t in stats[0])
        st[0] = st0_leaf
    g_mu0 = torch.zeros_like(stats[0][0]) if st0_leaf is not None else None
    g_var0 = torch.zeros_like(stats[0][1]) if st0_leaf is not None else None
    g_top = 0 if g_top_full is None else None
    dw_top_coupling = 0
    db_top_coupling = 0
    grad_targets = [t for t in (q_leaf, p_leaf, f_leaf) if t.requires_grad]
    grad_targets = list(dict.fromkeys(grad_targets))  # q and p are one tensor in local aggregation
    grad_targets += [t for row in p_leaves for t in row if t is not None and t.requires_grad]
    if st0_leaf is not None:
        grad_targets += list(st0_leaf)
    leaf_grads: dict[int, torch.Tensor] = {}
    for sl in slices:
        with torch.enable_grad():
            a, hs = below_top(sl, p_leaves, st, grad=True, leaves=(q_leaf, p_leaf, f_leaf))
        a_d = a.detach()
        with torch.no_grad():
            dh, dys = top_cotangent(sl, a_d)
            a_flat = a_d.flatten(2).transpose(1, 2)
            if g_top is not None:
                g_top = g_top + torch.matmul(dys.flatten(2), a_flat).sum(0)
            if top_coupling is not None:
                extra = dh - (dys if scale_t is None else dys * scale_t[:, None, None])
                dw_top_coupling = dw_top_coupling + torch.matmul(extra.flatten(2), a_flat).sum(0)
                db_top_coupling = db_top_coupling + extra.sum(dim=(0, 2, 3))
                del extra
            da = torch.matmul(w_top.t(), dh.flatten(2)).view_as(a_d)
            del dh, dys, a_flat
        if grad_targets and a.requires_grad:
            with torch.enable_grad():
                total = (a * da).sum()
                for j, (gm, gv) in couplings.items():
                    total = total + coupling(hs[j].flatten(2), stats[j][0], gm, gv, n)
                res = torch.autograd.grad(total, grad_targets, allow_unused=True)
            for t, g in zip(grad_targets, res):
                if g is not None:
                    leaf_grads[id(t)] = g if id(t) not in leaf_grads else leaf_grads[id(t)] + g
        del a, a_d, hs, da
    if g_top is None:
        g_top = g_top_full

    # The last layer's parameter gradients.
    s2 = top_sums(g_top)
    n_top = 4 * (L - 1)
    add_grad(n_top, g_top * (1 if scale_t is None else scale_t[:, None]) + dw_top_coupling)
    if params[-1][1] is not None:
        add_grad(n_top + 1, s1 * (1 if scale_t is None else scale_t) + db_top_coupling)
    if top.bn is not None:
        add_grad(n_top + 2, r_t * (s2 - mu_t * s1))
        add_grad(n_top + 3, s1)
    for j in range(L - 1):
        for c, t in enumerate(p_leaves[j]):
            if t is not None and id(t) in leaf_grads:
                add_grad(4 * j + c, leaf_grads[id(t)])
    g_q = leaf_grads.get(id(q_leaf))
    g_p = leaf_grads.get(id(p_leaf)) if p_leaf is not q_leaf else None
    g_f = leaf_grads.get(id(f_leaf))

    # The first layer's BN coupling in closed form (affine in x).
    if first_bn_batch:
        if L == 1:
            w_bn = 1 if params[0][2] is None else params[0][2]
            g_mu0, g_var0 = -scale_t * s1, -0.5 * w_bn * r_t ** 3 * (s2 - mu_t * s1)
        else:
            g_mu0, g_var0 = leaf_grads[id(st0_leaf[0])], leaf_grads[id(st0_leaf[1])]
        with torch.autocast(features.device.type, enabled=False):
            mom = _input_moments(query, support, features, idx, radius, sdt)
            w0 = params[0][0][:, :, 0, 0].to(sdt)
            g_mu0, g_var0 = g_mu0.to(sdt), g_var0.to(sdt)
            add_grad(0, torch.outer(g_mu0, mom.mean) + 2 * g_var0[:, None] * (w0 @ mom.cov))
            if params[0][1] is not None:
                add_grad(1, g_mu0)
            # dL/dx at a slot += c + M (x - mean): c = W^T g_mu/n, M = W^T diag(2 g_var/n) W
            c_vec = w0.t() @ (g_mu0 / n)
            m_mat = w0.t() @ ((2 * g_var0 / n)[:, None] * w0)
            if need_f:
                g_f_c = mom.count[:, None] * c_vec[3:, None] + torch.einsum("ij,bjn->bin", m_mat[3:], mom.scattered)
                g_f = g_f_c.to(features.dtype) if g_f is None else g_f + g_f_c.to(g_f.dtype)
            if need_q or need_p:
                per_point = torch.einsum("ij,bjn->bin", m_mat[:3, 3:], mom.f_c)  # [B, 3, N]
                d_dp = (c_vec[:3, None, None] + torch.einsum("ij,bjsk->bisk", m_mat[:3, :3], mom.dp_c)
                        + ops.group_points(per_point, idx))
                with torch.enable_grad():
                    targets = list(dict.fromkeys(t for t in (q_leaf, p_leaf) if t.requires_grad))
                    dp = group_offsets(q_leaf, p_leaf, idx, radius)
                    res = torch.autograd.grad(dp, targets, d_dp.to(dp.dtype))
                for t, g in zip(targets, res):
                    if t is q_leaf:
                        g_q = g if g_q is None else g_q + g
                    else:
                        g_p = g if g_p is None else g_p + g
            del mom
    if same:  # one tensor: its whole gradient is returned once
        return (g_q if (need_q or need_p) else None, None, g_f, None, None, None, None, None, *grads)
    return (g_q if need_q else None, g_p if need_p else None, g_f, None, None, None, None, None, *grads)


def grouped_max(convs: nn.Module, query: torch.Tensor, support: torch.Tensor, features: torch.Tensor,
                idx: torch.Tensor, radius: Optional[float], chunk_points: int) -> torch.Tensor:
    """``max_k convs(cat[group_offsets(query, support, idx, radius), group_points(features, idx)])``
    computed over chunks of ``chunk_points`` centres: ``[B, C_out, S]``.

    ``convs``: ``Sequential`` of ``Sequential(Conv2d 1x1, [BatchNorm2d], [ReLU])`` (see
    :func:`mlp_layers`); ``query[B,S,3]``, ``support[B,N,3]``, ``features[B,C,N]``, ``idx`` int64
    ``[B,S,K]``. Values and gradients (to the parameters, the features and, where they require grad,
    the positions) equal those of the plain expression; each BatchNorm follows its own mode
    (training: statistics of all B*S*K slots; eval: running statistics), running statistics are
    updated once. ``support`` and ``query`` may be the same tensor (local aggregation).
    """
    if isinstance(chunk_points, bool) or not isinstance(chunk_points, int) or chunk_points < 1:
        raise ValueError(f"chunk_points must be a positive integer, got {chunk_points!r}")
    layers = mlp_layers(convs)
    if layers[0].conv.in_channels != 3 + features.shape[1]:
        raise ValueError(f"grouped_max: the first conv takes {layers[0].conv.in_channels} channels, the grouped "
                         f"input has 3 + {features.shape[1]}")
    batch = tuple(layer.bn is not None and uses_batch_stats(layer.bn) for layer in layers)
    flat = [t for layer in layers for t in _params(layer)]
    return _ChunkedGroupedMax.apply(query, support, features, idx, None if radius is None else float(radius),
                                    int(chunk_points), layers, batch, *flat)
