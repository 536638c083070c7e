"""The one "did you mean" hint of every unknown-name error (config keys, models, datasets, transforms)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["closest", "did_you_mean"]


def closest(word: str, choices: Iterable[str], cutoff: float = 0.5, n: int = 3) -> list[str]:
    """Up to ``n`` of ``choices`` most similar to ``word`` (difflib ratio at least ``cutoff``), best first."""
    return difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=cutoff)


def did_you_mean(word: str, choices: Iterable[str], prefix: str = "", cutoff: float = 0.5,
                 otherwise: str = "") -> str:
    """``"; did you mean model.depth?"`` for the choices closest to ``word`` (each written with ``prefix``),
    else ``otherwise`` (e.g. ``"; known: a, b"``)."""
    close = closest(word, choices, cutoff)
    return f"; did you mean {', '.join(prefix + c for c in close)}?" if close else otherwise
