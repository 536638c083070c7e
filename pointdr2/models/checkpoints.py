"""Reading model weights from checkpoint files (official Point-BERT / Point-MAE / PointNeXt and ours).

``read_checkpoint`` loads a file safely (``weights_only``); ``extract_state_dict`` finds the
state dict inside the layouts users have on disk and strips ``module.`` prefixes;
``load_into`` maps it through the model's ``convert_state_dict`` protocol method, checks shapes
and loads it non-strictly, returning a :class:`LoadReport`.

Layouts recognised (first match wins):

- ours: ``{"format": "pointdr2-checkpoint", "model": state_dict, "config": {...}, ...}``
- official finetuned / pretrain: ``{"base_model": state_dict, ...}`` or ``{"model": state_dict, ...}``
- ``{"state_dict": state_dict}`` and a plain state dict (every value a tensor).

Files are unpickled with ``torch.load(weights_only=True)``: no code from a downloaded file runs.
A checkpoint that needs full unpickling is refused with a one-line error unless the environment
variable ``POINTDR2_TRUST_CHECKPOINTS=1`` is set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = ["LoadReport", "read_checkpoint", "extract_state_dict", "strip_prefix", "load_into", "OWN_FORMAT"]

log = logging.getLogger(__name__)

OWN_FORMAT = "pointdr2-checkpoint"
_STATE_KEYS = ("base_model", "model", "state_dict")


@dataclass
class LoadReport:
    """What ``load_pretrained`` did. Key lists use this model's parameter names."""

    path: str
    layout: str  # "pointdr2" | "base_model" | "model" | "state_dict" | "plain"
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    expected_missing: list[str] = field(default_factory=list)

    @property
    def unexpected_missing(self) -> list[str]:
        """Missing keys that the checkpoint kind does not explain (worth a warning)."""
        expected = set(self.expected_missing)
        return [k for k in self.missing if k not in expected]

    def summary(self) -> str:
        return (f"loaded {len(self.loaded)} tensors from {self.path} ({self.layout}); "
                f"missing {len(self.missing)} ({len(self.missing) - len(self.unexpected_missing)} expected), "
                f"unexpected {len(self.unexpected)}")


def read_checkpoint(path: str | os.PathLike) -> Mapping:
    """``torch.load`` a checkpoint file onto the CPU. FileNotFoundError / one-line ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not a safe checkpoint
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        needs_pickle = "weights_only" in str(exc) or "Unsupported global" in str(exc)
        if needs_pickle and os.environ.get("POINTDR2_TRUST_CHECKPOINTS") == "1":
            log.warning("loading %s with full unpickling (POINTDR2_TRUST_CHECKPOINTS=1)", path)
            obj = torch.load(path, map_location="cpu", weights_only=False)
        elif needs_pickle:
            raise ValueError(f"{path} needs full unpickling to load ({first}); set POINTDR2_TRUST_CHECKPOINTS=1 "
                             "if you trust its source") from None
        else:
            raise ValueError(f"{path} is not a readable PyTorch checkpoint ({first})") from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a checkpoint dict or a state dict")
    return obj


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove leading ``prefix`` (repeatedly, e.g. nested DataParallel) from every key."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(prefix):
            key = key[len(prefix):]
        out[key] = value
    return out


def extract_state_dict(obj: Mapping, path: str | os.PathLike = "<checkpoint>") -> tuple[dict[str, torch.Tensor], str]:
    """-> (state dict with ``module.`` stripped, layout name). ValueError when none is found."""
    if obj.get("format") == OWN_FORMAT:
        sd, layout = obj.get("model"), "pointdr2"
    else:
        layout = next((k for k in _STATE_KEYS if isinstance(obj.get(k), Mapping)), "plain")
        sd = obj if layout == "plain" else obj[layout]
    if not isinstance(sd, Mapping) or not sd:
        raise ValueError(f"{path} holds no model state dict (looked for keys {', '.join(_STATE_KEYS)} or a "
                         f"plain state dict); top-level keys: {', '.join(map(str, list(obj)[:8]))}")
    bad = next((k for k, v in sd.items() if not isinstance(k, str) or not torch.is_tensor(v)), None)
    if bad is not None:
        raise ValueError(f"{path}: entry {bad!r} of the {layout} state dict is not a tensor; not a model checkpoint")
    return strip_prefix(sd), layout


def load_into(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load the weights in ``path`` into ``model`` (non-strict) and report what happened.

    The state dict goes through ``model.convert_state_dict`` when the model has it. Raises
    ValueError naming the first key whose shape differs, or the file when it holds no tensor this
    model knows (a checkpoint of another model family).
    """
    obj = read_checkpoint(path)
    sd, layout = extract_state_dict(obj, path)
    expected_missing: list[str] = []
    convert = getattr(model, "convert_state_dict", None)
    if callable(convert):
        sd, expected_missing = convert(sd)
    own = model.state_dict()
    known = [k for k in sd if k in own]
    if not known:
        family = getattr(model, "family", type(model).__name__)
        raise ValueError(f"{path} holds no weights of a {family} model (first key {next(iter(sd), None)!r}); "
                         "is it a checkpoint of another model family?")
    for key in known:
        if tuple(sd[key].shape) != tuple(own[key].shape):
            raise ValueError(f"{path}: shape mismatch for {key!r}: checkpoint {list(sd[key].shape)}, "
                             f"model {list(own[key].shape)} (different model size or family?)")
    result = model.load_state_dict({k: sd[k] for k in known}, strict=False)
    report = LoadReport(path=str(path), layout=layout, loaded=known, missing=list(result.missing_keys),
                        unexpected=[k for k in sd if k not in own], expected_missing=list(expected_missing))
    log.info(report.summary())
    if report.unexpected_missing:
        log.warning("missing from %s (not expected for this checkpoint kind): %s", path,
                    ", ".join(report.unexpected_missing))
    expected_here = [k for k in report.missing if k in set(report.expected_missing)]
    if expected_here:
        log.info("not in the checkpoint (expected, trained from their initialisation): %s", ", ".join(expected_here))
    if report.unexpected:
        log.warning("ignored %d tensors of %s this model does not have: %s", len(report.unexpected), path,
                    ", ".join(report.unexpected[:10]) + (" ..." if len(report.unexpected) > 10 else ""))
    return report
