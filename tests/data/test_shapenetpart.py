"""ShapeNetPart: hand-written official-layout trees, bad files, the prepare cache, the synthetic writer."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pointdr2.cli import main
from pointdr2.data import build_dataset
from pointdr2.data.classes import SHAPENETPART_CATEGORIES, SHAPENETPART_PARTS, SHAPENETPART_SYNSETS
from pointdr2.data.prepare.shapenetpart import check_shapenetpart
from pointdr2.data.shapenetpart import ShapeNetPart
from pointdr2.data.synthetic import shapenetpart_shape, write_layout

DIR = "shapenetcore_partanno_segmentation_benchmark_v0_normal"
AIRPLANE, MUG, TABLE = "02691156", "03797390", "04379243"


def _shape(rng: np.random.Generator, n: int, parts: tuple[int, ...]) -> np.ndarray:
    """float64 [n, 7]: xyz off-centre, unit normals, a part id of ``parts`` per point."""
    xyz = rng.normal(size=(n, 3)) * [1.0, 2.0, 0.5] + [3.0, -1.0, 2.0]
    nrm = rng.normal(size=(n, 3))
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    part = np.asarray(parts)[np.arange(n) % len(parts)]
    return np.concatenate([xyz, nrm, part[:, None]], axis=1)


def _write_txt(path: Path, rows: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(f"{v:.6f}" for v in row) + "\n" for row in rows))


@pytest.fixture()
def hand_tree(tmp_path: Path) -> tuple[Path, dict]:
    """An official-layout tree written by hand: Table listed before Airplane, Mug shapes in the split files
    but not in synsetoffset2category.txt (so not selected), 12-point shapes (one with 5 points)."""
    root = tmp_path / DIR
    (root / "train_test_split").mkdir(parents=True)
    (root / "synsetoffset2category.txt").write_text(f"Table\t{TABLE}\nAirplane\t{AIRPLANE}\n")
    rng = np.random.default_rng(0)
    shapes = {
        "train": [(AIRPLANE, "a1", _shape(rng, 12, (0, 1, 2, 3))), (TABLE, "t1", _shape(rng, 12, (47, 48))),
                  (MUG, "m1", _shape(rng, 12, (36, 37)))],
        "val": [(TABLE, "t2", _shape(rng, 12, (49, 47)))],
        "test": [(AIRPLANE, "a2", _shape(rng, 5, (3, 0))), (TABLE, "t3", _shape(rng, 12, (48,)))],
    }
    for split, items in shapes.items():
        entries = []
        for synset, shape_id, rows in items:
            _write_txt(root / synset / f"{shape_id}.txt", rows)
            entries.append(f"shape_data/{synset}/{shape_id}")
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(entries))
    return tmp_path, shapes


def _normalised(rows: np.ndarray) -> np.ndarray:
    """Point-MAE's pc_normalize, written out in float64."""
    xyz = rows[:, :3] - rows[:, :3].mean(axis=0)
    return xyz / np.sqrt((xyz**2).sum(axis=1)).max()


def test_hand_written_tree_loads_with_release_labels(hand_tree):
    root, shapes = hand_tree
    ds = ShapeNetPart(root, "train", num_points=12, use_normals=True)  # default transforms: none
    assert len(ds) == 2  # the Mug entry is not selected by synsetoffset2category.txt
    assert ds.num_classes == 50 and ds.category_parts[15] == (47, 48, 49)
    for i, (synset, _, rows) in enumerate(shapes["train"][:2]):
        s = ds[i]
        assert s["points"].shape == (12, 6) and s["points"].dtype == torch.float32
        # 12 of 12 points: every point once, in file order
        np.testing.assert_allclose(s["points"][:, :3].numpy(), _normalised(rows), atol=1e-6)
        np.testing.assert_allclose(s["points"][:, 3:].numpy(), rows[:, 3:6], atol=1e-6)
        assert s["label"].dtype == torch.int64 and s["label"].tolist() == rows[:, 6].astype(int).tolist()
        # the category label is the official index, not the line of synsetoffset2category.txt
        assert int(s["category"]) == SHAPENETPART_SYNSETS.index(synset)
    assert int(ds[1]["category"]) == SHAPENETPART_CATEGORIES.index("Table") == 15
    assert ShapeNetPart(root, "train", num_points=12, transforms=[])[0]["points"].shape == (12, 3)


