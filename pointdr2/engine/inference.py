"""Inference on a trained run or checkpoint: the config of a run, the network to evaluate, one sample's
prediction. Plain functions with typed arguments; the command layer (``pointdr2.commands``) turns the
command line into these calls.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from pointdr2.config import Config, carved_fraction, find_config, load_config
from pointdr2.data import build_dataset
from pointdr2.engine.checkpoint import is_own_checkpoint, load_checkpoint
from pointdr2.engine.evaluator import default_room_predictor, is_room_dataset, task_of
from pointdr2.engine.network import build_network, load_model_weights, resolve_device
from pointdr2.models import build_model
from pointdr2.models.checkpoints import checkpoint_num_classes
from pointdr2.progress import bar as progress_bar

__all__ = ["run_config_file", "resolve_config", "default_checkpoint", "load_for_eval", "evaluation_network",
           "predict_sample"]

log = logging.getLogger(__name__)


def run_config_file(run_dir: str | os.PathLike) -> Path:
    """``RUN/config.yaml``: the resolved config of a run, overrides included (FileNotFoundError if absent)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml in it)")
    return path


def resolve_config(config: str | os.PathLike | None, overrides: list[str] | tuple = (),
                   resume: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None) -> Config:
    """The config of a command: ``config`` (a file, a shipped config's name, or a run directory), else the
    run directory of ``resume``, else the ``config.yaml`` beside ``checkpoint``; plus ``overrides``."""
    overrides = list(overrides)
    if config and Path(config).is_dir():
        return load_config(run_config_file(config), overrides)
    if config:
        return load_config(find_config(config), overrides)
    if resume:
        return load_config(run_config_file(resume), overrides)
    if checkpoint:
        folder = Path(checkpoint).parent
        if (folder / "config.yaml").is_file():
            return load_config(folder / "config.yaml", overrides)
        raise ValueError(f"no CONFIG given and no config.yaml beside --checkpoint {checkpoint}; pass the config "
                         "the checkpoint was trained with (pointdr2 eval CONFIG --checkpoint PATH)")
    raise ValueError("give a CONFIG file or a run directory (e.g. pointdr2 eval runs/xyz, pointdr2 train --resume "
                     "runs/xyz)")


def default_checkpoint(run_dir: str | os.PathLike) -> Path:
    """``RUN/best.pth``, else ``RUN/last.pth`` (FileNotFoundError when neither exists)."""
    for name in ("best.pth", "last.pth"):
        if (Path(run_dir) / name).is_file():
            return Path(run_dir) / name
    raise FileNotFoundError(f"{run_dir} holds no best.pth or last.pth")


