"""Point-patch tokenizer of Point-BERT / Point-MAE: grouping and the mini-PointNet encoder.

``Group``: FPS picks ``num_group`` centres, kNN takes ``group_size`` neighbours of each centre;
neighbourhoods are expressed relative to their centre (extra input channels are appended
unchanged). ``PointPatchEncoder`` maps every neighbourhood to one token (module names mirror the
official ``encoder.first_conv`` / ``encoder.second_conv``).

``recompute_tokens`` runs the encoder so that nothing per point is kept for backward: the
backward pass recomputes the encoder chunk by chunk over groups. Each of the two BatchNorm layers
follows its *own* mode, as in the plain forward: in training mode it normalises with statistics
of the *whole* batch, which couples all chunks (the gradient is still exact, computed in up to
three passes over the chunks, see ``_ChunkedEncoder``); in eval mode (a frozen BN inside a
training model) it normalises with its running statistics. Running statistics of training-mode
BN are updated exactly once per forward, never by the recomputation; frozen ones are never touched.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pointdr2 import ops
from pointdr2.nn.batch_stats import ChunkMoments, coupling, update_running_stats, uses_batch_stats
from pointdr2.reversible.replay import autocast_states, replay_autocast

__all__ = ["Group", "PointPatchEncoder", "recompute_tokens", "check_points"]


def check_points(points: torch.Tensor, in_channels: int, num_group: int, group_size: int) -> None:
    """One-line ``ValueError`` for a cloud the grouping cannot handle.

    points: float [B, N, in_channels] with xyz first.
    """
    if not isinstance(points, torch.Tensor):
        raise ValueError(f"points must be a torch.Tensor [B, N, {in_channels}], got {type(points).__name__}")
    if points.ndim != 3 or points.shape[-1] != in_channels:
        raise ValueError(f"points must have shape [B, N, {in_channels}] (xyz first; model.in_channels="
                         f"{in_channels}), got {list(points.shape)}")
    if not points.is_floating_point():
        raise ValueError(f"points must be a floating point tensor, got {points.dtype}")
    n = points.shape[1]
    if n < num_group or n < group_size:
        raise ValueError(f"point cloud has {n} points but the grouping needs at least "
                         f"max(num_group={num_group}, group_size={group_size})")
    if not bool(torch.isfinite(points[..., :3]).all()):
        raise ValueError("points contain NaN or infinite coordinates")


class Group(nn.Module):
    """FPS centres + kNN neighbourhoods. No parameters; deterministic (pointdr2.ops semantics).

    ``skip_origin``: the centres follow pointnet2_ops' FPS, which never picks a point with
    ``|p|^2 <= 1e-3`` after the first (the official models were trained with it; see
    :func:`pointdr2.ops.furthest_point_sample`).
    """

    def __init__(self, num_group: int, group_size: int, skip_origin: bool = False) -> None:
        super().__init__()
        self.num_group = int(num_group)
        self.group_size = int(group_size)
        self.skip_origin = bool(skip_origin)

    @torch.no_grad()
    def indices(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points [B, N, C] -> (centre indices int64 [B, G], neighbour indices int64 [B, G, K])."""
        xyz = points[..., :3].contiguous()
        center_idx = ops.furthest_point_sample(xyz, self.num_group, skip_origin=self.skip_origin)
        center = _take(xyz, center_idx)
        _, knn_idx = ops.knn(center, xyz, self.group_size)
        return center_idx, knn_idx

    @staticmethod
    def centers(points: torch.Tensor, center_idx: torch.Tensor) -> torch.Tensor:
        """points [B, N, C], centre indices [B, G] -> centres [B, G, 3]."""
        return _take(points[..., :3], center_idx)

    @staticmethod
    def gather(points: torch.Tensor, center_idx: torch.Tensor, knn_idx: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (neighbourhoods [B, g, K, C] with xyz relative to the centre, centres [B, G, 3]).

        ``knn_idx`` may hold any subset of the groups (g <= G) as long as ``center_idx`` holds the
        matching centres.
        """
        center = _take(points[..., :3], center_idx)
        b, g, k = knn_idx.shape
        neighbourhood = _take(points, knn_idx.reshape(b, g * k)).reshape(b, g, k, points.shape[-1])
        rel = neighbourhood[..., :3] - center.unsqueeze(2)
        if points.shape[-1] > 3:
            rel = torch.cat([rel, neighbourhood[..., 3:]], dim=-1)
        return rel, center

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        center_idx, knn_idx = self.indices(points)
        return self.gather(points, center_idx, knn_idx)


def _take(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """values [B, N, C], idx int64 [B, S] -> [B, S, C]."""
    return torch.gather(values, 1, idx.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


class PointPatchEncoder(nn.Module):
    """Mini-PointNet shared over groups: [B, G, K, C] -> tokens [B, G, out_channels].

    Conv1d(C,128) BN ReLU Conv1d(128,256); max over points; concat [global, local] (512);
    Conv1d(512,512) BN ReLU Conv1d(512,out); max over points. ``hidden`` (128 in the official
    layout) scales every inner width: h, 2h, 4h, 4h.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 384, hidden: int = 128) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        h = int(hidden)
        self.first_conv = nn.Sequential(
            nn.Conv1d(in_channels, h, 1), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Conv1d(h, 2 * h, 1))
        self.second_conv = nn.Sequential(
            nn.Conv1d(4 * h, 4 * h, 1), nn.BatchNorm1d(4 * h), nn.ReLU(inplace=True), nn.Conv1d(4 * h, out_channels, 1))

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        b, g, k, c = groups.shape
        x = groups.reshape(b * g, k, c).transpose(1, 2)
        f = self.first_conv(x)  # [BG, 256, K]
        glob = f.max(dim=2, keepdim=True)[0]
        f = self.second_conv(torch.cat([glob.expand(-1, -1, k), f], dim=1))
        return f.max(dim=2)[0].reshape(b, g, self.out_channels)


