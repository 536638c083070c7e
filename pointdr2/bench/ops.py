"""``pointdr2 bench ops``: every op backend side by side with a compiled anchor, in one run.

The anchor is open3d.ml.torch's CPU ops (compiled C++, shipped in the open3d-cpu wheel) when they
load beside the installed torch; otherwise the ``cpp`` backend is the timing anchor and the indices
are checked against a NumPy float64 brute force (never a backend against itself), and the table says
so. Each row reports the median over ``--repeat`` timed runs (after one warm-up; the runs of a case go
round robin over its backends and anchors, so a slow phase of a shared machine hits all alike), the ratio to the
anchor (``x anchor`` > 1 means slower), the process CPU time (all threads; it shows the work done
when the machine is busy, and that open3d's ops use more than one core whatever torch's thread count),
whether the indices agree exactly with the anchor's and whether every run of the row returned the same
indices. The anchor's indices count only where all its runs agreed (its first such output over the
thread counts): open3d's FPS uses several threads whatever torch's count and its picks varied from run
to run on large clouds; where no thread count agreed, the indices are checked against the brute force.
Clouds imitate the real workloads: an S3DIS-like room crop (floor, walls, clutter; metres), exact
planes and edges of a room, Gaussian clusters and a uniform box for the 24,000-point cases, large
rooms for the 100,000- and 1,000,000-point FPS, a unit-sphere object for the 1,024-point ones.

FPS has a second anchor when the ``fpsample`` package is importable: its
``bucket_fps_kdline_sampling`` (h=7; h=9 for the million-point room, its docs' large-workload
setting) from index 0 on the same clouds, one call per cloud (it has no batch dimension, so it
runs on one thread); the table reports the ratio to it beside the ratio to open3d. Its indices
follow its own rounding and tie rules, so "same indices" is informative only for it.
Every case runs on one thread and again on all of torch's threads (``--threads`` picks one count).
The ``cpp`` backend chooses its kd-tree (bucketed) or brute-force path by size; the ``cpp-scan`` rows
force the brute-force scan on the same inputs (what the backend ran before the buckets; left out of
the million-point case) and ``x scan`` is the ``cpp`` row's time over it.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pointdr2 import ops

log = logging.getLogger(__name__)


@dataclass
class Case:
    op: str
    label: str
    inputs: dict
    ours: Callable[[dict], object]
    anchor: Callable[[object, dict], object] | None  # (ml3d module, inputs) -> comparable output
    reference: Callable[[dict], torch.Tensor]  # NumPy float64 brute force: the indices when open3d cannot load
    # heavy: too large for the pure-torch backend's Python loop and for the NumPy reference (the
    # cpp backend's brute-force scan is the reference then, when open3d cannot load)
    heavy: bool = False


def room_crop(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    """[batch, n, 3] float32 points on a 3 x 3 x 2.5 m room crop: floor, two walls, clutter."""
    rng = np.random.default_rng(seed)
    u = rng.random((batch, n, 3), dtype=np.float64) * np.array([3.0, 3.0, 2.5])
    part = rng.random((batch, n))
    u[..., 2] = np.where(part < 0.35, 0.0, u[..., 2])            # floor
    u[..., 0] = np.where((part >= 0.35) & (part < 0.55), 0.0, u[..., 0])  # wall x = 0
    u[..., 1] = np.where((part >= 0.55) & (part < 0.75), 0.0, u[..., 1])  # wall y = 0
    # the rest is clutter, thinned towards furniture height
    u[..., 2] = np.where(part >= 0.75, u[..., 2] * 0.4, u[..., 2])
    u += rng.normal(scale=0.005, size=u.shape)
    return torch.from_numpy(u.astype(np.float32))


def room_planes(batch: int, n: int, seed: int = 4) -> torch.Tensor:
    """[batch, n, 3] float32 points exactly on a room's planes and edges: floor, ceiling, two walls,
    the floor/wall edges, and a table top; no noise, so many points share coordinates."""
    rng = np.random.default_rng(seed)
    u = rng.random((batch, n, 3), dtype=np.float64) * np.array([6.0, 5.0, 3.0])
    part = rng.integers(0, 7, size=(batch, n))
    u[..., 2] = np.where(part == 0, 0.0, u[..., 2])                        # floor
    u[..., 2] = np.where(part == 1, 3.0, u[..., 2])                        # ceiling
    u[..., 0] = np.where(part == 2, 0.0, u[..., 0])                        # wall x = 0
    u[..., 1] = np.where(part == 3, 5.0, u[..., 1])                        # wall y = 5
    u[..., [0, 2]] = np.where((part == 4)[..., None], 0.0, u[..., [0, 2]])  # edge x = 0, z = 0
    u[..., [1, 2]] = np.where((part == 5)[..., None], [5.0, 0.0], u[..., [1, 2]])  # edge y = 5, z = 0
    table = part == 6
    u[..., 0] = np.where(table, 2.0 + u[..., 0] / 6.0, u[..., 0])
    u[..., 1] = np.where(table, 2.0 + u[..., 1] / 5.0, u[..., 1])
    u[..., 2] = np.where(table, 0.75, u[..., 2])
    return torch.from_numpy(u.astype(np.float32))


def clusters(batch: int, n: int, seed: int = 5) -> torch.Tensor:
    """[batch, n, 3] float32 Gaussian clusters of very different spreads (1 mm to 30 cm) in a 4 m box."""
    rng = np.random.default_rng(seed)
    centres = rng.random((batch, 40, 3)) * 4.0
    spread = np.geomspace(1e-3, 0.3, 40)
    which = rng.integers(0, 40, size=(batch, n))
    p = centres[np.arange(batch)[:, None], which] + rng.normal(size=(batch, n, 3)) * spread[which][..., None]
    return torch.from_numpy(p.astype(np.float32))


def uniform_box(batch: int, n: int, seed: int = 6) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.random((batch, n, 3), dtype=np.float32))


def object_cloud(batch: int, n: int, seed: int = 1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(batch, n, 3))
    p /= np.linalg.norm(p, axis=-1, keepdims=True)
    p *= rng.random((batch, n, 1)) ** (1 / 3)
    return torch.from_numpy(p.astype(np.float32))


INPUTS = {"room": room_crop, "planes": room_planes, "clusters": clusters, "uniform": uniform_box}


def _fps_case(kind: str, b: int, n: int, m: int, heavy: bool = False, h: int = 7) -> Case:
    xyz = INPUTS[kind](b, n)
    return Case("furthest_point_sample", f"{kind} {b}x{n:,}->{m:,}", {"xyz": xyz, "npoint": m, "h": h},
                lambda a: ops.furthest_point_sample(a["xyz"], a["npoint"]),
                lambda ml, a: ml.ops.furthest_point_sampling(a["xyz"], a["npoint"]).long(),
                (lambda a: _cpp_scan_fps(a["xyz"], a["npoint"])) if heavy else (lambda a: _np_fps(a["xyz"], a["npoint"])),
                heavy=heavy)


def _cases(quick: bool) -> list[Case]:
    if quick:
        fps_sizes, fps_large = (2, 2000, 500), [(1, 20000, 200)]
        ball, knn_big, tnn = (2, 500, 5000), (2, 500, 5000), (2, 2000, 500)
    else:
        fps_sizes, fps_large = (8, 24000, 6000), [(2, 100000, 25000), (1, 1000000, 10000)]
        ball, knn_big, tnn = (8, 6000, 24000), (8, 6000, 24000), (8, 24000, 6000)
    cases = []
    b, n, m = fps_sizes
    for kind in INPUTS:
        cases.append(_fps_case(kind, b, n, m))
    for b, n, m in fps_large:
        cases.append(_fps_case("room", b, n, m, heavy=n * m > 10**9, h=9 if n >= 10**6 else 7))
    obj = object_cloud(32, 1024)
    cases.append(Case("furthest_point_sample", "object 32x1,024->64", {"xyz": obj, "npoint": 64, "h": 3},
                      lambda a: ops.furthest_point_sample(a["xyz"], a["npoint"]),
                      lambda ml, a: ml.ops.furthest_point_sampling(a["xyz"], a["npoint"]).long(),
                      lambda a: _np_fps(a["xyz"], a["npoint"])))
    b, s, n = ball
    for kind in ("room", "planes", "clusters"):
        pts = INPUTS[kind](b, n, seed=2)
        centres = pts[:, torch.randperm(n, generator=torch.Generator().manual_seed(0))[:s]].contiguous()
        cases.append(Case("ball_query", f"{kind} {b}x{s:,} in {n:,}, r=0.1, 32", {"xyz": pts, "new_xyz": centres},
                          lambda a: ops.ball_query(a["xyz"], a["new_xyz"], 0.1, 32),
                          lambda ml, a: ml.ops.ball_query(a["xyz"], a["new_xyz"], 0.1, 32).long(),
                          lambda a: _np_ball_query(a["xyz"], a["new_xyz"], 0.1, 32)))
    b, s, n = knn_big
    for kind in ("room", "planes", "clusters"):
        pts = INPUTS[kind](b, n, seed=3)
        queries = pts[:, torch.randperm(n, generator=torch.Generator().manual_seed(2))[:s]].contiguous()
        cases.append(Case("knn", f"{kind} {b}x{s:,} in {n:,}, k=16", {"query": queries, "support": pts, "k": 16},
                          lambda a: ops.knn(a["query"], a["support"], a["k"])[1],
                          _o3d_knn, lambda a: _np_knn(a["query"], a["support"], a["k"])))
    queries = obj[:, :64].contiguous()
    cases.append(Case("knn", "object 32x64 in 1,024, k=32", {"query": queries, "support": obj, "k": 32},
                      lambda a: ops.knn(a["query"], a["support"], a["k"])[1],
                      _o3d_knn, lambda a: _np_knn(a["query"], a["support"], a["k"])))
    b, n, m = tnn
    unknown = room_crop(b, n, seed=3)
    known = unknown[:, torch.randperm(n, generator=torch.Generator().manual_seed(1))[:m]].contiguous()
    cases.append(Case("three_nn", f"room {b}x{n:,} in {m:,}", {"unknown": unknown, "known": known},
                      lambda a: ops.three_nn(a["unknown"], a["known"])[1],
                      lambda ml, a: ml.ops.three_nn(a["unknown"], a["known"])[1].long(),
                      lambda a: _np_knn(a["unknown"], a["known"], 3)))
    return cases


def _cpp_scan_fps(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """The cpp backend's brute-force scan (not its bucketed path): the reference where NumPy is too slow."""
    from pointdr2.ops import cpp_backend

    with cpp_backend.forced_path("brute"):
        return cpp_backend.furthest_point_sample(xyz, npoint)


