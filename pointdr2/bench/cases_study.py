"""Benchmark case for ``pointdr2 bench study``: one training step of the study's own configurations.

``pointdr2 bench study`` measures memory and step time of exactly the networks it finetunes. It writes
a case spec (JSON), points the environment variable ``POINTDR2_STUDY_CASE`` at it and runs each row
with :func:`run_row`: a fresh ``python -m pointdr2.commands.worker`` process that registers this module
as case ``"study"`` of the memory harness and runs the harness' own measurement
(``pointdr2.bench.memory.measure_row``: warm-up, timed steps, bytes saved for backward, peak RSS). The
worker inherits the variable. The spec holds::

    {"model": cfg.model, "dataset": cfg.dataset, "finetune": cfg.finetune, "pretrained": path or null,
     "seed": int}

``build_case`` builds ``build_model(spec["model"])`` (pretrained weights loaded when given, so auto
mode's guard sees the finetuning weights), wraps it as the harness' ``model_for_mode`` does, and
takes the first ``batch`` training samples of the study's synthetic dataset (seed-fixed, augmented as
in training) as inputs, with their labels as the cross-entropy target.

- ``depth``: ``None`` keeps the config; otherwise transformer blocks (``model.depth``) or, for
  PointNeXt, InvResMLP blocks per downsampling stage (``blocks = [1, d+1, d+1, d+1, d+1]``, as in
  ``cases_pointnext``).
- ``points``: points per sample (``dataset.num_points`` / ``dataset.crop_points``); ``None`` or 0 keeps
  the config.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pointdr2.bench import memory
from pointdr2.bench.memory import model_for_mode
from pointdr2.data import build_dataset
from pointdr2.models import build_model, load_pretrained

ENV = "POINTDR2_STUDY_CASE"


def read_spec(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The case spec from ``path`` or from the file named by ``$POINTDR2_STUDY_CASE``."""
    path = path or os.environ.get(ENV)
    if not path:
        raise ValueError(f"cases_study: set {ENV} to a study case spec (JSON); `pointdr2 bench study` does this")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cases_study: case spec {path} not found")
    spec = json.loads(path.read_text())
    for key in ("model", "dataset"):
        if not isinstance(spec.get(key), Mapping):
            raise ValueError(f"cases_study: {path} needs a mapping under {key!r}")
    return spec


def sized_configs(spec: Mapping, depth: int | None, points: int | None) -> tuple[dict, dict]:
    """(model config, dataset config) of ``spec`` with ``depth`` and ``points`` applied."""
    model, dataset = dict(spec["model"]), dict(spec["dataset"])
    model.pop("pretrained", None)
    family = str(model.get("name", ""))
    if depth is not None:
        if family.startswith("pointnext"):
            if depth < 0:
                raise ValueError(f"cases_study: depth must be >= 0 InvResMLP blocks per stage, got {depth}")
            model["blocks"] = [1] + [int(depth) + 1] * 4
        else:
            if depth < 1:
                raise ValueError(f"cases_study: depth must be >= 1 transformer blocks, got {depth}")
            model["depth"] = int(depth)
    if points:
        key = "crop_points" if dataset.get("name") == "s3dis" else "num_points"
        dataset[key] = int(points)
    return model, dataset


def study_batch(dataset_cfg: Mapping, batch: int, seed: int = 0, split: str = "train") -> dict[str, torch.Tensor]:
    """The first ``batch`` samples of ``split`` (val carve with ``seed``), collated."""
    dataset = build_dataset(dataset_cfg, split, val_fraction=0.1, seed=seed)
    if len(dataset) < 1:
        raise ValueError(f"cases_study: the {split} split of {dataset_cfg.get('root')} is empty")
    # fewer samples than asked: repeat (memory and time depend on the batch size, not on repetition)
    items = [dataset[i % len(dataset)] for i in range(batch)]
    return torch.utils.data.default_collate(items)


def build_case(model: str, mode: str, depth: int | None, batch: int, points: int | None, alpha: float, beta: float,
               device: torch.device) -> tuple[nn.Module, tuple[torch.Tensor, ...], Callable[[torch.Tensor], torch.Tensor]]:
    """-> (module in train mode on ``device``, inputs, loss_fn(logits) -> scalar); see the module docstring."""
    if model != "study":
        raise ValueError(f"cases_study: model must be 'study', got {model!r}")
    spec = read_spec()
    model_cfg, dataset_cfg = sized_configs(spec, depth, points)
    torch.manual_seed(int(spec.get("seed", 0)))
    net = build_model(model_cfg)
    if spec.get("pretrained"):
        load_pretrained(net, spec["pretrained"])
    module = model_for_mode(net, mode, alpha, beta, "cases_study", spec.get("finetune")).to(device).train()
    data = study_batch(dataset_cfg, batch, int(spec.get("seed", 0)))
    if "points" in data:
        inputs: tuple[torch.Tensor, ...] = (data["points"].to(device),)
    else:
        inputs = (data["pos"].to(device), data["feats"].to(device))
    target = data["label"].to(device)

    def loss_fn(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target)

    return module, inputs, loss_fn


def run_row(cfg: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One harness row in a fresh subprocess (:func:`pointdr2.bench.memory.run_row`) with this module
    registered as case ``"study"`` there (so the study does not depend on an entry in memory.py's table)."""
    return memory.run_row(cfg, timeout, cases={"study": "pointdr2.bench.cases_study"})
