"""``python -m pointdr2.commands.worker [--case NAME=MODULE ...] --worker JSON``: one memory-harness row in
this fresh process (:func:`pointdr2.bench.memory.measure_row`), its result as one JSON line on stdout.

The parent (:func:`pointdr2.bench.memory.run_row`) starts it so that peak memory is this process's alone;
``--case`` registers a harness case module first (the study's own case, ``pointdr2.bench.cases_study``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from pointdr2.bench import memory

USAGE = "usage: python -m pointdr2.commands.worker [--case NAME=MODULE ...] --worker JSON"


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    while len(args) >= 2 and args[0] == "--case" and "=" in args[1]:
        name, module = args[1].split("=", 1)
        memory.CASE_MODULES.setdefault(name, module)
        args = args[2:]
    if len(args) != 2 or args[0] != "--worker":
        print(USAGE, file=sys.stderr)
        return 2
    print(json.dumps(memory.measure_row(json.loads(args[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