def _fpsample_fps(fpsample, a: dict) -> torch.Tensor:
    pts = a["xyz"].numpy()
    return torch.from_numpy(np.stack([
        np.asarray(fpsample.bucket_fps_kdline_sampling(p, a["npoint"], h=a["h"], start_idx=0), dtype=np.int64)
        for p in pts]))


def _load_fpsample():
    try:
        import fpsample

        return fpsample
    except Exception:  # noqa: BLE001 - optional anchor
        return None


def machine_description() -> str:
    """CPU model and logical core count, for the table's header."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores, torch {torch.__version__}"


# NumPy float64 brute force, row blocks of 1,024 queries; ties go to the lowest index, as in every backend.
def _sq_dist(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    return ((q[:, None, :] - s[None, :, :]) ** 2).sum(axis=-1)


def _np_fps(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    pts = xyz.double().numpy()
    out = np.zeros((pts.shape[0], npoint), dtype=np.int64)
    for b, p in enumerate(pts):
        mind = np.full(len(p), np.inf)
        last = 0
        for i in range(1, npoint):
            mind = np.minimum(mind, ((p - p[last]) ** 2).sum(axis=1))
            last = int(np.argmax(mind))  # the first maximum
            out[b, i] = last
    return torch.from_numpy(out)


def _np_ball_query(xyz: torch.Tensor, new_xyz: torch.Tensor, radius: float, nsample: int) -> torch.Tensor:
    pts, centres = xyz.double().numpy(), new_xyz.double().numpy()
    out = np.zeros(centres.shape[:2] + (nsample,), dtype=np.int64)
    for b in range(len(pts)):
        for lo in range(0, centres.shape[1], 1024):
            hit = _sq_dist(centres[b, lo:lo + 1024], pts[b]) < radius * radius
            first = np.argsort(~hit, axis=1, kind="stable")[:, :nsample]  # hits in index order, then misses
            count = np.minimum(hit.sum(axis=1), nsample)
            # pad with the first hit; a centre without hits gets index 0 (all misses: first[:, 0] is 0)
            out[b, lo:lo + 1024] = np.where(np.arange(nsample) < count[:, None], first, first[:, :1])
    return torch.from_numpy(out)


def _np_knn(query: torch.Tensor, support: torch.Tensor, k: int) -> torch.Tensor:
    q, s = query.double().numpy(), support.double().numpy()
    out = np.zeros(q.shape[:2] + (k,), dtype=np.int64)
    for b in range(len(q)):
        for lo in range(0, q.shape[1], 1024):
            out[b, lo:lo + 1024] = np.argsort(_sq_dist(q[b, lo:lo + 1024], s[b]), axis=1, kind="stable")[:, :k]
    return torch.from_numpy(out)


def _o3d_knn(ml, a: dict) -> torch.Tensor:
    # open3d's knn_search takes ragged (flattened) clouds with row splits and returns flat indices
    # into the flattened points; make them per-cloud again.
    q, s = a["query"], a["support"]
    B, S, _ = q.shape
    N = s.shape[1]
    k = a["k"]
    ans = ml.ops.knn_search(s.reshape(-1, 3), q.reshape(-1, 3), k,
                            torch.arange(B + 1, dtype=torch.int64) * N,
                            torch.arange(B + 1, dtype=torch.int64) * S, return_distances=True)
    idx = ans.neighbors_index.long().view(B, S, k)
    return idx - (torch.arange(B) * N).view(B, 1, 1)


def _load_open3d():
    try:
        import open3d.ml.torch as ml3d

        ml3d.ops.furthest_point_sampling(torch.rand(1, 8, 3), 2)
        return ml3d, "open3d.ml.torch"
    except Exception as exc:  # noqa: BLE001 - any failure means the anchor is unusable beside this torch
        return None, f"open3d.ml.torch unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''})"


def _interleaved_ms(runners: dict[str, Callable[[], object]], repeat: int
                    ) -> dict[str, tuple[float, float, object, bool]]:
    """Per runner: (median wall ms, median process CPU ms, first output, every run gave that output); CPU
    time shows the work on a busy machine.

    Each runner is warmed up once (and the C++ build / Triton compile, if any), then the timed runs go round
    robin (one run of each, ``repeat`` times), so a slow phase of a shared machine lands on every runner
    alike instead of on whichever ran then: the ratios between them stay honest.
    """
    first = {name: fn() for name, fn in runners.items()}
    stable = dict.fromkeys(runners, True)
    wall: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeat):
        for name, fn in runners.items():
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            stable[name] = stable[name] and torch.equal(out, first[name])
    return {name: (statistics.median(wall[name]) * 1e3, statistics.median(cpu[name]) * 1e3, first[name],
                   stable[name]) for name in runners}


def _backend_runner(name: str, case: Case, path: str | None = None) -> Callable[[], object]:
    """``case.ours`` on ``name``'s backend (``path``: the cpp backend forced onto "brute" or "tree")."""
    def run():
        ops.set_backend(name)
        if path is None:
            return case.ours(case.inputs)
        from pointdr2.ops import cpp_backend

        with cpp_backend.forced_path(path):
            return case.ours(case.inputs)
    return run


