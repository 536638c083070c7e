"""Synthetic generators: geometry of the parts, content of each layout, reproducibility."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from pointdr2.cli import main
from pointdr2.data.classes import SYNTHETIC_MODELNET_CLASSES
from pointdr2.data.synthetic import OBJECTS, Part, make_object, make_room, rot_x, write_layout


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes() if path.suffix != ".h5" else _h5_bytes(path))
    return h.hexdigest()


def _h5_bytes(path: Path) -> bytes:
    with h5py.File(path, "r") as f:  # h5 files embed no timestamps by default, but compare contents anyway
        return b"".join(np.ascontiguousarray(f[k][:]).tobytes() for k in sorted(f.keys()))


def test_parts_lie_on_their_surfaces():
    rng = np.random.default_rng(0)
    p, n = Part("box", {"size": (1.0, 2.0, 3.0)}).sample(2000, rng)
    on_face = np.isclose(np.abs(p), [0.5, 1.0, 1.5]).any(axis=1)
    assert on_face.all() and np.all(np.abs(p) <= np.array([0.5, 1.0, 1.5]) + 1e-12)
    face_share = np.isclose(np.abs(p[:, 2]), 1.5).mean()  # z faces: 2 of area 2 in total area 22
    assert abs(face_share - 4 / 22) < 0.03
    p, n = Part("cone", {"r1": 0.5, "r2": 0.2, "h": 1.0, "caps": ""}).sample(3000, rng)
    np.testing.assert_allclose(np.hypot(p[:, 0], p[:, 1]), 0.5 - 0.3 * p[:, 2], atol=1e-9)
    # Area density follows r(z) = 0.5 - 0.3 z: P(z < 0.5) = (0.25 - 0.0375) / 0.35.
    assert abs((p[:, 2] < 0.5).mean() - 0.2125 / 0.35) < 0.03
    big, small = 1.0, 0.25
    p, n = Part("torus", {"R": big, "r": small}, at=(1.0, 2.0, 3.0), rot=rot_x(0.7)).sample(2000, rng)
    local = (p - [1.0, 2.0, 3.0]) @ rot_x(0.7)  # rows times R == R^T applied: back to the local frame
    np.testing.assert_allclose((np.hypot(local[:, 0], local[:, 1]) - big) ** 2 + local[:, 2] ** 2, small**2, atol=1e-9)
    p, n = Part("ellipsoid", {"radii": (1.0, 2.0, 0.5), "zmax": 0.0}).sample(1000, rng)
    np.testing.assert_allclose((p**2 / [1.0, 4.0, 0.25]).sum(1), 1.0, atol=1e-9)
    assert p[:, 2].max() <= 1e-12
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-9)
    assert math.isclose(Part("torus", {"R": 1.0, "r": 0.25}).area(), 4 * math.pi**2 * 0.25)


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_objects_are_finite_with_unit_normals(name):
    pts, nrm = make_object(name, 512, np.random.default_rng(1))
    assert pts.shape == nrm.shape == (512, 3) and pts.dtype == np.float32
    assert np.isfinite(pts).all()
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-4)


def test_similar_classes_are_not_identical():
    rng = np.random.default_rng(0)
    heights = {name: np.ptp(make_object(name, 512, rng)[0][:, 2]) for name in ("chair", "stool", "table", "bench")}
    assert len({round(float(h), 3) for h in heights.values()}) == 4
    assert len(SYNTHETIC_MODELNET_CLASSES) >= 12


def test_rooms_have_every_class():
    seen = set()
    rng = np.random.default_rng(0)
    for k in range(4):
        for cls, arr in make_room(rng, 30.0, stairs=k == 0):
            assert arr.shape[1] == 6 and np.all((arr[:, 3:] >= 0) & (arr[:, 3:] <= 255))
            seen.add(cls)
    assert seen >= {"ceiling", "floor", "wall", "beam", "column", "window", "door", "chair", "table", "bookcase",
                    "sofa", "board", "clutter", "stairs"}


@pytest.mark.parametrize("layout", ["modelnet40-h5", "s3dis-raw"])
def test_same_seed_same_files(tmp_path, layout):
    a, _ = write_layout(layout, tmp_path / "a", size="test", seed=5)
    b, _ = write_layout(layout, tmp_path / "b", size="test", seed=5)
    c, _ = write_layout(layout, tmp_path / "c", size="test", seed=6)
    assert _digest(a) == _digest(b) != _digest(c)


def test_written_layouts(synthetic_root):
    txt = synthetic_root / "modelnet40_normal_resampled"
    assert (txt / "modelnet40_shape_names.txt").read_text().split() == list(SYNTHETIC_MODELNET_CLASSES)
    first = (txt / "modelnet40_train.txt").read_text().split()[0]
    arr = np.loadtxt(txt / first.rsplit("_", 1)[0] / f"{first}.txt", delimiter=",")
    assert arr.shape[1] == 6 and abs(np.linalg.norm(arr[:, :3], axis=1).max() - 1) < 1e-4
    np.testing.assert_allclose(np.linalg.norm(arr[:, 3:], axis=1), 1, atol=1e-4)
    with h5py.File(synthetic_root / "modelnet40_ply_hdf5_2048" / "ply_data_train0.h5", "r") as f:
        assert f["data"].shape[1:] == (1024, 3) and f["label"].shape[1] == 1
    for rel in ("main_split/training_objectdataset.h5", "main_split_nobg/test_objectdataset.h5",
                "main_split/test_objectdataset_augmentedrot_scale75.h5"):
        with h5py.File(synthetic_root / rel, "r") as f:
            assert set(f.keys()) == {"data", "label", "mask"} and len(np.unique(f["label"][:])) == 15
    ann = list((synthetic_root / "Stanford3dDataset_v1.2_Aligned_Version").glob("Area_*/*/Annotations/*.txt"))
    assert len(ann) > 20


def test_cli_synthetic_and_bad_size(tmp_path, capsys):
    assert main(["prepare", "synthetic", "--layout", "modelnet40-h5", "--out", str(tmp_path), "--size", "test"]) == 0
    assert "modelnet40-h5:" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["prepare", "synthetic", "--layout", "nope", "--out", str(tmp_path)]) == 2
    assert "--layout must be one of" in capsys.readouterr().err
    assert main(["prepare", "synthetic", "--layout", "scanobjectnn", "--size", "huge", "--out", str(tmp_path)]) == 2
    assert "--size must be one of" in capsys.readouterr().err


def test_scanobjectnn_workers_write_the_same_bytes(tmp_path):
    one, _ = write_layout("scanobjectnn", tmp_path / "one", size="test", seed=3)
    two, _ = write_layout("scanobjectnn", tmp_path / "two", size="test", seed=3, workers=2)
    assert _digest(one) == _digest(two)
    with h5py.File(one / "main_split_nobg" / "training_objectdataset.h5", "r") as f:
        labels = f["label"][:]
    assert np.bincount(labels).tolist() == [3] * 15  # every class, shuffled
    assert not np.all(np.diff(labels) >= 0)


def test_scanobjectnn_without_pb_t50_rs_keeps_the_other_variants(tmp_path):
    full, _ = write_layout("scanobjectnn", tmp_path / "full", size="test", seed=1)
    light, _ = write_layout("scanobjectnn", tmp_path / "light", size="test", seed=1, pb_t50_rs=False)
    assert not list(light.rglob("*augmentedrot*")) and len(list(full.rglob("*augmentedrot*"))) == 2
    for rel in ("main_split/training_objectdataset.h5", "main_split_nobg/test_objectdataset.h5"):
        assert _h5_bytes(full / rel) == _h5_bytes(light / rel)
    write_layout("scanobjectnn", full, size="test", seed=2, pb_t50_rs=False)  # rewriting drops the old PB files
    assert not list(full.rglob("*augmentedrot*"))
