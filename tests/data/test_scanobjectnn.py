"""ScanObjectNN loader: three variants, with and without the h5_files/ prefix, and bad files."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch

from pointdr2.cli import main
from pointdr2.data import SCANOBJECTNN_CLASSES, build_dataset

FILES = {
    "OBJ_BG": "main_split/{s}_objectdataset.h5",
    "OBJ_ONLY": "main_split_nobg/{s}_objectdataset.h5",
    "PB_T50_RS": "main_split/{s}_objectdataset_augmentedrot_scale75.h5",
}


@pytest.fixture(scope="module")
def prefixed_root(synthetic_root, tmp_path_factory):
    """The same files under ``h5_files/`` as some users keep them."""
    root = tmp_path_factory.mktemp("so_prefixed")
    for folder in ("main_split", "main_split_nobg"):
        shutil.copytree(synthetic_root / folder, root / "h5_files" / folder)
    return root


@pytest.mark.parametrize("variant", list(FILES))
@pytest.mark.parametrize("prefixed", [False, True])
def test_variants_match_h5(synthetic_root, prefixed_root, variant, prefixed):
    root = prefixed_root if prefixed else synthetic_root
    cfg = {"name": "scanobjectnn", "root": str(root), "variant": variant, "num_points": 1024, "use_mask": True}
    ds = build_dataset(cfg, "test")
    path = root / ("h5_files" if prefixed else "") / FILES[variant].format(s="test")
    assert ds.path == path and ds.num_classes == 15 and ds.class_names == SCANOBJECTNN_CLASSES
    with h5py.File(path, "r") as f:
        data, label, mask = f["data"][:], f["label"][:], f["mask"][:]
    assert len(ds) == len(data)
    s = ds[4]
    assert set(s) == {"points", "label", "mask"}
    assert s["points"].dtype == torch.float32 and s["points"].shape == (1024, 3)
    assert s["mask"].dtype == torch.int64 and s["mask"].shape == (1024,)
    np.testing.assert_array_equal(s["points"].numpy(), data[4, :1024])
    np.testing.assert_array_equal(s["mask"].numpy(), mask[4, :1024])
    assert s["label"].item() == label[4]
    background = (mask == -1).mean()
    if variant == "OBJ_ONLY":
        assert background == 0
    else:
        assert 0.05 < background < 0.6
    assert np.linalg.norm(data, axis=2).max() <= 1 + 1e-5


def test_train_val_split_and_no_mask(synthetic_root):
    cfg = {"name": "scanobjectnn", "root": str(synthetic_root), "variant": "OBJ_BG"}
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val", val_fraction=0.1)
    assert len(train) + len(val) == len(build_dataset(cfg, "train", val_fraction=0.0))
    assert set(train[0]) == {"points", "label"} and train[0]["points"].shape == (1024, 3)  # every point (test size)
    assert len(np.unique(train.labels[val.indices])) == 15  # stratified: every class in val


def test_missing_file_lists_variants(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build_dataset({"name": "scanobjectnn", "root": str(tmp_path), "variant": "PB_T50_RS"}, "train")
    msg = str(err.value)
    for part in ("training_objectdataset_augmentedrot_scale75.h5", "h5_files/", "OBJ_ONLY", "hkust-vgd"):
        assert part in msg
    with pytest.raises(ValueError, match="dataset.variant must be one of OBJ_BG, OBJ_ONLY, PB_T50_RS"):
        build_dataset({"name": "scanobjectnn", "root": str(tmp_path), "variant": "PB_T25"}, "train")


def _write(path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)


def test_bad_h5_files_name_the_file(tmp_path):
    path = tmp_path / "main_split_nobg" / "test_objectdataset.h5"
    data = np.random.default_rng(0).normal(size=(3, 64, 3)).astype(np.float32)
    cfg = {"name": "scanobjectnn", "root": str(tmp_path), "variant": "OBJ_ONLY", "num_points": 64}
    _write(path, data=data, labels=np.zeros(3))
    with pytest.raises(ValueError, match="test_objectdataset.h5: missing h5 key 'label'; found \\['data', 'labels'\\]"):
        build_dataset(cfg, "test")
    _write(path, data=data, label=np.array([0, 15, 2]))
    with pytest.raises(ValueError, match="test_objectdataset.h5: label 15 out of range; expected 0..14"):
        build_dataset(cfg, "test")
    bad = data.copy()
    bad[1, 3, 0] = np.inf
    _write(path, data=bad, label=np.zeros(3))
    with pytest.raises(ValueError, match="test_objectdataset.h5: non-finite"):
        build_dataset(cfg, "test")
    _write(path, data=data, label=np.zeros(3))
    with pytest.raises(ValueError, match="test_objectdataset.h5: missing h5 key 'mask'"):
        build_dataset({**cfg, "use_mask": True}, "test")
    with pytest.raises(ValueError, match="num_points=100 must be in 1..64"):
        build_dataset({**cfg, "num_points": 100}, "test")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ValueError, match="test_objectdataset.h5: unreadable or truncated"):
        build_dataset(cfg, "test")


def test_prepare_scanobjectnn_reports_files(synthetic_root, capsys):
    assert main(["prepare", "scanobjectnn", "--root", str(synthetic_root)]) == 0
    out = capsys.readouterr().out
    assert out.count("15/15") == 6 and "PB_T50_RS" in out


def test_prepare_refuses_an_empty_split(tmp_path, capsys):
    for split in ("training", "test"):
        n = 0 if split == "test" else 3
        _write(tmp_path / "main_split_nobg" / f"{split}_objectdataset.h5",
               data=np.zeros((n, 64, 3), dtype=np.float32), label=np.zeros(n, dtype=np.int64))
    capsys.readouterr()
    assert main(["prepare", "scanobjectnn", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test_objectdataset.h5: the OBJ_ONLY test split holds 0 samples" in err[0], err
