"""Argument-parsing pieces shared by the commands (argparse only: imported when the parser is built)."""

from __future__ import annotations

import argparse

__all__ = ["IntermixedParser", "intermixed", "parse_int_list", "positive"]


class IntermixedParser(argparse.ArgumentParser):
    """Lets ``key=value`` overrides and options come in any order (``CONFIG --checkpoint P a=1 b=2``).

    Plain argparse stops filling a ``nargs="*"`` positional at the first option.
    """

    _busy = False

    def parse_known_args(self, args=None, namespace=None):
        if self._busy:
            return super().parse_known_args(args, namespace)
        self._busy = True
        try:
            return super().parse_known_intermixed_args(args, namespace)
        finally:
            self._busy = False


def intermixed(sub: argparse._SubParsersAction, name: str, **kwargs) -> argparse.ArgumentParser:
    """``sub.add_parser(name, ...)`` as an :class:`IntermixedParser`."""
    old = sub._parser_class
    sub._parser_class = IntermixedParser
    try:
        return sub.add_parser(name, **kwargs)
    finally:
        sub._parser_class = old


def parse_int_list(text: str | None, what: str, count: int | None = None) -> list[int] | None:
    """``"8,16,32"`` -> [8, 16, 32]; a one-line ValueError naming ``what`` for anything but positive integers."""
    if text is None:
        return None
    try:
        items = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        items = []
    if not items or any(v < 1 for v in items) or (count is not None and len(items) != count):
        n = f"{count} " if count else ""
        raise ValueError(f"{what}: expected {n}comma-separated positive integers (e.g. 8,16,32), got {text!r}")
    return items


def positive(args: argparse.Namespace, *names: str) -> None:
    """A one-line ValueError for the first of ``names`` that is given and not a positive integer."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
