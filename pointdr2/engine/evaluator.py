"""Evaluation: classification OA/mAcc (with test-time voting), segmentation mIoU/mAcc/OA and part
segmentation instance/class mIoU (with test-time voting).

Every metric comes from one integer confusion matrix summed over processes, so a W-process
evaluation equals a one-process evaluation exactly (:class:`~pointdr2.engine.distributed.ShardSampler`
gives every sample to exactly one process).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pointdr2.engine import distributed as dist_utils
from pointdr2.engine.metrics import ConfusionMatrix, PartSegmentationMetrics
from pointdr2.engine.rooms import predict_room
from pointdr2.progress import bar as progress_bar

__all__ = ["task_of", "forward_batch", "vote_params", "vote_logits", "partseg_vote_scales", "partseg_vote_probs",
           "evaluate", "amp_context", "is_room_dataset",
           "default_room_predictor", "save_items", "load_items"]

log = logging.getLogger(__name__)


def task_of(sample: Mapping) -> str:
    """"classification" for ``{"points", "label"}`` samples, "segmentation" for ``{"pos", "feats", "label"}``,
    "partseg" for ``{"points", "label" [N], "category"}`` (ShapeNetPart)."""
    if not isinstance(sample, Mapping):
        raise ValueError(f"dataset samples must be dicts, got {type(sample).__name__}")
    if "points" in sample and "category" in sample:
        return "partseg"
    if "points" in sample:
        return "classification"
    if "pos" in sample and "feats" in sample:
        return "segmentation"
    raise ValueError(f"cannot tell the task from sample keys {sorted(sample)}; expected 'points' "
                     "(classification) or 'pos' + 'feats' (segmentation)")


def amp_context(device: torch.device, amp: str):
    """``torch.autocast`` for amp "bf16"/"fp16", a no-op context for "none"."""
    amp = str(amp).lower()
    if amp in ("none", "false", "no", "fp32"):
        return torch.autocast(device.type, enabled=False)
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("train.amp=fp16 needs a CUDA device; use bf16 (or none) on CPU")
        return torch.autocast("cuda", dtype=torch.float16)
    raise ValueError(f"train.amp must be none, bf16 or fp16, got {amp!r}")


def forward_batch(net: nn.Module, batch: Mapping, task: str, device: torch.device) -> torch.Tensor:
    """Logits ``[B, K]`` (classification) or ``[B, K, N]`` (segmentation, part segmentation) for a collated batch."""
    if task == "classification":
        return net(batch["points"].to(device, non_blocking=True))
    if task == "partseg":
        return net(batch["points"].to(device, non_blocking=True), batch["category"].to(device, non_blocking=True))
    return net(batch["pos"].to(device, non_blocking=True), batch["feats"].to(device, non_blocking=True))


def vote_params(indices, votes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample voting augmentations: ``scale, shift [votes, B, 1, 3]`` float64.

    The Point-BERT/MAE voting augmentation (per-axis scale U(2/3, 3/2), shift U(-0.2, 0.2)), drawn
    from a generator seeded by ``(seed, dataset index)`` so a sample gets the same votes whatever
    the batch size or number of processes.
    """
    scale = torch.empty(votes, len(indices), 1, 3, dtype=torch.float64)
    shift = torch.empty_like(scale)
    for j, idx in enumerate(indices):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(idx))
        scale[:, j].uniform_(2.0 / 3.0, 3.0 / 2.0, generator=g)
        shift[:, j].uniform_(-0.2, 0.2, generator=g)
    return scale, shift


