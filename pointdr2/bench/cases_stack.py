"""Benchmark case: a ViT-S-sized Dr2Net stack (pre-norm attention + MLP sub-blocks), no point-cloud parts.

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

from pointdr2.reversible import Dr2Stack

# what finetune.mode=... runs, see pointdr2/bench/memory.py
STACK_MODES = {"conventional": "standard", "checkpoint": "checkpoint", "dr2net": "reversible", "dr2net-auto": "auto"}


class DropPath(nn.Module):
    """Drops the whole residual branch per sample with probability p (scaled by 1/(1-p) when kept)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class AttentionSubBlock(nn.Module):
    """``alpha*(x+pos) + DropPath(Attn(LN(x+pos)))`` on tokens ``x[B, T, C]``, ``pos[B, T, C]``."""

    def __init__(self, dim: int = 384, heads: int = 6, drop_path: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, alpha: float, pos: torch.Tensor) -> torch.Tensor:
        u = x + pos
        b, t, c = u.shape
        q, k, v = self.qkv(self.norm(u)).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        # explicit softmax attention, as the Point-BERT/Point-MAE encoders compute it
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        y = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, c)
        return alpha * u + self.drop_path(self.proj(y))


class MlpSubBlock(nn.Module):
    """``alpha*x + DropPath(fc2(GELU(fc1(LN(x)))))``; ignores the position embedding."""

    def __init__(self, dim: int = 384, ratio: int = 4, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ratio * dim)
        self.fc2 = nn.Linear(ratio * dim, dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, alpha: float, pos: torch.Tensor | None = None) -> torch.Tensor:
        return alpha * x + self.drop_path(self.fc2(F.gelu(self.fc1(self.norm(x)))))


def vit_stack(
    depth: int = 12, dim: int = 384, heads: int = 6, drop_path: float = 0.1, alpha: float = 1.0,
    beta: float = 0.1, mode: str = "reversible", output: str = "last",
) -> Dr2Stack:
    """A Dr2Stack of ``2*depth`` sub-blocks [attn_1, mlp_1, attn_2, ...]; call it as ``stack(x, pos)``."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    rates = torch.linspace(0, drop_path, depth).tolist()
    blocks = []
    for r in rates:
        blocks += [AttentionSubBlock(dim, heads, r), MlpSubBlock(dim, 4, r)]
    stack = Dr2Stack(blocks, alpha=alpha, beta=beta, output=output, mode=mode)
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
    if mode not in STACK_MODES:
        raise ValueError(f"mode must be one of {tuple(STACK_MODES)}, got {mode!r}")
    depth = 12 if depth is None else depth
    dim = 384
    stack = vit_stack(depth, dim, 6, 0.1, alpha, beta, STACK_MODES[mode])
    net = _StackModel(stack, dim).to(device).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, points, dim, generator=gen).to(device).requires_grad_(True)
    pos = torch.randn(batch, points, dim, generator=gen).to(device).requires_grad_(True)
    target = torch.randn(batch, points, dim, generator=gen).to(device)

    def loss_fn(out: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, target)

    return net, (x, pos), loss_fn
