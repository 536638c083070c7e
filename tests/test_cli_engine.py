"""pointdr2 train / eval / visualize on synthetic ScanObjectNN files, and every bad input they refuse."""

import hashlib
import json
import os

import numpy as np
import pytest
import torch

from pointdr2.cli import main
from pointdr2.data.synthetic import write_layout

CONFIG = """\
dataset: {{name: scanobjectnn, root: {root}, variant: OBJ_BG, num_points: 64}}
model: {{name: pointmae, trans_dim: 32, depth: 2, num_heads: 2, encoder_dims: 32, num_group: 8, group_size: 8,
        head_hidden: 32, drop_path_rate: 0.1}}
finetune: {{mode: dr2net, shape: linear, start_epoch: 0, end_epoch: 2, alpha: [1.0, 0.0], beta: [0.5, 1.0]}}
train: {{epochs: 2, batch_size: 16, lr: 0.001, warmup_epochs: 1, num_workers: 0}}
eval: {{batch_size: 32}}
run: {{dir: {run}, progress: false, log_every: 1}}
"""


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    write_layout("scanobjectnn", base / "data", size="test", seed=0)
    cfg = base / "tiny.yaml"
    cfg.write_text(CONFIG.format(root=base / "data", run=base / "runs" / "a"))
    assert main(["train", str(cfg)]) == 0
    return base, cfg, base / "runs" / "a"


