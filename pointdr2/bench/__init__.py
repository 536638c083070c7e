"""Benchmarks run as ``pointdr2 bench WHAT``: each module has ``add_arguments(parser)`` and ``run(args)``.

Ratios are always measured side by side in one run; nothing here is a timed unit test.
"""

# WHAT -> (module path, one-line help). A benchmark is listed only once it works.
BENCHES: dict[str, tuple[str, str]] = {
    "ops": ("pointdr2.bench.ops", "grouping ops: every backend against the compiled anchor"),
}
