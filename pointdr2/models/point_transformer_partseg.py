"""Point-MAE / Point-BERT part segmentation: the point-patch transformer with a per-point head.

points [B, N, 3], category [B] -> Group (``num_group`` FPS centres x ``group_size`` kNN; 128 x 32) ->
mini-PointNet tokens (-> ``reduce_dim`` for Point-BERT) -> ``depth`` pre-norm blocks fed ``x + pos`` (no cls
token) -> the outputs of blocks ``feature_blocks`` (4, 8, 12), each through the shared final ``norm``,
concatenated to ``f [B, 3D, G]`` -> per point: ``cat(propagation_0(xyz, centres, xyz, f), max_G f, mean_G f,
label_conv(one-hot category))`` -> ``convs1 bns1 ReLU dp1 convs2 bns2 ReLU convs3`` -> logits [B, K, N].

Module names and shapes are those of Point-MAE's ``segmentation/models/pt.py`` (``label_conv.{0,1}``,
``propagation_0.mlp_convs/mlp_bns.{0,1}``, ``convs1..3``, ``bns1..2``, encoder names as the classifier's),
so an official finetuned checkpoint (``{"model_state_dict": ...}``) loads with no key left over. The
official model returns ``log_softmax`` over the parts, transposed to [B, N, K]; this one returns the logits
before it (same argmax; the trainer's cross-entropy applies the log-softmax).

Point-BERT's repository ships no part-segmentation code; ``pointbert-partseg`` is the same head on
Point-BERT's encoder (tokenizer width 256 + ``reduce_dim``), loading Point-BERT pretrain checkpoints
(``transformer_q.*``) for finetuning.

The Dr2Net surrogate (:class:`PartSegDr2`) runs the blocks as one ``Dr2Stack`` whose taps return the
states the head reads (each block's output at alpha=1, beta=0), so gradients enter the reversible backward
at those blocks; with ``recompute_head`` the per-point head keeps only its inputs and is recomputed in the
backward pass (its activations at 2,048 points outweigh the transformer's).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from pointdr2.hints import did_you_mean
from pointdr2.models.point_transformer import (
    MODEL_KEYS,
    PatchTokenizerMixin,
    _check_model_config,
    stack_units,
)
from pointdr2.models.registry import register_model
from pointdr2.nn.part_seg import PointNetFeaturePropagation, category_one_hot
from pointdr2.nn.tokenizer import Group, PointPatchEncoder
from pointdr2.nn.transformer import TransformerEncoder
from pointdr2.reversible import Dr2Stack, check_unit_form, frozen_running_stats

__all__ = ["PointTransformerPartSeg", "PartSegDr2", "build_point_transformer_partseg", "PARTSEG_NAMES"]

log = logging.getLogger(__name__)

# model.name -> encoder variant
PARTSEG_NAMES = {"pointmae-partseg": "pointmae", "pointbert-partseg": "pointbert"}

# Keys of the part-segmentation head (the encoder keys are the classifier's, minus its head's).
PARTSEG_KEYS: dict[str, Any] = {
    "num_categories": 16,  # object categories, one-hot into label_conv
    "label_dim": 64,
    # 1-based blocks whose outputs the head reads (None: depth/3, 2*depth/3, depth -> 4, 8, 12)
    "feature_blocks": None,
    "propagation_mlp": None,  # None: [4*trans_dim, 1024]
    "seg_hidden": [512, 256],
    "seg_dropout": 0.5,
}
_ENCODER_KEYS = {k: v for k, v in MODEL_KEYS.items() if k not in ("head", "head_hidden", "head_dropout")}
_DEFAULTS = {"num_classes": 50, "num_group": 128, "group_size": 32, "init": "pointbert"}
HEAD_MODULES = ("label_conv", "propagation_0", "convs1", "convs2", "convs3", "bns1", "bns2")


def _positive_ints(value: Any, key: str, length: int | None = None) -> list[int]:
    if not isinstance(value, (list, tuple)) or not value or (length is not None and len(value) != length) or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        size = f"{length} " if length is not None else ""
        raise ValueError(f"model.{key} must be a list of {size}positive integers, got {value!r}")
    return [int(v) for v in value]


def check_partseg_config(cfg: Mapping) -> dict[str, Any]:
    """Validate the ``model`` section of a part-segmentation model; returns every setting filled in."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"model config must be a mapping, got {type(cfg).__name__}")
    known = {**_ENCODER_KEYS, **PARTSEG_KEYS}
    for key in cfg:
        if key not in known:
            hint = did_you_mean(key, known, prefix="model.")
            raise ValueError(f"unknown config key 'model.{key}' for the part-segmentation transformer{hint}")
    name = cfg.get("name", "pointmae-partseg")
    if name not in PARTSEG_NAMES:
        raise ValueError(f"model.name must be one of {sorted(PARTSEG_NAMES)}, got {name!r}")
    encoder_cfg = {**_DEFAULTS, "variant": PARTSEG_NAMES[name],
                   **{k: v for k, v in cfg.items() if k in _ENCODER_KEYS and v is not None}}
    encoder_cfg["name"] = encoder_cfg["variant"]
    s = _check_model_config(encoder_cfg)
    s["name"] = name
    s.update({k: cfg.get(k, v) for k, v in PARTSEG_KEYS.items()})
    for key in ("num_categories", "label_dim"):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
            raise ValueError(f"model.{key} must be a positive integer, got {s[key]!r}")
    depth = s["depth"]
    if s["feature_blocks"] is None:
        s["feature_blocks"] = sorted({max(1, round(depth * j / 3)) for j in (1, 2, 3)})
    blocks = _positive_ints(s["feature_blocks"], "feature_blocks")
    if any(b > depth for b in blocks) or sorted(set(blocks)) != blocks:
        raise ValueError(f"model.feature_blocks must be increasing block numbers in 1..{depth} (model.depth), "
                         f"got {s['feature_blocks']!r}")
    s["feature_blocks"] = blocks
    s["propagation_mlp"] = _positive_ints(s["propagation_mlp"] or [4 * s["trans_dim"], 1024], "propagation_mlp")
    s["seg_hidden"] = _positive_ints(s["seg_hidden"], "seg_hidden", 2)
    if not isinstance(s["seg_dropout"], (int, float)) or not 0.0 <= float(s["seg_dropout"]) < 1.0:
        raise ValueError(f"model.seg_dropout must be a number in [0, 1), got {s['seg_dropout']!r}")
    if s["num_group"] < 3:
        raise ValueError(f"model.num_group must be >= 3 (feature propagation uses the 3 nearest centres), "
                         f"got {s['num_group']}")
    return s


