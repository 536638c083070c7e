"""DDP with 2 gloo processes (torchrun) against one process on the same data and global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_worker import run

from pointdr2.engine.checkpoint import load_checkpoint
from pointdr2.engine.distributed import EpochSampler, ShardSampler

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def test_epoch_sampler_global_batches_do_not_depend_on_world_size():
    one = list(EpochSampler(50, 8, seed=3, rank=0, world_size=1))
    two = [list(EpochSampler(50, 4, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(one) == 48 and all(len(t) == 24 for t in two)
    for k in range(6):  # global batch k of 2 x 4 == batch k of 1 x 8, as sets
        assert sorted(one[8 * k: 8 * k + 8]) == sorted(two[0][4 * k: 4 * k + 4] + two[1][4 * k: 4 * k + 4])
    s = EpochSampler(50, 8, seed=3)
    s.set_epoch(1)
    assert list(s) != one  # a new order every epoch ...
    s.set_epoch(0, start_batch=2)
    assert list(s) == one[16:]  # ... and the same order for the same (seed, epoch)
    s2 = EpochSampler(50, 4, seed=0, batches_multiple_of=4)
    assert len(s2) == 48 and s2.num_batches == 12
    with pytest.raises(ValueError, match="fewer than one global batch"):
        EpochSampler(5, 4, world_size=2)


def test_shard_sampler_covers_every_sample_once():
    shards = [list(ShardSampler(13, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(13))


def test_two_gloo_processes_match_one_process(tmp_path):
    single = run(str(tmp_path / "one"))
    ref = tmp_path / "one" / "run" / "last.pth"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "ddp_worker.py"), str(tmp_path / "two"), str(ref)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    double = json.loads((tmp_path / "two" / "eval.json").read_text())
    assert double["world"] == 2 and single["world"] == 1
    # evaluation reduction is exact: summed confusion matrices of the two shards == one process
    one_eval = run_eval_single(ref)
    assert double["eval_confusion"] == one_eval and double["eval_count"] == 13
    # one training epoch with 2 procs x batch 4 == 1 proc x batch 8 (BN-free model, no dropout)
    a = load_checkpoint(ref)["model"]
    b = load_checkpoint(tmp_path / "two" / "run" / "last.pth")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert double["test"]["oa"] == single["test"]["oa"] and double["best"] == single["best"]


def run_eval_single(ckpt):
    from engine_tiny import blobs_fn, tiny_model_fn

    from pointdr2.engine.evaluator import evaluate
    from pointdr2.engine.trainer import load_model_weights

    model = tiny_model_fn()({"num_classes": 3})
    load_model_weights(model, ckpt)
    test_set = blobs_fn({"test": 13}, jitter=0.0)(None, "test")
    return evaluate(model, test_set, device=torch.device("cpu"), batch_size=4, progress=False)["confusion"]
