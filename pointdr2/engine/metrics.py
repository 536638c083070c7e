"""Classification and segmentation metrics from a confusion matrix.

Everything is derived from one integer confusion matrix ``cm[true, pred]`` (int64, K x K), so the
metrics of several processes combine exactly by summing their matrices (see
``pointdr2.engine.distributed.all_reduce_sum``) and the numbers never depend on batch order.

Definitions (the ones the Point-BERT / PointNeXt papers report):

- OA   = trace(cm) / cm.sum()                               (overall accuracy)
- mAcc = mean over classes present in the ground truth of cm[k, k] / cm[k, :].sum()
- IoU_k = cm[k, k] / (cm[k, :].sum() + cm[:, k].sum() - cm[k, k]);  mIoU = mean over classes
  that appear in the ground truth or the predictions (a class absent from both has no IoU).

Part segmentation (ShapeNetPart, as PointNet++, Point-BERT, Point-MAE and PointNeXt compute it) is per
shape instead, in :class:`PartSegmentationMetrics`:

- each shape's prediction is the argmax over its own category's parts only;
- shape IoU = mean over the category's parts l of |pred=l & true=l| / |pred=l | true=l|, where a part absent
  from both prediction and truth counts as IoU 1;
- instance mIoU = mean of the shape IoUs over all shapes; class mIoU = mean over the categories present of
  the mean shape IoU of that category.

Its state is a [C, 2] float64 tensor (sum of shape IoUs and shape count per category) plus point counts,
which sum across processes as the confusion matrix does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["ConfusionMatrix", "PartSegmentationMetrics", "accuracy_metrics", "segmentation_metrics"]


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


class PartSegmentationMetrics:
    """Instance and class mIoU of part segmentation (definitions in the module docstring).

    ``category_parts[c]``: the global part ids of category c (default ShapeNetPart's 16 categories, 50 parts).
    ``update(pred, target, category)``: ``pred`` logits ``[B, K, N]`` (``class_dim=1``; restricted to each
    shape's category before the argmax) or int part ids ``[B, N]`` used as given; ``target`` int ``[B, N]``
    global part ids; ``category`` int ``[B]``. ``state`` ([C, 2] float64: IoU sum, shapes) and
    ``points`` ([2] int64: correct, total) add up across processes; :meth:`compute` gives percentages.
    """

    def __init__(self, category_parts: Sequence[Sequence[int]] | None = None) -> None:
        if category_parts is None:
            from pointdr2.data.classes import SHAPENETPART_PARTS

            category_parts = SHAPENETPART_PARTS
        self.category_parts = [tuple(int(p) for p in parts) for parts in category_parts]
        if not self.category_parts or any(not parts for parts in self.category_parts):
            raise ValueError("category_parts must list at least one part id for every category")
        self.num_parts = max(max(parts) for parts in self.category_parts) + 1
        self.state = torch.zeros(len(self.category_parts), 2, dtype=torch.float64)
        self.points = torch.zeros(2, dtype=torch.int64)

    def reset(self) -> None:
        self.state.zero_()
        self.points.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor, category: torch.Tensor,
               class_dim: int | None = None) -> None:
        target = torch.as_tensor(target).to("cpu", torch.int64)
        category = torch.as_tensor(category).to("cpu", torch.int64).reshape(-1)
        if target.ndim == 1:
            target = target.unsqueeze(0)
        pred = torch.as_tensor(pred).detach().to("cpu")
        if class_dim is not None:
            pred = pred.movedim(class_dim, 1) if pred.ndim == target.ndim + 1 else pred.movedim(class_dim, 0)[None]
        elif pred.ndim == 1:
            pred = pred.unsqueeze(0)
        if len(category) != len(target):
            raise ValueError(f"{len(target)} shapes but {len(category)} category labels")
        for b in range(len(target)):
            c = int(category[b])
            if not 0 <= c < len(self.category_parts):
                raise ValueError(f"category {c} outside 0..{len(self.category_parts) - 1}")
            parts = torch.tensor(self.category_parts[c], dtype=torch.int64)
            if class_dim is not None:
                if pred.shape[1] < self.num_parts or pred.shape[2:] != target.shape[1:]:
                    raise ValueError(f"logits must be [B, >= {self.num_parts}, N] for targets "
                                     f"{tuple(target.shape)}, got {tuple(pred.shape)}")
                p = parts[pred[b].index_select(0, parts).argmax(dim=0)]  # argmax over the category's parts only
            else:
                p = pred[b].to(torch.int64)
                if p.shape != target[b].shape:
                    raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
            t = target[b]
            outside = ~torch.isin(t, parts)
            if outside.any():
                raise ValueError(f"target part {int(t[outside][0])} is not a part of category {c} "
                                 f"({parts[0].item()}..{parts[-1].item()})")
            ious = []
            for part in parts.tolist():
                in_pred, in_true = p == part, t == part
                union = int((in_pred | in_true).sum())
                ious.append(1.0 if union == 0 else int((in_pred & in_true).sum()) / union)
            self.state[c, 0] += sum(ious) / len(ious)
            self.state[c, 1] += 1
            self.points += torch.tensor([int((p == t).sum()), t.numel()])

    def add_state(self, state: torch.Tensor, points: torch.Tensor) -> None:
        self.state += state.to("cpu", torch.float64)
        self.points += points.to("cpu", torch.int64)

    def compute(self) -> dict:
        """``{"instance_miou", "class_miou", "iou_per_category" (nan where a category had no shape), "oa"
        (point accuracy), "shapes"}`` in percent."""
        sums, counts = self.state[:, 0], self.state[:, 1]
        total = float(counts.sum())
        per_cat = [100.0 * s / n if n > 0 else math.nan for s, n in zip(sums.tolist(), counts.tolist())]
        present = [v for v in per_cat if not math.isnan(v)]
        correct, points = self.points.tolist()
        return {"instance_miou": 100.0 * float(sums.sum()) / total if total else math.nan,
                "class_miou": sum(present) / len(present) if present else math.nan,
                "iou_per_category": per_cat, "oa": 100.0 * correct / points if points else math.nan,
                "shapes": int(total)}
