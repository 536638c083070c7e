"""Training loop: exact resume (epoch boundary and mid-epoch signal), NaN stop, run files."""

import hashlib
import json
import os
import signal

import pytest
import torch
from engine_tiny import Blobs, blobs_fn, engine_config, tiny_model_fn, tiny_transformer_overrides

from pointdr2.engine.checkpoint import load_checkpoint
from pointdr2.engine.trainer import TrainingDiverged, TrainingInterrupted, train

DR2NET = [*tiny_transformer_overrides(), "finetune.mode=dr2net", "finetune.shape=linear", "finetune.end_epoch=2",
          "finetune.alpha=[1.0, 0.2]", "finetune.beta=[0.5, 1.0]", "finetune.per_step=true"]


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = tmp_path_factory.mktemp("full") / "run"
    result = train(engine_config(run, *DR2NET), dataset_fn=blobs_fn())
    return run, result


def test_uninterrupted_run_writes_its_files(uninterrupted):
    run, result = uninterrupted
    assert result.epochs_done == 2 and result.global_step == 6
    for name in ("config.yaml", "train.log", "last.pth", "best.pth", "metrics.json"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    ckpt = load_checkpoint(run / "last.pth")
    # per-step schedule at fractional epochs: the checkpoint holds the values at t = 2 (the end)
    assert ckpt["finetune"]["mode"] == "dr2net"
    assert ckpt["schedule"]["alpha"] == pytest.approx(0.2) and ckpt["schedule"]["beta"] == pytest.approx(1.0)
    assert ckpt["finetune"]["alpha"] == pytest.approx(0.2)
    steps = [line for line in (run / "train.log").read_text().splitlines() if " step " in line]
    assert "alpha=0.867 beta=0.583" in steps[1]  # step 2 ran at t = 1/3: alpha 1 - 0.8/6, beta 0.5 + 0.5/6
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 6 and ckpt["step_in_epoch"] == 0
    assert set(ckpt["rng"]["0"]) >= {"python", "numpy", "torch"}
    assert {"optimizer", "scheduler", "config", "best_metric"} <= set(ckpt)
    log_text = (run / "train.log").read_text()
    assert "reconstruction_error=" in log_text and "alpha=" in log_text and "validation split" in log_text
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["select_on"] == "val" and "oa" in metrics["test"]


def test_stop_after_epoch_then_resume_is_bit_identical(uninterrupted, tmp_path):
    run_full, result_full = uninterrupted
    run = tmp_path / "run"
    first = train(engine_config(run, *DR2NET), stop_after_epochs=1, dataset_fn=blobs_fn())
    assert first.stopped_early and first.epochs_done == 1
    assert load_checkpoint(run / "last.pth")["epoch"] == 1
    second = train(engine_config(run, *DR2NET), resume=True, dataset_fn=blobs_fn())
    assert second.epochs_done == 2
    a, b = load_checkpoint(run_full / "last.pth"), load_checkpoint(run / "last.pth")
    _same_state(a["model"], b["model"])
    assert a["metrics"] == b["metrics"] and a["best_metric"] == b["best_metric"]
    assert a["schedule"] == b["schedule"] and a["scheduler"] == b["scheduler"]
    assert second.test_metrics == result_full.test_metrics


def test_sigint_mid_epoch_saves_and_resume_is_bit_identical(uninterrupted, tmp_path):
    run_full, _ = uninterrupted
    run = tmp_path / "run"
    fetched = {"n": 0}

    def interrupt_once(i):
        fetched["n"] += 1
        if fetched["n"] == 12:  # during the 2nd step of epoch 1 (steps of 8 samples)
            os.kill(os.getpid(), signal.SIGINT)

    def dataset_fn(cfg, split, **kw):
        ds = blobs_fn()(cfg, split)
        if split == "train":
            ds.fetch_hook = interrupt_once
        return ds

    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under `nohup ... &`
    with pytest.raises(TrainingInterrupted, match="interrupted by SIGINT in epoch 1"):
        train(engine_config(run, *DR2NET), dataset_fn=dataset_fn)
    saved = load_checkpoint(run / "last.pth")
    assert saved["epoch"] == 0 and saved["step_in_epoch"] == 2 and saved["global_step"] == 2
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler restored
    train(engine_config(run, *DR2NET), resume=True, dataset_fn=blobs_fn())
    _same_state(load_checkpoint(run_full / "last.pth")["model"], load_checkpoint(run / "last.pth")["model"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    cfg = engine_config(run, "finetune.mode=conventional", "+model.name=tiny")
    # 3 steps per epoch: the 4th forward (epoch 2) returns NaN
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2 step 1 .*last good checkpoint .*last.pth \(epoch 1\) is kept"):
        train(cfg, dataset_fn=blobs_fn(), model_fn=tiny_model_fn(nan_after=3))
    ckpt = load_checkpoint(run / "last.pth")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_existing_run_dir_is_refused_and_left_intact(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pth").write_bytes(b"precious")
    digest = hashlib.sha256((run / "last.pth").read_bytes()).hexdigest()
    cfg = engine_config(run, "finetune.mode=conventional", "+model.name=tiny")
    with pytest.raises(ValueError, match="already exists .*--resume .*--force"):
        train(cfg, dataset_fn=blobs_fn(), model_fn=tiny_model_fn())
    assert sorted(os.listdir(run)) == ["last.pth"]
    assert hashlib.sha256((run / "last.pth").read_bytes()).hexdigest() == digest
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        train(cfg, resume=True, dataset_fn=blobs_fn(), model_fn=tiny_model_fn())
    assert hashlib.sha256((run / "last.pth").read_bytes()).hexdigest() == digest


def test_gradient_accumulation_equals_the_full_batch(tmp_path):
    common = ["finetune.mode=conventional", "+model.name=tiny", "train.epochs=1", "train.val_every=5",
              "train.test_at_end=false"]
    full = train(engine_config(tmp_path / "a", *common), dataset_fn=blobs_fn(jitter=0.0), model_fn=tiny_model_fn())
    acc = train(engine_config(tmp_path / "b", *common, "train.accumulate=4"), dataset_fn=blobs_fn(jitter=0.0),
                model_fn=tiny_model_fn())
    assert full.global_step == acc.global_step == 3
    a, b = load_checkpoint(tmp_path / "a" / "last.pth")["model"], load_checkpoint(tmp_path / "b" / "last.pth")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_select_on_test_is_stated_in_the_log(tmp_path):
    run = tmp_path / "run"
    train(engine_config(run, "finetune.mode=conventional", "+model.name=tiny", "train.epochs=1",
                        "train.select_on=test"), dataset_fn=blobs_fn(), model_fn=tiny_model_fn())
    assert "MODEL SELECTION ON THE TEST SET" in (run / "train.log").read_text()
    assert json.loads((run / "metrics.json").read_text())["select_on"] == "test"


def test_blobs_dataset_is_what_the_tests_assume():
    ds = Blobs(6, 0)
    s = ds[4]
    assert s["points"].shape == (64, 3) and s["points"].dtype == torch.float32 and int(s["label"]) == 1


def test_bf16_autocast_on_cpu_and_fp16_refused(tmp_path):
    cfg = engine_config(tmp_path / "bf16", "finetune.mode=conventional", "+model.name=tiny", "train.epochs=1",
                        "train.amp=bf16")
    result = train(cfg, dataset_fn=blobs_fn(), model_fn=tiny_model_fn())
    assert result.global_step == 3 and torch.isfinite(torch.tensor(result.best_metric))
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        train(engine_config(tmp_path / "fp16", "finetune.mode=conventional", "+model.name=tiny", "train.amp=fp16"),
              dataset_fn=blobs_fn(), model_fn=tiny_model_fn())


def test_force_starts_over(tmp_path):
    run = tmp_path / "run"
    args = ("finetune.mode=conventional", "+model.name=tiny", "train.epochs=1")
    train(engine_config(run, *args), dataset_fn=blobs_fn(), model_fn=tiny_model_fn())
    (run / "stale.txt").write_text("user file")
    old_best = load_checkpoint(run / "best.pth")
    train(engine_config(run, *args, "train.lr=0.01"), force=True, dataset_fn=blobs_fn(), model_fn=tiny_model_fn())
    new_best = load_checkpoint(run / "best.pth")
    assert new_best["config"]["train"]["lr"] == 0.01 != old_best["config"]["train"]["lr"]
    assert (run / "stale.txt").read_text() == "user file"  # files that are not the run's own stay


def test_select_on_last_tests_the_final_weights_and_keeps_the_val_curve(tmp_path):
    # lr 0.5: the validation curve peaks before the end (58, 75, 67 % OA), so selection and "last" differ
    common = ("finetune.mode=conventional", "+model.name=tiny", "train.epochs=3", "train.val_every=1", "train.lr=0.5")
    train(engine_config(tmp_path / "val", *common), dataset_fn=blobs_fn(), model_fn=tiny_model_fn())
    train(engine_config(tmp_path / "last", *common, "train.select_on=last"), dataset_fn=blobs_fn(),
          model_fn=tiny_model_fn())
    last = tmp_path / "last"
    assert json.loads((tmp_path / "val" / "metrics.json").read_text())["best_epoch"] < 3
    # best.pth is the final epoch's weights, whatever the validation curve did
    _same_state(load_checkpoint(last / "best.pth")["model"], load_checkpoint(last / "last.pth")["model"])
    metrics = json.loads((last / "metrics.json").read_text())
    assert metrics["select_on"] == "last" and metrics["best_epoch"] == 3 and "oa" in metrics["test"]
    # the same training as select_on=val (same carve, same steps): only the choice of weights differs
    _same_state(load_checkpoint(last / "last.pth")["model"], load_checkpoint(tmp_path / "val" / "last.pth")["model"])
    curve = [r for r in map(json.loads, (last / "metrics.jsonl").read_text().splitlines()) if "val" in r]
    assert len(curve) == 3 and metrics["best_val_oa"] == curve[-1]["val"]["oa"]
    assert "no model selection (train.select_on=last)" in (last / "train.log").read_text()
