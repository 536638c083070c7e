"""The Dr2Net dual-residual stack and its memory-free backward pass.

Notation (Dr2Net, CVPR 2024), used once here and everywhere else by reference::

    x_{-1} = x_0 = x                                   the input, duplicated into two streams
    x_i    = beta * x_{i-2} + G_i(x_{i-1}; alpha)        i = 1..N
    x_{i-2} = (x_i - G_i(x_{i-1}; alpha)) / beta       the inverse used by the backward pass

``G_i(x; alpha)`` is the pretrained block i with its identity path scaled by alpha, so alpha=1, beta=0
is exactly the pretrained network and alpha=0, beta=1 a classic reversible network. With
``gain="balanced"`` the residual update is scaled too, ``G_i(x) = alpha*x + (1+beta)*F_i(x)``, called as
``(1+beta) * unit_i(x, alpha/(1+beta))`` (:func:`unit_coefficients`); the equations are otherwise the same.

What each mode keeps for backward (everything else is recomputed one block at a time):

- ``standard``: plain autograd, every activation inside every block.
- ``checkpoint``: ``torch.utils.checkpoint`` per block: every block input x_{i-1}.
- ``reversible``: the final pair (x_{N-1}, x_N), the tensor extras, and with ``cache_every=k`` exact anchor
  pairs every k+1 blocks, so that no block input is reconstructed over more than k-1 steps and errors
  grow over at most k steps (k=N: no anchors; k=1: every block input, i.e. checkpointing).
- ``auto``: ``reversible`` with k chosen before each step by :class:`~pointdr2.reversible.precision.PrecisionGuard`.

Taps (``forward(x, *extras, taps=(t1, t2, ...))``) return intermediate states alongside the output, each read
like the output: ``tap_t = w_N x_t + w_{N-1} x_{t-1} + w_0 x_0`` (:func:`output_weights`; t = 0..N, x_{-1} = x_0),
so at alpha=1, beta=0 tap t is the pretrained network's output of block t. A head that reads blocks 4, 8 and
12 (Point-MAE's and Point-BERT's segmentation heads) makes gradients enter the stack in the middle. The
reversible backward adds each tap's incoming gradient to the adjoints as its walk back reaches them::

    dL/dx_t += w_N dL/dtap_t,    dL/dx_{t-1} += w_{N-1} dL/dtap_t,    dL/dx_0 += w_0 dL/dtap_t

before block t's backward uses dL/dx_t. Nothing more is kept: the tapped tensors are outputs (the head holds
them anyway), the final pair, anchors and extras as without taps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint as _torch_checkpoint

from pointdr2.reversible.precision import PrecisionGuard
from pointdr2.reversible.replay import (
    autocast_states,
    frozen_running_stats,
    replay_autocast,
    replay_rng,
    rng_state,
)

log = logging.getLogger(__name__)

MODES = ("reversible", "standard", "checkpoint", "auto")
OUTPUTS = ("last", "mean", "sum")
GAINS = ("plain", "balanced")


def _check_gain(gain: str) -> str:
    if gain not in GAINS:
        raise ValueError(f"gain must be one of {GAINS}, got {gain!r}")
    return gain


def check_unit_form(residual: str, gain: str) -> None:
    """``gain="balanced"`` scales ``F`` in units of the form ``a*x + F(x)``: the ``block`` residual units.
    A ``branch`` unit scales the identity inside the branch (``a*(x + pos) + Attn(x + pos)``, ``ReLU(a*f +
    F(f))``), where no such F exists."""
    if _check_gain(gain) == "balanced" and residual != "block":
        raise ValueError(f"gain='balanced' needs residual='block' units (alpha*x + F(x)), got residual={residual!r}")


def unit_coefficients(alpha: float, beta: float, gain: str = "plain") -> tuple[float, float]:
    """``(a, gain)`` with which a stack calls its units: ``G_i(x; alpha) = gain * unit_i(x, a)``.

    ``plain``: (alpha, 1), the unit itself, ``alpha*x + F_i(x)``. ``balanced``: (alpha/(1+beta), 1+beta), so a
    unit of the form ``a*x + F_i(x)`` gives ``alpha*x + (1+beta)*F_i(x)``: the identity keeps its coefficient and
    the residual update is scaled by 1+beta (see :func:`output_weights` for why). Both are the unit itself at
    beta = 0, so exactly the pretrained network at alpha=1, beta=0.
    """
    if _check_gain(gain) == "plain" or beta == 0:
        return float(alpha), 1.0
    gain = 1.0 + float(beta)
    return float(alpha) / gain, gain


def output_weights(output: str, beta: float, gain: str = "plain") -> tuple[float, float, float]:
    """(w_N, w_{N-1}, w_0) of the stack output ``w_N*x_N + w_{N-1}*x_{N-1} + w_0*x_0``.

    ``last``: x_N. ``mean``: (x_{N-1} + x_N)/2 (the reference implementation). ``sum``: the pretrained
    network's residual stream. With alpha + beta = 1 and updates ``x_i = beta*x_{i-2} + alpha*x_{i-1} +
    gain*F_i(x_{i-1})``, ``S_i = x_i + beta*x_{i-1}`` obeys ``S_i = S_{i-1} + gain*F_i(x_{i-1})`` exactly
    (``S_0 = (1+beta)*x``), so

    - ``plain`` (gain 1): ``sum`` = x_N + beta*(x_{N-1} - x_0) = S_N - beta*x_0;
    - ``balanced`` (gain 1+beta): ``sum`` = (x_N + beta*x_{N-1})/(1+beta) = S_N/(1+beta);

    both equal ``x + sum_i F_i(x_{i-1})``, each residual function evaluated at the surrogate's state.
    What the units read differs: unrolled, ``x_{i-1} = x + gain * sum_{j<i} c_{i-1-j} F_j`` with
    ``c_m = (1 - (-beta)^(m+1))/(1+beta)``. Plain weights the earlier updates 1, alpha, ... and at beta = 1
    1, 0, 1, 0, ...: each unit sees only every other update, half of the pretrained stream. Balanced weights
    them ``1 - (-beta)^(m+1)``: 1+beta, 1-beta^2, ..., 2, 0, 2, 0 at beta = 1, on average the pretrained
    stream's weight 1 (whose neighbouring updates are alike), so the pretrained function is kept through the
    schedule (measured in ``pointdr2 bench study``'s preservation). ``last`` keeps only every other F_i at beta = 1.
    """
    _check_gain(gain)
    if output == "last":
        return 1.0, 0.0, 0.0
    if output == "mean":
        return 0.5, 0.5, 0.0
    if output == "sum":
        if gain == "balanced":
            return 1.0 / (1.0 + float(beta)), float(beta) / (1.0 + float(beta)), 0.0
        return 1.0, float(beta), -float(beta)
    raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")


def _combine(weights: tuple[float, float, float], last: torch.Tensor, prev: torch.Tensor,
             first: torch.Tensor) -> torch.Tensor:
    w_n, w_p, w_0 = weights
    out = last if w_n == 1.0 else w_n * last
    if w_p:
        out = out + w_p * prev
    if w_0:
        out = out + w_0 * first
    return out


class ResidualBlock(nn.Module):
    """``G(x, alpha, *extras) = alpha * x + fn(x, *extras)`` for a plain residual function ``fn``."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, alpha: float, *extras: Any) -> torch.Tensor:
        return alpha * x + self.fn(x, *extras)


# --------------------------------------------------------------------------- helpers
def _stream_dtype(dtype: torch.dtype) -> torch.dtype:
    """Streams are kept in float32 (or float64) even when blocks compute in bf16/fp16."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """||a - ref|| / ||ref|| as a float64 0-d tensor (no host sync)."""
    num = torch.linalg.vector_norm((a - ref).double())
    den = torch.linalg.vector_norm(ref.double()).clamp_min(torch.finfo(torch.float64).tiny)
    return num / den


def anchor_positions(n: int, k: int) -> set[int]:
    """Indices p of the states x_p kept in the forward (besides the final pair) for spacing k.

    Every block input x_{i-1} is then either exact or reconstructed in at most k-1 steps, and every
    kept state is reached by a reconstruction of at most k steps, which measures the error. Exact
    pairs (x_{q-1}, x_q) are placed k+1 apart from the top (x_{N-1}, x_N); the bottom segment ends at
    x_0 (= x_{-1}), kept alone when needed. k >= N keeps nothing (fully reversible); k = 1 keeps every
    block input (checkpointing); about 2N/(k+1) states in between.
    """
    keep: set[int] = set()
    q = n
    while q > k:  # below the exact pair at q, the inputs down to x_0 would need q-1 > k-1 steps
        q -= k + 1
        if q <= 0:
            keep.add(0)
            break
        keep.update((q - 1, q))
    return keep


# --------------------------------------------------------------------------- the autograd function
class _ReversibleFunction(torch.autograd.Function):
    """Forward without a graph keeping only the final pair (+ anchors, extras); backward by reconstruction.

    Inputs: ``(stack, cache_every, n_extras, anchor, x, *extras)``. ``anchor`` is an empty leaf that requires
    grad, so the output requires grad even when neither x nor the extras do (only parameters). Parameters
    are *not* inputs: their gradients are accumulated into ``.grad`` by a nested ``torch.autograd.backward``
    on each recomputed block (the pattern of reentrant checkpointing). Returning them through the
    Function instead would hold a second copy of every parameter gradient until the whole stack is done
    (+1x parameter memory at the peak). Accumulation goes through each parameter's own AccumulateGrad
    node exactly once, so DDP's per-parameter hooks fire as each block finishes (all-reduce overlaps the
    rest of the backward) and AMP's scaled gradients land in ``.grad`` as usual.
    Caveat: under DDP a parameter shared by two blocks is marked ready twice (use ``static_graph=True``).
    """

    @staticmethod
    def forward(ctx, stack: Dr2Stack, cache_every: int, n_extras: int, taps: tuple[int, ...], anchor: torch.Tensor,
                x: torch.Tensor, *extras: Any):
        params = [p for p in stack.blocks.parameters() if p.requires_grad]
        beta, blocks = stack.beta, stack.blocks
        a_unit, gain = stack.unit_coefficients()
        weights = stack.output_weights()
        n = len(blocks)
        sd = _stream_dtype(x.dtype)
        ctx.autocast = autocast_states(x.device.type)
        ctx.device = x.device
        rng_states = []
        keep = anchor_positions(n, cache_every)
        kept: dict[int, torch.Tensor] = {}
        prev2 = prev1 = x0 = x.to(sd)  # x_{-1}, x_0
        if 0 in keep:
            kept[0] = prev1
        tapped: dict[int, torch.Tensor] = {}
        if 0 in taps:
            tapped[0] = _combine(weights, x0, x0, x0)
        for i, block in enumerate(blocks, start=1):
            rng_states.append(rng_state(x.device))
            g = block(prev1.to(x.dtype), a_unit, *extras)  # blocks see x's dtype; streams stay in sd
            if gain != 1.0:
                g = gain * g
            cur = beta * prev2 + g.to(sd) if beta != 0 else g.to(sd)
            if i in keep:
                kept[i] = cur
            if i in taps:
                tapped[i] = _combine(weights, cur, prev1, x0)
            prev2, prev1 = prev1, cur
        out = _combine(weights, prev1, prev2, x0)
        ctx.taps = taps
        positions = sorted(kept)
        ctx.positions = positions
        ctx.rng_states = rng_states
        ctx.stack, ctx.cache_every, ctx.n_extras = stack, cache_every, n_extras
        ctx.a_unit, ctx.gain, ctx.beta, ctx.weights = a_unit, gain, beta, weights
        ctx.x_dtype = x.dtype
        ctx.extra_is_tensor = [torch.is_tensor(e) for e in extras]
        ctx.extra_needs_grad = [torch.is_tensor(e) and e.requires_grad for e in extras]
        ctx.non_tensor_extras = [None if torch.is_tensor(e) else e for e in extras]
        # parameters are alive anyway and are not activations: kept as an attribute, not saved
        ctx.params = params
        ctx.save_for_backward(prev2, prev1, *[kept[p] for p in positions], *[e for e in extras if torch.is_tensor(e)])
        if taps:
            return (out.to(x.dtype), *(tapped[t].to(x.dtype) for t in taps))
        return out.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor, *grad_taps: torch.Tensor):
        stack: Dr2Stack = ctx.stack
        blocks, a_unit, gain, beta, k = stack.blocks, ctx.a_unit, ctx.gain, ctx.beta, ctx.cache_every
        n = len(blocks)
        saved = ctx.saved_tensors
        last2, last1 = saved[0], saved[1]
        n_kept = len(ctx.positions)
        kept = dict(zip(ctx.positions, saved[2 : 2 + n_kept]))
        n_tensor_extras = sum(ctx.extra_is_tensor)
        tensor_extras = list(saved[2 + n_kept : 2 + n_kept + n_tensor_extras])
        params = ctx.params
        sd = last1.dtype

        # extras enter each recomputation as the same fresh leaves, so .grad sums their gradients over blocks
        extras: list[Any] = []
        it = iter(tensor_extras)
        for is_t, needs, other in zip(ctx.extra_is_tensor, ctx.extra_needs_grad, ctx.non_tensor_extras):
            if is_t:
                e = next(it)
                extras.append(e.detach().requires_grad_(True) if needs else e)
            else:
                extras.append(other)
        extra_leaves = [e for j, e in enumerate(extras) if ctx.extra_needs_grad[j]]
        param_ids = {id(p) for p in params}

        grad_out = grad_out.to(sd)
        w_n, w_p, w_0 = ctx.weights
        g_cur = grad_out if w_n == 1.0 else w_n * grad_out
        g_prev = w_p * grad_out if w_p else torch.zeros_like(last2)
        # a tap at state t reads w_n*x_t + w_p*x_{t-1} + w_0*x_0: its gradient joins those states' adjoints as
        # the walk back reaches them (x_{-1} and x_0 are the input itself)
        tap_adjoint: dict[int, torch.Tensor] = {}
        grad_x0 = w_0 * grad_out if w_0 else None
        for t, g_t in zip(ctx.taps, grad_taps):
            if g_t is None:
                continue
            g_t = g_t.to(sd)
            for index, w in ((t, w_n), (t - 1, w_p)):
                if w:
                    key = max(index, 0)  # x_{-1} = x_0
                    tap_adjoint[key] = tap_adjoint[key] + w * g_t if key in tap_adjoint else w * g_t
            if w_0:
                grad_x0 = grad_x0 + w_0 * g_t if grad_x0 is not None else w_0 * g_t
        x_prev, x_cur = last2, last1  # (x_{i-1}, x_i) for i = N
        errors: list[torch.Tensor] = []
        for i in range(n, 0, -1):
            if i in tap_adjoint:
                g_cur = g_cur + tap_adjoint.pop(i)
            block = blocks[i - 1]
            block_params = [p for p in block.parameters() if id(p) in param_ids]
            with torch.enable_grad(), replay_rng(ctx.rng_states[i - 1], ctx.device), replay_autocast(
                ctx.autocast
            ), frozen_running_stats(block):
                x_in = x_prev.detach().to(ctx.x_dtype).requires_grad_(True)
                g = block(x_in, a_unit, *extras)
                if gain != 1.0:
                    g = gain * g
            if g.requires_grad:
                torch.autograd.backward(g, g_cur.to(g.dtype), inputs=[x_in, *extra_leaves, *block_params])
            g_detached = g.detach().to(sd)
            del g  # the block's graph is freed here, before the next block is recomputed
            gx = x_in.grad
            # x_i = beta*x_{i-2} + G_i(x_{i-1}):  dL/dx_{i-2} += beta*dL/dx_i ; dL/dx_{i-1} += J_G^T dL/dx_i
            new_g_prev = beta * g_cur
            new_g_cur = g_prev + gx.to(sd) if gx is not None else g_prev
            if beta != 0:
                x_rec = (x_cur - g_detached) / beta  # x_{i-2}
                if (i - 2) in kept:  # an exact copy: measure, then restart from it
                    errors.append(_rel_err(x_rec, kept[i - 2]))
                    x_rec = kept[i - 2]
                elif i == 1:
                    errors.append(_rel_err(x_rec, x_prev))  # x_{-1} and x_0 are the same tensor x
            else:  # beta == 0 only runs with every block input kept (auto mode's k=1)
                x_rec = kept.get(i - 2)
                if x_rec is None and i > 1:
                    raise RuntimeError(f"beta == 0 needs state x_{i - 2} kept; cache_every must be 1")
            x_prev, x_cur = x_rec, x_prev
            g_prev, g_cur = new_g_prev, new_g_cur
            del g_detached, x_in, gx

        grad_x = g_prev + g_cur
        if 0 in tap_adjoint:
            grad_x = grad_x + tap_adjoint.pop(0)
        if grad_x0 is not None:  # the output's (and the taps') direct path from x_0 (= x)
            grad_x = grad_x + grad_x0
        grad_x = grad_x.to(ctx.x_dtype)
        err = float(torch.stack(errors).max()) if errors else None  # one host sync per backward
        stack._record_backward(err, k)
        out_extras = [
            e.grad.to(e.dtype) if ctx.extra_needs_grad[j] and e.grad is not None else None
            for j, e in enumerate(extras)
        ]
        return (None, None, None, None, None, grad_x, *out_extras)


# --------------------------------------------------------------------------- the module
class Dr2Stack(nn.Module):
    """A stack of blocks run as a Dr2Net dual-residual network (equations in the module docstring).

    Args:
        blocks: modules called as ``blocks[i](x, alpha, *extras)`` returning ``G_i(x; alpha)``, a tensor
            shaped like x. Parameters a block uses must be registered in it (or passed as extras).
        alpha, beta: coefficients; writable floats between steps.
        output: ``"last"`` returns x_N (exactly the pretrained network at alpha=1, beta=0); ``"mean"``
            returns (x_{N-1} + x_N)/2 as the reference implementation does; ``"sum"`` returns
            x_N + beta*(x_{N-1} - x_0), which is also exact at alpha=1, beta=0 and, for alpha + beta = 1,
            equals the residual stream x + sum_i F_i(x_{i-1}) (see :func:`output_weights`).
        mode: ``"reversible"`` | ``"standard"`` | ``"checkpoint"`` | ``"auto"``.
        cache_every: anchor spacing k for ``reversible`` (None = N, fully reversible).
        tolerance: relative reconstruction error ``auto`` mode aims to stay under.
        gain: ``"plain"`` calls each unit as it is; ``"balanced"`` scales its residual update by 1+beta
            (:func:`unit_coefficients`, :func:`output_weights`), for units of the form ``a*x + F(x)``.

    ``forward(x, *extras, taps=None)``: ``x`` float ``[...]`` (e.g. ``[B, T, C]`` tokens or ``[B, C, N]`` features);
    with ``taps`` (state indices 0..N) it returns ``(output, [tap tensors])`` (see the module docstring);
    extras are passed unchanged to every block (a shared position embedding gets the sum of its gradients;
    integer tensors such as neighbour indices pass through). Returns a tensor shaped like x in x's dtype.
    The two streams are kept (and reconstructed) in float32 when x is bf16/fp16; blocks receive their
    input in x's dtype, and under autocast compute in the autocast dtype, in the recomputation too.

    After each backward of ``reversible``/``auto``: ``last_reconstruction_error`` (max relative error of
    the reconstructed states against the exact anchors or, for the first segment, x_{-1} against x_0;
    None when nothing was reconstructed). It measures k reconstruction steps, one more than any block
    input went through, so it bounds what the gradients saw; ``auto`` keeps the k-1 step prediction,
    corrected by these measurements, under ``tolerance``. ``last_cache_every`` and ``last_mode`` tell what the last
    forward ran (``auto`` with spacing 1 reports ``"checkpoint"``).
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module] | nn.ModuleList,
        alpha: float = 1.0,
        beta: float = 0.1,
        output: str = "last",
        mode: str = "reversible",
        cache_every: int | None = None,
        tolerance: float = 1e-4,
        gain: str = "plain",
    ) -> None:
        super().__init__()
        blocks = blocks if isinstance(blocks, nn.ModuleList) else nn.ModuleList(blocks)
        if len(blocks) == 0:
            raise ValueError("blocks must contain at least one module, got an empty sequence")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.blocks = blocks
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.output = output
        self.gain = _check_gain(gain)
        self.mode = mode
        self.cache_every = cache_every
        self.guard = PrecisionGuard(tolerance)
        self.last_reconstruction_error: float | None = None
        self.last_cache_every: int | None = None
        self.last_mode: str | None = None
        self._pending: tuple[float, float, torch.dtype] | None = None

    # ---- attributes with validation
    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {value!r}")
        self._mode = value

    @property
    def cache_every(self) -> int | None:
        return self._cache_every

    @cache_every.setter
    def cache_every(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"cache_every must be None or an int >= 1, got {value!r}")
        self._cache_every = value

    @property
    def tolerance(self) -> float:
        return self.guard.tolerance

    def extra_repr(self) -> str:
        return (
            f"depth={len(self.blocks)}, alpha={self.alpha:g}, beta={self.beta:g}, output={self.output!r}, "
            f"gain={self.gain!r}, "
            f"mode={self.mode!r}, cache_every={self.cache_every}, tolerance={self.tolerance:g}"
        )

    def unit_coefficients(self) -> tuple[float, float]:
        """``(a, gain)``: each unit is called as ``gain * unit(x, a)`` (:func:`unit_coefficients`)."""
        return unit_coefficients(self.alpha, self.beta, self.gain)

    def output_weights(self) -> tuple[float, float, float]:
        """(w_N, w_{N-1}, w_0) of the output and of every tap at the current beta (:func:`output_weights`)."""
        return output_weights(self.output, self.beta, self.gain)

    # ---- forward paths
    def forward(self, x: torch.Tensor, *extras: Any, taps: Sequence[int] | None = None):
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got {type(x).__name__}")
        taps = self._check_taps(taps)
        beta = self.beta
        if not math.isfinite(self.alpha) or not math.isfinite(beta):
            raise ValueError(f"alpha and beta must be finite, got alpha={self.alpha}, beta={beta}")
        mode = self.mode
        if mode == "reversible" and beta == 0:
            raise ValueError("beta must be != 0 in mode 'reversible' (x_{i-2} = (x_i - G_i)/beta); use mode 'auto'")
        params = [p for p in self.blocks.parameters() if p.requires_grad]
        needs_graph = torch.is_grad_enabled() and (
            x.requires_grad or bool(params) or any(torch.is_tensor(e) and e.requires_grad for e in extras)
        )
        n = len(self.blocks)
        if mode in ("standard", "checkpoint") or not needs_graph:
            self.last_reconstruction_error = None
        if mode == "standard" or not needs_graph:
            self.last_mode, self.last_cache_every = "standard", None
            return self._forward_standard(x, extras, taps)
        if mode == "checkpoint":
            self.last_mode, self.last_cache_every = "checkpoint", None
            return self._forward_checkpoint(x, extras, taps)
        if mode == "auto":
            dtype = _stream_dtype(x.dtype)
            if torch.is_autocast_enabled(x.device.type):
                # blocks compute in the autocast dtype: flips in their rounding set the error floor
                dtype = torch.get_autocast_dtype(x.device.type)
            k = self.guard.choose(self.alpha, beta, n, dtype)
            self._pending = (self.alpha, beta, dtype)
        else:
            k = n if self.cache_every is None else min(self.cache_every, n)
            self._pending = None
        # auto's spacing 1 keeps every block input: what the trainer should log as checkpointing
        self.last_mode = "checkpoint" if (mode == "auto" and k == 1 and n > 1) else "reversible"
        self.last_cache_every = k
        anchor = torch.empty(0, device=x.device, requires_grad=True)
        result = _ReversibleFunction.apply(self, k, len(extras), taps, anchor, x, *extras)
        return (result[0], list(result[1:])) if taps else result

    def _check_taps(self, taps: Sequence[int] | None) -> tuple[int, ...]:
        if taps is None:
            return ()
        n = len(self.blocks)
        out = tuple(int(t) for t in taps)
        if any(isinstance(t, bool) or not 0 <= int(t) <= n for t in taps):
            raise ValueError(f"taps must be state indices in 0..{n} (the state after unit t), got {list(taps)}")
        return out

    def _forward_standard(self, x: torch.Tensor, extras: tuple, taps: tuple[int, ...] = ()):
        a_unit, gain = self.unit_coefficients()

        def unit(block, h):
            g = block(h.to(x.dtype), a_unit, *extras)
            return g if gain == 1.0 else gain * g

        return self._loop(x, unit, taps)

    def _forward_checkpoint(self, x: torch.Tensor, extras: tuple, taps: tuple[int, ...] = ()):
        a_unit, gain = self.unit_coefficients()

        def unit(block, h):
            g = _torch_checkpoint(_OnceStatsBlock(block, a_unit), h.to(x.dtype), *extras, use_reentrant=False,
                                  preserve_rng_state=True)
            return g if gain == 1.0 else gain * g

        return self._loop(x, unit, taps)

    def _loop(self, x: torch.Tensor, unit, taps: tuple[int, ...]):
        """The dual-residual recurrence through autograd (standard and checkpoint modes), with taps."""
        sd = _stream_dtype(x.dtype)
        weights = self.output_weights()
        prev2 = prev1 = x0 = x.to(sd)
        tapped = {0: _combine(weights, x0, x0, x0)} if 0 in taps else {}
        for i, block in enumerate(self.blocks, start=1):
            g = unit(block, prev1).to(sd)
            cur = self.beta * prev2 + g if self.beta != 0 else g
            if i in taps:
                tapped[i] = _combine(weights, cur, prev1, x0)
            prev2, prev1 = prev1, cur
        out = _combine(weights, prev1, prev2, x0).to(x.dtype)
        return (out, [tapped[t].to(x.dtype) for t in taps]) if taps else out

    def report(self) -> dict[str, Any]:
        """What the last forward and backward did: ``mode`` ("standard" | "checkpoint" | "reversible";
        auto's spacing 1 is "checkpoint"), ``cache_every`` (k, None outside reversible), the measured
        ``reconstruction_error`` (None when nothing was reconstructed), ``depth``, ``alpha``, ``beta``."""
        return {"mode": self.last_mode or self.mode, "cache_every": self.last_cache_every,
                "reconstruction_error": self.last_reconstruction_error, "depth": len(self.blocks),
                "alpha": self.alpha, "beta": self.beta}

    # ---- called from the backward pass
    def _record_backward(self, error: float | None, cache_every: int) -> None:
        self.last_reconstruction_error = error
        if self._pending is not None:
            alpha, beta, dtype = self._pending
            self.guard.update(error, alpha, beta, cache_every, dtype)
        if error is not None and error > self.tolerance:
            log.debug("Dr2Net reconstruction error %.3g above tolerance %.3g", error, self.tolerance)


class _OnceStatsBlock:
    """A block call for torch.utils.checkpoint whose recomputation leaves BatchNorm running stats alone."""

    def __init__(self, block: nn.Module, alpha: float) -> None:
        self.block, self.alpha, self.calls = block, alpha, 0

    def __call__(self, x: torch.Tensor, *extras: Any) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            return self.block(x, self.alpha, *extras)
        with frozen_running_stats(self.block):
            return self.block(x, self.alpha, *extras)
