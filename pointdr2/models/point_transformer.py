"""The point-patch transformer classifier; Point-BERT and Point-MAE are two configurations of it.

points [B, N, 3(+C)] -> Group (FPS centres, kNN neighbourhoods relative to the centre) ->
mini-PointNet tokens [B, G, E] (-> ``reduce_dim`` Linear(E, D) for Point-BERT) -> prepend cls token,
position embedding MLP(centres) with cls pos -> ``depth`` pre-norm blocks, each fed ``x + pos`` ->
LayerNorm -> head on ``cat(x[:, 0], max over tokens)`` -> logits [B, num_classes].

Parameter names mirror the official checkpoints (``encoder.first_conv.0``, ``reduce_dim``,
``cls_token``, ``cls_pos``, ``pos_embed.{0,2}``, ``blocks.blocks.{i}.*``, ``norm``,
``cls_head_finetune.*``), so official weights map by a prefix strip (``convert_state_dict``).

``dr2net_surrogate`` turns the ``depth`` blocks into ``2*depth`` Dr2Net sub-blocks of one
:class:`~pointdr2.reversible.Dr2Stack` sharing this model's weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pointdr2.hints import did_you_mean
from pointdr2.models.registry import register_model
from pointdr2.nn.heads import build_cls_head
from pointdr2.nn.tokenizer import Group, PointPatchEncoder, check_points, recompute_tokens
from pointdr2.nn.transformer import Block, TransformerEncoder
from pointdr2.reversible import Dr2Stack, check_unit_form

__all__ = ["PatchTokenizerMixin", "PointTransformer", "PointTransformerDr2", "VARIANTS", "build_point_transformer",
           "stack_units"]

log = logging.getLogger(__name__)

# Per-variant defaults: tokenizer width, reduce_dim, head and initialisation follow the official code.
VARIANTS: dict[str, dict[str, Any]] = {
    "pointbert": {"encoder_dims": 256, "reduce_dim": True, "head": "pointbert", "init": "pointbert"},
    "pointmae": {"encoder_dims": 384, "reduce_dim": False, "head": "pointmae", "init": "pointmae"},
}

# Every key the ``model`` config section may hold, with its default (None = from the variant).
MODEL_KEYS: dict[str, Any] = {
    "name": "pointmae",
    "variant": None,  # pointbert | pointmae (default: from name; "point_transformer" -> pointmae)
    "num_classes": 40,
    "in_channels": 3,
    "trans_dim": 384,
    "depth": 12,
    "num_heads": 6,
    "mlp_ratio": 4.0,
    "encoder_dims": None,
    # Inner width of the mini-PointNet tokenizer (128 in the official layout: 128, 256, 512, 512).
    "encoder_hidden": 128,
    "reduce_dim": None,
    "num_group": 64,
    "group_size": 32,
    "drop_path_rate": 0.1,
    "drop_rate": 0.0,
    "attn_drop_rate": 0.0,
    "head": None,
    "head_hidden": 256,
    "head_dropout": 0.5,
    "init": None,
    # Groups per chunk when the tokenizer is recomputed in the backward pass (recompute_stem). The
    # transient of one chunk is the step's peak: 4 of 64 groups at batch 32 is ~90 MiB on CPU (8: ~180),
    # and on CPU the chunked passes are no slower than one whole-batch pass.
    "stem_chunk_groups": 4,
    # FPS of the group centres with pointnet2_ops' origin skip (never picks |p|^2 <= 1e-3 after the
    # first): what the official Point-BERT / Point-MAE code runs, so their checkpoints see the same
    # centres. The configs that reproduce them turn it on.
    "fps_skip_origin": False,
    # Read by the engine, not by the builder.
    "pretrained": None,
    "pretrained_sha256": None,
}


def _check_model_config(cfg: Mapping) -> dict[str, Any]:
    """Validate the ``model`` section; returns the full settings with defaults filled in."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"model config must be a mapping, got {type(cfg).__name__}")
    for key in cfg:
        if key not in MODEL_KEYS:
            hint = did_you_mean(key, MODEL_KEYS, prefix="model.")
            raise ValueError(f"unknown config key 'model.{key}' for the point transformer{hint}")
    s = {**MODEL_KEYS, **dict(cfg)}
    name = s["name"]
    variant = s["variant"] or (name if name in VARIANTS else "pointmae")
    if variant not in VARIANTS:
        raise ValueError(f"model.variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    s["variant"] = variant
    for key, value in VARIANTS[variant].items():
        if s[key] is None:
            s[key] = value
    for key in ("num_classes", "in_channels", "trans_dim", "depth", "num_heads", "encoder_dims", "num_group",
                "group_size", "head_hidden", "stem_chunk_groups", "encoder_hidden"):
        value = s[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"model.{key} must be a positive integer, got {value!r}")
    if s["in_channels"] < 3:
        raise ValueError(f"model.in_channels must be >= 3 (xyz first), got {s['in_channels']}")
    if s["trans_dim"] % s["num_heads"]:
        raise ValueError(f"model.trans_dim ({s['trans_dim']}) must be divisible by model.num_heads ({s['num_heads']})")
    for key in ("drop_path_rate", "drop_rate", "attn_drop_rate", "head_dropout"):
        if not isinstance(s[key], (int, float)) or not 0.0 <= float(s[key]) < 1.0:
            raise ValueError(f"model.{key} must be a number in [0, 1), got {s[key]!r}")
    if not isinstance(s["mlp_ratio"], (int, float)) or s["mlp_ratio"] <= 0:
        raise ValueError(f"model.mlp_ratio must be a positive number, got {s['mlp_ratio']!r}")
    for key in ("reduce_dim", "fps_skip_origin"):
        if not isinstance(s[key], bool):
            raise ValueError(f"model.{key} must be true or false, got {s[key]!r}")
    if not s["reduce_dim"] and s["encoder_dims"] != s["trans_dim"]:
        raise ValueError(f"model.encoder_dims ({s['encoder_dims']}) must equal model.trans_dim ({s['trans_dim']}) "
                         "when model.reduce_dim is false")
    if s["init"] not in VARIANTS:
        raise ValueError(f"model.init must be one of {sorted(VARIANTS)}, got {s['init']!r}")
    return s


class PatchTokenizerMixin:
    """``check_input`` and ``tokenize`` of every point-patch transformer (classifier and part segmenter).

    Needs ``group_divider`` (:class:`Group`), ``encoder`` (:class:`PointPatchEncoder`), ``reduce_dim``
    (Linear or None), ``in_channels`` and ``stem_chunk_groups``.
    """

    def check_input(self, points: torch.Tensor) -> None:
        check_points(points, self.in_channels, self.group_divider.num_group, self.group_divider.group_size)

    def tokenize(self, points: torch.Tensor, recompute: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """points [B, N, C] -> (tokens [B, G, D], centres [B, G, 3]).

        ``recompute=True`` keeps no per-point activation for backward (chunked recomputation, see
        :func:`pointdr2.nn.tokenizer.recompute_tokens`); same values and gradients.
        """
        self.check_input(points)
        center_idx, knn_idx = self.group_divider.indices(points)
        if recompute and torch.is_grad_enabled():
            tokens = recompute_tokens(self.encoder, points, center_idx, knn_idx, self.stem_chunk_groups)
            center = Group.centers(points, center_idx)
        else:
            neighbourhood, center = Group.gather(points, center_idx, knn_idx)
            tokens = self.encoder(neighbourhood)
        if self.reduce_dim is not None:
            tokens = self.reduce_dim(tokens)
        return tokens, center


class PointTransformer(PatchTokenizerMixin, nn.Module):
    """Point-BERT / Point-MAE finetuning classifier. ``forward(points [B, N, in_channels]) -> [B, K]``."""

    family = "point_transformer"
    head_prefix = "cls_head_finetune."  # the classification head's keys (load_pretrained replaces it
    # when a checkpoint's head is for another label set)

    def __init__(self, cfg: Mapping | None = None, **overrides: Any) -> None:
        super().__init__()
        s = _check_model_config({**dict(cfg or {}), **overrides})
        self.settings = s
        self.variant = s["variant"]
        self.in_channels = s["in_channels"]
        self.trans_dim = d = s["trans_dim"]
        self.num_classes = s["num_classes"]
        self.stem_chunk_groups = s["stem_chunk_groups"]
        self.group_divider = Group(s["num_group"], s["group_size"], skip_origin=s["fps_skip_origin"])
        self.encoder = PointPatchEncoder(s["in_channels"], s["encoder_dims"], s["encoder_hidden"])
        self.reduce_dim = nn.Linear(s["encoder_dims"], d) if s["reduce_dim"] else None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, d))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, d))
        self.blocks = TransformerEncoder(d, s["depth"], s["num_heads"], s["mlp_ratio"], qkv_bias=False,
                                         drop_rate=s["drop_rate"], attn_drop_rate=s["attn_drop_rate"],
                                         drop_path_rate=s["drop_path_rate"])
        self.norm = nn.LayerNorm(d)
        self.cls_head_finetune = build_cls_head(s["head"], 2 * d, s["num_classes"], s["head_hidden"],
                                                s["head_dropout"])
        self._init_weights(s["init"])

    # ---- initialisation
    def _init_weights(self, scheme: str) -> None:
        """``pointmae``: truncated normal (std .02) Linear/Conv weights, zero biases, LN (1, 0), cls token
        and pos trunc-normal .02 (the official from-scratch init). ``pointbert``: PyTorch defaults,
        cls token zeros, cls pos standard normal (as the official finetuning model)."""
        if scheme != "pointmae":
            return
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)

    # ---- pieces shared with the surrogate (check_input, tokenize: PatchTokenizerMixin)
    def embed(self, tokens: torch.Tensor, center: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (x [B, 1+G, D] with the cls token first, pos [B, 1+G, D] with cls pos first)."""
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(center)], dim=1)
        return x, pos

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Final-block tokens [B, 1+G, D] -> logits [B, K] (norm, cls/max pooling, head)."""
        x = self.norm(x)
        return self.cls_head_finetune(torch.cat([x[:, 0], x[:, 1:].max(dim=1)[0]], dim=-1))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        x, pos = self.embed(*self.tokenize(points))
        return self.classify(self.blocks(x, pos))

    # ---- protocol used by pointdr2.models.load_pretrained / to_dr2net
    def convert_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> tuple[dict, list[str]]:
        """Map an official Point-BERT / Point-MAE (pretrain or finetuned) state dict to our keys.

        ``module.`` prefixes are already stripped by the caller. Returns (state dict, keys of this
        model that are expected to be missing): the head for pretrain checkpoints and for encoder-only
        state dicts, plus cls token and cls pos for Point-MAE pretraining (its encoder has none).
        """
        keys = list(state_dict)
        head = [k for k in self.state_dict() if k.startswith("cls_head_finetune.")]
        if any(k.startswith("transformer_q.") for k in keys):
            # Point-BERT pretrain: the query transformer minus its contrastive / token heads; the
            # momentum encoder (transformer_k), the dVAE and the queues are pretraining-only.
            pretrain_only = ("cls_head", "lm_head", "mask_token")
            out = {k[len("transformer_q."):]: v for k, v in state_dict.items()
                   if k.startswith("transformer_q.") and not k[len("transformer_q."):].startswith(pretrain_only)}
            log.debug("Point-BERT pretrain checkpoint: kept %d of %d tensors", len(out), len(keys))
            return out, head
        if any(k.startswith("MAE_encoder.") for k in keys):
            # Point-MAE pretrain: mask_token, decoder_*, MAE_decoder.*, increase_dim.* are pretraining-only.
            out = {k[len("MAE_encoder."):]: v for k, v in state_dict.items() if k.startswith("MAE_encoder.")}
            log.debug("Point-MAE pretrain checkpoint: kept %d of %d tensors", len(out), len(keys))
            return out, head + ["cls_token", "cls_pos"]
        out = {(k[len("base_model."):] if k.startswith("base_model.") else k): v for k, v in state_dict.items()}
        # An encoder without any head (exported to finetune on another label set) expects a new head.
        has_head = any(k.startswith("cls_head_finetune.") for k in out)
        return out, [] if has_head else head

    def dr2net_surrogate(self, alpha: float = 1.0, beta: float = 0.1, mode: str = "reversible",
                         **kw: Any) -> PointTransformerDr2:
        return PointTransformerDr2(self, alpha, beta, mode, **kw)


# ----------------------------------------------------------------------------- Dr2Net surrogate
RESIDUAL_UNITS = ("block", "branch")


class TransformerBlockG(nn.Module):
    """G(x; a) = block(x + pos) - (1 - a)*x: one whole pretrained block as the residual unit.

    The block's residual function is F(x) = block(x + pos) - x (position embedding, attention and MLP
    branches together), so G(x; 1) is exactly the pretrained block and the identity that alpha scales
    is the block's own input x.
    """

    def __init__(self, block: Block) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, alpha: float, pos: torch.Tensor) -> torch.Tensor:
        u = x + pos
        h = u + self.block.attention_branch(u)
        out = h + self.block.mlp_branch(h)
        return out if alpha == 1.0 else out - (1.0 - alpha) * x


