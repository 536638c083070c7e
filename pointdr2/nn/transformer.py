"""Pre-norm transformer layers of the Point-BERT / Point-MAE encoder.

Each piece exists once here; the module names (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
``mlp.fc1``, ``mlp.fc2``) mirror the official checkpoints so their weights load by name.

Numerics follow the official code: LayerNorm eps 1e-5, exact (erf) GELU, attention scale
``head_dim ** -0.5``, qkv without bias, per-sample drop-path scaled by ``1 / keep_prob``.
Tokens are ``[B, T, D]`` float tensors throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DropPath", "Mlp", "Attention", "Block", "TransformerEncoder"]


class DropPath(nn.Module):
    """Stochastic depth: zero a whole sample's residual branch with probability ``p``.

    Kept samples are scaled by ``1 / (1 - p)``. The mask is drawn from the global torch RNG of
    the tensor's device, so a Dr2Net recomputation that restores the RNG state redraws it exactly.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"drop_path probability must be in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


class Mlp(nn.Module):
    """``fc2(drop(GELU(fc1(x))))`` followed by dropout; [..., D] -> [..., out]."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 drop: float = 0.0) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention, [B, T, D] -> [B, T, D].

    Uses ``scaled_dot_product_attention`` (the same function as the official explicit
    softmax(q k^T * scale) v, with fused kernels that store less for backward on GPU).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"trans_dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = float(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, H, T, hd]
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, t, d)
        return self.proj_drop(self.proj(out))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + DP(Attn(LN(x)))`` then ``+ DP(MLP(LN(x)))``.

    ``attention_branch`` and ``mlp_branch`` are the two residual functions on their own; the
    Dr2Net surrogate builds its sub-blocks from them (same modules, same weights).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def attention_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.attn(self.norm1(x)))

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention_branch(x)
        return x + self.mlp_branch(x)


class TransformerEncoder(nn.Module):
    """``depth`` blocks with the position embedding added to the input of every block.

    forward(x [B, T, D], pos [B, T, D]) -> [B, T, D]; drop-path rates rise linearly from 0 to
    ``drop_path_rate`` over the blocks.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        rates = torch.linspace(0, drop_path_rate, depth).tolist() if depth > 0 else []
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rate) for rate in rates)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x + pos)
        return x
