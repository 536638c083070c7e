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
    # every backend's indices equal the anchor's (open3d, or a NumPy brute force when open3d cannot load);
    # fpsample follows rounding and tie rules of its own
    ours = [r for r in rows if r["backend"] == backend]
    assert all(r["matches_anchor"] for r in ours), [r for r in ours if not r["matches_anchor"]]
    assert all(r["stable"] for r in ours)  # every timed run returned the warm-up's indices
    assert {r["threads"] for r in ours} == set(report["threads"]) and 1 in report["threads"]
    cases = {r["case"] for r in ours if r["op"] == "furthest_point_sample"}
    assert {c.split()[0] for c in cases} >= {"room", "planes", "clusters", "uniform"}
    assert report["machine"] and "fps_anchor" in report
    if backend == "cpp":  # the forced brute-force scan beside the automatic choice, on the same inputs
        scans = [r for r in rows if r["backend"] == "cpp-scan"]
        assert {(r["case"], r["threads"]) for r in scans} == {(r["case"], r["threads"]) for r in ours}
        assert all(r["matches_anchor"] for r in scans)
        assert all(r["x_scan"] > 0 for r in ours) and all(r["x_scan"] is None for r in scans)


def test_bench_ops_fpsample_anchor(capsys):
    pytest.importorskip("fpsample")
    backend = "cpp" if "cpp" in available_backends() else "torch"
    assert main(["bench", "ops", "--quick", "--repeat", "1", "--json", "--backends", backend, "--threads", "1"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    fps_rows = [r for r in rows if r["op"] == "furthest_point_sample"]
    assert {r["backend"] for r in fps_rows} >= {"fpsample", backend}
    assert all(r["x_fpsample"] > 0 for r in fps_rows)  # both ratios on every FPS row
    assert all(r["x_fpsample"] is None for r in rows if r["op"] != "furthest_point_sample")


def test_an_anchor_whose_runs_disagree_is_replaced_by_the_brute_force_reference(capsys, monkeypatch):
    """open3d's multi-threaded FPS can return other picks from run to run: then the indices are checked
    against the NumPy brute force, and the anchor's row says it was not the same every run."""
    from pointdr2.bench import ops as bench_ops

    ml3d, name = bench_ops._load_open3d()
    if ml3d is None:
        pytest.skip(f"open3d.ml does not load here: {name}")
    calls = {"n": 0}

    class Racy:  # open3d's ops, with FPS answering differently on every other call
        def __getattr__(self, attr):
            return getattr(ml3d.ops, attr)

        def furthest_point_sampling(self, xyz, npoint):
            calls["n"] += 1
            out = ml3d.ops.furthest_point_sampling(xyz, npoint)
            return out.flip(-1) if calls["n"] % 2 else out

    class Module:
        ops = Racy()

    monkeypatch.setattr(bench_ops, "_load_open3d", lambda: (Module(), name))
    backend = "cpp" if "cpp" in available_backends() else "torch"
    assert main(["bench", "ops", "--quick", "--repeat", "2", "--json", "--backends", backend, "--threads", "1"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out)["rows"] if r["op"] == "furthest_point_sample"]
    assert all(not r["stable"] for r in rows if r["backend"] == "open3d")
    assert all(r["matches_anchor"] and r["stable"] for r in rows if r["backend"] == backend)


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
    rows = [r for r in report["rows"] if r["backend"] != "fpsample"]
    assert "NumPy float64 brute force" in report["anchor"]
    assert {r["backend"] for r in rows} == ({"cpp", "cpp-scan"} if backend == "cpp" else {backend})
    assert all(r["matches_anchor"] for r in rows), [r for r in rows if not r["matches_anchor"]]

    real = ops.furthest_point_sample
    monkeypatch.setattr(ops, "furthest_point_sample", lambda xyz, n: real(xyz, n).flip(-1))  # wrong order
    assert main(["bench", "ops", "--quick", "--repeat", "1", "--json", "--backends", backend]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out)["rows"] if r["backend"] != "fpsample"]
    assert {r["op"]: r["matches_anchor"] for r in rows if r["op"] != "furthest_point_sample"} == {
        "ball_query": True, "knn": True, "three_nn": True}
    assert not any(r["matches_anchor"] for r in rows if r["op"] == "furthest_point_sample")
