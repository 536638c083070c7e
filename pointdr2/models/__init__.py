"""Models: ``build_model(cfg_model)``, ``load_pretrained(model, path)``, ``to_dr2net(model, ...)``.

A model family implements two protocol methods that the functions here dispatch to:

- ``convert_state_dict(state_dict) -> (state_dict, expected_missing)``: official key layouts -> ours;
- ``dr2net_surrogate(alpha, beta, mode, **kw) -> nn.Module``: the Dr2Net surrogate sharing its weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from torch import nn

# Each family registers itself on import. Both ship with the package and need nothing optional, so they are
# imported plainly: a broken family is an ImportError here, not a model that silently went missing.
from pointdr2.models import (
    point_transformer,  # noqa: F401 - registers pointbert / pointmae
    point_transformer_partseg,  # noqa: F401 - registers pointmae-partseg / pointbert-partseg
    pointnext,  # noqa: F401 - registers pointnext
)
from pointdr2.models.checkpoints import LoadReport, load_into
from pointdr2.models.registry import MODELS, get_builder, register_model

log = logging.getLogger(__name__)

__all__ = ["build_model", "load_pretrained", "to_dr2net", "LoadReport", "MODELS", "register_model"]


def build_model(cfg_model: Mapping) -> nn.Module:
    """Build the model named by ``cfg_model["name"]``; its builder validates the other keys."""
    if not isinstance(cfg_model, Mapping):
        raise ValueError(f"model config must be a mapping with a 'name' key, got {type(cfg_model).__name__}")
    if "name" not in cfg_model:
        raise ValueError(f"model config needs a 'name' key (one of {', '.join(sorted(MODELS))})")
    return get_builder(cfg_model["name"])(cfg_model)


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load official or pointdr2 weights from ``path`` into ``model``; report ``.missing``/``.unexpected``."""
    return load_into(model, path)


def to_dr2net(model: nn.Module, alpha: float = 1.0, beta: float = 0.1, mode: str = "reversible",
              **kw: Any) -> nn.Module:
    """The Dr2Net surrogate of ``model`` (shares its parameters). ``kw``: ``recompute_stem``,
    ``cache_every``, ``tolerance``, ``output`` and family-specific options."""
    make = getattr(model, "dr2net_surrogate", None)
    if not callable(make):
        raise ValueError(f"{type(model).__name__} has no Dr2Net surrogate (no dr2net_surrogate method)")
    return make(alpha=alpha, beta=beta, mode=mode, **kw)