def load_for_eval(cfg: Config, checkpoint: str | os.PathLike, split: str = "test"):
    """Dataset, base model, evaluation network and checkpoint dict for ``split``.

    The model is built from ``cfg.model`` (``num_classes`` from the dataset when unset), the
    weights loaded strictly, and a Dr2Net surrogate rebuilt at the checkpoint's coefficients when
    the checkpoint was finetuned with ``finetune.mode: dr2net``. An official (foreign) checkpoint is
    evaluated as published: when its head predicts another number of classes than the config's
    (the official Point-BERT ScanObjectNN checkpoints have a 40-way head for 15 classes), the model
    is built with the checkpoint's head size, which is logged; a head with fewer classes than the
    dataset has is an error.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    ckpt_path = Path(checkpoint)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {ckpt_path}")
    device = resolve_device(cfg.train.device)
    vf = carved_fraction(cfg.train)
    dataset = build_dataset(cfg.dataset, split, val_fraction=vf, seed=int(cfg.train.seed))
    if "num_classes" not in cfg.model:
        cfg.model["num_classes"] = int(dataset.num_classes)
    model = build_model(cfg.model)
    raw = load_checkpoint(ckpt_path)  # read once, under the one loading policy
    if not is_own_checkpoint(raw):
        try:
            head = checkpoint_num_classes(model, raw, ckpt_path)
        except ValueError:  # not this model's weights: load_model_weights says so below
            head = None
        configured = getattr(model, "num_classes", None)
        if head is not None and configured is not None and head != int(configured):
            classes = int(dataset.num_classes)
            if head < classes:
                raise ValueError(f"--checkpoint {ckpt_path}: its head predicts {head} classes but dataset "
                                 f"{cfg.dataset.get('name')!r} has {classes}; it was trained for another label set")
            log.info("%s has a %d-way head (model.num_classes=%d in the config): evaluating it as published, "
                     "with model.num_classes=%d (predictions beyond the dataset's %d classes count as wrong)",
                     ckpt_path, head, int(configured), head, classes)
            cfg.model["num_classes"] = head
            model = build_model(cfg.model)
    ckpt = load_model_weights(model, ckpt_path, checkpoint=raw)
    model.to(device).eval()
    net = evaluation_network(model, ckpt).to(device).eval()
    return dataset, model, net, ckpt, device


def evaluation_network(model: torch.nn.Module, ckpt: dict) -> torch.nn.Module:
    """The network a checkpoint's weights (already in ``model``) are evaluated through: the model itself, or
    for ``finetune.mode: dr2net`` its surrogate as finetuned (coefficients, output, residual unit, gain)."""
    finetune = ckpt.get("finetune") if isinstance(ckpt.get("finetune"), dict) else {"mode": "conventional"}
    if finetune.get("mode") != "dr2net":
        return model
    # checkpoints written before ``finetune.residual`` (``finetune.gain``) existed were trained with the branch
    # form (plain updates)
    ft = {"mode": "dr2net", "output": finetune.get("output", "last"), "residual": finetune.get("residual", "branch"),
          "gain": finetune.get("gain", "plain"), "backprop": "auto"}
    log.info("evaluating the Dr2Net surrogate at alpha=%.3g beta=%.3g (as finetuned)", finetune["alpha"],
             finetune["beta"])
    return build_network(model, ft, float(finetune["alpha"]), float(finetune["beta"]), train=False)


@torch.no_grad()
def predict_sample(net, dataset, index: int, device: torch.device, max_points: int | None = None):
    """``(xyz [n,3] numpy, pred [n] or [], target [n] or [])`` for sample ``index`` of ``dataset``."""

    if not 0 <= index < len(dataset):
        raise ValueError(f"sample index must lie in [0, {len(dataset)}), got {index}")
    if is_room_dataset(dataset):
        room = dataset[index]
        with progress_bar(total=getattr(room, "pass_points", None), desc=f"predict room {index}", unit="pt",
                          unit_scale=True, leave=False, every=10.0) as bar:
            logits = default_room_predictor(max_points)(net, room, device, on_points=bar.update)
        return room.room[:, :3], logits.argmax(dim=-1).numpy(), room.labels.numpy()
    sample = dataset[index]
    task = task_of(sample)
    if task == "classification":
        points = sample["points"]
        logits = net(points.unsqueeze(0).to(device))
        return points[:, :3].numpy(), logits.argmax(dim=1).cpu().numpy(), sample["label"].reshape(1).numpy()
    if task == "partseg":  # the argmax over the shape's own category's parts, as the metrics take it
        points, category = sample["points"], int(sample["category"])
        logits = net(points.unsqueeze(0).to(device), torch.tensor([category], device=device))[0].cpu()
        parts = torch.tensor(dataset.category_parts[category])
        pred = parts[logits.index_select(0, parts).argmax(dim=0)]
        return points[:, :3].numpy(), pred.numpy(), sample["label"].numpy()
    logits = net(sample["pos"].unsqueeze(0).to(device), sample["feats"].unsqueeze(0).to(device))
    return sample["pos"].numpy(), logits[0].argmax(dim=0).cpu().numpy(), sample["label"].numpy()