# ----------------------------------------------------------------------------- recomputation
class EncoderParams(NamedTuple):
    """The encoder's parameters by name, in the order the chunked autograd function receives them:
    ``first_conv`` = conv1, bn1, ReLU, conv2; ``second_conv`` = conv3, bn2, ReLU, conv4."""

    conv1_weight: torch.Tensor
    conv1_bias: torch.Tensor
    bn1_weight: torch.Tensor
    bn1_bias: torch.Tensor
    conv2_weight: torch.Tensor
    conv2_bias: torch.Tensor
    conv3_weight: torch.Tensor
    conv3_bias: torch.Tensor
    bn2_weight: torch.Tensor
    bn2_bias: torch.Tensor
    conv4_weight: torch.Tensor
    conv4_bias: torch.Tensor


# positions in EncoderParams: everything before the last convolution, and the first convolution
BEFORE_CONV4 = EncoderParams._fields.index("conv4_weight")
CONV1 = slice(0, EncoderParams._fields.index("bn1_weight"))


def encoder_params(enc: PointPatchEncoder) -> EncoderParams:
    c1, bn1, _, c2 = enc.first_conv
    c3, bn2, _, c4 = enc.second_conv
    return EncoderParams(c1.weight, c1.bias, bn1.weight, bn1.bias, c2.weight, c2.bias,
                         c3.weight, c3.bias, bn2.weight, bn2.bias, c4.weight, c4.bias)


def _bn(h: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
        eps: float) -> torch.Tensor:
    """BatchNorm with given statistics: [M, C, K] with mean/var [C]."""
    scale = torch.rsqrt(var + eps) * weight
    return (h - mean[:, None]) * scale[:, None] + bias[:, None]