@dataclass(frozen=True)
class Options:
    """What ``pointdr2 bench ops`` measures (its command-line options)."""

    repeat: int = 5  # timed runs per measurement (median reported)
    quick: bool = False  # small sizes (CI smoke test)
    backends: str | None = None  # comma-separated subset of the available CPU backends (default: all)
    threads: int | None = None  # torch CPU threads (default: each case on one thread and on all of torch's)


def _thread_counts(requested: int | None) -> list[int]:
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be >= 1; got {requested}")
        return [requested]
    every = torch.get_num_threads()
    return [1] if every == 1 else [1, every]


def measure(args: Options) -> dict:
    """Every case on every backend and thread count: ``{"anchor", "fps_anchor", "machine", "threads", "repeat",
    "rows"}``."""
    if args.repeat < 1:
        raise ValueError(f"--repeat must be >= 1; got {args.repeat}")
    thread_counts = _thread_counts(args.threads)
    cpu = torch.device("cpu")
    backends = [b for b in ops.available_backends() if ops._backend_module(b).supports(cpu, torch.float32)]
    if args.backends:
        wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
        unknown = [b for b in wanted if b not in backends]
        if unknown:
            raise ValueError(f"--backends: {', '.join(unknown)} not available on CPU here; choose from {', '.join(backends)}")
        backends = wanted
    ml3d, anchor_name = _load_open3d()
    fpsample = _load_fpsample()
    previous, previous_threads = ops.get_backend(), torch.get_num_threads()
    rows = []
    try:
        for case in _cases(args.quick):
            reference, first_anchor = None, None
            for threads in thread_counts:
                torch.set_num_threads(threads)
                runners: dict[str, Callable[[], object]] = {}
                if ml3d is not None:
                    runners["open3d"] = lambda c=case: c.anchor(ml3d, c.inputs)
                if fpsample is not None and case.op == "furthest_point_sample":
                    runners["fpsample"] = lambda c=case: _fpsample_fps(fpsample, c.inputs)
                for name in backends:
                    if case.heavy and name != "cpp":
                        continue  # a Python loop over 10^4 picks of 10^6 points: minutes per run
                    runners[name] = _backend_runner(name, case)
                    if name == "cpp" and not case.heavy:  # the brute-force scan: what cpp ran before the buckets
                        runners["cpp-scan"] = _backend_runner(name, case, "brute")
                results = _interleaved_ms(runners, args.repeat)
                anchor_ms, anchor_out, fps_ms = None, None, None
                if "open3d" in results:
                    anchor_ms, _, out, stable = results["open3d"]
                    # the indices are compared with the anchor's first output that every one of its runs
                    # repeated: open3d's FPS uses several threads whatever torch's count and its picks
                    # vary from run to run on large clouds; without one, with the brute-force reference
                    if stable and first_anchor is None:
                        first_anchor = out
                    anchor_out = first_anchor
                if "fpsample" in results:
                    fps_ms = results["fpsample"][0]
                if anchor_ms is None and "cpp" in results:
                    anchor_ms = results["cpp"][0]  # the timing anchor; the indices are checked against NumPy
                if anchor_out is None:
                    if reference is None:
                        reference = case.reference(case.inputs)
                    anchor_out = reference
                for name, (ms, cpu_ms, out, stable) in results.items():
                    rows.append({
                        "op": case.op, "case": case.label, "threads": threads, "backend": name,
                        "median_ms": round(ms, 3), "cpu_ms": round(cpu_ms, 3),
                        "x_anchor": round(ms / anchor_ms, 2) if anchor_ms else None,
                        "x_fpsample": round(ms / fps_ms, 2) if fps_ms else None,
                        "x_scan": round(ms / results["cpp-scan"][0], 2) if name == "cpp" and "cpp-scan" in results
                        else None,
                        "matches_anchor": bool(torch.equal(out, anchor_out)) if anchor_out is not None else None,
                        "stable": stable,
                    })
                    log.debug("%s %s %s %d threads %.2f ms", case.op, case.label, name, threads, ms)
    finally:
        ops.set_backend(None if previous == "auto" else previous)
        torch.set_num_threads(previous_threads)

    anchor_text = (anchor_name if ml3d is not None else
                   f"cpp backend for time, NumPy float64 brute force for indices ({anchor_name})")
    fps_text = "fpsample (bucket_fps_kdline_sampling)" if fpsample is not None else "fpsample not installed"
    return {"anchor": anchor_text, "anchor_is_compiled": ml3d is not None, "fps_anchor": fps_text,
            "machine": machine_description(), "threads": thread_counts, "repeat": args.repeat, "rows": rows}