class PointTransformerPartSeg(PatchTokenizerMixin, nn.Module):
    """``forward(points [B, N, in_channels], category int64 [B] (or one-hot [B, num_categories])) -> [B, K, N]``."""

    family = "point_transformer_partseg"
    task = "partseg"

    def __init__(self, cfg: Mapping | None = None, **overrides: Any) -> None:
        super().__init__()
        s = check_partseg_config({**dict(cfg or {}), **overrides})
        self.settings = s
        self.variant = s["variant"]
        self.in_channels = s["in_channels"]
        self.trans_dim = d = s["trans_dim"]
        self.num_classes = s["num_classes"]
        self.num_categories = s["num_categories"]
        self.feature_blocks = tuple(s["feature_blocks"])
        self.stem_chunk_groups = s["stem_chunk_groups"]
        self.group_divider = Group(s["num_group"], s["group_size"], skip_origin=s["fps_skip_origin"])
        self.encoder = PointPatchEncoder(s["in_channels"], s["encoder_dims"], s["encoder_hidden"])
        self.reduce_dim = nn.Linear(s["encoder_dims"], d) if s["reduce_dim"] else None
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, d))
        self.blocks = TransformerEncoder(d, s["depth"], s["num_heads"], s["mlp_ratio"], qkv_bias=False,
                                         drop_rate=s["drop_rate"], attn_drop_rate=s["attn_drop_rate"],
                                         drop_path_rate=s["drop_path_rate"])
        self.norm = nn.LayerNorm(d)
        feat = len(self.feature_blocks) * d
        self.label_conv = nn.Sequential(nn.Conv1d(s["num_categories"], s["label_dim"], 1, bias=False),
                                        nn.BatchNorm1d(s["label_dim"]), nn.LeakyReLU(0.2))
        self.propagation_0 = PointNetFeaturePropagation(feat + s["in_channels"], s["propagation_mlp"])
        h1, h2 = s["seg_hidden"]
        self.convs1 = nn.Conv1d(s["propagation_mlp"][-1] + 2 * feat + s["label_dim"], h1, 1)
        self.dp1 = nn.Dropout(float(s["seg_dropout"]))
        self.convs2 = nn.Conv1d(h1, h2, 1)
        self.convs3 = nn.Conv1d(h2, s["num_classes"], 1)
        self.bns1 = nn.BatchNorm1d(h1)
        self.bns2 = nn.BatchNorm1d(h2)
        self.relu = nn.ReLU()
        if s["init"] == "pointmae":  # trunc-normal .02 Linear/Conv weights, zero biases (the classifier's scheme)
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Conv1d)):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        # "pointbert": PyTorch's defaults, as the official part-segmentation model (it calls no init)

    # ---- pieces shared with the surrogate
    def embed(self, tokens: torch.Tensor, center: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (x [B, G, D], pos [B, G, D]): no cls token in the segmentation model."""
        return tokens, self.pos_embed(center)

    def one_hot(self, category: torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
        """int64 [B] category labels (or a one-hot / soft [B, C] tensor as given) -> float [B, C, 1]."""
        return category_one_hot(category, batch, self.num_categories, like)

    def segment(self, points: torch.Tensor, center: torch.Tensor, category: torch.Tensor,
                *features: torch.Tensor) -> torch.Tensor:
        """The head: the states of ``feature_blocks`` ([B, G, D] each) -> logits [B, K, N]."""
        b, n = points.shape[:2]
        f = torch.cat([self.norm(x).transpose(1, 2) for x in features], dim=1)  # [B, F*D, G]
        glob = torch.cat([f.amax(dim=2), f.mean(dim=2)], dim=1).unsqueeze(-1).expand(-1, -1, n)
        label = self.label_conv(self.one_hot(category, b, f)).expand(-1, -1, n)
        xyz = points[..., :3]
        up = self.propagation_0(xyz, center, points.transpose(1, 2), f)
        x = torch.cat([up, glob, label], dim=1)
        x = self.dp1(self.relu(self.bns1(self.convs1(x))))
        x = self.relu(self.bns2(self.convs2(x)))
        return self.convs3(x)

    def forward(self, points: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        tokens, center = self.tokenize(points)
        x, pos = self.embed(tokens, center)
        features = []
        for i, block in enumerate(self.blocks.blocks, start=1):
            x = block(x + pos)
            if i in self.feature_blocks:
                features.append(x)
        return self.segment(points, center, category, *features)

    # ---- protocol used by pointdr2.models.load_pretrained / to_dr2net
    def convert_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> tuple[dict, list[str]]:
        """Official Point-MAE part-seg (finetuned), Point-MAE / Point-BERT pretrain and finetuned
        classification state dicts -> our keys, plus the keys expected to be missing (the whole part-seg
        head when the checkpoint has none). ``module.`` prefixes are stripped by the caller.

        Dropped, as the official loader leaves them unused: cls token / cls pos (the segmentation model has
        none), a classification head (``cls_head_finetune.*``) and everything pretraining-only.
        """
        keys = list(state_dict)
        if any(k.startswith("transformer_q.") for k in keys):
            prefix = "transformer_q."  # Point-BERT pretrain: the query encoder
        elif any(k.startswith("MAE_encoder.") for k in keys):
            prefix = "MAE_encoder."  # Point-MAE pretrain: decoder, mask token and increase_dim are dropped
        else:
            prefix = ""
        out = {}
        for k, v in state_dict.items():
            if prefix:
                if not k.startswith(prefix):
                    continue
                k = k[len(prefix):]
            elif k.startswith("base_model."):
                k = k[len("base_model."):]
            if k in ("cls_token", "cls_pos") or k.startswith(("cls_head", "lm_head", "mask_token")):
                continue
            out[k] = v
        head = [k for k in self.state_dict() if k.split(".")[0] in HEAD_MODULES]
        has_head = any(k.split(".")[0] in HEAD_MODULES for k in out)
        log.debug("part-seg checkpoint (%s): kept %d of %d tensors", prefix or "finetuned", len(out), len(keys))
        return out, [] if has_head else head

    def dr2net_surrogate(self, alpha: float = 1.0, beta: float = 0.1, mode: str = "reversible",
                         **kw: Any) -> PartSegDr2:
        return PartSegDr2(self, alpha, beta, mode, **kw)


class _HeadOnce:
    """The head for torch.utils.checkpoint: its recomputation leaves BatchNorm running statistics alone
    (they were updated by the forward) and redraws the forward's dropout mask (preserve_rng_state)."""

    def __init__(self, model: PointTransformerPartSeg) -> None:
        self.model, self.calls = model, 0

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:

        self.calls += 1
        with frozen_running_stats(self.model) if self.calls > 1 else contextlib.nullcontext():
            return self.model.segment(*args)


class PartSegDr2(nn.Module):
    """Dr2Net surrogate of a :class:`PointTransformerPartSeg`, sharing its parameters.

    The blocks form one ``Dr2Stack`` (``residual`` as for the classifier: ``block`` = one unit per block,
    ``branch`` = attention and MLP sub-blocks); the head reads the stack's taps at the ends of
    ``feature_blocks`` (the last one is the stack's output), each read like the output (``output``), so at
    alpha=1, beta=0 it computes exactly the source model. ``recompute_stem``: the tokenizer keeps no per-point
    activation (chunks of ``stem_chunk_groups`` groups). ``recompute_head`` (default: ``recompute_stem``):
    the per-point head is checkpointed, keeping only its inputs. Same call as the model.
    """

    def __init__(self, model: PointTransformerPartSeg, alpha: float = 1.0, beta: float = 0.1,
                 mode: str = "reversible", recompute_stem: bool = False, stem_chunk_groups: int | None = None,
                 residual: str = "branch", recompute_head: bool | None = None, **stack_kw: Any) -> None:
        super().__init__()

        if not isinstance(model, PointTransformerPartSeg):
            raise ValueError(f"PartSegDr2 wraps a PointTransformerPartSeg, got {type(model).__name__}")
        check_unit_form(residual, stack_kw.get("gain", "plain"))
        subs = stack_units(model.blocks.blocks, residual)
        self.model = model
        self.residual = residual
        per_block = 1 if residual == "block" else 2
        self.taps = tuple(per_block * b for b in model.feature_blocks)
        stack_kw.setdefault("output", "last")
        self.stack = Dr2Stack(subs, alpha=alpha, beta=beta, mode=mode, **stack_kw)
        self.recompute_stem = bool(recompute_stem)
        self.recompute_head = self.recompute_stem if recompute_head is None else bool(recompute_head)
        if stem_chunk_groups is not None:
            if isinstance(stem_chunk_groups, bool) or not isinstance(stem_chunk_groups, int) or stem_chunk_groups < 1:
                raise ValueError(f"stem_chunk_groups must be a positive integer, got {stem_chunk_groups!r}")
            model.stem_chunk_groups = stem_chunk_groups

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def forward(self, points: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        m = self.model
        tokens, center = m.tokenize(points, recompute=self.recompute_stem)
        x, pos = m.embed(tokens, center)
        n = len(self.stack.blocks)
        inner = [t for t in self.taps if t != n]
        if inner:
            out, tapped = self.stack(x, pos, taps=inner)
        else:
            out, tapped = self.stack(x, pos), []
        features = [*tapped, out] if self.taps[-1] == n else tapped
        if self.recompute_head and torch.is_grad_enabled():
            return torch_checkpoint(_HeadOnce(m), points, center, category, *features, use_reentrant=False,
                                    preserve_rng_state=True)
        return m.segment(points, center, category, *features)


@register_model(*PARTSEG_NAMES)
def build_point_transformer_partseg(cfg: Mapping) -> PointTransformerPartSeg:
    """Builder for ``model.name`` pointmae-partseg | pointbert-partseg."""
    return PointTransformerPartSeg(cfg)
