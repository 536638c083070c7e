"""ModelNet40 loader on synthetic files in both layouts (plus the .dat cache)."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pointdr2.cli import main
from pointdr2.data import build_dataset
from pointdr2.data.classes import SYNTHETIC_MODELNET_CLASSES

TXT = "modelnet40_normal_resampled"
H5 = "modelnet40_ply_hdf5_2048"


def _normalize(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64).copy()
    p[:, :3] -= p[:, :3].mean(0)
    p[:, :3] /= np.linalg.norm(p[:, :3], axis=1).max()
    return p


def _test_ids(root: Path) -> list[str]:
    return (root / TXT / "modelnet40_test.txt").read_text().split()


@pytest.mark.parametrize("sub", ["", TXT])
def test_txt_layout_samples_match_files(synthetic_root, sub, fps_reference):
    ds = build_dataset({"name": "modelnet40", "root": str(synthetic_root / sub), "num_points": 256,
                        "use_normals": True, "layout": "txt"}, "test")
    assert ds.layout == "txt" and ds.num_classes == 16 and ds.class_names == SYNTHETIC_MODELNET_CLASSES
    ids = _test_ids(synthetic_root)
    assert len(ds) == len(ids)
    for i in (0, len(ds) - 1):
        sample = ds[i]
        assert set(sample) == {"points", "label"}
        assert sample["points"].dtype == torch.float32 and sample["points"].shape == (256, 6)
        assert sample["label"].dtype == torch.int64 and sample["label"].shape == ()
        cls = ids[i].rsplit("_", 1)[0]
        assert sample["label"].item() == SYNTHETIC_MODELNET_CLASSES.index(cls)
        raw = np.loadtxt(synthetic_root / TXT / cls / f"{ids[i]}.txt", delimiter=",")
        ref = _normalize(raw[fps_reference(raw[:, :3], 256)])
        np.testing.assert_allclose(sample["points"].numpy(), ref, atol=1e-5)


def test_h5_layout_samples_match_file(synthetic_root):
    for root in (synthetic_root / H5, synthetic_root):
        ds = build_dataset({"name": "modelnet40", "root": str(root), "num_points": 512, "layout": "h5"}, "test")
        assert ds.layout == "h5" and ds.class_names == SYNTHETIC_MODELNET_CLASSES
    with h5py.File(synthetic_root / H5 / "ply_data_test0.h5", "r") as f:
        data, label = f["data"][:], f["label"][:].reshape(-1)
    assert len(ds) == len(data)
    for i in (0, 7):
        s = ds[i]
        assert s["points"].shape == (512, 3) and s["label"].item() == label[i]
        np.testing.assert_allclose(s["points"].numpy(), _normalize(data[i, :512]), atol=1e-5)
        norms = s["points"].norm(dim=1)
        assert abs(norms.max().item() - 1) < 1e-5
    with_normals = build_dataset({"name": "modelnet40", "root": str(synthetic_root / H5), "num_points": 512,
                                  "use_normals": True}, "test")[7]["points"]
    assert with_normals.shape == (512, 6)
    torch.testing.assert_close(with_normals[:, :3], s["points"])
    torch.testing.assert_close(with_normals[:, 3:].norm(dim=1), torch.ones(512), atol=1e-4, rtol=0)


def test_auto_layout_prefers_txt_and_h5_only_root(synthetic_root, tmp_path):
    assert build_dataset({"name": "modelnet40", "root": str(synthetic_root)}, "test").layout == "txt"
    shutil.copytree(synthetic_root / H5, tmp_path / H5)
    assert build_dataset({"name": "modelnet40", "root": str(tmp_path)}, "test").layout == "h5"
    with pytest.raises(FileNotFoundError, match="modelnet40_normal_resampled"):
        build_dataset({"name": "modelnet40", "root": str(tmp_path), "layout": "txt"}, "test")


def test_val_carve_is_stratified_disjoint_and_seeded(synthetic_root):
    cfg = {"name": "modelnet40", "root": str(synthetic_root / H5)}
    train, val = build_dataset(cfg, "train", val_fraction=0.3), build_dataset(cfg, "val", val_fraction=0.3)
    full = build_dataset(cfg, "train", val_fraction=0.0)
    assert set(train.indices) & set(val.indices) == set()
    assert sorted([*train.indices, *val.indices]) == list(range(len(full)))
    # 3 training objects per class: round(0.3 * 3) = 1 goes to val in every class.
    assert np.bincount(full.labels[val.indices], minlength=16).tolist() == [1] * 16
    again = build_dataset(cfg, "val", val_fraction=0.3, seed=0)
    other = build_dataset(cfg, "val", val_fraction=0.3, seed=1)
    assert list(again.indices) == list(val.indices) and list(other.indices) != list(val.indices)
    with pytest.raises(ValueError, match="split 'val' is empty"):
        build_dataset(cfg, "val", val_fraction=0.0)


def test_training_augmentation_is_seeded(synthetic_root):
    cfg = {"name": "modelnet40", "root": str(synthetic_root / H5), "num_points": 512,
           "transforms": {"train": [{"name": "fps_subsample", "npoints": 300, "keep": 256},
                                    {"name": "scale_translate"}]}}

    def draw():
        torch.manual_seed(7)
        ds = build_dataset(cfg, "train")
        return [ds[0]["points"] for _ in range(2)]

    a, b = draw(), draw()
    assert a[0].shape == (256, 3)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    assert not torch.equal(a[0], a[1])  # a new draw on the next epoch


def test_dataloader_workers_are_reproducible(synthetic_root):
    cfg = {"name": "modelnet40", "root": str(synthetic_root / H5), "num_points": 128}
    ds = build_dataset(cfg, "train")

    def epoch():
        torch.manual_seed(3)
        loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2)
        return torch.cat([b["points"] for b in loader])

    first, second = epoch(), epoch()
    torch.testing.assert_close(first, second)
    # Every item gets its own scale draw (workers never repeat each other's draws).
    plain = build_dataset({**cfg, "transforms": {"train": []}}, "train")
    scales = [float(np.ptp(first[i, :, 0].numpy()) / np.ptp(plain[i]["points"][:, 0].numpy())) for i in range(len(ds))]
    assert all(2 / 3 - 1e-4 <= s <= 1.5 + 1e-4 for s in scales)
    assert len(np.unique(np.round(scales, 5))) == len(ds)
    torch.manual_seed(4)
    other = torch.cat([b["points"] for b in torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2)])
    assert not torch.allclose(other, first)


def test_fps_cache_written_and_used(synthetic_root, tmp_path, fps_reference):
    shutil.copytree(synthetic_root / TXT, tmp_path / TXT)
    assert main(["prepare", "modelnet40", "--root", str(tmp_path), "--npoints", "512", "--batch-size", "5"]) == 0
    cache = tmp_path / TXT / "modelnet40_test_512pts_fps.dat"
    with open(cache, "rb") as f:
        points, labels = pickle.load(f)
    ids = _test_ids(synthetic_root)
    assert len(points) == len(labels) == len(ids)
    assert points[0].dtype == np.float32 and points[0].shape == (512, 6)
    assert labels[0].dtype == np.int32 and labels[0].shape == (1,)
    raw = np.loadtxt(tmp_path / TXT / ids[3].rsplit("_", 1)[0] / f"{ids[3]}.txt", delimiter=",", dtype=np.float32)
    np.testing.assert_array_equal(points[3], raw[fps_reference(raw[:, :3], 512)])
    cfg = {"name": "modelnet40", "root": str(tmp_path), "num_points": 200, "use_normals": True}
    cached, direct = build_dataset(cfg, "test"), build_dataset({**cfg, "use_cache": False}, "test")
    assert cached.cache is not None and direct.cache is None
    for i in (0, 3, len(ids) - 1):  # an FPS order's prefix is the smaller FPS sample
        torch.testing.assert_close(cached[i]["points"], direct[i]["points"], atol=1e-5, rtol=0)
    # A truncated cache names the file.
    cache.write_bytes(cache.read_bytes()[:1000])
    with pytest.raises(ValueError, match="modelnet40_test_512pts_fps.dat: unreadable or truncated"):
        build_dataset(cfg, "test")


def test_txt_bad_files_name_the_file(synthetic_root, tmp_path):
    shutil.copytree(synthetic_root / TXT, tmp_path / TXT)
    ids = _test_ids(synthetic_root)
    cls = ids[0].rsplit("_", 1)[0]
    path = tmp_path / TXT / cls / f"{ids[0]}.txt"
    lines = path.read_text().splitlines()
    cfg = {"name": "modelnet40", "root": str(tmp_path), "num_points": 64}
    path.write_text("\n".join(lines[:100]) + "\n0.1,0.2,0.3\n")  # truncated mid-row
    with pytest.raises(ValueError, match=f"{ids[0]}.txt: malformed or truncated"):
        build_dataset(cfg, "test")[0]
    path.write_text("\n".join(["nan,0,0,0,0,1"] + lines[1:]) + "\n")
    with pytest.raises(ValueError, match=f"{ids[0]}.txt: non-finite"):
        build_dataset(cfg, "test")[0]
    path.unlink()
    with pytest.raises(FileNotFoundError, match=f"{ids[0]}.txt"):
        build_dataset(cfg, "test")[0]


def _write_h5(path: Path, **arrays) -> None:
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)


def test_h5_bad_files_name_the_file(tmp_path):
    folder = tmp_path / H5
    folder.mkdir()
    good = np.random.default_rng(0).normal(size=(4, 64, 3)).astype(np.float32)
    cfg = {"name": "modelnet40", "root": str(tmp_path), "num_points": 32}
    _write_h5(folder / "ply_data_test0.h5", points=good, label=np.zeros((4, 1)))
    with pytest.raises(ValueError, match="ply_data_test0.h5: missing h5 key 'data'"):
        build_dataset(cfg, "test")
    _write_h5(folder / "ply_data_test0.h5", data=good, label=np.full((4, 1), 40))
    with pytest.raises(ValueError, match="ply_data_test0.h5: label 40 out of range; expected 0..39"):
        build_dataset(cfg, "test")
    bad = good.copy()
    bad[2, 5, 1] = np.nan
    _write_h5(folder / "ply_data_test0.h5", data=bad, label=np.zeros((4, 1)))
    with pytest.raises(ValueError, match=r"ply_data_test0.h5: non-finite coordinates .* at index \[2, 5, 1\]"):
        build_dataset(cfg, "test")
    _write_h5(folder / "ply_data_test0.h5", data=good, label=np.zeros((4, 1)))
    assert len(build_dataset(cfg, "test")) == 4
    raw = (folder / "ply_data_test0.h5").read_bytes()
    (folder / "ply_data_test0.h5").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="ply_data_test0.h5: unreadable or truncated"):
        build_dataset(cfg, "test")


def test_missing_root_explains_layout_and_source(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build_dataset({"name": "modelnet40", "root": str(tmp_path / "nowhere")}, "train")
    msg = str(err.value)
    for part in ("modelnet40_normal_resampled", "modelnet40_ply_hdf5_2048", "shapenet.cs.stanford.edu",
                 "prepare synthetic"):
        assert part in msg


def test_prepare_modelnet40_bad_root_is_one_line(tmp_path, capsys):
    assert main(["prepare", "modelnet40", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "modelnet40_shape_names.txt" in err


def test_prepare_refuses_an_empty_split_list(synthetic_root, tmp_path, capsys):
    shutil.copytree(synthetic_root / TXT, tmp_path / TXT)
    (tmp_path / TXT / "modelnet40_test.txt").write_text("")
    capsys.readouterr()
    assert main(["prepare", "modelnet40", "--root", str(tmp_path), "--npoints", "512", "--splits", "test"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "modelnet40_test.txt lists 0 shapes" in err[0], err