def test_sampling_pads_short_shapes_and_is_fixed_only_outside_train(hand_tree):
    root, shapes = hand_tree
    test = ShapeNetPart(root, "test", num_points=8, transforms=[])
    short = test[0]  # 5 points in the file
    rows = shapes["test"][0][2]
    ref = _normalised(rows)
    got = short["points"].numpy()
    assert got.shape == (8, 3)
    np.testing.assert_allclose(got[:5], ref, atol=1e-6)  # every point once, then repeats of them
    assert all(np.abs(ref - p).max(axis=1).min() < 1e-6 for p in got[5:])
    assert torch.equal(test[1]["points"], test[1]["points"])  # val/test: the same points every time
    train = ShapeNetPart(root, "train", num_points=6, transforms=[])
    draws = {tuple(train[1]["label"].tolist()) + tuple(train[1]["points"].flatten().tolist()) for _ in range(6)}
    assert len(draws) > 1  # train: new points each epoch
    one = train[1]
    full = _normalised(shapes["train"][1][2])
    assert all(np.abs(full - p).max(axis=1).min() < 1e-6 for p in one["points"].numpy())  # a subset of the shape
    both = ShapeNetPart(root, "train", num_points=12, trainval=True, transforms=[])
    assert len(both) == 3 and int(both[2]["category"]) == 15
    assert len(ShapeNetPart(root, "val", num_points=12)) == 1


def test_build_dataset_keys(hand_tree):
    root, _ = hand_tree
    ds = build_dataset({"name": "shapenetpart", "root": str(root), "num_points": 12, "use_normals": True}, "test")
    assert isinstance(ds, ShapeNetPart) and ds[1]["points"].shape == (12, 6)
    with pytest.raises(ValueError, match="dataset.use_normals"):
        build_dataset({"name": "shapenetpart", "root": str(root), "use_normal": True}, "test")


