"""Progress: bars on a terminal only, log lines in files, points counted in whole-room inference."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pointdr2 import progress
from pointdr2.data.synthetic import write_layout
from pointdr2.engine.evaluator import evaluate
from pointdr2.engine.rooms import predict_room

ROOT = Path(__file__).resolve().parents[1]


def test_style_follows_the_environment_and_refuses_unknown_values(monkeypatch):
    for value in progress.STYLES:
        monkeypatch.setenv("POINTDR2_PROGRESS", value)
        assert progress.style() == value
    monkeypatch.setenv("POINTDR2_PROGRESS", "loud")
    with pytest.raises(ValueError, match="POINTDR2_PROGRESS must be one of bar, log, off, got 'loud'"):
        progress.style()
    monkeypatch.delenv("POINTDR2_PROGRESS")
    assert progress.style() == ("bar" if sys.stderr.isatty() else "log")


def test_log_progress_writes_lines_with_counts_and_percent(monkeypatch, caplog):
    monkeypatch.setenv("POINTDR2_PROGRESS", "log")
    caplog.set_level(logging.INFO, logger="pointdr2.progress")
    bar = progress.bar(range(8), desc="eval room 1/2", unit="pt", every=0.0)
    assert isinstance(bar, progress.LogProgress)
    assert list(bar) == list(range(8))
    assert bar.lines == 8
    messages = [r.getMessage() for r in caplog.records]
    assert messages[2].startswith("eval room 1/2: 3/8 pt (38%), ") and "left" in messages[2]
    assert messages[-1].startswith("eval room 1/2: 8/8 pt (100%)") and "left" not in messages[-1]
    quiet = progress.bar(range(8), desc="x", every=1e9)
    assert list(quiet) == list(range(8)) and quiet.lines == 0  # a short wait writes nothing
    silent = progress.bar(range(3), desc="x", log_lines=False)  # the trainer logs on its own
    assert not isinstance(silent, progress.LogProgress) and silent.disable
    monkeypatch.setenv("POINTDR2_PROGRESS", "bar")
    assert progress.bar(range(3), enabled=False).disable


def test_training_redirected_to_a_file_has_no_bar_but_a_terminal_style_run_does(tmp_path):
    write_layout("scanobjectnn", tmp_path / "data", size="test", seed=0)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"""\
dataset: {{name: scanobjectnn, root: {tmp_path / 'data'}, variant: OBJ_BG, num_points: 64}}
model: {{name: pointmae, trans_dim: 32, depth: 2, num_heads: 2, encoder_dims: 32, num_group: 8, group_size: 8,
        head_hidden: 32}}
finetune: {{mode: conventional}}
train: {{epochs: 1, batch_size: 8, num_workers: 0}}
run: {{dir: {tmp_path / 'run'}, progress: true, log_every: 1}}
""")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("POINTDR2_PROGRESS", None)
    outs = {}
    for style in ("", "bar"):
        run_env = {**env, "POINTDR2_PROGRESS": style} if style else env
        done = subprocess.run([sys.executable, "-m", "pointdr2", "train", str(cfg), "--force"], env=run_env,
                              capture_output=True, timeout=300)  # bytes: text mode would turn \r into \n
        assert done.returncode == 0, done.stderr[-2000:]
        outs[style] = (done.stdout + done.stderr).decode()
    assert "\r" not in outs[""] and "epoch 1/1" in outs[""]  # log lines (log_every), no bar in a pipe
    assert "\r" in outs["bar"]  # the same run drawing its bar: the check above can fail
    assert "\r" not in (tmp_path / "run" / "train.log").read_text()


class _Room:
    """Two passes of a 40-point room (pass 0: 30 points, pass 1: 25), the S3DISRoom protocol."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.num_points = 40
        self.labels = torch.randint(0, 3, (40,), generator=gen)
        self._passes = []
        for n in (30, 25):
            index = torch.randperm(40, generator=gen)[:n]
            self._passes.append({"pos": torch.rand(n, 3, generator=gen), "feats": torch.rand(4, n, generator=gen),
                                 "index": index})
        self.pass_points = 55

    def passes(self):
        return iter(self._passes)


class _PerPoint(torch.nn.Module):
    num_classes = 3

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Conv1d(4, 3, 1)

    def forward(self, pos, feats):
        return self.lin(feats)


@pytest.mark.parametrize("max_points", [None, 8, 13])
def test_predict_room_reports_every_pass_point_once(max_points):
    room, calls, net = _Room(), [], _PerPoint().eval()
    logits = predict_room(net, room.passes(), room.num_points, max_points=max_points,
                          on_points=calls.append)
    assert sum(calls) == room.pass_points  # context points of overlapping chunks are not counted twice
    if max_points is not None:
        assert len(calls) > 2 and max(calls) <= max_points
    # the counter does not change the result: the same logits without it
    torch.testing.assert_close(logits, predict_room(net, room.passes(), room.num_points,
                                                    max_points=max_points), rtol=0, atol=0,
                               equal_nan=True)


def test_whole_room_evaluation_counts_points_through_the_predictor():
    class Rooms(torch.utils.data.Dataset):
        whole_room = True
        num_classes = 3

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return _Room()

    seen = []

    def predictor(net, room, device, on_points=None):
        out = predict_room(net, room.passes(), room.num_points, max_points=10, device=device, on_points=on_points)
        seen.append(on_points is not None)
        return out

    counted = []

    def counting(net, room, device, on_points):
        def spy(n):
            counted.append(n)
            on_points(n)
        return predictor(net, room, device, on_points=spy)

    net = _PerPoint()
    metrics = evaluate(net, Rooms(), device=torch.device("cpu"), room_predictor=counting, progress=False)
    assert seen == [True, True] and sum(counted) == 2 * 55
    plain = evaluate(net, Rooms(), device=torch.device("cpu"),
                     room_predictor=lambda net, room, device: predictor(net, room, device), progress=False)
    assert plain["miou"] == metrics["miou"]  # an old-style predictor (no on_points) still works
