"""Statistics of the evidence study: paired bootstrap intervals and the decision rule.

The quantity compared is a paired difference, mode A - mode B (e.g. dr2net - conventional), of a test
metric averaged over seeds. Runs of the two modes with the same seed share the data order, the head's
initialisation and the augmentation; every run is tested on the same test set. The uncertainty has two
sources, both resampled (a two-level bootstrap, paired at both levels):

- seeds: which finetuning runs happened (resampled with replacement, the same seeds for A and B);
- test items: which objects (or rooms) the test set holds (resampled with replacement, the same items
  for A and B and for every seed of the replicate).

A metric is computed from per-item sufficient statistics summed over the items of a replicate:
correctness (0/1 per object) for overall accuracy, a confusion matrix per room for mIoU. The interval
is the percentile interval of the replicated differences.

Decision rule (stated before any run, printed with every result), for a margin m (1 point):
``equivalent`` when the whole 95 % interval lies inside (-m, +m); ``not equivalent`` when it lies
entirely outside [-m, +m]; ``undecided`` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "accuracy_from_sums", "bootstrap_paired", "decide", "DECISION_RULE", "miou_from_sums",
           "mean_std"]

DECISION_RULE = ("equivalent within {m:g} point(s) when the whole 95% interval of the paired difference lies "
                 "inside ±{m:g}; not equivalent when it lies entirely outside ±{m:g}; undecided otherwise")


@dataclass(frozen=True)
class Interval:
    """A paired difference (percentage points): the point estimate and its percentile interval."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level}


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value; nan for none)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def accuracy_from_sums(sums: np.ndarray, count: int) -> np.ndarray:
    """Overall accuracy in percent from the number of correct items ``sums`` out of ``count``."""
    return 100.0 * np.asarray(sums, dtype=np.float64) / float(count)


def miou_from_sums(confusion: np.ndarray) -> np.ndarray:
    """Mean IoU in percent of confusion matrices ``[..., K, K]`` (rows: truth, columns: prediction).

    Classes absent from both truth and prediction are left out of the mean (as for the full test set).
    """
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    union = cm.sum(axis=-1) + cm.sum(axis=-2) - tp
    present = union > 0
    iou = np.where(present, tp / np.where(present, union, 1.0), 0.0)
    return 100.0 * iou.sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)


def _metric(items: np.ndarray, kind: str) -> np.ndarray:
    """Per-seed metric of per-item statistics ``items [S, J, ...]`` summed over J."""
    sums = items.sum(axis=1)
    if kind == "accuracy":
        return accuracy_from_sums(sums, items.shape[1])
    if kind == "miou":
        return miou_from_sums(sums)
    raise ValueError(f"metric must be 'accuracy' or 'miou', got {kind!r}")


def bootstrap_paired(a: np.ndarray, b: np.ndarray, metric: str = "accuracy", *, replicates: int = 2000,
                     level: float = 0.95, seed: int = 0,
                     on_replicate: Callable[[int], None] | None = None) -> Interval:
    """Paired two-level bootstrap of ``mean_s metric(a_s) - mean_s metric(b_s)``.

    ``a``, ``b``: per-item statistics ``[S, J]`` (0/1 correctness, ``metric="accuracy"``) or
    ``[S, J, K, K]`` (confusion matrices per item, ``metric="miou"``); seed s of ``a`` is paired with
    seed s of ``b``, item j with item j. Each replicate draws S seeds and J items with replacement,
    shared by both modes and by every drawn seed. Returns the estimate on the data as given and the
    ``level`` percentile interval.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"paired statistics must have the same shape [S, J, ...], got {a.shape} and {b.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    s, j = a.shape[:2]
    estimate = float(_metric(a, metric).mean() - _metric(b, metric).mean())
    rng = np.random.default_rng(seed)
    diffs = np.empty(replicates, dtype=np.float64)
    for r in range(replicates):
        seeds = rng.integers(0, s, size=s)
        items = rng.integers(0, j, size=j)
        ra, rb = a[seeds][:, items], b[seeds][:, items]
        diffs[r] = _metric(ra, metric).mean() - _metric(rb, metric).mean()
        if on_replicate is not None:
            on_replicate(r)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(diffs, [tail, 100.0 - tail])
    return Interval(estimate, float(low), float(high), level)


def decide(interval: Interval, margin: float = 1.0) -> str:
    """``equivalent`` / ``not equivalent`` / ``undecided`` for a paired difference (see the module)."""
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    if -margin < interval.low and interval.high < margin:
        return "equivalent"
    if interval.low > margin or interval.high < -margin:
        return "not equivalent"
    return "undecided"
