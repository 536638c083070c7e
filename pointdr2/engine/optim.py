"""Optimizer parameter groups and the per-step learning-rate schedules (cosine or multistep, with warm-up)."""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Iterable

import torch
from torch import nn

from pointdr2.config import CHOICES

__all__ = ["param_groups", "build_optimizer", "CosineWarmup", "MultiStepWarmup", "build_lr_schedule"]

log = logging.getLogger(__name__)

# Parameter names treated as tokens / embeddings: never weight-decayed (Point-BERT/MAE recipe).
NO_DECAY_NAMES = ("cls_token", "cls_pos", "mask_token", "pos_embed", "token")


def _no_decay(name: str, param: torch.Tensor) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or leaf == "bias" or any(t in leaf for t in NO_DECAY_NAMES)


def param_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups: decay for >=2-D weights; none for 1-D params (norms), biases and tokens.

    Parameters that do not require grad are left out. Each group carries ``names`` for logging.
    """
    decay, no_decay = {"params": [], "names": [], "weight_decay": float(weight_decay)}, \
        {"params": [], "names": [], "weight_decay": 0.0}
    seen: set[int] = set()
    for name, p in named_params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        group = no_decay if _no_decay(name, p) else decay
        group["params"].append(p)
        group["names"].append(name)
    return [g for g in (decay, no_decay) if g["params"]]


def build_optimizer(model: nn.Module, cfg_train, extra: Iterable[tuple[str, torch.nn.Parameter]] = ()) -> torch.optim.Optimizer:
    """AdamW (or SGD) over ``model``'s named parameters (plus ``extra``) from ``cfg.train``."""
    groups = param_groups(list(model.named_parameters()) + list(extra), cfg_train.weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    n_decay = sum(p.numel() for g in groups if g["weight_decay"] > 0 for p in g["params"])
    n_all = sum(p.numel() for g in groups for p in g["params"])
    log.info("optimizer %s: %d trainable parameters, %d with weight decay %.3g", cfg_train.optimizer,
             n_all, n_decay, cfg_train.weight_decay)
    name = str(cfg_train.optimizer).lower()
    lr = float(cfg_train.lr)
    if name == "adamw":
        betas = tuple(float(b) for b in cfg_train.betas)
        if len(betas) != 2:
            raise ValueError(f"train.betas must hold two numbers, got {cfg_train.betas!r}")
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    raise ValueError(f"train.optimizer must be 'adamw' or 'sgd', got {cfg_train.optimizer!r}")


class _StepSchedule:
    """A per-step learning rate ``lr_at(step)``: ``step()`` after every optimizer step; its state is the step
    counter (and its parameters, to warn when a resumed run changed them). Param groups keep their ratio to
    the base lr (``lr_scale``, default 1)."""

    KEYS: tuple[str, ...] = ()

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.last_step = 0

    def lr_at(self, step: int) -> float:  # pragma: no cover - every schedule defines it
        raise NotImplementedError

    def _apply(self) -> None:
        lr = self.lr_at(self.last_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> float:
        return self.lr_at(self.last_step)

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, **{k: getattr(self, k) for k in self.KEYS}}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
        for key in self.KEYS:
            if key in state and state[key] != getattr(self, key):
                log.warning("lr schedule %s changed since the checkpoint: %s -> %s (continuing with the new value)",
                            key, state[key], getattr(self, key))
        self._apply()


class CosineWarmup(_StepSchedule):
    """Per-step learning rate: linear warm-up to ``base_lr`` then cosine decay to ``min_lr``.

    ``lr(s) = base_lr * (s + 1) / warmup_steps`` for ``s < warmup_steps``, then
    ``min_lr + (base_lr - min_lr) * (1 + cos(pi * (s - warmup_steps) / (total_steps - warmup_steps))) / 2``,
    and ``min_lr`` from ``total_steps`` on (a cosine shorter than training, as Point-MAE's part segmentation).
    """

    KEYS = ("base_lr", "min_lr", "total_steps", "warmup_steps")

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, total_steps: int,
                 warmup_steps: int = 0, min_lr: float = 0.0) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must lie in [0, total_steps={total_steps}], got {warmup_steps}")
        super().__init__(optimizer)
        self.base_lr = float(base_lr)
        self.min_lr = float(min_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self._apply()

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class MultiStepWarmup(_StepSchedule):
    """Per-step learning rate: linear warm-up to ``base_lr`` (as :class:`CosineWarmup`), then
    ``base_lr * rate ** (number of milestones <= s)`` (openpoints' multistep: milestones at epoch starts)."""

    KEYS = ("base_lr", "milestones", "rate", "warmup_steps")

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, milestones: Iterable[int], rate: float,
                 warmup_steps: int = 0) -> None:
        super().__init__(optimizer)
        self.base_lr = float(base_lr)
        self.milestones = sorted(int(m) for m in milestones)
        self.rate = float(rate)
        self.warmup_steps = int(warmup_steps)
        self._apply()

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        return self.base_lr * self.rate ** bisect.bisect_right(self.milestones, step)


def build_lr_schedule(optimizer: torch.optim.Optimizer, train, steps_per_epoch: int) -> _StepSchedule:
    """The schedule ``train`` (the config's section) asks for, over ``train.epochs`` x ``steps_per_epoch``."""
    total = int(steps_per_epoch) * int(train.epochs)
    warm = min(int(round(float(train.warmup_epochs) * steps_per_epoch)), total)
    kind = str(train.get("scheduler", "cosine"))
    if kind == "cosine":
        span = train.get("cosine_epochs")
        if span is None:
            return CosineWarmup(optimizer, float(train.lr), total, warm, float(train.min_lr))
        if isinstance(span, bool) or not isinstance(span, (int, float)) or not span > 0:
            raise ValueError(f"train.cosine_epochs must be null or a positive number of epochs, got {span!r}")
        if float(span) < float(train.warmup_epochs):
            raise ValueError(f"train.cosine_epochs ({span}) must not end before the warm-up "
                             f"(train.warmup_epochs={train.warmup_epochs})")
        steps = max(int(round(float(span) * steps_per_epoch)), 1)
        return CosineWarmup(optimizer, float(train.lr), steps, min(warm, steps), float(train.min_lr))
    if kind == "multistep":
        epochs = train.get("decay_epochs")
        if not isinstance(epochs, (list, tuple)) or not epochs or not all(
                isinstance(e, (int, float)) and not isinstance(e, bool) and e > 0 for e in epochs) \
                or list(epochs) != sorted(epochs):
            raise ValueError(f"train.decay_epochs must be an increasing list of positive epochs with "
                             f"train.scheduler=multistep (e.g. [210, 270]), got {epochs!r}")
        milestones = [int(round(float(e) * steps_per_epoch)) for e in epochs]
        return MultiStepWarmup(optimizer, float(train.lr), milestones, float(train.decay_rate), warm)
    raise ValueError(f"train.scheduler must be one of {', '.join(CHOICES['train.scheduler'])}, got {kind!r}")
