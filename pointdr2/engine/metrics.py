"""Classification and segmentation metrics from a confusion matrix.

Everything is derived from one integer confusion matrix ``cm[true, pred]`` (int64, K x K), so the
metrics of several processes combine exactly by summing their matrices (see
``pointdr2.engine.distributed.all_reduce_sum``) and the numbers never depend on batch order.

Definitions (the ones the Point-BERT / PointNeXt papers report):

- OA   = trace(cm) / cm.sum()                               (overall accuracy)
- mAcc = mean over classes present in the ground truth of cm[k, k] / cm[k, :].sum()
- IoU_k = cm[k, k] / (cm[k, :].sum() + cm[:, k].sum() - cm[k, k]);  mIoU = mean over classes
  that appear in the ground truth or the predictions (a class absent from both has no IoU).
"""

from __future__ import annotations

import math

import torch

__all__ = ["ConfusionMatrix", "accuracy_metrics", "segmentation_metrics"]


class ConfusionMatrix:
    """Accumulates ``cm[true, pred]`` counts for ``num_classes`` classes.

    ``update(pred, target)`` takes integer tensors of equal shape (any shape; flattened) or
    ``pred`` as logits with the class dimension at ``class_dim``. Labels outside
    ``[0, num_classes)`` in ``target`` are ignored when equal to ``ignore_index``, else a ValueError.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor, class_dim: int | None = None) -> None:
        """Add predictions. ``pred``: int labels shaped like ``target`` or logits with a class dim."""
        if class_dim is not None:
            pred = pred.argmax(dim=class_dim)
        pred = pred.reshape(-1).to("cpu", torch.int64)
        target = target.reshape(-1).to("cpu", torch.int64)
        if pred.shape != target.shape:
            raise ValueError(f"pred has {pred.numel()} labels but target has {target.numel()}")
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            pred, target = pred[keep], target[keep]
        k = self.num_classes
        for name, t in (("target", target), ("pred", pred)):
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
                raise ValueError(f"{name} labels must lie in [0, {k}), got range [{int(t.min())}, {int(t.max())}]")
        self.matrix += torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)

    def add_matrix(self, matrix: torch.Tensor) -> None:
        self.matrix += matrix.to("cpu", torch.int64)

    def accuracy(self) -> dict:
        return accuracy_metrics(self.matrix)

    def segmentation(self) -> dict:
        return segmentation_metrics(self.matrix)


def _as_matrix(cm: torch.Tensor) -> torch.Tensor:
    cm = torch.as_tensor(cm).to(torch.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square [K, K], got shape {tuple(cm.shape)}")
    return cm


def accuracy_metrics(cm: torch.Tensor) -> dict:
    """``{"oa", "macc", "acc_per_class", "count"}`` (percent, like the papers) from ``cm[true, pred]``.

    Classes with no ground-truth sample get ``nan`` in ``acc_per_class`` and are left out of mAcc.
    """
    cm = _as_matrix(cm)
    total = cm.sum().item()
    support = cm.sum(dim=1)
    diag = cm.diagonal()
    oa = 100.0 * diag.sum().item() / total if total else math.nan
    per_class = [100.0 * d / s if s > 0 else math.nan for d, s in zip(diag.tolist(), support.tolist())]
    present = [v for v in per_class if not math.isnan(v)]
    macc = sum(present) / len(present) if present else math.nan
    return {"oa": oa, "macc": macc, "acc_per_class": per_class, "count": int(total)}


def segmentation_metrics(cm: torch.Tensor) -> dict:
    """``{"miou", "macc", "oa", "iou_per_class", "count"}`` (percent) from ``cm[true, pred]``.

    A class that appears neither in the ground truth nor in the predictions gets ``nan`` IoU and
    is left out of mIoU (it would otherwise count as 0 or 1 arbitrarily).
    """
    cm = _as_matrix(cm)
    out = accuracy_metrics(cm)
    diag = cm.diagonal()
    union = cm.sum(dim=1) + cm.sum(dim=0) - diag
    iou = [100.0 * d / u if u > 0 else math.nan for d, u in zip(diag.tolist(), union.tolist())]
    present = [v for v in iou if not math.isnan(v)]
    out["iou_per_class"] = iou
    out["miou"] = sum(present) / len(present) if present else math.nan
    return {"miou": out["miou"], "macc": out["macc"], "oa": out["oa"], "iou_per_class": iou,
            "acc_per_class": out["acc_per_class"], "count": out["count"]}