class _ChunkedEncoder(torch.autograd.Function):
    """Encoder forward/backward over chunks of groups, keeping only indices for backward.

    Kept: the input points, the group indices, per-channel BN statistics and, per group and output
    channel, which of the K points won the final max (uint8/int16 ``argmax``, [B, G, E]); with it the
    last convolution's backward needs no recomputation of its forward.

    ``batch_stats = (b1, b2)`` says which BN normalises with batch statistics (training mode);
    the other uses its running statistics as constants (eval mode, e.g. frozen BN). Batch-statistics
    BN couples chunks through the batch mean ``mu`` and variance ``var``. With ``g_mu = dL/dmu`` and
    ``g_var = dL/dvar`` (stats treated as inputs), the exact gradient of a point's pre-BN value h
    adds ``g_mu / N + g_var * 2 (h - mu) / N``. Backward therefore runs:
    A) (BN2 on batch stats) per chunk, recompute up to BN2 and collect g_mu2, g_var2;
    B) per chunk, recompute and backprop ``<a2, da2> + <g_mu2, sum h2>/N + <g_var2, sum (h2-mu2)^2>/N``
       into every parameter and (BN1 on batch stats) into mu1/var1 (collecting g_mu1, g_var1);
    C) (BN1 on batch stats) per chunk, push g_mu1/g_var1 into the first convolution (the only
       layer before BN1; cheap).
    With both BN frozen only B runs (chunks are independent). With a single chunk and any BN on
    batch statistics there is no coupling to resolve: one recomputation under autograd.
    """

    @staticmethod
    def forward(ctx, points, center_idx, knn_idx, chunk, enc, batch_stats, *flat):  # noqa: ANN001
        params = EncoderParams(*flat)
        bn1, bn2 = enc.first_conv[1], enc.second_conv[1]
        b1, b2 = batch_stats
        eps = (bn1.eps, bn2.eps)
        b, g, k = knn_idx.shape
        slices = _chunks(g, chunk)
        ctx.chunk, ctx.batch_stats, ctx.eps, ctx.n = chunk, (b1, b2), eps, b * g * k
        ctx.single = (b1 or b2) and len(slices) == 1
        ctx.autocast = autocast_states(points.device.type)
        # Frozen BN: its running statistics at forward time are constants of this step.
        run1 = None if b1 else (bn1.running_mean.clone(), bn1.running_var.clone())
        run2 = None if b2 else (bn2.running_mean.clone(), bn2.running_var.clone())
        with torch.no_grad():
            if ctx.single:
                x = _chunk_input(points, center_idx, knn_idx, slices[0])
                out, stats = _single_chunk(x, params, eps, b, run1, run2)
                for bn, batch, (mean, var) in zip((bn1, bn2), (b1, b2), stats):
                    if batch and bn.training:
                        update_running_stats(bn, mean, var, ctx.n)
                (mu1, var1), (mu2, var2) = stats
                ctx.save_for_backward(points, center_idx, knn_idx, mu1, var1, mu2, var2, *flat)
                return out
            if b1:
                s1 = ChunkMoments()
                for sl in slices:
                    s1.add(F.conv1d(_chunk_input(points, center_idx, knn_idx, sl), params.conv1_weight, params.conv1_bias))
                mu1, var1 = s1.result(points.dtype)
            else:
                mu1, var1 = run1
            if b2:
                s2 = ChunkMoments()
                for sl in slices:
                    s2.add(_to_h2(_chunk_input(points, center_idx, knn_idx, sl), params, mu1, var1, eps[0]))
                mu2, var2 = s2.result(points.dtype)
            else:
                mu2, var2 = run2
            if b1 and bn1.training:
                update_running_stats(bn1, mu1, var1, ctx.n)
            if b2 and bn2.training:
                update_running_stats(bn2, mu2, var2, ctx.n)
            outs, args = [], []
            index_dtype = torch.uint8 if k <= 256 else torch.int16 if k <= 32768 else torch.int64
            for sl in slices:
                x = _chunk_input(points, center_idx, knn_idx, sl)
                a2 = _to_a2(_to_h2(x, params, mu1, var1, eps[0]), params, mu2, var2, eps[1])
                val, arg = F.conv1d(a2, params.conv4_weight, params.conv4_bias).max(dim=2)
                outs.append(val.reshape(b, -1, val.shape[1]))
                args.append(arg.to(index_dtype).reshape(b, -1, arg.shape[1]))
        ctx.save_for_backward(points, center_idx, knn_idx, mu1, var1, mu2, var2, torch.cat(args, dim=1), *flat)
        return torch.cat(outs, dim=1)

    @staticmethod
    def backward(ctx, dout):  # noqa: ANN001
        # The recomputation must see the forward's autocast state (backward runs outside it).
        with replay_autocast(ctx.autocast):
            return _ChunkedEncoder._backward(ctx, dout)

    @staticmethod
    def _backward(ctx, dout):  # noqa: ANN001
        eps, n = ctx.eps, ctx.n
        b1, b2 = ctx.batch_stats
        if ctx.single:
            points, center_idx, knn_idx, mu1, var1, mu2, var2, *params = ctx.saved_tensors
            leaves = EncoderParams(*(p.detach().requires_grad_(True) for p in params))
            x = _chunk_input(points, center_idx, knn_idx, slice(None))
            with torch.enable_grad():
                out, _ = _single_chunk(x, leaves, eps, knn_idx.shape[0], None if b1 else (mu1, var1),
                                       None if b2 else (mu2, var2))
                grads = torch.autograd.grad(out, leaves, dout, allow_unused=True)
            return (None, None, None, None, None, None, *grads)

        points, center_idx, knn_idx, mu1, var1, mu2, var2, argmax, *flat = ctx.saved_tensors
        params = EncoderParams(*flat)
        slices = _chunks(knn_idx.shape[1], ctx.chunk)
        k = knn_idx.shape[2]
        grads = [torch.zeros_like(p) for p in params]
        leaves = EncoderParams(*(p.detach().requires_grad_(True) for p in params))
        dout = dout.contiguous()

        def accumulate(res, offset=0):
            for i, g in enumerate(res):
                if g is not None:
                    grads[i + offset] += g

        def chunk_cotangent(sl):
            """(one-hot-scattered dout [M, E, K], dL/da2 [M, 512, K]) of the groups in ``sl``."""
            d = dout[:, sl].reshape(-1, dout.shape[2])
            idx = argmax[:, sl].reshape(-1, argmax.shape[2]).long()
            scattered = d.new_zeros(d.shape[0], d.shape[1], k).scatter_(2, idx.unsqueeze(2), d.unsqueeze(2))
            return scattered, torch.matmul(params.conv4_weight[..., 0].t(), scattered)

        def conv_out_grads(scattered, a2):
            e, c = params.conv4_weight.shape[:2]
            w = torch.mm(scattered.transpose(0, 1).reshape(e, -1), a2.transpose(0, 1).reshape(c, -1).t())
            grads[BEFORE_CONV4] += w.unsqueeze(2)
            grads[BEFORE_CONV4 + 1] += scattered.sum(dim=(0, 2))

        # A) dL/dmu2 and dL/dvar2, summed over chunks (BN2 on batch statistics only).
        g_mu2, g_var2 = torch.zeros_like(mu2), torch.zeros_like(var2)
        for sl in slices if b2 else ():
            x = _chunk_input(points, center_idx, knn_idx, sl)
            with torch.no_grad():
                h2 = _to_h2(x, params, mu1, var1, eps[0])
                _, da2 = chunk_cotangent(sl)
            m2, v2 = mu2.detach().requires_grad_(True), var2.detach().requires_grad_(True)
            with torch.enable_grad():
                a2 = _to_a2(h2, params, m2, v2, eps[1])
                gm, gv = torch.autograd.grad(a2, (m2, v2), da2)
            g_mu2 += gm
            g_var2 += gv
            del h2, da2, a2
        # B) every parameter (conv1 only its direct part) plus, with BN1 on batch statistics,
        # dL/dmu1 and dL/dvar1.
        g_mu1, g_var1 = torch.zeros_like(mu1), torch.zeros_like(var1)
        for sl in slices:
            x = _chunk_input(points, center_idx, knn_idx, sl)
            scattered, da2 = chunk_cotangent(sl)
            m1, v1 = (mu1.detach().requires_grad_(True), var1.detach().requires_grad_(True)) if b1 else (mu1, var1)
            with torch.enable_grad():
                h2 = _to_h2(x, leaves, m1, v1, eps[0])
                a2 = _to_a2(h2, leaves, mu2, var2, eps[1])
                total = (a2 * da2).sum()
                if b2:
                    total = total + coupling(h2, mu2, g_mu2, g_var2, n)
                res = torch.autograd.grad(total, [*leaves[:BEFORE_CONV4], *((m1, v1) if b1 else ())], allow_unused=True)
            accumulate(res[:BEFORE_CONV4])
            if b1:
                g_mu1 += res[BEFORE_CONV4]
                g_var1 += res[BEFORE_CONV4 + 1]
            conv_out_grads(scattered, a2.detach())
            del h2, a2, da2, scattered, total
        # C) the BN1 coupling terms reach only the first convolution (C -> 128).
        for sl in slices if b1 else ():
            x = _chunk_input(points, center_idx, knn_idx, sl)
            with torch.enable_grad():
                h1 = F.conv1d(x, leaves.conv1_weight, leaves.conv1_bias)
                accumulate(torch.autograd.grad(coupling(h1, mu1, g_mu1, g_var1, n), leaves[CONV1]))
        return (None, None, None, None, None, None, *grads)


