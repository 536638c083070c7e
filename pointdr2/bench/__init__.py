"""Benchmarks run as ``pointdr2 bench WHAT``: each module has an ``Options`` dataclass and a ``measure``
function (its command line, printing and exit status live in :mod:`pointdr2.commands.bench`).

Ratios are always measured side by side in one run; nothing here is a timed unit test.
"""

# WHAT -> (module that measures, one-line help). A benchmark is listed only once it works.
BENCHES: dict[str, tuple[str, str]] = {
    "ops": ("pointdr2.bench.ops", "grouping ops: every backend against the compiled anchor"),
    "precision": ("pointdr2.bench.precision", "reversible vs standard gradient error over (alpha, beta)"),
    "memory": ("pointdr2.bench.memory", "activation bytes, peak memory and step time per finetuning mode"),
    # API.md lists "speed": step time is measured by the memory harness, in the same run as the bytes.
    "speed": ("pointdr2.bench.memory", "step time per finetuning mode (the memory harness: time, bytes, peak)"),
    "plan": ("pointdr2.bench.plan", "pointdr2 plan's predicted activation bytes and peak against measured ones"),
    "data": ("pointdr2.data.bench", "dataset loader samples/s with DataLoader workers; synthetic prepare times"),
    "study": ("pointdr2.study", "the evidence study: accuracy, memory and time of dr2net vs conventional"),
}
