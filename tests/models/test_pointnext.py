"""PointNeXt: official key layout, forward against a NumPy float64 re-implementation, configs,
whole-room inference."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pointdr2.config import load_config
from pointdr2.engine.rooms import predict_room
from pointdr2.models.pointnext import (
    PointNeXtCls,
    PointNeXtPartSeg,
    PointNeXtSeg,
    build_pointnext,
    convert_official_state_dict,
)

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- official layout

def _bn(prefix: str, c: int) -> dict:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def official_seg_layout(width, blocks, in_channels=4, num_classes=13, expansion=4):
    """Key -> shape of openpoints BaseSeg(PointNextEncoder, PointNextDecoder, SegHead), written
    from openpoints' module structure (sa_layers=1, no SA residual, stride-1 stem + 4 stages)."""
    chans = [width * 2 ** i for i in range(len(blocks))]
    out = {"encoder.encoder.0.0.convs.0.0.weight": (chans[0], in_channels, 1),
           "encoder.encoder.0.0.convs.0.0.bias": (chans[0],)}
    for i in range(1, len(blocks)):
        c, prev = chans[i], chans[i - 1]
        sa = f"encoder.encoder.{i}.0.convs.0"
        out[f"{sa}.0.weight"] = (c, prev + 3, 1, 1)
        out.update(_bn(f"{sa}.1", c))
        for j in range(1, blocks[i]):
            b = f"encoder.encoder.{i}.{j}"
            out[f"{b}.convs.convs.0.0.weight"] = (c, c + 3, 1, 1)
            out.update(_bn(f"{b}.convs.convs.0.1", c))
            out[f"{b}.pwconv.0.0.weight"] = (c * expansion, c, 1)
            out.update(_bn(f"{b}.pwconv.0.1", c * expansion))
            out[f"{b}.pwconv.1.0.weight"] = (c, c * expansion, 1)
            out.update(_bn(f"{b}.pwconv.1.1", c))
    for k in range(4):
        d = f"decoder.decoder.{k}.0.convs"
        out[f"{d}.0.0.weight"] = (chans[k], chans[k] + chans[k + 1], 1)
        out.update(_bn(f"{d}.0.1", chans[k]))
        out[f"{d}.1.0.weight"] = (chans[k], chans[k], 1)
        out.update(_bn(f"{d}.1.1", chans[k]))
    out["head.head.0.0.weight"] = (chans[0], chans[0], 1)
    out.update(_bn("head.head.0.1", chans[0]))
    out["head.head.2.0.weight"] = (num_classes, chans[0], 1)
    out["head.head.2.0.bias"] = (num_classes,)
    return out