def _single_chunk(x: torch.Tensor, p: EncoderParams, eps: tuple[float, float], batch: int,
                  fixed1: tuple[torch.Tensor, torch.Tensor] | None, fixed2: tuple[torch.Tensor, torch.Tensor] | None
                  ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Whole-batch encoder -> (tokens, [(mean, var) of BN1, of BN2]).

    A BN with ``fixed`` statistics (mean, var) uses them as constants (eval mode); one without
    normalises with the batch statistics inside autograd (training mode).
    """
    k = x.shape[2]
    h1 = F.conv1d(x, p.conv1_weight, p.conv1_bias)
    var1, mu1 = torch.var_mean(h1, dim=(0, 2), correction=0) if fixed1 is None else (fixed1[1], fixed1[0])
    f = F.conv1d(F.relu(_bn(h1, mu1, var1, p.bn1_weight, p.bn1_bias, eps[0])), p.conv2_weight, p.conv2_bias)
    h2 = F.conv1d(torch.cat([f.max(dim=2, keepdim=True)[0].expand(-1, -1, k), f], dim=1), p.conv3_weight, p.conv3_bias)
    var2, mu2 = torch.var_mean(h2, dim=(0, 2), correction=0) if fixed2 is None else (fixed2[1], fixed2[0])
    out = _from_h2(h2, p, mu2, var2, eps[1], batch)
    return out, [(mu1.detach(), var1.detach()), (mu2.detach(), var2.detach())]


def _chunks(num_groups: int, chunk: int) -> list[slice]:
    return [slice(i, min(num_groups, i + chunk)) for i in range(0, num_groups, chunk)]


def _chunk_input(points: torch.Tensor, center_idx: torch.Tensor, knn_idx: torch.Tensor, sl: slice) -> torch.Tensor:
    """Neighbourhoods of the groups in ``sl`` as a channel-first batch [B*g, C, K]."""
    rel, _ = Group.gather(points, center_idx[:, sl], knn_idx[:, sl])
    b, g, k, c = rel.shape
    return rel.reshape(b * g, k, c).transpose(1, 2)


def _to_h2(x: torch.Tensor, p: EncoderParams, mu1: torch.Tensor, var1: torch.Tensor, eps1: float) -> torch.Tensor:
    """[M, C, K] -> pre-BN activations of the second block [M, 512, K]."""
    k = x.shape[2]
    a1 = F.relu(_bn(F.conv1d(x, p.conv1_weight, p.conv1_bias), mu1, var1, p.bn1_weight, p.bn1_bias, eps1))
    f = F.conv1d(a1, p.conv2_weight, p.conv2_bias)
    glob = f.max(dim=2, keepdim=True)[0]
    return F.conv1d(torch.cat([glob.expand(-1, -1, k), f], dim=1), p.conv3_weight, p.conv3_bias)


def _to_a2(h2: torch.Tensor, p: EncoderParams, mu2: torch.Tensor, var2: torch.Tensor, eps2: float
           ) -> torch.Tensor:
    return F.relu(_bn(h2, mu2, var2, p.bn2_weight, p.bn2_bias, eps2))


def _from_h2(h2: torch.Tensor, p: EncoderParams, mu2: torch.Tensor, var2: torch.Tensor, eps2: float,
             batch: int) -> torch.Tensor:
    """[B*g, 512, K] -> tokens [B, g, out]."""
    tokens = F.conv1d(_to_a2(h2, p, mu2, var2, eps2), p.conv4_weight, p.conv4_bias).max(dim=2)[0]
    return tokens.reshape(batch, -1, tokens.shape[1])


def recompute_tokens(encoder: PointPatchEncoder, points: torch.Tensor, center_idx: torch.Tensor,
                     knn_idx: torch.Tensor, chunk_groups: int) -> torch.Tensor:
    """Tokens [B, G, E] for ``points`` [B, N, C] grouped by the given indices, keeping for backward
    only the inputs, the indices and per-channel BN statistics (no per-point activation).

    The encoder runs over chunks of ``chunk_groups`` groups (all samples of the batch at once),
    both in the forward and in the recomputing backward pass, so the transient memory is that of
    one chunk. Gradients equal those of ``encoder(Group.gather(...)[0])``: each BatchNorm follows
    its own ``training`` flag (batch statistics in training mode, running statistics in eval mode,
    e.g. BN frozen with ``bn.eval()`` inside a training model; mixed modes are fine), and the
    running statistics of training-mode BN are updated once, as by the plain forward. No gradient
    flows to ``points`` (input data). Costs up to two extra encoder forwards when a BN trains.
    """
    if chunk_groups < 1:
        raise ValueError(f"chunk_groups must be >= 1, got {chunk_groups}")
    batch_stats = tuple(uses_batch_stats(bn) for bn in (encoder.first_conv[1], encoder.second_conv[1]))
    return _ChunkedEncoder.apply(points.detach(), center_idx, knn_idx, int(chunk_groups), encoder, batch_stats,
                                 *encoder_params(encoder))