@torch.no_grad()
def vote_logits(net: nn.Module, points: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Mean of the logits ``[B, K]`` over the augmented copies ``points * scale[v] + shift[v]`` (xyz only).

    ``points [B, N, 3+C]``; extra channels (normals, colours) are left as they are.
    """
    total = None
    for v in range(scale.shape[0]):
        aug = points.clone()
        aug[..., :3] = points[..., :3] * scale[v].to(points) + shift[v].to(points)
        logits = net(aug).float()
        total = logits if total is None else total + logits
    return total / scale.shape[0]


# Part-segmentation voting (RS-CNN / PAConv protocol): vote 0 on the shape as given, every other vote on a copy
# scaled per axis by U(0.87, 1.15); the per-point softmax probabilities are averaged.
PARTSEG_VOTE_SCALE = (0.87, 1.15)


def partseg_vote_scales(indices, votes: int, seed: int = 0) -> torch.Tensor:
    """Per-sample voting scales ``[votes, B, 1, 3]`` float64 (vote 0 is 1), seeded by ``(seed, index)``."""
    scale = torch.ones(votes, len(indices), 1, 3, dtype=torch.float64)
    lo, hi = PARTSEG_VOTE_SCALE
    for j, idx in enumerate(indices):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(idx))
        scale[1:, j].uniform_(lo, hi, generator=g)
    return scale


@torch.no_grad()
def partseg_vote_probs(net: nn.Module, points: torch.Tensor, category: torch.Tensor, scale: torch.Tensor
                       ) -> torch.Tensor:
    """Mean softmax over parts ``[B, K, N]`` of ``net(points * scale[v], category)`` (xyz scaled only)."""
    total = None
    for v in range(scale.shape[0]):
        aug = points.clone()
        aug[..., :3] = points[..., :3] * scale[v].to(points)
        probs = net(aug, category).float().softmax(dim=1)
        total = probs if total is None else total + probs
    return total / scale.shape[0]


def is_room_dataset(dataset: Dataset) -> bool:
    """Whole-room segmentation test sets yield rooms with passes rather than fixed-size crops."""
    return bool(getattr(dataset, "whole_room", False) or getattr(dataset, "is_whole_room", False))


def _accepts_keyword(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


ROOM_FORWARD_POINTS = 16384  # points per whole-room forward when crops are batched


def default_room_predictor(max_points: int | None = None, batch: int | None = None) -> Callable:
    """Whole-room inference through :func:`pointdr2.engine.rooms.predict_room`.

    Passes larger than ``max_points`` run in crops of ``max_points`` points, ``batch`` crops per forward
    (default: about 16,384 points per forward). Each crop goes through the room's ``chunk_features``
    when it has one (S3DIS: the height feature measured from the crop's lowest point, as in a training
    crop).
    """
    if batch is None:
        batch = max(1, ROOM_FORWARD_POINTS // max_points) if max_points else 1

    def predict(net: nn.Module, room, device: torch.device, on_points: Callable | None = None) -> torch.Tensor:
        return predict_room(net, room.passes(), room.num_points, max_points=max_points, device=device,
                            on_points=on_points, batch=batch, chunk_transform=getattr(room, "chunk_features", None))

    return predict


def _dataset_classes_only(metrics: dict, num_classes: int) -> dict:
    """Per-class lists cut to the dataset's classes, their means taken over those (a model output
    without ground truth is no class of the dataset; its predictions already count as errors)."""
    out = dict(metrics)
    for key, mean in (("acc_per_class", "macc"), ("iou_per_class", "miou")):
        if key in out:
            values = list(out[key])[:num_classes]
            present = [v for v in values if not math.isnan(v)]
            out[key] = values
            out[mean] = sum(present) / len(present) if present else math.nan
    return out


@torch.no_grad()
def evaluate(net: nn.Module, dataset: Dataset, *, device: torch.device, batch_size: int = 32, vote: int = 1,
             num_workers: int = 0, amp: str = "none", seed: int = 0, progress: bool = True, desc: str = "eval",
             room_predictor: Callable | None = None, collate_fn: Callable | None = None, items: bool = False) -> dict:
    """Evaluate ``net`` (in eval mode) on ``dataset``; returns the metrics dict plus ``"confusion"``.

    ``items=True`` adds ``"items"``, the outcome of every test item for paired statistics across runs:
    ``{"index": int64 [n], "label": int64 [n], "pred": int64 [n]}`` (classification, in dataset order) or
    ``{"index": int64 [n], "confusion": int64 [n, K, K]}`` (segmentation: one confusion matrix per room
    or sample).

    Classification: ``{"oa", "macc", "acc_per_class", "count"}``; segmentation:
    ``{"miou", "macc", "oa", "iou_per_class", ...}``. Whole-room datasets (``is_room_dataset``) are
    evaluated on every original point with ``room_predictor(net, room, device) -> logits [n, K]``
    (``room.labels [n]`` the ground truth; see :func:`default_room_predictor`).
    In a process group every rank evaluates its shard and the confusion matrices are summed.
    A model with more outputs than the dataset has classes (an official checkpoint evaluated with its
    own head, e.g. Point-BERT's 40-way ScanObjectNN head) is scored over all its outputs, as the
    official code does: a prediction beyond the dataset's classes counts as wrong; per-class
    metrics cover the dataset's classes.
    """
    num_classes = int(dataset.num_classes)
    outputs = max(num_classes, int(getattr(net, "num_classes", 0) or 0))
    cm = ConfusionMatrix(outputs)
    records: dict[str, list] = {"index": [], "label": [], "pred": [], "confusion": []}
    was_training = net.training
    net.eval()
    rank, world = dist_utils.rank(), dist_utils.world_size()
    show = progress and rank == 0
    try:
        if is_room_dataset(dataset):
            room_predictor = room_predictor or default_room_predictor()
            task = "segmentation"
            indices = list(dist_utils.ShardSampler(len(dataset), rank, world))
            # a whole room takes minutes: count its points (every pass), not rooms
            counts = _accepts_keyword(room_predictor, "on_points")
            bar = progress_bar(total=None, desc=desc, unit="pt", unit_scale=True, enabled=show, leave=False)
            for j, i in enumerate(indices):
                room = dataset[i]
                bar.set_description(f"{desc} room {j + 1}/{len(indices)}")
                if counts and hasattr(room, "pass_points"):
                    bar.total = bar.n + int(room.pass_points)
                    bar.refresh()
                with amp_context(device, amp):
                    logits = room_predictor(net, room, device, on_points=bar.update) if counts \
                        else room_predictor(net, room, device)
                if not counts:
                    bar.update(int(getattr(room, "num_points", 0) or 1))
                labels = room.labels if hasattr(room, "labels") else room["label"]
                pred = logits.float().argmax(dim=-1).cpu()
                cm.update(pred, torch.as_tensor(labels))
                if items:
                    one = ConfusionMatrix(outputs)
                    one.update(pred, torch.as_tensor(labels))
                    records["index"].append(i)
                    records["confusion"].append(one.matrix)
            bar.close()
        elif task_of(dataset[0]) == "partseg":
            task = "partseg"
            part_metrics = _evaluate_partseg(net, dataset, device, batch_size, vote, num_workers, amp, seed, show,
                                             desc, collate_fn, records if items else None)
        else:
            task = task_of(dataset[0])
            if vote > 1 and task != "classification":
                raise ValueError("--vote applies to classification and part segmentation only")
            if vote < 1:
                raise ValueError(f"--vote must be >= 1, got {vote}")
            mine = list(dist_utils.ShardSampler(len(dataset), rank, world))
            chunks = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
            loader = DataLoader(dataset, batch_sampler=chunks, num_workers=num_workers, collate_fn=collate_fn,
                                pin_memory=device.type == "cuda")
            for indices, batch in progress_bar(zip(chunks, loader), total=len(chunks), desc=desc, enabled=show,
                                               leave=False):
                with amp_context(device, amp):
                    if vote > 1:
                        scale, shift = vote_params(indices, vote, seed)
                        logits = vote_logits(net, batch["points"].to(device), scale, shift)
                    else:
                        logits = forward_batch(net, batch, task, device)
                cm.update(logits.float().cpu(), batch["label"], class_dim=1)
                if items:
                    pred = logits.float().argmax(dim=1).cpu()
                    records["index"].extend(indices)
                    if task == "classification":
                        records["label"].append(batch["label"].reshape(-1).cpu())
                        records["pred"].append(pred.reshape(-1))
                    else:
                        for k in range(pred.shape[0]):
                            one = ConfusionMatrix(outputs)
                            one.update(pred[k], batch["label"][k])
                            records["confusion"].append(one.matrix)
    finally:
        net.train(was_training)
    if task == "partseg":
        metrics = _partseg_summary(part_metrics, dataset)
        if items:
            metrics["items"] = _gather_items(records, task)
        return metrics
    cm.matrix = dist_utils.all_reduce_sum(cm.matrix)
    metrics = cm.accuracy() if task == "classification" else cm.segmentation()
    if outputs > num_classes:
        metrics = _dataset_classes_only(metrics, num_classes)
    metrics["confusion"] = cm.matrix.tolist()
    metrics["task"] = task
    if items:
        metrics["items"] = _gather_items(records, task)
    return metrics


def _evaluate_partseg(net: nn.Module, dataset: Dataset, device: torch.device, batch_size: int, vote: int,
                      num_workers: int, amp: str, seed: int, show: bool, desc: str, collate_fn: Callable | None,
                      records: dict[str, list] | None) -> PartSegmentationMetrics:
    """This rank's shard through ``net`` (voting over ``vote`` scaled copies), summed over processes."""
    if vote < 1:
        raise ValueError(f"--vote must be >= 1, got {vote}")
    metrics = PartSegmentationMetrics(getattr(dataset, "category_parts", None))
    rank, world = dist_utils.rank(), dist_utils.world_size()
    mine = list(dist_utils.ShardSampler(len(dataset), rank, world))
    chunks = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    loader = DataLoader(dataset, batch_sampler=chunks, num_workers=num_workers, collate_fn=collate_fn,
                        pin_memory=device.type == "cuda")
    for indices, batch in progress_bar(zip(chunks, loader), total=len(chunks), desc=desc, enabled=show, leave=False):
        with amp_context(device, amp):
            if vote > 1:
                scores = partseg_vote_probs(net, batch["points"].to(device), batch["category"].to(device),
                                            partseg_vote_scales(indices, vote, seed))
            else:
                scores = forward_batch(net, batch, "partseg", device)
        metrics.update(scores.float().cpu(), batch["label"], batch["category"], class_dim=1)
        if records is not None:
            # per shape: its own IoU, for paired statistics across runs
            for j, idx in enumerate(indices):
                one = PartSegmentationMetrics(metrics.category_parts)
                one.update(scores[j:j + 1].float().cpu(), batch["label"][j:j + 1], batch["category"][j:j + 1],
                           class_dim=1)
                records["index"].append(idx)
                records["label"].append(int(batch["category"][j]))
                records["pred"].append(float(one.state[:, 0].sum()))
    metrics.state = dist_utils.all_reduce_sum(metrics.state)
    metrics.points = dist_utils.all_reduce_sum(metrics.points)
    return metrics


def _partseg_summary(metrics: PartSegmentationMetrics, dataset: Dataset) -> dict:
    """``{"ins_miou", "cls_miou", "iou_per_category" {name: IoU}, "oa", "count", "task"}`` in percent."""
    out = metrics.compute()
    names = list(getattr(dataset, "category_names", [])) or [str(i) for i in range(len(out["iou_per_category"]))]
    return {"ins_miou": out["instance_miou"], "cls_miou": out["class_miou"],
            "iou_per_category": dict(zip(names, out["iou_per_category"])), "oa": out["oa"], "count": out["shapes"],
            "task": "partseg"}


def _gather_items(records: dict[str, list], task: str) -> dict[str, torch.Tensor]:
    """This rank's per-item records joined with every other rank's, sorted by dataset index."""
    mine = {"index": torch.as_tensor(records["index"], dtype=torch.int64)}
    if task == "partseg":  # per shape: its category and its IoU (mean over the category's parts, 0..1)
        mine["category"] = torch.as_tensor(records["label"], dtype=torch.int64)
        mine["iou"] = torch.as_tensor(records["pred"], dtype=torch.float64)
    elif task == "classification" and not records["confusion"]:
        mine["label"] = torch.cat(records["label"]).to(torch.int64) if records["label"] else torch.zeros(0, dtype=torch.int64)
        mine["pred"] = torch.cat(records["pred"]).to(torch.int64) if records["pred"] else torch.zeros(0, dtype=torch.int64)
    else:
        mine["confusion"] = torch.stack(records["confusion"]) if records["confusion"] else torch.zeros(0, 0, 0)
    parts = dist_utils.all_gather_object(mine)
    joined = {k: torch.cat([p[k] for p in parts if p[k].numel()]) if any(p[k].numel() for p in parts) else mine[k]
              for k in mine}
    order = torch.argsort(joined["index"])
    return {k: v[order] for k, v in joined.items()}


def save_items(path, items: Mapping[str, torch.Tensor]) -> None:
    """Write per-item test records (see :func:`evaluate`) to ``path`` (.npz), atomically."""
    import os
    import tempfile
    from pathlib import Path

    import numpy as np

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: torch.as_tensor(v).numpy() for k, v in items.items()})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_items(path) -> dict:
    """The per-item test records written by :func:`save_items` as NumPy arrays."""
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
