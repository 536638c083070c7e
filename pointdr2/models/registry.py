"""The model registry: ``model.name`` in a config -> a builder ``fn(cfg_model) -> nn.Module``."""

from __future__ import annotations

from typing import Callable

from pointdr2.hints import did_you_mean

MODELS: dict[str, Callable] = {}


def register_model(*names: str) -> Callable[[Callable], Callable]:
    """Decorator registering a builder under one or more ``model.name`` values."""

    def wrap(fn: Callable) -> Callable:
        for name in names:
            if name in MODELS and MODELS[name] is not fn:
                raise RuntimeError(f"model name {name!r} registered twice")
            MODELS[name] = fn
        return fn

    return wrap


def get_builder(name: str) -> Callable:
    if name not in MODELS:
        hint = did_you_mean(name, MODELS, cutoff=0.4)
        raise ValueError(f"unknown model.name {name!r}; known: {', '.join(sorted(MODELS))}{hint}")
    return MODELS[name]
