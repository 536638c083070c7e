"""Benchmark case: a ViT-S-sized Dr2Net stack (pre-norm attention + MLP sub-blocks), no point-cloud parts.

The blocks are the project's own (``pointdr2.nn.transformer.Block``) as the transformer's surrogate splits
them (``residual="branch"``); the row modes are :data:`pointdr2.engine.network.BENCH_MODES`.

Sizes follow the Point-BERT/Point-MAE encoder (dim 384, 6 heads, MLP ratio 4, qkv without bias,
drop-path linspace(0, 0.1)) and, like them, the position embedding is added to the input of every
block, so it enters the attention sub-block: ``G(x; alpha, pos) = alpha*u + DropPath(Attn(LN(u)))`` with
``u = x + pos``, and ``G(x; alpha) = alpha*x + DropPath(MLP(LN(x)))`` for the MLP sub-block.
A depth-d stack has 2d sub-blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pointdr2.engine.network import BENCH_MODES, stack_mode
from pointdr2.models.point_transformer import stack_units
from pointdr2.nn.transformer import Block
from pointdr2.reversible import Dr2Stack


def vit_stack(
    depth: int = 12, dim: int = 384, heads: int = 6, drop_path: float = 0.1, alpha: float = 1.0,
    beta: float = 0.1, mode: str = "reversible", output: str = "last",
) -> Dr2Stack:
    """A Dr2Stack of ``2*depth`` sub-blocks [attn_1, mlp_1, attn_2, ...] built from the project's own layers
    (:class:`pointdr2.nn.transformer.Block`, split by :func:`pointdr2.models.point_transformer.stack_units`,
    the units the transformer's surrogate trains); call it as ``stack(x, pos)``."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    blocks = nn.ModuleList(Block(dim, heads, 4.0, qkv_bias=False, drop_path=r)
                           for r in torch.linspace(0, drop_path, depth).tolist())
    stack = Dr2Stack(stack_units(blocks, "branch"), alpha=alpha, beta=beta, output=output, mode=mode)
    for m in stack.modules():  # ViT-style init: small weights so pretrained-like residual scales
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return stack


class _StackModel(nn.Module):
    """Stack plus final LayerNorm, called as ``model(tokens, pos)``."""

    def __init__(self, stack: Dr2Stack, dim: int) -> None:
        super().__init__()
        self.stack = stack
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.norm(self.stack(x, pos))


def build_case(
    model: str, mode: str, depth: int | None, batch: int, points: int, alpha: float, beta: float,
    device: torch.device | str,
):
    """The memory-harness case (signature documented in pointdr2/bench/memory.py).

    ``points`` is the number of tokens (65 = 64 groups + cls); ``depth`` the number of ViT blocks
    (default 12). Inputs are random tokens and position embeddings that require gradients, as the
    tokenizer's and position MLP's outputs do in a real model.
    """
    if model != "stack":
        raise ValueError(f"cases_stack builds model 'stack' only, got {model!r}")
    if mode not in BENCH_MODES:
        raise ValueError(f"mode must be one of {tuple(BENCH_MODES)}, got {mode!r}")
    depth = 12 if depth is None else depth
    dim = 384
    stack = vit_stack(depth, dim, 6, 0.1, alpha, beta, stack_mode(BENCH_MODES[mode]))
    net = _StackModel(stack, dim).to(device).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, points, dim, generator=gen).to(device).requires_grad_(True)
    pos = torch.randn(batch, points, dim, generator=gen).to(device).requires_grad_(True)
    target = torch.randn(batch, points, dim, generator=gen).to(device)

    def loss_fn(out: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, target)

    return net, (x, pos), loss_fn