def as_json(result: dict) -> dict:
    """The JSON object ``--json`` prints (the anchor line as it always read)."""
    anchor = result["anchor"] if result["anchor_is_compiled"] else result["anchor"].replace("cpp backend for", "cpp for")
    return {"anchor": anchor, "fps_anchor": result["fps_anchor"], "machine": result["machine"],
            "threads": result["threads"], "rows": result["rows"]}


def format_table(result: dict) -> str:
    """The markdown table of :func:`measure`'s result, with the machine, anchors and thread counts above it."""
    lines = [f"machine: {result['machine']}",
             f"anchor: {result['anchor']}; FPS anchor: {result['fps_anchor']}; CPU threads: "
             f"{', '.join(map(str, result['threads']))}; median of {result['repeat']}", "",
             "| op | case | threads | backend | median ms | CPU ms | x anchor | x fpsample | x scan | same indices as anchor "
             "| same every run |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---|---|"]
    for r in result["rows"]:
        ratios = " | ".join("-" if r[k] is None else f"{r[k]:.2f}" for k in ("x_anchor", "x_fpsample", "x_scan"))
        same = "-" if r["matches_anchor"] is None else ("yes" if r["matches_anchor"] else "no")
        lines.append(f"| {r['op']} | {r['case']} | {r['threads']} | {r['backend']} | {r['median_ms']:.2f} | "
                     f"{r['cpu_ms']:.0f} | {ratios} | {same} | {'yes' if r['stable'] else 'no'} |")
    return "\n".join(lines)
