"""The ``pointdr2`` console script's entry point; the command line itself is :mod:`pointdr2.commands`."""

from pointdr2.commands import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
