"""``pointdr2 bench precision``: how exact reversible gradients are over the (alpha, beta) plane.

For a ViT-S-sized stack (12 blocks = 24 sub-blocks, dim 384, 6 heads, 65 tokens) and each grid point:
the relative gradient error of mode ``reversible`` against ``standard`` (all parameters, tokens and
position embedding together), the measured reconstruction error of the input, the predicted
``reconstruction_growth**N * eps``, and what mode ``auto`` does there (spacing k, its gradient error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from pointdr2.bench.cases_stack import vit_stack
from pointdr2.progress import bar as progress_bar
from pointdr2.reversible import PrecisionGuard, reconstruction_growth

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class Options:
    """What ``pointdr2 bench precision`` measures (its command-line options)."""

    alphas: str = "1,0.5,0.2,0"  # comma list of alpha values
    betas: str = "0.1,0.5,0.7,1"  # comma list of beta values
    depth: int = 12  # ViT blocks (2 sub-blocks each)
    dim: int = 384
    heads: int = 6
    tokens: int = 65
    batch: int = 4
    dtype: str = "float32"  # one of DTYPES
    tolerance: float = 1e-4  # auto mode's tolerance
    device: str = "cpu"
    seed: int = 0
    quick: bool = False  # CI smoke run: depth 2, dim 64, the grid's corners


def _floats(value: str, name: str) -> list[float]:
    try:
        vals = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be a comma-separated list of numbers, got {value!r}") from None
    if not vals:
        raise ValueError(f"--{name} is empty")
    return vals


def _grads(stack, x, pos, weight) -> torch.Tensor:
    """All gradients (parameters, tokens, position embedding) of ``sum(stack(x, pos) * weight)``, flat."""
    stack.zero_grad(set_to_none=True)
    x.grad = pos.grad = None
    (stack(x, pos) * weight).sum().backward()
    parts = [x.grad, pos.grad] + [p.grad for p in stack.parameters()]
    return torch.cat([t.reshape(-1).double() for t in parts if t is not None])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def measure(args: Options) -> list[dict[str, Any]]:
    alphas, betas = _floats(args.alphas, "alphas"), _floats(args.betas, "betas")
    depth, dim, heads, tokens, batch = args.depth, args.dim, args.heads, args.tokens, args.batch
    if args.quick:
        # the corners of the grid only
        alphas, betas = list(dict.fromkeys((alphas[0], alphas[-1]))), list(dict.fromkeys((betas[0], betas[-1])))
        depth, dim, heads, tokens, batch = 2, 64, 4, 17, 2
    if min(betas) <= 0:
        raise ValueError(f"--betas must be > 0 (reversible mode needs beta != 0), got {betas}")
    dtype = DTYPES[args.dtype]
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    # eval mode: drop-path off, so every mode computes the same function
    stack = vit_stack(depth, dim, heads, 0.0).to(device=device, dtype=dtype).eval()
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(batch, tokens, dim, generator=gen, dtype=dtype).to(device).requires_grad_(True)
    pos = torch.randn(batch, tokens, dim, generator=gen, dtype=dtype).to(device).requires_grad_(True)
    weight = torch.randn(batch, tokens, dim, generator=gen, dtype=dtype).to(device)
    n = len(stack.blocks)
    eps = torch.finfo(dtype).eps
    rows = []
    grid = [(a, b) for a in alphas for b in betas]
    for alpha, beta in progress_bar(grid, desc="bench precision", unit="point"):
        stack.alpha, stack.beta = alpha, beta
        stack.mode = "standard"
        ref = _grads(stack, x, pos, weight)
        stack.mode = "reversible"
        rev = _grads(stack, x, pos, weight)
        rec = stack.last_reconstruction_error
        stack.mode, stack.guard = "auto", PrecisionGuard(args.tolerance)
        _grads(stack, x, pos, weight)  # first step: the guard measures and corrects its prediction
        auto = _grads(stack, x, pos, weight)
        growth = reconstruction_growth(alpha, beta)
        log_pred = n * math.log(growth) + math.log(eps)
        rows.append({
            "alpha": alpha, "beta": beta, "growth": growth,
            "predicted": math.exp(log_pred) if log_pred < 700 else math.inf,
            "rec_error": rec, "grad_error": _rel(rev, ref),
            "auto_k": stack.last_cache_every, "auto_grad_error": _rel(auto, ref),
            "auto_rec_error": stack.last_reconstruction_error,
        })
    return rows


def _e(v: float | None) -> str:
    return "-" if v is None else f"{v:.1e}"


def format_table(rows: list[dict[str, Any]], args: Options) -> str:
    """:func:`measure`'s rows as a table, with what was measured above it."""
    depth = 2 if args.quick else args.depth
    head = (f"{'alpha':>5} {'beta':>5} {'growth':>7} {'growth^N*eps':>12} {'rec.err':>8} {'grad.err':>8} "
            f"{'auto k':>6} {'auto grad.err':>13}")
    lines = [f"bench precision: {2 * depth} sub-blocks, dtype {args.dtype}; errors relative (L2), "
             f"gradients of all parameters + tokens + position embedding; auto tolerance {args.tolerance:g}",
             head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['alpha']:>5.2f} {r['beta']:>5.2f} {r['growth']:>7.2f} {_e(r['predicted']):>12} "
                     f"{_e(r['rec_error']):>8} {_e(r['grad_error']):>8} {r['auto_k']!s:>6} "
                     f"{_e(r['auto_grad_error']):>13}")
    return "\n".join(lines)
