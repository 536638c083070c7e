"""Atomic checkpoint writes, validated loads and RNG round trips."""

import os
import random

import numpy as np
import pytest
import torch

from pointdr2.engine import checkpoint as ck


def test_save_atomic_round_trip_and_no_leftover_temp(tmp_path):
    obj = {"format": ck.FORMAT, "w": torch.arange(5.0), "meta": {"epoch": 3, "names": ["a", "b"]}}
    path = ck.save_atomic(obj, tmp_path / "sub" / "last.pth")
    loaded = ck.load_checkpoint(path)
    assert torch.equal(loaded["w"], obj["w"]) and loaded["meta"] == obj["meta"]
    assert ck.is_own_checkpoint(loaded)
    assert sorted(os.listdir(tmp_path / "sub")) == ["last.pth"]


def test_failed_save_keeps_the_old_file_intact(tmp_path):
    path = tmp_path / "last.pth"
    ck.save_atomic({"v": torch.tensor([1.0])}, path)
    before = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ck.save_atomic({"v": Unpicklable()}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pth"]  # the temporary file was removed


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        ck.load_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_text("this is not a checkpoint\n")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint") as err:
        ck.load_checkpoint(bad)
    assert "\n" not in str(err.value)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a checkpoint dict"):
        ck.load_checkpoint(tmp_path / "list.pth")


def test_rng_states_survive_save_and_load(tmp_path):
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002 - the global RNG is what capture_rng saves
    torch.manual_seed(3)
    state = ck.capture_rng()
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3))  # noqa: NPY002
    ck.save_atomic({"rng": state}, tmp_path / "r.pth")
    torch.rand(10)
    random.random()
    ck.restore_rng(ck.load_checkpoint(tmp_path / "r.pth")["rng"])
    got = (random.random(), np.random.rand(3).tolist(), torch.rand(3))  # noqa: NPY002
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_derive_seed_depends_only_on_its_parts():
    assert ck.derive_seed(0, 1, 2) == ck.derive_seed(0, 1, 2)
    assert len({ck.derive_seed(0, e, r) for e in range(5) for r in range(3)}) == 15
    assert 0 <= ck.derive_seed(2**40, 7) < 2**63


def test_damaged_checkpoint_files_say_what_is_wrong(tmp_path):
    from pointdr2.models.checkpoints import read_checkpoint

    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(2000)}, good)
    data = good.read_bytes()
    cases = {"trunc.pth": (data[: len(data) // 2], "truncated or damaged zip archive"),
             "empty.pth": (b"", "the file is empty"),
             "text.pth": (b"hello world", "not a PyTorch file")}
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=message):
            read_checkpoint(tmp_path / name)


def test_resume_from_a_damaged_last_pth_points_at_best_pth(tmp_path):
    from engine_tiny import blobs_fn, engine_config, tiny_model_fn

    from pointdr2.engine.trainer import train

    run = tmp_path / "run"
    cfg = ["+model.name=tiny", "finetune.mode=conventional"]
    train(engine_config(run, "train.epochs=1", *cfg), dataset_fn=blobs_fn(), model_fn=tiny_model_fn())
    last = run / "last.pth"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cannot resume: .*truncated.*best\.pth \(epoch 1\) is intact"):
        train(engine_config(run, "train.epochs=2", *cfg), resume=True, dataset_fn=blobs_fn(), model_fn=tiny_model_fn())
