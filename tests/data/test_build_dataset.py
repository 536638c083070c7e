"""build_dataset: config validation and the registry."""

from __future__ import annotations

import pytest

from pointdr2.config import load_config
from pointdr2.data import DATASETS, build_dataset


def test_registry_names():
    assert set(DATASETS) == {"modelnet40", "scanobjectnn", "s3dis", "shapenetpart"}


@pytest.mark.parametrize("cfg, split, message", [
    ({"name": "modelnet41"}, "train", "dataset.name must be one of .* did you mean modelnet40"),
    ({"name": "modelnet40", "num_point": 1024}, "train", "unknown config key 'dataset.num_point' .*dataset.num_points"),
    ({"name": "s3dis", "crop_point": 1}, "train", "dataset.crop_points"),
    ({"name": "scanobjectnn", "test_area": 5}, "train", "unknown config key 'dataset.test_area' for dataset scanobjectnn"),
    ({"name": "modelnet40"}, "validation", "split must be one of train, val, test"),
    ({"name": "modelnet40", "transforms": {"training": []}}, "train", "dataset.transforms.training: unknown split"),
    ({"name": "modelnet40", "transforms": [{"name": "jitter"}]}, "train", "must be a mapping with train/test"),
])
def test_bad_config(cfg, split, message, tmp_path):
    cfg = {**cfg, "root": str(tmp_path)}
    with pytest.raises(ValueError, match=message):
        build_dataset(cfg, split)


def test_bad_val_fraction(synthetic_root):
    with pytest.raises(ValueError, match="val_fraction must be in \\[0, 1\\)"):
        build_dataset({"name": "modelnet40", "root": str(synthetic_root)}, "train", val_fraction=1.0)


def test_from_loaded_config_with_overrides(synthetic_root, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "dataset:\n  name: scanobjectnn\n  variant: OBJ_BG\n  num_points: 512\n"
        "  transforms:\n    train: [{name: fps_subsample, npoints: 300, keep: 256}, {name: scale_translate}]\n"
        "    test: [{name: fps_subsample, npoints: 256}]\n")
    cfg = load_config(path, [f"dataset.root={synthetic_root}"])
    train, val, test = (build_dataset(cfg.dataset, s) for s in ("train", "val", "test"))
    assert train[0]["points"].shape == (256, 3) and test[0]["points"].shape == (256, 3)
    assert val[0]["points"].shape == (256, 3)  # val uses the test transforms
    assert train.num_classes == val.num_classes == test.num_classes == 15
