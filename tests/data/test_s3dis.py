"""S3DIS: raw conversion round trip, training crops, whole-room passes and scatter-back."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pointdr2.cli import main
from pointdr2.data import S3DIS_CLASSES, build_dataset, scatter_predictions

RAW = "Stanford3dDataset_v1.2_Aligned_Version"
# Written out independently of pointdr2.data.classes: the order is part of the file format.
LABELS = {"ceiling": 0, "floor": 1, "wall": 2, "beam": 3, "column": 4, "window": 5, "door": 6, "chair": 7,
          "table": 8, "bookcase": 9, "sofa": 10, "board": 11, "clutter": 12, "stairs": 12}


def _reference_room(room_dir: Path) -> np.ndarray:
    """Independent conversion of one room: every line with exactly 6 finite numbers."""
    parts = []
    for path in sorted((room_dir / "Annotations").glob("*.txt")):
        rows = []
        for line in path.read_text(errors="replace").splitlines():
            tok = line.split()
            try:
                vals = [float(t) for t in tok]
            except ValueError:
                continue
            if len(vals) == 6 and np.isfinite(vals).all():
                rows.append(vals + [LABELS[path.stem.split("_")[0]]])
        parts.append(np.asarray(rows, dtype=np.float32).reshape(-1, 7))
    room = np.concatenate(parts)
    room[:, :3] -= room[:, :3].min(axis=0)
    return room


def test_class_order_is_explicit():
    assert S3DIS_CLASSES == tuple(k for k in LABELS if k != "stairs")


def test_prepared_rooms_match_reference(synthetic_root):
    rooms = sorted((synthetic_root / "s3disfull" / "raw").glob("*.npy"))
    assert [p.name.split("_")[1] for p in rooms] == ["1", "2", "5"]
    stairs_seen = False
    for path in rooms:
        area, room = path.stem.split("_", 2)[1], path.stem.split("_", 2)[2]
        room_dir = synthetic_root / RAW / f"Area_{area}" / room
        stairs_seen |= any((room_dir / "Annotations").glob("stairs_*.txt"))
        data = np.load(path)
        assert data.dtype == np.float32 and data.shape[1] == 7
        np.testing.assert_allclose(data, _reference_room(room_dir), atol=1e-4)
        np.testing.assert_allclose(data[:, :3].min(0), 0, atol=1e-6)
    assert stairs_seen  # the stairs -> clutter mapping was exercised


def test_prepare_reports_and_skips_malformed_lines(synthetic_root, tmp_path, capsys):
    src = synthetic_root / RAW / "Area_1"
    room_name = next(p.name for p in src.iterdir())
    shutil.copytree(src / room_name, tmp_path / RAW / "Area_1" / room_name)
    target = tmp_path / RAW / "Area_1" / room_name / "Annotations" / "ceiling_1.txt"
    lines = target.read_text().splitlines()
    lines.insert(2, "1.0 2.0 3.0 4 5")  # line 3: a value missing
    lines.insert(4, "1.0 2.0 3.\x100 4 5 6")  # line 5: a control character, as in the real data
    lines.insert(6, "nan 1 1 1 1 1")  # line 7
    target.write_text("\n".join(lines) + "\n")
    (tmp_path / RAW / "Area_1" / room_name / "Annotations" / "ghost_1.txt").write_text("1 2 3 4 5 6\n")
    assert main(["prepare", "s3dis", "--raw", str(tmp_path / RAW), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "malformed lines skipped: 3" in out
    for number in (3, 5, 7):
        assert f"ceiling_1.txt:{number}:" in out
    assert "ghost_1.txt: unknown class 'ghost'" in out
    data = np.load(tmp_path / "out" / "raw" / f"Area_1_{room_name}.npy")
    (tmp_path / RAW / "Area_1" / room_name / "Annotations" / "ghost_1.txt").unlink()
    np.testing.assert_allclose(data, _reference_room(tmp_path / RAW / "Area_1" / room_name), atol=1e-4)
    assert len(data) == len(np.load(synthetic_root / "s3disfull" / "raw" / f"Area_1_{room_name}.npy"))


def test_prepare_missing_raw(tmp_path, capsys):
    assert main(["prepare", "s3dis", "--raw", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Area_<k>/<room>/Annotations" in err and "buildingparser" in err


@pytest.fixture()
def grid_root(tmp_path) -> Path:
    """Rooms on a 0.1 m grid (20 x 20 x 3 = 1200 points) whose rgb encodes the point index."""
    g = np.stack(np.meshgrid(np.arange(20), np.arange(20), np.arange(3), indexing="ij"), -1).reshape(-1, 3) * 0.1
    idx = np.arange(len(g))
    room = np.concatenate([g, (idx % 256)[:, None], (idx // 256)[:, None], np.zeros((len(g), 1)),
                           (idx % 13)[:, None]], axis=1).astype(np.float32)
    (tmp_path / "raw").mkdir()
    for name in ("Area_1_a", "Area_2_b", "Area_3_c", "Area_5_d"):
        np.save(tmp_path / "raw" / f"{name}.npy", room)
    return tmp_path


def _decode(sample) -> np.ndarray:
    rgb = (sample["feats"][:3].T.numpy() * 255).round().astype(np.int64)
    return rgb[:, 0] + 256 * rgb[:, 1]


def test_training_crop_is_nearest_ball(grid_root):
    room = np.load(grid_root / "raw" / "Area_1_a.npy")
    cfg = {"name": "s3dis", "root": str(grid_root), "voxel_size": 0.04, "crop_points": 50, "loop": 3,
           "transforms": {"train": []}}
    ds = build_dataset(cfg, "train", val_fraction=0.0)
    assert len(ds) == 3 * 3 and ds.num_classes == 13
    torch.manual_seed(0)
    for i in range(3):
        s = ds[i]
        assert s["pos"].shape == (50, 3) and s["feats"].shape == (4, 50) and s["label"].shape == (50,)
        assert s["pos"].dtype == torch.float32 and s["feats"].dtype == torch.float32 and s["label"].dtype == torch.int64
        idx = _decode(s)
        assert len(set(idx.tolist())) == 50
        np.testing.assert_array_equal(s["label"].numpy(), idx % 13)
        xyz = room[idx, :3]
        np.testing.assert_allclose(s["pos"].numpy(), xyz - xyz.min(0), atol=1e-6)
        np.testing.assert_allclose(s["feats"][3].numpy(), s["pos"][:, 2].numpy(), atol=1e-6)
        # Some selected point is a seed: everything selected is at least as close as everything left out.
        rest = np.setdiff1d(np.arange(len(room)), idx)
        ok = False
        for c in idx:
            d_in = ((room[idx, :3] - room[c, :3]) ** 2).sum(1).max()
            d_out = ((room[rest, :3] - room[c, :3]) ** 2).sum(1).min()
            ok |= bool(d_in <= d_out + 1e-9)
        assert ok


def test_training_voxelisation_and_padding(grid_root):
    room = np.load(grid_root / "raw" / "Area_1_a.npy")
    cfg = {"name": "s3dis", "root": str(grid_root), "voxel_size": 0.25, "crop_points": 5000,
           "transforms": {"train": []}}
    s = build_dataset(cfg, "train", val_fraction=0.0)[0]
    idx = _decode(s)
    keys = np.floor(room[idx, :3] / 0.25).astype(np.int64)
    n_voxels = len(np.unique(np.floor(room[:, :3] / 0.25).astype(np.int64), axis=0))
    assert len(idx) == 5000  # fixed N: padded by repeating points
    assert len(np.unique(idx)) == n_voxels == len(np.unique(keys, axis=0))  # one point per voxel


def test_default_training_transforms_keep_ranges(synthetic_root):
    ds = build_dataset({"name": "s3dis", "root": str(synthetic_root / "s3disfull"), "crop_points": 2000,
                        "loop": 2}, "train", val_fraction=0.0)
    for i in range(2):
        s = ds[i]
        assert s["pos"].shape == (2000, 3)
        rgb, height = s["feats"][:3], s["feats"][3]
        # colours standardised with the S3DIS statistics: 0..1 maps to [-mean/std, (1-mean)/std]
        mean, std = torch.tensor([0.5136457, 0.49523646, 0.44921124]), torch.tensor([0.18308958, 0.18415008, 0.19252081])
        assert (rgb >= (-mean / std)[:, None] - 1e-5).all() and (rgb <= ((1 - mean) / std)[:, None] + 1e-5).all()
        assert abs(height.min().item()) < 1e-6
        torch.testing.assert_close(height, s["pos"][:, 2] - s["pos"][:, 2].min())
        assert s["label"].min() >= 0 and s["label"].max() <= 12
    # Seeded: the same torch seed gives the same crop and augmentation; the next draw differs.
    draws = []
    for _ in range(2):
        torch.manual_seed(11)
        fresh = build_dataset({"name": "s3dis", "root": str(synthetic_root / "s3disfull"), "crop_points": 2000},
                              "train", val_fraction=0.0)
        draws.append([fresh[0], fresh[0]])
    for key in ("pos", "feats", "label"):
        torch.testing.assert_close(draws[0][0][key], draws[1][0][key])
        torch.testing.assert_close(draws[0][1][key], draws[1][1][key])
    assert not torch.equal(draws[0][0]["pos"], draws[0][1]["pos"])


def test_splits_by_area_and_room(grid_root):
    cfg = {"name": "s3dis", "root": str(grid_root)}
    train = build_dataset(cfg, "train", val_fraction=0.34)
    val = build_dataset(cfg, "val", val_fraction=0.34)
    test = build_dataset(cfg, "test")
    assert val.whole_room and test.whole_room and not train.whole_room
    assert [n for n, _ in test.rooms] == ["Area_5_d"]
    assert build_dataset({**cfg, "root": str(grid_root / "raw")}, "test").rooms == test.rooms  # raw/ itself
    names = sorted(n for n, _ in train.rooms + val.rooms)
    assert names == ["Area_1_a", "Area_2_b", "Area_3_c"] and len(val.rooms) == 1
    assert build_dataset(cfg, "val", val_fraction=0.34, seed=0).rooms == val.rooms  # seed-fixed carve
    with pytest.raises(ValueError, match="no rooms of dataset.test_area=4"):
        build_dataset({**cfg, "test_area": 4}, "test")


def _check_room_passes(room_obj, voxel_size):
    xyz = room_obj.room[:, :3].astype(np.float64)
    keys = np.floor((xyz - xyz.min(0)) / voxel_size).astype(np.int64)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    assert room_obj.num_passes == counts.max()
    passes = list(room_obj.passes())
    seen = np.zeros(room_obj.num_points, dtype=np.int64)
    for p in passes:
        idx = p["index"].numpy()
        assert p["index"].dtype == torch.int64 and p["pos"].shape == (len(idx), 3) and p["feats"].shape == (4, len(idx))
        assert len(np.unique(inverse[idx])) == len(idx) == len(counts)  # one point of every voxel
        seen[idx] += 1
    assert seen.min() >= 1  # every original point is covered
    return passes, seen


def test_whole_room_passes_cover_and_scatter_back(synthetic_root):
    ds = build_dataset({"name": "s3dis", "root": str(synthetic_root / "s3disfull")}, "test")
    room = ds[0]
    assert room.name.startswith("Area_5_") and room.labels.dtype == torch.int64
    passes, seen = _check_room_passes(room, 0.04)
    rng = np.random.default_rng(0)
    logits = [torch.from_numpy(rng.normal(size=(13, len(p["index"]))).astype(np.float32)) for p in passes]
    merged = scatter_predictions(room.num_points, [p["index"] for p in passes], logits)
    assert merged.shape == (room.num_points, 13) and merged.dtype == torch.float32
    expected = np.zeros((room.num_points, 13))
    for p, lg in zip(passes, logits):
        for j, k in enumerate(p["index"].numpy()):
            expected[k] += lg[:, j].numpy()
    expected /= seen[:, None]
    np.testing.assert_allclose(merged.numpy(), expected, rtol=1e-5, atol=1e-6)
    # One-hot logits of the true labels come back as exactly the labels.
    onehot = [torch.nn.functional.one_hot(room.labels[p["index"]], 13).T.float()[None] for p in passes]
    merged = scatter_predictions(room.num_points, [p["index"] for p in passes], onehot)
    torch.testing.assert_close(merged.argmax(1), room.labels)
    with pytest.raises(ValueError, match="room points are in no pass"):
        scatter_predictions(room.num_points, [passes[0]["index"]], logits[:1])
    with pytest.raises(ValueError, match="logits must be"):
        scatter_predictions(room.num_points, [passes[0]["index"]], [logits[0].T])


def test_whole_room_grid_with_coarse_voxels(grid_root):
    # colours carry the point index (see _decode): test transforms without the colour standardisation
    ds = build_dataset({"name": "s3dis", "root": str(grid_root), "test_voxel_size": 0.25,
                        "transforms": {"test": [{"name": "xyz_align", "up_axis": 2}]}}, "test")
    room = ds[0]
    _, seen = _check_room_passes(room, 0.25)
    assert room.num_passes > 1 and seen.max() > 1  # smaller voxels cycle, so some points recur
    p = room.get_pass(0)
    np.testing.assert_array_equal(_decode(p), p["index"].numpy())  # feats/pos come from the indexed points


@pytest.mark.parametrize("array, message", [
    (np.zeros((0, 7), np.float32), "empty room"),
    (np.zeros((5, 6), np.float32), r"shape \(5, 6\), expected \(n, 7\)"),
    (np.array([[0, 0, np.nan, 1, 1, 1, 0]], np.float32), "non-finite values"),
    (np.array([[0, 0, 0, 1, 1, 1, 13]], np.float32), "labels must be integers 0..12"),
])
def test_bad_room_files_name_the_file(tmp_path, array, message):
    (tmp_path / "raw").mkdir()
    np.save(tmp_path / "raw" / "Area_5_bad.npy", array)
    with pytest.raises(ValueError, match=f"Area_5_bad.npy: .*{message}"):
        build_dataset({"name": "s3dis", "root": str(tmp_path)}, "test")[0]


def test_truncated_room_and_missing_root(tmp_path):
    (tmp_path / "raw").mkdir()
    np.save(tmp_path / "raw" / "Area_5_x.npy", np.ones((100, 7), np.float32))
    raw = (tmp_path / "raw" / "Area_5_x.npy").read_bytes()
    (tmp_path / "raw" / "Area_5_x.npy").write_bytes(raw[:300])
    with pytest.raises(ValueError, match="Area_5_x.npy: unreadable or truncated"):
        build_dataset({"name": "s3dis", "root": str(tmp_path)}, "test")
    with pytest.raises(FileNotFoundError, match="s3disfull/raw/Area_<k>_<room>.npy.*buildingparser"):
        build_dataset({"name": "s3dis", "root": str(tmp_path / "none")}, "train")


COARSE = {"structure": ["ceiling", "floor", "wall", "beam", "column"], "opening": ["window", "door", "board"],
          "furniture": ["chair", "table", "bookcase", "sofa"], "clutter": ["clutter"]}


def test_merge_classes_relabels_crops_and_rooms(synthetic_root):
    root = str(synthetic_root / "s3disfull")
    plain = build_dataset({"name": "s3dis", "root": root, "crop_points": 512}, "train", val_fraction=0.0)
    merged = build_dataset({"name": "s3dis", "root": root, "crop_points": 512, "merge_classes": COARSE}, "train",
                           val_fraction=0.0)
    assert merged.num_classes == 4 and merged.class_names == tuple(COARSE)
    lut = {S3DIS_CLASSES.index(c): new for new, members in enumerate(COARSE.values()) for c in members}
    fine, coarse = plain[1], merged[1]  # the same item index draws the same crop
    torch.testing.assert_close(fine["pos"], coarse["pos"])
    assert coarse["label"].tolist() == [lut[int(v)] for v in fine["label"]]
    rooms = build_dataset({"name": "s3dis", "root": root, "merge_classes": COARSE}, "test")
    fine_room, coarse_room = build_dataset({"name": "s3dis", "root": root}, "test")[0], rooms[0]
    assert rooms.num_classes == 4
    assert coarse_room.labels.tolist() == [lut[int(v)] for v in fine_room.labels]


@pytest.mark.parametrize("groups,message", [
    ({"a": ["ceiling", "flor"]}, "'flor' is not an S3DIS class"),
    ({"a": ["ceiling"], "b": ["ceiling"]}, "'ceiling' appears in more than one group"),
    ({"a": ["ceiling"]}, "leaves S3DIS classes without a group: floor, wall"),
    ({"a": "ceiling"}, "merge_classes.a must be a non-empty list"),
])
def test_merge_classes_errors_name_the_problem(synthetic_root, groups, message):
    with pytest.raises(ValueError, match=message):
        build_dataset({"name": "s3dis", "root": str(synthetic_root / "s3disfull"), "merge_classes": groups}, "test")
