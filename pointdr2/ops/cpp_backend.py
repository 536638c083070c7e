"""C++ CPU backend: ``csrc/grouping.cpp`` JIT-compiled with torch.utils.cpp_extension on first use.

The build lives in ``~/.cache/pointdr2/ops-<key>`` (``POINTDR2_CACHE`` overrides the root), where
the key hashes the source, the compiler flags, the torch version, the CPU's instruction-set flags
and which torch installation, Python environment and checkout build it (see :func:`build_key`), so
it is compiled once per machine, torch install and checkout and later loads in well under a second.
Nothing is compiled at import time or by :func:`is_available` (used by ``pointdr2 info``).
A failed build raises :class:`~pointdr2.ops.BackendUnavailable`; the dispatcher logs ONE warning
and uses the torch backend from then on.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import platform
import shutil
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import torch

from pointdr2.ops import BackendUnavailable, radius_squared

log = logging.getLogger(__name__)

NAME = "cpp"
SOURCE = Path(__file__).with_name("csrc") / "grouping.cpp"
# No FMA contraction: distances must round exactly like the torch backend's.
CFLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp")
LDFLAGS = ("-fopenmp",)

_lock = threading.Lock()
_module: ModuleType | None = None
_error: str | None = None

# Bucketed (kd-tree) paths: exact like the brute-force scans (same indices and distances bit for
# bit; see csrc/grouping.cpp), faster on large inputs. The bucket sizes and the sizes from which the
# tree is used are where it overtook the scan on one thread (tree build and traversal overheads
# dominate below them; ball query's scan stops early once nsample hits are found, so it holds out
# longer than kNN's). Bucket sizes: FPS leaves are swept once per pick, so larger is better; ball
# query and kNN buckets are at most 64 points (one distance block).
FPS_LEAF = 128
SEARCH_LEAF = 64
FPS_TREE_MIN_N = 4096          # FPS: points per cloud ...
FPS_TREE_MIN_WORK = 1 << 22    # ... and N * npoint (distance evaluations of the scan)
KNN_TREE_MIN_N = 1024          # kNN / three_nn: support points per cloud, queries per cloud, k * 8 <= N
KNN_TREE_MIN_QUERIES = 64
FPS_TEAM_MIN_N = 1 << 18      # FPS with fewer clouds than threads: from this many points per cloud, each
                               # cloud is shared by all threads (one barrier per pick). Measured on 2 cores:
                               # 7-10 % faster at 400k-1M points, even at 200k, slower below (the picks of a
                               # pruned tree are microseconds; the serial tree build is half the time at 1M)
BALL_TREE_MIN_N = 4096         # ball query: points per cloud and queries per cloud
BALL_TREE_MIN_QUERIES = 256
_MAX_SEARCH_LEAF = 64


class _Forced(NamedTuple):
    """What :func:`forced_path` set (None: chosen by size)."""

    path: str
    leaf: int | None
    team: int | None
    prefix: int | None


_forced: _Forced | None = None


@contextlib.contextmanager
def forced_path(path: str, leaf: int | None = None, team: int | None = None, prefix: int | None = None):
    """Run every cpp op on one path whatever the size: ``"tree"`` (kd-tree buckets of at most
    ``leaf`` points; default the op's own bucket size; ball query and kNN take at most 64) or
    ``"brute"`` (the full scans); ``team``: threads per cloud of the kd-tree FPS (default: chosen
    by size, :func:`fps_team`); ``prefix``: points the kd-tree ball query scans in index order
    before it asks the tree (default 256; 0: the tree alone). For tests and benchmarks; not thread-safe."""
    global _forced
    if path not in ("tree", "brute"):
        raise ValueError(f"path must be 'tree' or 'brute'; got {path!r}")
    for name, value, low in (("leaf", leaf, 1), ("team", team, 1), ("prefix", prefix, 0)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            kind = "a positive" if low else "a non-negative"
            raise ValueError(f"{name} must be {kind} integer or None; got {value!r}")
    previous, _forced = _forced, _Forced(path, leaf, team, prefix)
    try:
        yield
    finally:
        _forced = previous


def _leaf(use_tree: bool, default: int) -> int:
    """The kernels' ``leaf`` argument: 0 for the brute-force scan, else the bucket size."""
    if _forced is not None:
        return (_forced.leaf or default) if _forced.path == "tree" else 0
    return default if use_tree else 0


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _installation() -> tuple[str, ...]:
    """Which torch installation, Python environment and pointdr2 checkout would build the extension.

    Two environments with the same torch version still differ in the include and library paths
    that torch's ``load()`` writes into ``build.ninja``, and two checkouts (a clone, a git worktree)
    of the same source differ in the source path written there; sharing one build directory made
    each of them rewrite the file and recompile on every alternate load (about a minute each). The
    resolved torch package directory, ``sys.prefix`` and the source file's path tell them apart.
    """
    torch_dir = Path(torch.__file__).resolve().parent
    return str(torch_dir), str(Path(sys.prefix).resolve()), str(SOURCE.resolve())


def build_key() -> str:
    """16 hex digits naming one build: source and its path, flags, torch version and installation, Python, CPU."""
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(CFLAGS + LDFLAGS).encode(), torch.__version__.encode(),
                 sys.version.encode(), platform.machine().encode(), _cpu_flags().encode(),
                 *(p.encode() for p in _installation())):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def build_dir() -> Path:
    root = Path(os.environ.get("POINTDR2_CACHE", Path.home() / ".cache" / "pointdr2")).expanduser()
    return root / f"ops-{build_key()}"


