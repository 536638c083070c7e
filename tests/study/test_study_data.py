"""The study's data stage: the PointNeXt track's source building is another building in the same layout."""

from __future__ import annotations

import json

import numpy as np

from pointdr2.study.data import SOURCE_SEED_OFFSET, generate


def test_source_building_has_the_layout_but_none_of_the_rooms(tmp_path):
    info = generate(tmp_path, "test", ("s3dis-raw", "s3dis-source"), progress=False)
    target, source = tmp_path / "data" / "s3dis" / "raw", tmp_path / "data" / "s3dis_source" / "raw"
    assert info["s3dis-source"]["seed"] == info["s3dis-raw"]["seed"] + SOURCE_SEED_OFFSET
    rooms = sorted(p.name for p in target.glob("*.npy"))
    assert rooms and rooms == sorted(p.name for p in source.glob("*.npy"))  # same areas and room names
    for name in rooms:
        a, b = np.load(target / name), np.load(source / name)
        assert a.shape[1] == b.shape[1] == 7  # xyz rgb label, as the converter writes it
        assert a.shape != b.shape or not np.allclose(a, b)  # other geometry: no room is shared
    # the markers record each building's seed: a re-run skips both, a changed seed would rewrite
    again = generate(tmp_path, "test", ("s3dis-raw", "s3dis-source"), progress=False)
    assert again == json.loads(json.dumps(info))
