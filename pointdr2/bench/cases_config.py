"""Benchmark case built from a pointdr2 config: what ``pointdr2 train CONFIG`` trains, on synthetic samples.

``build_case(..., config=PATH, overrides=[...], finetune={...})``: the model of the config (``build_model``),
the network of ``finetune`` (the config's ``finetune`` section updated with this dict, mapped by the trainer's
``build_network``) at the row's ``alpha``/``beta``, ``batch`` samples of ``points`` points from
:func:`pointdr2.engine.plan.synthetic_sample` (the samples ``pointdr2 plan`` measures with) and the trainer's
loss (cross-entropy with the config's label smoothing). ``mode`` and ``depth`` are not used: the network is
what ``finetune`` says and the depth what the config says. ``bench plan`` measures its rows with it.
"""

from __future__ import annotations

import torch

from pointdr2.config import find_config, load_config
from pointdr2.engine.losses import build_loss
from pointdr2.engine.network import build_network
from pointdr2.engine.plan import DATASET_CLASSES, synthetic_sample, task_of_config
from pointdr2.models import build_model


def build_case(model: str, mode: str, depth: int | None, batch: int, points: int, alpha: float, beta: float,
               device: torch.device, *, config: str, overrides: list | tuple = (), finetune: dict | None = None):
    """-> (network in train mode on ``device``, model inputs, loss_fn(logits) -> scalar)."""
    cfg = load_config(find_config(config), list(overrides))
    if "num_classes" not in cfg.model:
        cfg.model["num_classes"] = DATASET_CLASSES.get(str(cfg.dataset.get("name", "")).lower(), 10)
    task = task_of_config(cfg)
    net = build_network(build_model(cfg.model), {**cfg.finetune, **dict(finetune or {})}, alpha, beta, train=True)
    net = net.to(device).train()
    data = torch.utils.data.default_collate([synthetic_sample(cfg, task, points, i) for i in range(batch)])
    target = data["label"].to(device)
    loss = build_loss(cfg.train)
    if task == "classification":
        inputs = (data["points"],)
    elif task == "partseg":
        inputs = (data["points"], data["category"])
    else:
        inputs = (data["pos"], data["feats"])

    def loss_fn(logits: torch.Tensor) -> torch.Tensor:
        return loss(logits, target)

    return net, tuple(t.to(device) for t in inputs), loss_fn
