"""A non-editable install (a wheel) carries the shipped configs and the C++ sources and finds them itself."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_carries_configs_and_resolves_them_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(dist), str(ROOT)], capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(dist.glob("pointdr2-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"pointdr2/configs/{p.relative_to(ROOT / 'configs').as_posix()}" for p in (ROOT / "configs").rglob("*.yaml")}
    assert len(shipped) > 10 and shipped <= names, sorted(shipped - names)
    assert any(n.startswith("pointdr2/ops/csrc/") and n.endswith(".cpp") for n in names)

    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                              str(target), str(wheel)], capture_output=True, text=True, check=False)
    assert install.returncode == 0, install.stderr[-3000:]
    code = ("import pointdr2, pointdr2.config as c; print(pointdr2.__file__); "
            "print(c.find_config('demo.yaml')); print(c.find_config('study/transformer-finetune')); "
            "cfg = c.load_config(c.find_config('demo.yaml'), []); print(cfg.model.depth, cfg.dataset.name)")
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    module, demo, study, loaded = run.stdout.strip().splitlines()
    for path in (module, demo, study):  # the installed copy, not the checkout
        assert Path(path).resolve().is_relative_to(target.resolve()), path
    assert loaded == "12 scanobjectnn"  # demo.yaml's _base_ (study/transformer-finetune.yaml) resolved inside the wheel