def test_train_writes_run_dir_and_resume_is_exact(setup):
    base, cfg, run = setup
    for name in ("config.yaml", "train.log", "last.pth", "best.pth", "metrics.json"):
        assert (run / name).is_file()
    # same job stopped after epoch 1 and resumed through the CLI: identical weights and metrics
    run_b = base / "runs" / "b"
    assert main(["train", str(cfg), f"run.dir={run_b}", "--stop-after-epochs", "1"]) == 0
    assert main(["train", str(cfg), "--resume", str(run_b)]) == 0
    a = torch.load(run / "last.pth", weights_only=True)
    b = torch.load(run_b / "last.pth", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["metrics"] == b["metrics"]
    assert json.loads((run / "metrics.json").read_text()) == json.loads((run_b / "metrics.json").read_text())


def test_eval_json_and_voting(setup, capsys):
    _, cfg, run = setup
    capsys.readouterr()
    assert main(["eval", str(cfg), "--checkpoint", str(run / "best.pth"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"oa", "macc", "acc_per_class"} <= set(out) and out["count"] == 30
    assert 0.0 <= out["oa"] <= 100.0
    # the dr2net surrogate at the checkpoint's coefficients gave these numbers: training's own test
    metrics = json.loads((run / "metrics.json").read_text())
    assert out["oa"] == pytest.approx(metrics["test"]["oa"])
    assert main(["eval", str(cfg), "--checkpoint", str(run / "best.pth"), "--vote", "3", "--json"]) == 0
    voted = json.loads(capsys.readouterr().out)
    assert voted["vote"] == 3 and voted["count"] == 30


def test_visualize_writes_png_with_class_colours_and_ply(setup, tmp_path, capsys):
    import matplotlib.image as mpimg

    from pointdr2.data import build_dataset
    from pointdr2.viz import palette, read_ply

    _, cfg, run = setup
    out = tmp_path / "vis.png"
    assert main(["visualize", str(cfg), "--checkpoint", str(run / "best.pth"), "--index", "3", "--out", str(out),
                 "--style", "render", "--color", "gt", "--width", "320", "--height", "240", "--point-size", "6"]) == 0
    img = mpimg.imread(out)[..., :3]
    assert img.shape == (240, 320, 3)
    base = cfg.parent
    label = int(build_dataset({"name": "scanobjectnn", "root": str(base / "data"), "variant": "OBJ_BG",
                               "num_points": 64}, "test")[3]["label"])
    colour = palette(15)[label]
    close = np.abs(img - colour).max(axis=-1) < 3 / 255
    assert close.sum() >= 20  # the ground-truth class colour is drawn
    assert (np.abs(img - 1.0).max(axis=-1) < 1e-6).mean() > 0.5  # on a white background
    xyz, colors = read_ply(tmp_path / "vis_gt.ply")
    assert xyz.shape == (64, 3) and np.allclose(colors, colour, atol=1 / 255)
    for kind in ("pred", "error"):
        assert (tmp_path / f"vis_{kind}.ply").stat().st_size > 0


def _fails(argv, capsys, match):
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and match in err[0], err
    return err[0]


def test_bad_inputs_give_one_line_errors_and_leave_files_intact(setup, tmp_path, capsys):
    base, cfg, run = setup
    before = {p.name: sha(p) for p in run.iterdir() if p.is_file()}
    # an existing run directory is refused without --resume/--force
    _fails(["train", str(cfg)], capsys, "already exists")
    # unknown config key, with the closest known key named
    _fails(["train", str(cfg), "train.epoch=3"], capsys, "did you mean train.epochs")
    # missing and foreign checkpoints
    _fails(["eval", str(cfg), "--checkpoint", str(tmp_path / "none.pth")], capsys, "not found")
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": {"some.other.weight": torch.zeros(3)}}, foreign)
    _fails(["eval", str(cfg), "--checkpoint", str(foreign)], capsys, "foreign.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint")
    _fails(["eval", str(cfg), "--checkpoint", str(garbage)], capsys, "not a readable PyTorch checkpoint")
    # dataset root missing
    _fails(["eval", str(cfg), "--checkpoint", str(run / "best.pth"), f"dataset.root={tmp_path / 'nowhere'}"], capsys,
           "nowhere")
    # resume without a run / with --force
    _fails(["train", str(cfg), "--resume", str(tmp_path)], capsys, "last.pth")
    _fails(["train", str(cfg), "--resume", str(run), "--force"], capsys, "exclude each other")
    _fails(["visualize", str(cfg), "--checkpoint", str(run / "best.pth"), "--out", str(tmp_path / "x.jpg")], capsys,
           ".png")
    _fails(["visualize", str(cfg), "--checkpoint", str(run / "best.pth"), "--index", "999",
            "--out", str(tmp_path / "x.png")], capsys, "--index")
    after = {p.name: sha(p) for p in run.iterdir() if p.is_file()}
    assert after == before
    assert not os.path.exists(tmp_path / "x.png")


def test_a_run_directory_is_enough_for_resume_eval_and_the_printed_hint(setup, capsys, caplog):
    """Trained with overrides; then every command from the run directory alone, as the hints say."""
    base, cfg, run = setup
    run_c = base / "runs" / "c"
    assert main(["train", str(cfg), f"run.dir={run_c}", "train.lr=0.002", "--stop-after-epochs", "1"]) == 0
    hint = next(r.getMessage() for r in caplog.records if "continue with:" in r.getMessage())
    command = hint.split("continue with: ", 1)[1].split()
    assert command == ["pointdr2", "train", "--resume", str(run_c)]
    assert main(command[1:]) == 0  # pasted as printed (the overrides live in run_c/config.yaml)
    assert torch.load(run_c / "last.pth", weights_only=True)["config"]["train"]["lr"] == 0.002
    capsys.readouterr()
    assert main(["eval", str(run_c), "--json"]) == 0
    by_run = json.loads(capsys.readouterr().out)
    assert main(["eval", "--checkpoint", str(run_c / "best.pth"), "--json"]) == 0
    by_ckpt = json.loads(capsys.readouterr().out)
    assert main(["eval", str(cfg), f"run.dir={run_c}", "train.lr=0.002", "--checkpoint", str(run_c / "best.pth"),
                 "--json"]) == 0
    by_config = json.loads(capsys.readouterr().out)
    assert by_run["oa"] == by_ckpt["oa"] == by_config["oa"] and by_run["checkpoint"] == str(run_c / "best.pth")
    # a directory that is not a run, and a checkpoint with no config beside it, say what is missing
    _fails(["eval", str(base)], capsys, "not a run directory")
    lone = base / "lone.pth"
    lone.write_bytes((run_c / "best.pth").read_bytes())
    _fails(["eval", "--checkpoint", str(lone)], capsys, "no CONFIG given and no config.yaml beside")


def test_visualize_figure_is_a_labelled_grid(setup, tmp_path):
    import matplotlib.image as mpimg

    _, _, run = setup
    out = tmp_path / "grid.png"
    assert main(["visualize", str(run), "--count", "8", "--out", str(out)]) == 0
    img = mpimg.imread(out)[..., :3]
    assert img.shape[0] > 200 and img.shape[1] > 600 and (np.abs(img - 1.0).max(axis=-1) > 0.1).sum() > 500


def test_check_finds_mistakes_as_n_processes_would_without_touching_the_run(setup, tmp_path, capsys):
    base, cfg, run = setup
    before = {p.name: sha(p) for p in run.iterdir() if p.is_file()}
    fresh = tmp_path / "fresh"
    assert main(["train", str(cfg), f"run.dir={fresh}", "--check", "--nproc", "2"]) == 0
    assert not fresh.exists()  # nothing written, no process group joined
    # global batch 16 over 3 processes: found before any process starts
    _fails(["train", str(cfg), f"run.dir={fresh}", "--check", "--nproc", "3"], capsys, "divisible by train.accumulate=1 x 3")
    _fails(["train", str(cfg), f"run.dir={fresh}", f"dataset.root={tmp_path / 'nowhere'}", "--check", "--nproc", "2"], capsys,
           "nowhere")
    _fails(["train", str(cfg), "--check", "--nproc", "2"], capsys, "already exists")  # the run directory policy too
    assert main(["train", str(cfg), "--resume", str(run), "--check", "--nproc", "2"]) == 0  # reads last.pth, changes nothing
    assert {p.name: sha(p) for p in run.iterdir() if p.is_file()} == before


def test_dist_train_script_reports_a_bad_config_once_before_spawning(setup, tmp_path):
    import subprocess
    import sys
    import time
    from pathlib import Path

    base, cfg, _ = setup
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    t0 = time.monotonic()
    done = subprocess.run(["bash", str(root / "scripts" / "dist_train.sh"), "2", str(cfg), f"run.dir={tmp_path / 'r'}",
                           "train.epoch=3"], env=env, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - t0
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "did you mean train.epochs" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr and seconds < 60
    bad = subprocess.run(["bash", str(root / "scripts" / "dist_train.sh"), "two", str(cfg)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "NPROC must be a positive integer" in bad.stderr


def test_one_run_per_directory_and_stale_temp_files_go(setup, tmp_path, capsys):
    import shutil

    from pointdr2.engine.run_lock import LOCK_NAME, RunLock

    base, cfg, run = setup
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    def files():  # the lock file says who holds the directory: it changes with the holder
        return {p.name: sha(p) for p in copy.iterdir() if p.is_file() and p.name != LOCK_NAME}

    before = files()
    with RunLock(copy):  # another process's run (flock: a second open file conflicts even in one process)
        _fails(["train", str(cfg), f"run.dir={copy}", "--force"], capsys, "is in use by another run (pid ")
        _fails(["train", "--resume", str(copy)], capsys, "is in use by another run")
        _fails(["train", "--resume", str(copy), "--check"], capsys, "is in use by another run")
    assert files() == before  # nothing touched
    # a killed save's temp file is removed by the next run on the directory (here: a resume)
    (copy / ".last.pth.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    assert main(["train", "--resume", str(copy)]) == 0
    assert not list(copy.glob(".*.tmp")) and (copy / LOCK_NAME).is_file()
    # a run whose data (or memory budget) fails in set-up fails before claiming the directory: nothing is written
    fresh = tmp_path / "fresh"
    _fails(["train", str(cfg), f"run.dir={fresh}", f"dataset.root={tmp_path / 'nowhere'}"], capsys, "nowhere")
    assert not fresh.exists()
    assert main(["train", str(cfg), f"run.dir={fresh}", "train.epochs=1"]) == 0  # no --force needed