def _ext_name() -> str:
    return f"pointdr2_ops_cpu_{build_key()}"


def is_built() -> bool:
    return (build_dir() / f"{_ext_name()}.so").exists()


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


def is_available() -> bool:
    """A compiler and ninja exist (or the extension is already built) and no build has failed."""
    if _error is not None:
        return False
    if _module is not None or is_built():
        return True
    from torch.utils.cpp_extension import is_ninja_available

    return _compiler() is not None and is_ninja_available()


def status() -> str:
    if _error is not None:
        return f"build failed: {_error}"
    if _module is not None:
        return "loaded"
    if is_built():
        return f"built ({build_dir()})"
    return "available (compiles on first use, ~30 s)" if is_available() else "unavailable (needs a C++ compiler and ninja)"


def supports(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cpu" and dtype in (torch.float32, torch.float64)


def load() -> ModuleType:
    """Build (once) and import the extension; raises BackendUnavailable when that is impossible."""
    global _module, _error
    if _module is not None:
        return _module
    if _error is not None:
        raise BackendUnavailable(_error)
    with _lock:
        if _module is not None:
            return _module
        from torch.utils.cpp_extension import load as load_extension

        directory = build_dir()
        directory.mkdir(parents=True, exist_ok=True)
        if not is_built():
            log.info("compiling the C++ CPU ops once into %s (about 30 s)", directory)
        output = io.StringIO()
        try:
            # The build tools write to stdout/stderr and cpp_extension may warn; keep both off the
            # user's terminal (and out of pytest's warnings-as-errors) and report failures in one line.
            with warnings.catch_warnings(), contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
                warnings.simplefilter("ignore")
                _module = load_extension(
                    name=_ext_name(), sources=[str(SOURCE)], build_directory=str(directory),
                    extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS), verbose=False,  # load() mutates them
                )
        except Exception as exc:  # noqa: BLE001 - any build/import failure means "fall back to torch"
            detail = str(exc).strip().splitlines()
            _error = f"{type(exc).__name__}: {detail[-1] if detail else ''}"[:300]
            log.debug("C++ build output:\n%s", output.getvalue())
            raise BackendUnavailable(_error) from exc
        return _module


def furthest_point_sample(xyz: torch.Tensor, npoint: int, *, skip_origin: bool = False) -> torch.Tensor:
    from pointdr2.ops import origin_skip_mask

    skip = origin_skip_mask(xyz).to(torch.uint8) if skip_origin else torch.empty(0, dtype=torch.uint8)
    n = xyz.shape[1]
    leaf = _leaf(n >= FPS_TREE_MIN_N and n * npoint >= FPS_TREE_MIN_WORK, FPS_LEAF)
    return load().furthest_point_sample(xyz, int(npoint), skip, leaf, fps_team(xyz.shape[0], n, leaf))


def fps_team(batch: int, n: int, leaf: int) -> int:
    """Threads per cloud of the kd-tree FPS: all of torch's threads for fewer clouds than threads of
    ``FPS_TEAM_MIN_N`` points or more (``forced_path(..., team=)`` overrides), else 1 (one thread per cloud)."""
    if _forced is not None and _forced.team is not None:
        return _forced.team
    threads = torch.get_num_threads()
    return threads if leaf and batch < threads and n >= FPS_TEAM_MIN_N else 1


def _knn_leaf(query: torch.Tensor, support: torch.Tensor, k: int) -> int:
    n = support.shape[1]
    use = n >= KNN_TREE_MIN_N and query.shape[1] >= KNN_TREE_MIN_QUERIES and 8 * k <= n
    return min(_leaf(use, SEARCH_LEAF), _MAX_SEARCH_LEAF)


def ball_query(xyz: torch.Tensor, new_xyz: torch.Tensor, radius: float, nsample: int) -> torch.Tensor:
    use = xyz.shape[1] >= BALL_TREE_MIN_N and new_xyz.shape[1] >= BALL_TREE_MIN_QUERIES
    leaf = min(_leaf(use, SEARCH_LEAF), _MAX_SEARCH_LEAF)
    prefix = -1 if _forced is None or _forced.prefix is None else _forced.prefix
    return load().ball_query(xyz, new_xyz, radius_squared(radius, xyz.dtype), int(nsample), leaf, prefix)


def knn(query: torch.Tensor, support: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    dist, idx = load().knn(query, support, int(k), _knn_leaf(query, support, k))
    return dist, idx


def three_nn(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sq, idx = load().knn(unknown, known, 3, _knn_leaf(unknown, known, 3))
    return sq.sqrt_(), idx