class AttentionSubBlock(nn.Module):
    """G(x; a) = a*u + DropPath(Attn(LN(u))), u = x + pos: block(x + pos)'s first half, identity scaled."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, alpha: float, pos: torch.Tensor) -> torch.Tensor:
        u = x + pos
        return alpha * u + self.block.attention_branch(u)


class MlpSubBlock(nn.Module):
    """G(y; a) = a*y + DropPath(MLP(LN(y))): the block's second half, identity scaled."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        self.block = block

    def forward(self, y: torch.Tensor, alpha: float, pos: torch.Tensor) -> torch.Tensor:
        return alpha * y + self.block.mlp_branch(y)


def stack_units(blocks: nn.ModuleList, residual: str) -> list[nn.Module]:
    """The Dr²Net units of a transformer's blocks: one per block (``residual="block"``, the identity scaled
    around the whole block) or an attention and an MLP sub-block per block (``"branch"``)."""
    if residual not in RESIDUAL_UNITS:
        raise ValueError(f"residual must be one of {RESIDUAL_UNITS}, got {residual!r}")
    units: list[nn.Module] = []
    for block in blocks:
        units += [TransformerBlockG(block)] if residual == "block" else [AttentionSubBlock(block), MlpSubBlock(block)]
    return units


class PointTransformerDr2(nn.Module):
    """Dr2Net surrogate of a :class:`PointTransformer`, sharing its parameters (no copies).

    ``residual="block"`` (default): the ``depth`` blocks are the ``depth`` units of one ``Dr2Stack``,
    each ``G_i(x; a) = block_i(x + pos) - (1 - a)*x`` (:class:`TransformerBlockG`). ``residual="branch"``:
    the reference implementation's two-stream form, ``2*depth`` sub-blocks (attention with the scaled
    identity ``a*(x + pos)``, then MLP). The stack's output is ``output`` ("last" by default), followed
    by the model's final norm and head. At alpha=1, beta=0 it computes exactly the source model. ``recompute_stem=True`` also recomputes the
    grouping gather and tokenizer in the backward pass, in chunks of ``stem_chunk_groups`` groups.
    Same call signature as the model: ``forward(points [B, N, C]) -> logits [B, K]``.
    """

    def __init__(self, model: PointTransformer, alpha: float = 1.0, beta: float = 0.1, mode: str = "reversible",
                 recompute_stem: bool = False, stem_chunk_groups: int | None = None, residual: str = "branch",
                 **stack_kw: Any) -> None:
        super().__init__()

        if not isinstance(model, PointTransformer):
            raise ValueError(f"PointTransformerDr2 wraps a PointTransformer, got {type(model).__name__}")
        check_unit_form(residual, stack_kw.get("gain", "plain"))
        subs = stack_units(model.blocks.blocks, residual)
        self.model = model
        self.residual = residual
        stack_kw.setdefault("output", "last")
        self.stack = Dr2Stack(subs, alpha=alpha, beta=beta, mode=mode, **stack_kw)
        self.recompute_stem = bool(recompute_stem)
        if stem_chunk_groups is not None:
            if isinstance(stem_chunk_groups, bool) or not isinstance(stem_chunk_groups, int) or stem_chunk_groups < 1:
                raise ValueError(f"stem_chunk_groups must be a positive integer, got {stem_chunk_groups!r}")
            model.stem_chunk_groups = stem_chunk_groups

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        m = self.model
        x, pos = m.embed(*m.tokenize(points, recompute=self.recompute_stem))
        return m.classify(self.stack(x, pos))


@register_model("pointbert", "pointmae", "point_transformer")
def build_point_transformer(cfg: Mapping) -> PointTransformer:
    """Builder for ``model.name`` pointbert | pointmae | point_transformer."""
    return PointTransformer(cfg)
