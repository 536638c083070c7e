"""The C++ build cache: one build directory per torch installation, and reloads never rebuild."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pointdr2
from pointdr2 import ops
from pointdr2.ops import cpp_backend


def _fake_install(root, monkeypatch) -> None:
    """Make cpp_backend see a torch package under ``root`` and a Python environment at ``root``."""
    package = root / "lib" / "site-packages" / "torch"
    package.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(torch, "__file__", str(package / "__init__.py"))
    monkeypatch.setattr(sys, "prefix", str(root))


def test_build_key_tells_torch_installations_apart(tmp_path, monkeypatch):
    _fake_install(tmp_path / "env-a", monkeypatch)
    key_a, dir_a = cpp_backend.build_key(), cpp_backend.build_dir()
    assert cpp_backend.build_key() == key_a  # the same installation: the same key
    (tmp_path / "link").symlink_to(tmp_path / "env-a")
    _fake_install(tmp_path / "link", monkeypatch)
    assert cpp_backend.build_key() == key_a  # the same installation reached through a symlink
    _fake_install(tmp_path / "env-b", monkeypatch)  # same torch version, another venv
    key_b = cpp_backend.build_key()
    assert key_b != key_a and cpp_backend.build_dir() != dir_a and key_b in cpp_backend.build_dir().name
    _fake_install(tmp_path / "env-a", monkeypatch)
    assert cpp_backend.build_key() == key_a


def test_build_key_tells_checkouts_of_the_same_source_apart(tmp_path, monkeypatch):
    """A second checkout (clone, git worktree) of the same source builds in its own directory."""
    key = cpp_backend.build_key()
    copy = tmp_path / "other-checkout" / "grouping.cpp"
    copy.parent.mkdir()
    copy.write_bytes(cpp_backend.SOURCE.read_bytes())
    monkeypatch.setattr(cpp_backend, "SOURCE", copy)
    assert cpp_backend.build_key() != key
    monkeypatch.undo()
    assert cpp_backend.build_key() == key


@pytest.mark.skipif("cpp" not in ops.available_backends(), reason="no C++ compiler/ninja")
def test_reloading_and_alternating_installations_do_not_rebuild(tmp_path, monkeypatch):
    cpp_backend.load()
    directory = cpp_backend.build_dir()
    so = directory / f"{cpp_backend._ext_name()}.so"
    ninja = directory / "build.ninja"
    before = so.stat().st_mtime_ns, ninja.read_bytes()
    # another installation would build elsewhere and leave this build alone
    with monkeypatch.context() as m:
        _fake_install(tmp_path / "other-env", m)
        assert cpp_backend.build_dir() != directory and not cpp_backend.is_built()
    # a fresh process of this installation loads the cached build without compiling
    code = ("import torch; from pointdr2.ops import cpp_backend as c; c.load(); "
            "print(c.load().furthest_point_sample(torch.rand(1, 9, 3), 3, torch.empty(0, dtype=torch.uint8), 0, 1).shape)")
    root = str(Path(pointdr2.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, *sys.path]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (so.stat().st_mtime_ns, ninja.read_bytes()) == before
