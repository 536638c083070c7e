"""Saved-tensor accounting (hand-counted bytes) and the run logger's files."""

import logging

import torch
from torch import nn

from pointdr2.engine.logger import RunLogger
from pointdr2.engine.memory import SavedTensorMeter


def test_saved_tensor_meter_counts_distinct_activation_storages_only():
    layer = nn.Linear(20, 5)
    x = torch.randn(10, 20, requires_grad=True)
    with SavedTensorMeter(exclude=layer) as meter:
        h = x.exp()           # saves its result h: 10*20*4 = 800 bytes
        y = (h * h).sum()     # saves h twice: same storage, counted once
        z = layer(h).sum()    # saves h (again) and the weight (a parameter: excluded)
    assert meter.bytes == 800
    (y + z).backward()
    assert x.grad is not None
    with SavedTensorMeter() as everything:
        layer(torch.randn(3, 20, requires_grad=True)).sum()
    assert everything.bytes == 3 * 20 * 4 + 5 * 20 * 4  # input and weight


def test_run_logger_writes_log_file_and_events(tmp_path):
    log = logging.getLogger("pointdr2.engine.test")
    with RunLogger(tmp_path, enabled=True) as run:
        log.info("hello from the run")
        run.scalar("train/loss", 1.5, 1)
        run.scalar("train/loss", float("nan"), 2)  # skipped, not written as NaN
    assert "hello from the run" in (tmp_path / "train.log").read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 1.5)]
    # other ranks write nothing
    other = tmp_path / "rank1"
    with RunLogger(other, enabled=False):
        log.info("not written")
    assert not other.exists()
