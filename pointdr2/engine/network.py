"""The network a run trains or evaluates: one owner of "finetuning mode -> network".

``finetune.mode`` (conventional | checkpoint | dr2net) and ``finetune.backprop`` (auto | reversible |
exact) are the one vocabulary; :func:`build_network` maps them to the model itself or its surrogate for
the trainer, ``eval``, ``plan`` and every benchmark. The benchmarks' row labels are finetune settings
too (:data:`BENCH_MODES`). Here also: the alpha/beta schedule of a config, what the surrogate's stacks
report after a step, the device of a run and loading a checkpoint's weights for evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pointdr2.engine.checkpoint import is_own_checkpoint, load_checkpoint
from pointdr2.models import to_dr2net
from pointdr2.models.checkpoints import STATE_KEYS, load_into
from pointdr2.reversible import CoefficientSchedule, stack_reports

__all__ = ["FINETUNE_MODES", "BACKPROP_MODES", "BENCH_MODES", "build_network", "bench_finetune", "stack_mode",
           "coefficient_schedule",
           "stack_stats", "resolve_device", "load_model_weights"]

FINETUNE_MODES = ("dr2net", "conventional", "checkpoint")

BACKPROP_MODES = ("auto", "reversible", "exact")


def build_network(model: nn.Module, cfg_finetune: Mapping, alpha: float, beta: float, *, train: bool = True) -> nn.Module:
    """The network that is trained (or evaluated): the model itself or its Dr2Net/checkpoint surrogate.

    ``finetune.backprop``: ``auto`` (the precision guard picks the anchor spacing), ``reversible``
    (``finetune.cache_every`` fixed) or ``exact`` (the same surrogate and schedule with plain autograd:
    Dr2Stack mode ``standard``, nothing recomputed; the control that isolates the surrogate's change of
    function from the reconstruction's gradient error). For evaluation (``train=False``) a dr2net
    surrogate runs in ``standard`` mode (no backward).
    """
    mode = cfg_finetune["mode"]
    stack = stack_mode(cfg_finetune, train)  # validates mode and backprop
    if mode == "conventional":
        return model
    # plain autograd through an exact-backprop surrogate: nothing recomputed, the stem included
    recompute = bool(cfg_finetune.get("recompute_stem", True)) and stack != "standard"
    if mode == "checkpoint":
        return to_dr2net(model, 1.0, 0.0, mode=stack, recompute_stem=recompute)
    kw: dict[str, Any] = {"output": cfg_finetune.get("output", "last"),
                          "residual": str(cfg_finetune.get("residual", "block")),
                          "gain": str(cfg_finetune.get("gain", "plain"))}
    if stack != "standard":
        kw.update(cache_every=cfg_finetune.get("cache_every"), tolerance=float(cfg_finetune.get("tolerance", 1e-4)),
                  recompute_stem=recompute)
    return to_dr2net(model, float(alpha), float(beta), mode=stack, **kw)


def coefficient_schedule(cfg_finetune: Mapping) -> CoefficientSchedule:
    """The alpha/beta schedule of ``finetune`` (``alpha``/``beta`` [start, end], start/end epoch, shape)."""
    def pair(key):
        value = cfg_finetune[key]
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError(f"finetune.{key} must be [start, end], got {value!r}")
        return float(value[0]), float(value[1])

    return CoefficientSchedule(alpha=pair("alpha"), beta=pair("beta"), start=float(cfg_finetune["start_epoch"]),
                               end=float(cfg_finetune["end_epoch"]), shape=str(cfg_finetune["shape"]))


def stack_stats(net: nn.Module) -> dict:
    """Reconstruction error, anchor spacing and mode of the Dr2Stacks after the last backward:
    the worst over stacks (for the log line) and every stack's own report (for metrics.jsonl)."""
    reports = stack_reports(net)
    if not reports:
        return {}
    errors = [r["reconstruction_error"] for r in reports.values() if r["reconstruction_error"] is not None]
    spacings = [r["cache_every"] for r in reports.values() if r["cache_every"] is not None]
    out: dict = {"stacks": reports, "backprop_mode": ",".join(sorted({str(r["mode"]) for r in reports.values()}))}
    if errors:
        out["reconstruction_error"] = max(errors)
    if spacings:
        out["cache_every"] = min(spacings)
    return out


def load_model_weights(model: nn.Module, path: str | os.PathLike, *, strict_foreign: bool = True,
                       checkpoint: Mapping | None = None) -> dict:
    """Load a checkpoint into the base ``model`` for evaluation; returns the checkpoint dict.

    Own checkpoints load strictly (any key mismatch is an error naming the first offending key);
    official checkpoints go through ``load_pretrained`` and must leave no key missing, and their
    head must fit the model (build it with the checkpoint's class count, see
    :func:`pointdr2.models.checkpoints.checkpoint_num_classes`). ``checkpoint``: the dict already
    read from ``path`` (not read again).
    """
    path = Path(path)
    ckpt = dict(checkpoint) if checkpoint is not None else load_checkpoint(path)
    if is_own_checkpoint(ckpt):
        state = ckpt.get("model")
        if not isinstance(state, Mapping):
            raise ValueError(f"{path} is a pointdr2 checkpoint without model weights")
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            raise ValueError(f"checkpoint {path} does not fit model.name={ckpt.get('config', {}).get('model', {}).get('name')!r}"
                             f" vs this config's model: {len(missing)} missing keys (first: {missing[:1]}), "
                             f"{len(unexpected)} unexpected (first: {unexpected[:1]})")
        for key, value in state.items():
            if tuple(own[key].shape) != tuple(value.shape):
                raise ValueError(f"checkpoint {path}: {key} has shape {tuple(value.shape)}, the model expects "
                                 f"{tuple(own[key].shape)} (different model size or num_classes?)")
        model.load_state_dict(state)
        return ckpt
    if not any(k in ckpt for k in STATE_KEYS) and not all(
            isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"{path} is not a model checkpoint (top-level keys: {', '.join(list(map(str, ckpt))[:6])})")
    report = load_into(model, path, checkpoint=ckpt)
    if report.replaced_head and strict_foreign:
        n, classes = report.checkpoint_classes, getattr(model, "num_classes", None)
        hint = (f"evaluate it with model.num_classes={n}" if n is not None and n != classes else
                "its head layers have other sizes than this config's head")
        raise ValueError(f"checkpoint {path}: its head does not fit this model ({report.head_mismatch}); {hint}")
    missing = list(getattr(report, "missing", []))
    if missing and strict_foreign:
        raise ValueError(f"checkpoint {path} leaves {len(missing)} model weights unset (first: {missing[0]}); "
                         "a pretrain checkpoint must be finetuned before evaluation")
    return ckpt


def resolve_device(name: str) -> torch.device:
    """``train.device``: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"."""
    name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"train.device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name} but CUDA is not available on this machine; use train.device=cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


# The rows a benchmark measures, as finetune settings (bench memory's --modes, bench plan's rows, the study's
# harness): dr2net = fully reversible at a fixed spacing (cache_every None = the whole stack), dr2net-auto =
# the precision guard's choice, dr2net-exact = the surrogate under plain autograd.
BENCH_MODES: dict[str, dict[str, Any]] = {
    "conventional": {"mode": "conventional"},
    "checkpoint": {"mode": "checkpoint"},
    "dr2net": {"mode": "dr2net", "backprop": "reversible", "cache_every": None},
    "dr2net-auto": {"mode": "dr2net", "backprop": "auto", "cache_every": None},
    "dr2net-exact": {"mode": "dr2net", "backprop": "exact"},
}


def stack_mode(cfg_finetune: Mapping, train: bool = True) -> str:
    """The :class:`~pointdr2.reversible.Dr2Stack` mode that finetune settings run a stack in: conventional
    and exact backprop ``standard`` (plain autograd), checkpoint ``checkpoint``, dr2net its backprop
    (``auto`` | ``reversible``); ``standard`` when not training (no backward)."""
    mode, backprop = cfg_finetune["mode"], str(cfg_finetune.get("backprop", "auto"))
    if mode not in FINETUNE_MODES:
        raise ValueError(f"finetune.mode must be one of {', '.join(FINETUNE_MODES)}, got {mode!r}")
    if mode == "dr2net" and backprop not in BACKPROP_MODES:
        raise ValueError(f"finetune.backprop must be one of {', '.join(BACKPROP_MODES)}, got {backprop!r}")
    if not train or mode == "conventional" or (mode == "dr2net" and backprop == "exact"):
        return "standard"
    return "checkpoint" if mode == "checkpoint" else backprop


def bench_finetune(mode: str, base: Mapping | None = None) -> dict[str, Any]:
    """``base`` finetune settings (e.g. a config's output and residual unit) with benchmark row ``mode``'s."""
    if mode not in BENCH_MODES:
        raise ValueError(f"unknown mode {mode!r}; expected {', '.join(BENCH_MODES)}")
    return {**dict(base or {}), **BENCH_MODES[mode]}
