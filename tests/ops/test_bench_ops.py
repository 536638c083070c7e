"""``pointdr2 bench ops``: the smoke run measures every CPU backend and agrees with the anchor."""

from __future__ import annotations

import json

import pytest

from pointdr2.cli import main
from pointdr2.ops import available_backends


def test_bench_ops_quick_json(capsys):
    backend = "cpp" if "cpp" in available_backends() else "torch"
    assert main(["bench", "ops", "--quick", "--repeat", "1", "--json", "--backends", backend]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["rows"]
    ops = {r["op"] for r in rows}
    assert ops == {"furthest_point_sample", "ball_query", "knn", "three_nn"}
    assert all(r["median_ms"] > 0 for r in rows)
    # every backend's indices equal the anchor's (open3d, or a NumPy brute force when open3d cannot load)
    assert all(r["matches_anchor"] for r in rows), [r for r in rows if not r["matches_anchor"]]


def test_bench_ops_bad_arguments(capsys):
    assert main(["bench", "ops", "--repeat", "0"]) == 2
    assert "--repeat must be >= 1" in capsys.readouterr().err
    assert main(["bench", "ops", "--backends", "nope"]) == 2
    assert "--backends: nope not available" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["bench", "ops", "--repeat", "x"]])
def test_bench_ops_argparse_errors(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_without_open3d_the_indices_are_checked_against_numpy_not_cpp(capsys, monkeypatch):
    """The fallback compares every backend, cpp included, with an independent brute force; a wrong op fails."""
    from pointdr2 import ops
    from pointdr2.bench import ops as bench_ops

    monkeypatch.setattr(bench_ops, "_load_open3d", lambda: (None, "disabled by the test"))
    backend = "cpp" if "cpp" in available_backends() else "torch"
    assert main(["bench", "ops", "--quick", "--repeat", "1", "--json", "--backends", backend]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "NumPy float64 brute force" in report["anchor"] and {r["backend"] for r in report["rows"]} == {backend}
    assert all(r["matches_anchor"] for r in report["rows"]), [r for r in report["rows"] if not r["matches_anchor"]]

    real = ops.furthest_point_sample
    monkeypatch.setattr(ops, "furthest_point_sample", lambda xyz, n: real(xyz, n).flip(-1))  # wrong order
    assert main(["bench", "ops", "--quick", "--repeat", "1", "--json", "--backends", backend]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {r["op"]: r["matches_anchor"] for r in rows if r["op"] != "furthest_point_sample"} == {
        "ball_query": True, "knn": True, "three_nn": True}
    assert not any(r["matches_anchor"] for r in rows if r["op"] == "furthest_point_sample")
