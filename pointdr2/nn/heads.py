"""Classification heads of the point-patch transformer, applied to ``cat(cls, max over tokens)``.

Index layouts mirror the official ``cls_head_finetune`` so finetuned checkpoints load by name.
Input float [B, 2*D] -> logits [B, num_classes].
"""

from __future__ import annotations

from torch import nn

__all__ = ["PointBertHead", "PointMAEHead", "build_cls_head", "HEADS"]


class PointBertHead(nn.Sequential):
    """Linear(2D, h) ReLU Dropout Linear(h, K) (Point-BERT)."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 256, dropout: float = 0.5) -> None:
        super().__init__(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))


class PointMAEHead(nn.Sequential):
    """Linear(2D, h) BN ReLU Dropout Linear(h, h) BN ReLU Dropout Linear(h, K) (Point-MAE)."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 256, dropout: float = 0.5) -> None:
        super().__init__(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))


HEADS = {"pointbert": PointBertHead, "pointmae": PointMAEHead}


def build_cls_head(kind: str, in_dim: int, num_classes: int, hidden: int = 256, dropout: float = 0.5) -> nn.Sequential:
    if kind not in HEADS:
        raise ValueError(f"model.head must be one of {sorted(HEADS)}, got {kind!r}")
    return HEADS[kind](in_dim, num_classes, hidden, dropout)