def random_state(layout: dict, seed: int = 0) -> dict:
    """Random weights in the given layout; BN statistics non-trivial so eval mode matters."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in layout.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g, dtype=torch.float64) + 0.5
        elif key.endswith("running_mean") or key.endswith(".bias"):
            sd[key] = 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
        elif len(shape) == 1:  # BN weight
            sd[key] = 1.0 + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
        else:
            fan_in = int(np.prod(shape[1:]))
            sd[key] = torch.randn(shape, generator=g, dtype=torch.float64) / np.sqrt(fan_in)
    return sd


@pytest.mark.parametrize("name,params", [("pointnext-s", 0.792), ("pointnext-b", 3.828),
                                         ("pointnext-l", 7.125), ("pointnext-xl", 41.576)])
def test_s3dis_parameter_counts_match_official(name, params):
    # Params.(M) from the headers of openpoints' cfgs/s3dis/pointnext-*.yaml.
    model = build_pointnext({"name": name})
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 3) == params


def test_scanobjectnn_s_parameter_count_matches_official():
    model = build_pointnext({"name": "pointnext-s", "task": "cls"})
    assert isinstance(model, PointNeXtCls)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 3) == 1.367


@pytest.mark.parametrize("name,width,blocks", [("pointnext-b", 32, [1, 2, 3, 2, 2]),
                                               ("pointnext-xl", 64, [1, 4, 7, 4, 4])])
def test_state_dict_has_the_official_layout(name, width, blocks):
    model = build_pointnext({"name": name})
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_seg_layout(width, blocks)


def test_official_checkpoint_converts_and_loads_strictly():
    cfg = {"name": "pointnext", "width": 8, "blocks": [1, 2, 2, 1, 1], "radius": 0.2, "nsample": 8}
    layout = official_seg_layout(8, [1, 2, 2, 1, 1])
    sd = random_state(layout, seed=1)
    ckpt = {"model": {"module." + k: v for k, v in sd.items()}, "optimizer": {"state": {}},
            "scheduler": {"last_epoch": 3}, "epoch": 99, "best_val": 0.67}
    converted, expected_missing = convert_official_state_dict(ckpt)
    assert expected_missing == [] and set(converted) == set(layout)
    model = build_pointnext(cfg).double()
    assert PointNeXtSeg.convert_state_dict(model, ckpt)[0].keys() == converted.keys()
    report = model.load_state_dict(converted, strict=True)
    assert not report.missing_keys and not report.unexpected_keys
    got = model.state_dict()
    for key, value in sd.items():
        assert torch.equal(got[key], value), key


def test_convert_rejects_foreign_state_dict():
    with pytest.raises(ValueError, match="encoder.encoder"):
        convert_official_state_dict({"base_model": {"blocks.blocks.0.attn.qkv.weight": torch.zeros(3, 3)}})


# ----------------------------------------------------------------------------- NumPy reference

def np_fps(xyz, m):
    chosen = [0]
    dist = np.full(len(xyz), np.inf)
    for _ in range(m - 1):
        dist = np.minimum(dist, ((xyz - xyz[chosen[-1]]) ** 2).sum(1))
        chosen.append(int(np.argmax(dist)))
    return np.array(chosen)


def np_ball(support, query, r, k):
    out = np.zeros((len(query), k), dtype=np.int64)
    for s, q in enumerate(query):
        hits = np.nonzero(((support - q) ** 2).sum(1) < r * r)[0][:k]
        if len(hits):
            out[s] = hits[0]
            out[s, :len(hits)] = hits
    return out


def np_interp(unknown, known, f_known):
    d = np.sqrt(((unknown[:, None] - known[None]) ** 2).sum(-1))
    idx = np.argsort(d, axis=1, kind="stable")[:, :3]
    recip = 1.0 / (np.take_along_axis(d, idx, 1) + 1e-8)
    w = recip / recip.sum(1, keepdims=True)
    return (f_known[:, idx] * w[None]).sum(-1)


class NpNet:
    """Eval-mode forward of openpoints' PointNeXt from a state dict, one cloud at a time."""

    def __init__(self, sd):
        self.sd = {k: v.double().numpy() for k, v in sd.items()}

    def conv(self, x, key, bias=False):
        w = self.sd[key + ".weight"]
        y = np.einsum("oi,i...->o...", w.reshape(w.shape[0], w.shape[1]), x)
        if bias:
            y = y + self.sd[key + ".bias"].reshape((-1,) + (1,) * (x.ndim - 1))
        return y

    def bn(self, x, key):
        shape = (-1,) + (1,) * (x.ndim - 1)
        sd = self.sd
        return ((x - sd[key + ".running_mean"].reshape(shape)) / np.sqrt(sd[key + ".running_var"].reshape(shape) + 1e-5)
                * sd[key + ".weight"].reshape(shape) + sd[key + ".bias"].reshape(shape))

    def cbr(self, x, key, act=True):
        y = self.bn(self.conv(x, key + ".0"), key + ".1")
        return np.maximum(y, 0) if act else y

    def group(self, p, centres, f, r, k):
        idx = np_ball(p, centres, r, k)
        dp = ((p[idx] - centres[:, None]) / r).transpose(2, 0, 1)
        return np.concatenate([dp, f[:, idx]], 0)

    def sa(self, key, p, f, r, k, stride, layers=1, use_res=False):
        c = np_fps(p, len(p) // stride)
        x = self.group(p, p[c], f, r, k)
        for i in range(layers):
            x = self.cbr(x, f"{key}.convs.{i}", act=not (use_res and i == layers - 1))
        out = x.max(-1)
        if use_res:
            skip = f"{key}.skipconv.0"
            identity = self.conv(f[:, c], skip, bias=True) if skip + ".weight" in self.sd else f[:, c]
            out = np.maximum(out + identity, 0)
        return p[c], out

    def invres(self, key, p, f, r, k):
        x = self.cbr(self.group(p, p, f, r, k), f"{key}.convs.convs.0").max(-1)
        x = self.cbr(self.cbr(x, f"{key}.pwconv.0"), f"{key}.pwconv.1", act=False)
        return np.maximum(f + x, 0)

    def encoder(self, p, f, blocks, strides, radius, k, layers=1, use_res=False, scaling=2.0):
        ps, fs = [p], [f]
        f = self.conv(f, "encoder.encoder.0.0.convs.0.0", bias=True)
        ps.append(p)
        fs.append(f)
        r = radius
        for i in range(1, len(blocks)):
            key = f"encoder.encoder.{i}"
            if strides[i] == 1:  # group-all
                x = np.concatenate([p.T[:, None, :], f[:, None, :]], 0)
                for j in range(layers):
                    x = self.cbr(x, f"{key}.0.convs.{j}")
                f = x.max(-1)
            else:
                # SA at radius r; its InvResMLPs at r*scaling; r scales once per stage.
                p, f = self.sa(f"{key}.0", p, f, r, k, strides[i], layers, use_res)
                for j in range(1, blocks[i]):
                    f = self.invres(f"{key}.{j}", p, f, r * scaling, k)
                r *= scaling
            ps.append(p)
            fs.append(f)
        return ps, fs

    def seg(self, p, f, blocks, radius, k):
        ps, fs = self.encoder(p, f, blocks, [1, 4, 4, 4, 4], radius, k)
        up = fs[5]
        for s in range(3, -1, -1):
            key = f"decoder.decoder.{s}.0.convs"
            x = np.concatenate([fs[s + 1], np_interp(ps[s + 1], ps[s + 2], up)], 0)
            up = self.cbr(self.cbr(x, f"{key}.0"), f"{key}.1")
        h = self.cbr(up, "head.head.0")
        return self.conv(h, "head.head.2.0", bias=True)


def _cloud(b, n, c, seed):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(b, n, 3, generator=g, dtype=torch.float64)
    feats = torch.rand(b, c, n, generator=g, dtype=torch.float64)
    return pos, feats


def test_segmentation_forward_matches_numpy_reference():
    blocks = [1, 2, 2, 1, 1]
    cfg = {"name": "pointnext", "width": 8, "blocks": blocks, "radius": 0.15, "nsample": 8}
    sd = random_state(official_seg_layout(8, blocks), seed=2)
    model = build_pointnext(cfg).double().eval()
    model.load_state_dict(sd)
    pos, feats = _cloud(2, 1024, 4, seed=3)
    with torch.no_grad():
        logits = model(pos, feats)
    assert logits.shape == (2, 13, 1024) and logits.dtype == torch.float64
    ref = NpNet(sd)
    for b in range(2):
        expected = ref.seg(pos[b].numpy(), feats[b].numpy(), blocks, 0.15, 8)
        np.testing.assert_allclose(logits[b].numpy(), expected, rtol=1e-9, atol=1e-9)


def _cls_cfg():
    return {"name": "pointnext", "task": "cls", "num_classes": 5, "width": 8, "blocks": [1, 2, 1, 1],
            "strides": [1, 2, 2, 1], "radius": 0.2, "radius_scaling": 1.5, "nsample": 8, "sa_layers": 2,
            "sa_use_res": True, "head_mlps": [16, 8], "height_dim": 1}


def test_classification_forward_matches_numpy_reference():
    model = build_pointnext(_cls_cfg()).double()
    g = torch.Generator().manual_seed(4)
    sd = {}
    for k, v in model.state_dict().items():  # randomise, incl. the SA skip convs and BN stats
        if k.endswith("num_batches_tracked"):
            sd[k] = v
        elif k.endswith("running_var"):
            sd[k] = torch.rand(v.shape, generator=g, dtype=v.dtype) + 0.5
        else:
            sd[k] = 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype)
    model.load_state_dict(sd)
    model.eval()
    points = torch.rand(2, 256, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        logits = model(points)
    assert logits.shape == (2, 5)
    ref = NpNet(sd)
    for b in range(2):
        p = points[b].numpy()
        f = np.concatenate([p.T, p[:, 1:2].T - p[:, 1].min()], 0)  # xyz + height along y
        _, fs = ref.encoder(p, f, [1, 2, 1, 1], [1, 2, 2, 1], 0.2, 8, layers=2, use_res=True, scaling=1.5)
        h = fs[-1][:, 0]
        for i in (0, 2):
            w = ref.sd[f"prediction.head.{i}.0.weight"]
            h = np.maximum(ref.bn(w @ h, f"prediction.head.{i}.1"), 0)
        out = ref.sd["prediction.head.4.0.weight"] @ h + ref.sd["prediction.head.4.0.bias"]
        np.testing.assert_allclose(logits[b].numpy(), out, rtol=1e-9, atol=1e-9)
    # Features given explicitly (xyz + height) give the same logits.
    height = points[..., 1:2] - points[..., 1:2].min(dim=1, keepdim=True).values
    with torch.no_grad():
        torch.testing.assert_close(model(torch.cat([points, height], -1)), logits)


def test_training_step_backpropagates_to_every_parameter():
    model = build_pointnext({"name": "pointnext", "width": 8, "blocks": [1, 2, 1, 1, 1], "nsample": 8,
                             "radius": 0.2})
    pos, feats = _cloud(2, 1024, 4, seed=5)
    loss = torch.nn.functional.cross_entropy(model(pos.float(), feats.float()), torch.randint(0, 13, (2, 1024)))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ----------------------------------------------------------------------------- config validation

@pytest.mark.parametrize("cfg,match", [
    ({"name": "pointnext-b", "widht": 32}, r"model\.widht.*model\.width"),
    ({"name": "pointnext-b", "task": "det"}, "model.task"),
    ({"name": "pointnext", "blocks": [1, 2], "strides": [1, 4, 4]}, "same length"),
    ({"name": "pointnext", "strides": [1, 4, 1, 4, 4]}, "model.strides"),
    ({"name": "pointnext", "radius": [0.1, 0.2]}, "model.radius"),
    ({"name": "pointnext", "radius": -0.1}, "model.radius"),
    ({"name": "pointnext", "width": 0}, "model.width"),
    ({"name": "pointnext", "dropout": 1.5}, "model.dropout"),
])
def test_bad_model_config_raises_value_error(cfg, match):
    with pytest.raises(ValueError, match=match):
        build_pointnext(cfg)


def test_radius_schedule_follows_openpoints():
    model = build_pointnext({"name": "pointnext-b"})
    radii = [[layer.radius for layer in stage] for stage in model.encoder.encoder]
    assert radii[1:] == [[0.1, 0.2], [0.2, 0.4, 0.4], [0.4, 0.8], [0.8, 1.6]]
    cls = build_pointnext({"name": "pointnext-s", "task": "cls"})
    assert [stage[0].radius for stage in cls.encoder.encoder][1:5] == pytest.approx([0.15, 0.225, 0.3375, 0.50625])


def test_wrong_input_shapes_raise_value_error():
    model = build_pointnext({"name": "pointnext", "width": 8, "nsample": 8})
    with pytest.raises(ValueError, match="channels"):
        model(torch.rand(1, 1024, 3), torch.rand(1, 3, 1024))
    with pytest.raises(ValueError, match="pos"):
        model(torch.rand(1, 1024, 2), torch.rand(1, 4, 1024))


@pytest.mark.parametrize("path", ["configs/s3dis/pointnext-b.yaml", "configs/s3dis/pointnext-l.yaml",
                                  "configs/s3dis/pointnext-xl.yaml", "configs/scanobjectnn/pointnext-s.yaml",
                                  "configs/shapenetpart/pointnext-s.yaml", "configs/shapenetpart/pointnext-s_c64.yaml",
                                  "configs/shapenetpart/pointnext-s_c160.yaml"])
def test_shipped_configs_build(path):
    cfg = load_config(REPO / path)
    model = build_pointnext(cfg.model)
    # openpoints' FPS has no origin skip: the official checkpoints want none
    assert cfg.model.fps_skip_origin is False
    assert not any(getattr(m, "fps_skip_origin", False) for m in model.modules())
    if "s3dis" in path:
        assert isinstance(model, PointNeXtSeg) and cfg.dataset.voxel_size == 0.04
        assert cfg.dataset.crop_points == 24000 and cfg.dataset.loop == 30
        assert cfg.model.strides == [1, 4, 4, 4, 4] and cfg.model.in_channels == 4
        assert cfg.train.lr == 0.01 and cfg.train.epochs == 100 and cfg.finetune.mode == "dr2net"
    elif "shapenetpart" in path:  # openpoints' cfgs/shapenetpart/pointnext-s*.yaml
        assert isinstance(model, PointNeXtPartSeg) and model.num_classes == 50 and model.num_categories == 16
        assert cfg.model.width == {"pointnext-s": 32, "pointnext-s_c64": 64, "pointnext-s_c160": 160}[Path(path).stem]
        assert cfg.model.in_channels == 7 and cfg.dataset.use_normals and cfg.dataset.num_points == 2048
        assert cfg.model.sa_layers == 3 and cfg.model.radius_scaling == 2.5 and cfg.model.cls_map == "curvenet"
        assert cfg.train.lr == 0.001 and cfg.train.weight_decay == 1.0e-4 and cfg.train.epochs == 300
    else:
        assert isinstance(model, PointNeXtCls) and model.num_classes == 15


def test_set_abstraction_fps_skip_origin():
    """model.fps_skip_origin reaches every downsampling SetAbstraction: its centres are pointnet2_ops'
    (brute force below), which never picks a point with |p|^2 <= 1e-3 after the first."""
    g = torch.Generator().manual_seed(3)
    p = torch.randn(2, 64, 3, generator=g)
    p = p / p.norm(dim=-1, keepdim=True)
    p[:, 9] = 0.0
    p[:, 30] = torch.tensor([0.02, 0.0, -0.01])
    cfg = {"name": "pointnext", "task": "cls", "width": 8, "blocks": [1, 1, 1], "strides": [1, 2, 2],
           "radius": 0.3, "nsample": 8, "in_channels": 3}
    skip = build_pointnext({**cfg, "fps_skip_origin": True})
    plain = build_pointnext(cfg)
    sa, sa_plain = skip.encoder.encoder[1][0], plain.encoder.encoder[1][0]
    assert sa.fps_skip_origin and skip.encoder.encoder[2][0].fps_skip_origin and not sa_plain.fps_skip_origin
    _, centre_idx, _ = sa.sample(p)
    for b in range(2):
        xyz = p[b].double().numpy()
        chosen, mind = [0], np.full(64, np.inf)
        for _ in range(31):
            mind = np.minimum(mind, ((xyz - xyz[chosen[-1]]) ** 2).sum(1))
            chosen.append(int(np.argmax(np.where(np.isin(np.arange(64), [9, 30]), -1.0, mind))))
        np.testing.assert_array_equal(centre_idx[b].numpy(), chosen)
    assert (sa_plain.sample(p)[1] == 9).any()  # without the skip the centre point is picked


def test_s3dis_config_feeds_the_model(tmp_path):
    """The config's dataset section (keys, transforms) builds on a tiny room and its samples fit the
    model's forward (with the model shrunk for speed)."""
    from pointdr2.data import build_dataset

    g = np.random.default_rng(13)
    (tmp_path / "raw").mkdir()
    for name in ("Area_1_office_1", "Area_2_office_1", "Area_5_office_1"):
        n = 2000
        room = np.concatenate([g.random((n, 3)) * [4.0, 4.0, 3.0], g.integers(0, 256, (n, 3)),
                               g.integers(0, 13, (n, 1))], 1).astype(np.float32)
        np.save(tmp_path / "raw" / f"{name}.npy", room)
    cfg = load_config(REPO / "configs/s3dis/pointnext-b.yaml",
                      [f"dataset.root={tmp_path}", "dataset.crop_points=1024", "model.width=8",
                       "model.blocks=[1,2,1,1,1]", "model.nsample=8"])
    model = build_pointnext(cfg.model).eval()
    sample = build_dataset(cfg.dataset, "train", val_fraction=0.0)[0]
    assert sample["pos"].shape == (1024, 3) and sample["feats"].shape == (4, 1024)
    with torch.no_grad():
        assert model(sample["pos"][None], sample["feats"][None]).shape == (1, 13, 1024)
    room = build_dataset(cfg.dataset, "test", val_fraction=0.0)[0]
    out = predict_room(model, room, max_points=1024)
    assert out.shape == (2000, 13) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- whole-room inference

def _tiny_seg():
    torch.manual_seed(0)
    return build_pointnext({"name": "pointnext", "width": 8, "blocks": [1, 2, 1, 1, 1], "nsample": 8,
                            "radius": 0.15}).eval()


def _room(n, seed):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(n, 3, generator=g) * torch.tensor([2.0, 2.0, 1.0])
    feats = torch.rand(4, n, generator=g)
    return pos, feats


def test_predict_room_single_pass_equals_full_room_forward():
    model = _tiny_seg()
    pos, feats = _room(1200, seed=6)
    with torch.no_grad():
        direct = model(pos[None], feats[None])[0].T
    out = predict_room(model, [{"pos": pos, "feats": feats, "index": torch.arange(1200)}], 1200)
    torch.testing.assert_close(out, direct)
    # A pass no larger than max_points is not chunked.
    out2 = predict_room(model, [{"pos": pos, "feats": feats, "index": torch.arange(1200)}], 1200,
                        max_points=1200)
    torch.testing.assert_close(out2, direct)


def test_predict_room_averages_logits_over_passes():
    model = _tiny_seg()
    pos, feats = _room(2000, seed=7)
    g = torch.Generator().manual_seed(8)
    passes = []
    for _ in range(3):
        index = torch.sort(torch.randperm(2000, generator=g)[:1100]).values
        passes.append({"pos": pos[index], "feats": feats[:, index], "index": index})
    out = predict_room(model, passes, 2000)
    total = np.zeros((2000, 13))
    count = np.zeros(2000)
    with torch.no_grad():
        for item in passes:
            logits = model(item["pos"][None], item["feats"][None])[0].T.numpy()
            for row, i in enumerate(item["index"].tolist()):
                total[i] += logits[row]
                count[i] += 1
    covered = count > 0
    np.testing.assert_allclose(out.numpy()[covered], total[covered] / count[covered, None], rtol=1e-5, atol=1e-6)
    assert torch.isnan(out[torch.from_numpy(~covered)]).all()


class _PointwiseNet(torch.nn.Module):
    """A per-point model: chunking must not change its output at all."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(7, 3, 1)

    def forward(self, pos, feats):
        return self.conv(torch.cat([pos.transpose(1, 2), feats], 1))


def test_predict_room_chunks_cover_every_point_and_bound_the_forward_size():
    pos, feats = _room(3000, seed=9)
    net = _PointwiseNet().eval()
    sizes = []
    net.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[1]))
    item = {"pos": pos, "feats": feats, "index": torch.arange(3000)}
    chunked = predict_room(net, [item], 3000, max_points=700)
    assert max(sizes) == 700 and len(sizes) >= 5
    with torch.no_grad():
        torch.testing.assert_close(chunked, net(pos[None], feats[None])[0].T)
    # The real network runs on bounded chunks too and covers the room.
    out = predict_room(_tiny_seg(), [item], 3000, max_points=1024)
    assert out.shape == (3000, 13) and torch.isfinite(out).all()


def test_room_chunks_are_few_full_and_cover_every_point():
    from pointdr2.engine.rooms import _chunks

    g = torch.Generator().manual_seed(0)
    n, max_points = 9000, 512
    floor = torch.rand(n // 2, 3, generator=g) * torch.tensor([6.0, 5.0, 0.0])
    wall = torch.rand(n - n // 2, 3, generator=g) * torch.tensor([6.0, 0.0, 3.0])
    pos = torch.cat([floor, wall])
    chunks = list(_chunks(pos, max_points))
    hits = torch.zeros(n, dtype=torch.long)
    for c in chunks:
        assert len(c) == max_points and len(torch.unique(c)) == max_points
        assert torch.equal(c, torch.sort(c).values)
        hits[c] += 1
    assert bool((hits > 0).all())
    # median cuts leave cells of 3/4 * 512 = 384 points or fewer, and more than half that
    assert len(chunks) <= math.ceil(n / 192) and len(chunks) < 2 * n / max_points
    assert list(_chunks(pos, n)) == [None] and list(_chunks(pos, None)) == [None]


def test_predict_room_rejects_bad_passes():
    model = _tiny_seg()
    pos, feats = _room(800, seed=10)
    with pytest.raises(ValueError, match="index"):
        predict_room(model, [{"pos": pos, "feats": feats}], 800)
    with pytest.raises(ValueError, match="out of range"):
        predict_room(model, [{"pos": pos, "feats": feats, "index": torch.arange(800) + 1}], 800)


def test_load_pretrained_reads_an_official_checkpoint_file(tmp_path):
    from pointdr2.models import build_model, load_pretrained

    layout = official_seg_layout(8, [1, 2, 2, 1, 1])
    sd = {k: v.float() if v.is_floating_point() else v for k, v in random_state(layout, seed=11).items()}
    path = tmp_path / "pointnext_s3dis.pth"
    torch.save({"model": {"module." + k: v for k, v in sd.items()}, "optimizer": {}, "scheduler": {},
                "epoch": 100, "best_val": 67.3}, path)
    model = build_model({"name": "pointnext", "width": 8, "blocks": [1, 2, 2, 1, 1]})
    report = load_pretrained(model, path)
    assert report.missing == [] and report.unexpected == []
    for key, value in model.state_dict().items():
        assert torch.equal(value, sd[key]), key
    # an encoder exported without its head (finetuning on another label set): the head is expected missing
    encoder_only = tmp_path / "encoder.pth"
    torch.save({"model": {k: v for k, v in sd.items() if not k.startswith("head.")}}, encoder_only)
    fresh = build_model({"name": "pointnext", "width": 8, "blocks": [1, 2, 2, 1, 1], "num_classes": 5})
    report = load_pretrained(fresh, encoder_only)
    head = sorted(k for k in fresh.state_dict() if k.startswith("head."))
    assert head and sorted(report.expected_missing) == head
    assert sorted(report.missing) == [k for k in head if not k.endswith("num_batches_tracked")]
    assert report.unexpected_missing == [] and report.unexpected == []


def test_predict_room_on_an_s3dis_room_matches_per_pass_scatter():
    from pointdr2.data.s3dis import S3DISRoom, scatter_predictions
    from pointdr2.data.transforms import build_transforms, default_transforms

    g = np.random.default_rng(12)
    n = 1500
    room = np.concatenate([g.random((n, 3)) * [1.5, 1.5, 1.0], g.integers(0, 256, (n, 3)),
                           g.integers(0, 13, (n, 1))], 1).astype(np.float32)
    r = S3DISRoom("Area_5_synthetic_1", room, 0.08, build_transforms(default_transforms("s3dis", "test")), 0)
    assert r.num_passes > 1
    model = _tiny_seg()
    out = predict_room(model, r)  # room object: num_points and passes() taken from it
    with torch.no_grad():
        passes = list(r.passes())
        ref = scatter_predictions(n, [p["index"] for p in passes],
                                  [model(p["pos"][None], p["feats"][None])[0] for p in passes])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_predict_room_batched_crops_equal_crops_one_at_a_time():
    pos, feats = _room(3000, seed=13)
    item = {"pos": pos, "feats": feats, "index": torch.arange(3000)}
    model = _tiny_seg()
    sizes = []
    model.register_forward_hook(lambda m, args, out: sizes.append(tuple(args[0].shape[:2])))
    single = predict_room(model, [item], 3000, max_points=700)
    n_chunks = len(sizes)
    sizes.clear()
    batched = predict_room(model, [item], 3000, max_points=700, batch=4)
    # the same crops, four per forward (the last forward takes the rest)
    assert [b for b, _ in sizes] == [4] * (n_chunks // 4) + ([n_chunks % 4] if n_chunks % 4 else [])
    assert {n for _, n in sizes} == {700}
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
    # chunk_transform applies to every crop of a batch: a transform that zeroes the features
    zero = predict_room(model, [item], 3000, max_points=700, batch=3,
                        chunk_transform=lambda p, f: (p, torch.zeros_like(f)))
    ref = predict_room(model, [{"pos": pos, "feats": torch.zeros_like(feats), "index": torch.arange(3000)}], 3000,
                       max_points=700)
    torch.testing.assert_close(zero, ref, rtol=1e-5, atol=1e-5)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch must be a positive integer"):
            predict_room(model, [item], 3000, max_points=700, batch=bad)


def test_s3dis_room_crop_features_measure_height_from_the_crop():
    from pointdr2.data.s3dis import S3DISRoom

    pos = torch.tensor([[1.0, 2.0, 1.5], [2.0, 1.0, 2.5], [1.5, 3.0, 2.0]])
    feats = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9], [1.5, 2.5, 2.0]])
    p, f = S3DISRoom.chunk_features(pos, feats)
    torch.testing.assert_close(p, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.5, 2.0, 0.5]]))
    torch.testing.assert_close(f[:3], feats[:3])  # colours unchanged
    torch.testing.assert_close(f[3], torch.tensor([0.0, 1.0, 0.5]))  # height above the crop's lowest point
    assert feats[3, 0] == 1.5  # the caller's tensor is left alone


def test_default_room_predictor_batches_crops_and_uses_the_rooms_crop_features():
    from pointdr2.engine.evaluator import default_room_predictor

    calls = []

    class Room:
        num_points = 2000

        def __init__(self):
            pos, feats = _room(2000, seed=14)
            self.item = {"pos": pos, "feats": feats, "index": torch.arange(2000)}

        def passes(self):
            yield self.item

        @staticmethod
        def chunk_features(p, f):
            calls.append(p.shape[0])
            return p, f

    net = _PointwiseNet().eval()
    shapes = []
    net.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape[:2])))
    room = Room()
    out = default_room_predictor(max_points=512)(net, room, torch.device("cpu"))
    assert calls and set(calls) == {512}
    assert shapes[0] == (min(len(calls), 16384 // 512), 512)
    with torch.no_grad():
        torch.testing.assert_close(out, net(room.item["pos"][None], room.item["feats"][None])[0].T)