def _rewrite(root: Path, synset: str, shape_id: str, text: str) -> Path:
    path = root / DIR / synset / f"{shape_id}.txt"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case,text,message", [
    ("columns", "0 0 0 0 0 1\n1 0 0 0 0 1\n", r"6 columns; expected 7 \(x y z nx ny nz part\)"),
    ("range", "0 0 0 0 0 1 1.000000\n1 0 0 0 0 1 5.000000\n", r":2: part label 5 outside Airplane's parts 0..3"),
    ("fraction", "0 0 0 0 0 1 1.5\n", r":1: part label 1.5 outside Airplane's parts 0..3"),
    ("nan", "0 0 nan 0 0 1 1\n", r"non-finite values"),
    ("text", "0 0 zero 0 0 1 1\n", r"malformed point file"),
])
def test_bad_shape_files_name_the_file(hand_tree, case, text, message, capsys):
    root, _ = hand_tree
    path = _rewrite(root, AIRPLANE, "a1", text)
    ds = ShapeNetPart(root, "train", num_points=4, use_cache=False)
    with pytest.raises(ValueError, match=message) as info:
        ds[0]
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert main(["prepare", "shapenetpart", "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(path) in err and len(err.splitlines()) == 1


def test_missing_and_malformed_index_files_name_the_file(hand_tree):
    root, _ = hand_tree
    split_dir = root / DIR / "train_test_split"
    (root / DIR / TABLE / "t1.txt").unlink()
    with pytest.raises(FileNotFoundError, match=f"{TABLE}/t1.txt"):
        ShapeNetPart(root, "train")
    (split_dir / "shuffled_val_file_list.json").write_text('["shape_data/04379243/t2"')
    with pytest.raises(ValueError, match="shuffled_val_file_list.json: not valid JSON"):
        ShapeNetPart(root, "val")
    (split_dir / "shuffled_test_file_list.json").unlink()
    with pytest.raises(FileNotFoundError, match="split file missing: .*shuffled_test_file_list.json"):
        ShapeNetPart(root, "test")
    (split_dir / "shuffled_test_file_list.json").write_text(json.dumps(["shape_data/12345678/x"]))
    with pytest.raises(ValueError, match=r"shuffled_test_file_list.json: entry 'shape_data/12345678/x'"):
        ShapeNetPart(root, "test")
    (root / DIR / "synsetoffset2category.txt").write_text("Airplane 02691156\nTruck 01234567\n")
    with pytest.raises(ValueError, match=r"synsetoffset2category.txt:2: synset '01234567' \(Truck\)"):
        ShapeNetPart(root, "train")
    with pytest.raises(FileNotFoundError, match="shapenetpart data not found .*prepare synthetic --layout shapenetpart"):
        ShapeNetPart(root / "elsewhere", "train")


def test_prepare_cache_is_read_instead_of_the_files_and_checked(hand_tree, capsys):
    root, shapes = hand_tree
    assert main(["prepare", "shapenetpart", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "pointdr2_cache" in out
    cached = ShapeNetPart(root, "test", num_points=12, use_normals=True)
    plain = ShapeNetPart(root, "test", num_points=12, use_normals=True, use_cache=False)
    for i in range(len(plain)):
        assert torch.equal(cached[i]["points"], plain[i]["points"])
        assert torch.equal(cached[i]["label"], plain[i]["label"])
    # a pickled copy (a spawned DataLoader worker) reopens the memory maps instead of carrying the data
    copy = pickle.loads(pickle.dumps(cached))
    assert list(copy._cache.values()) == [None]
    assert torch.equal(copy[1]["points"], plain[1]["points"]) and isinstance(copy._cache["test"][0], np.memmap)
    # the cache is used: the text files are no longer read
    expected = plain[1]["label"]
    for synset, shape_id, _ in shapes["test"]:
        (root / DIR / synset / f"{shape_id}.txt").unlink()
    assert torch.equal(ShapeNetPart(root, "test", num_points=12, use_normals=True)[1]["label"], expected)
    # a split file that changed makes the cache stale: an error naming it
    split = root / DIR / "train_test_split" / "shuffled_val_file_list.json"
    split.write_text(json.dumps([f"shape_data/{AIRPLANE}/a1"]))
    with pytest.raises(ValueError, match=r"val_index.json: the cache does not match .*--overwrite"):
        ShapeNetPart(root, "val")
    for synset, shape_id, rows in shapes["test"]:
        _write_txt(root / DIR / synset / f"{shape_id}.txt", rows)
    rows = check_shapenetpart(root, overwrite=True, num_points=12, progress=False)
    assert [r["shapes"] for r in rows] == [2, 1, 2] and rows[2]["below"] == 1 and rows[0]["parts"] == "6/50"


def test_synthetic_layout_is_read_by_the_loader(tmp_path):
    path, _ = write_layout("shapenetpart", tmp_path, size="test", seed=3)
    assert path.name == DIR
    lines = (path / "synsetoffset2category.txt").read_text().splitlines()
    assert lines == [f"{c}\t{s}" for c, s in zip(SHAPENETPART_CATEGORIES, SHAPENETPART_SYNSETS)]
    seen: set[int] = set()
    agree: list[float] = []
    for split in ("train", "val", "test"):
        entries = json.loads((path / "train_test_split" / f"shuffled_{split}_file_list.json").read_text())
        assert all(e.startswith("shape_data/") and len(e.split("/")[2]) == 32 for e in entries)
        for entry in entries:
            _, synset, shape_id = entry.split("/")
            rows = np.loadtxt(path / synset / f"{shape_id}.txt")
            category = SHAPENETPART_SYNSETS.index(synset)
            labels = rows[:, 6].astype(int)
            assert rows.shape[1] == 7 and set(labels) <= set(SHAPENETPART_PARTS[category])
            assert len(set(labels)) >= 2  # composed of parts
            np.testing.assert_allclose(np.linalg.norm(rows[:, 3:6], axis=1), 1.0, atol=1e-4)
            # each part is a surface of its own: a point's nearest neighbour almost always shares its label
            d = ((rows[:, None, :3] - rows[None, :, :3]) ** 2).sum(-1)
            np.fill_diagonal(d, np.inf)
            agree.append((labels[d.argmin(axis=1)] == labels).mean())
            seen.update(labels.tolist())
        ds = build_dataset({"name": "shapenetpart", "root": str(tmp_path), "num_points": 2048}, split)
        assert sorted(set(ds.categories.tolist())) == list(range(16))
        s = ds[0]
        assert s["points"].shape == (2048, 3) and set(s["label"].tolist()) <= set(SHAPENETPART_PARTS[int(s["category"])])
    assert len(seen) >= 45  # optional parts (a chair's arms, a table's apron) are missing from some shapes
    assert min(agree) > 0.75 and np.mean(agree) > 0.9  # (labels drawn at random: about 0.4)
    again, _ = write_layout("shapenetpart", tmp_path / "again", size="test", seed=3)
    other, _ = write_layout("shapenetpart", tmp_path / "other", size="test", seed=4)
    files = sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file())
    assert all((again / f).read_bytes() == (path / f).read_bytes() for f in files)
    assert (other / "train_test_split" / "shuffled_train_file_list.json").read_bytes() != \
        (path / "train_test_split" / "shuffled_train_file_list.json").read_bytes()


def test_synthetic_shapes_label_every_part_of_their_category():
    """Over 20 shapes per category every part of it is drawn (optional ones too), each with >= 4 points."""
    for category, parts in enumerate(SHAPENETPART_PARTS):
        rng = np.random.default_rng([7, category])
        counts = np.zeros(50, dtype=np.int64)
        for _ in range(20):
            arr, labels = shapenetpart_shape(category, 96, rng)
            assert arr.shape == (96, 6) and arr.dtype == np.float32 and np.isfinite(arr).all()
            present = np.bincount(labels, minlength=50)
            assert set(np.flatnonzero(present)) <= set(parts) and present[present > 0].min() >= 4
            counts += present
        assert set(np.flatnonzero(counts)) == set(parts), SHAPENETPART_CATEGORIES[category]


def test_prepare_synthetic_shapenetpart_cli(tmp_path, capsys):
    assert main(["prepare", "synthetic", "--layout", "shapenetpart", "--out", str(tmp_path), "--size", "test"]) == 0
    assert DIR in capsys.readouterr().out
    rows = check_shapenetpart(tmp_path, progress=False)
    assert [r["categories"] for r in rows] == ["16/16"] * 3
