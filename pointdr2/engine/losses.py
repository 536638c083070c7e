"""Training losses, chosen by ``train.loss``: one function for the trainer, the memory planner and the benchmarks.

- ``cross_entropy``: softmax cross-entropy with ``train.label_smoothing``.
- ``poly1_focal``: openpoints' ``Poly1FocalLoss`` (PointNeXt's ShapeNetPart and S3DIS recipes). Each class is
  a binary problem on its own sigmoid: with ``p = sigmoid(logit)``, one-hot target ``y`` and
  ``p_t = y p + (1 - y)(1 - p)``, the loss of one (point, class) is
  ``alpha_t * BCE(logit, y) * (1 - p_t)^gamma + epsilon * (1 - p_t)^(gamma + 1)`` with
  ``alpha_t = alpha y + (1 - alpha)(1 - y)``, averaged over every point and class.

Logits are ``[B, K]`` (classification) or ``[B, K, N]`` (per point); targets ``[B]`` / ``[B, N]`` class ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from pointdr2.config import CHOICES

__all__ = ["LOSSES", "build_loss", "poly1_focal_loss"]

LOSSES = CHOICES["train.loss"]  # the config schema owns the names


def poly1_focal_loss(logits: torch.Tensor, target: torch.Tensor, *, epsilon: float = 1.0, alpha: float = 0.25,
                     gamma: float = 2.0) -> torch.Tensor:
    """The mean Poly-1 focal loss of ``logits [B, K, ...]`` against class ids ``target [B, ...]`` (see the module)."""
    y = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(logits.dtype)
    p = torch.sigmoid(logits)
    p_t = y * p + (1 - y) * (1 - p)
    focal = F.binary_cross_entropy_with_logits(logits, y, reduction="none") * (1 - p_t) ** gamma
    if alpha >= 0:
        focal = (alpha * y + (1 - alpha) * (1 - y)) * focal
    return (focal + epsilon * (1 - p_t) ** (gamma + 1)).mean()


def build_loss(train: Mapping[str, Any]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss(logits, target)`` as ``train`` (the config's section) asks; computed in float32."""
    name = str(train.get("loss", "cross_entropy"))
    if name == "cross_entropy":
        smoothing = float(train.get("label_smoothing", 0.0))

        def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits.float(), target, label_smoothing=smoothing)
        return loss
    if name == "poly1_focal":
        if float(train.get("label_smoothing", 0.0)) != 0.0:
            raise ValueError("train.label_smoothing applies to train.loss=cross_entropy only; set it to 0 with "
                             "train.loss=poly1_focal")
        kw = {"epsilon": float(train.get("focal_epsilon", 1.0)), "alpha": float(train.get("focal_alpha", 0.25)),
              "gamma": float(train.get("focal_gamma", 2.0))}

        def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return poly1_focal_loss(logits.float(), target, **kw)
        return loss
    raise ValueError(f"train.loss must be one of {', '.join(LOSSES)}, got {name!r}")
