"""A non-editable install (a wheel) carries the shipped configs and the C++ sources and finds them itself;
installed in a fresh virtual environment, its console script trains and evaluates from another directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(dist), str(ROOT)], capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stderr[-3000:]
    return next(dist.glob("pointdr2-*.whl"))


def test_wheel_carries_configs_and_resolves_them_outside_the_checkout(tmp_path, wheel):
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


def test_wheel_in_a_fresh_venv_trains_and_evaluates_from_another_directory(tmp_path, wheel):
    """``pointdr2 info``, ``prepare synthetic``, a one-epoch ``train`` of a shipped config by name and ``eval`` of
    its run, by the console script of a new virtual environment that holds only the wheel (its dependencies
    come from this environment as a plain path entry, which does not load this checkout's editable install)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                              "-q", str(wheel)], capture_output=True, text=True, check=False)
    assert install.returncode == 0, install.stderr[-3000:]
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "zz_test_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(POINTDR2_OPS_BACKEND="torch", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    exe = str(venv / "bin" / "pointdr2")

    def run(*args: str) -> str:
        done = subprocess.run([exe, *args], capture_output=True, text=True, cwd=work, env=env, timeout=600,
                              check=False)
        assert done.returncode == 0, (args, done.stderr[-3000:])
        return done.stdout

    where = subprocess.run([str(py), "-c", "import pointdr2; print(pointdr2.__file__)"], capture_output=True,
                           text=True, cwd=work, env=env, check=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where  # the wheel's copy, not the checkout
    assert run("info").startswith("pointdr2 ")
    run("prepare", "synthetic", "--layout", "scanobjectnn", "--size", "test", "--out", "data/scanobjectnn")
    run("train", "scanobjectnn/pointmae", "dataset.root=data/scanobjectnn", "dataset.variant=OBJ_BG",
        "dataset.num_points=64", "model.trans_dim=32", "model.depth=2", "model.num_heads=2", "model.encoder_dims=32",
        "model.num_group=8", "model.group_size=8", "model.head_hidden=32", "train.epochs=1", "train.batch_size=16",
        "train.warmup_epochs=0", "train.num_workers=0", "eval.batch_size=32", "run.dir=runs/one", "run.progress=false")
    assert (work / "runs" / "one" / "best.pth").is_file()
    out = json.loads(run("eval", "runs/one", "--json"))
    assert out["task"] == "classification" and out["count"] > 0 and 0.0 <= out["oa"] <= 100.0
