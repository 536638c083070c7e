"""PointTransformer (Point-BERT / Point-MAE) against an independent float64 reference of the official math."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pointdr2.models import build_model
from pointdr2.models.point_transformer import PointTransformer

TINY = {"trans_dim": 24, "depth": 2, "num_heads": 3, "num_group": 8, "group_size": 6, "num_classes": 5,
        "head_hidden": 16, "drop_path_rate": 0.0}


def tiny(name: str = "pointmae", **kw) -> PointTransformer:
    cfg = {"name": name, **TINY, **kw}
    if name == "pointmae" and "encoder_dims" not in kw:
        cfg["encoder_dims"] = cfg["trans_dim"]
    if name == "pointbert" and "encoder_dims" not in kw:
        cfg["encoder_dims"] = 20
    torch.manual_seed(0)
    return build_model(cfg)


def _randomise(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics and LayerNorm affine parameters so they matter in comparisons."""
    g = torch.Generator().manual_seed(1)
    for name, buf in model.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(torch.randn(buf.shape, generator=g, dtype=buf.dtype) * 0.1)
        elif name.endswith("running_var"):
            buf.copy_(torch.rand(buf.shape, generator=g, dtype=buf.dtype) + 0.5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(("1.weight", "1.bias", "5.weight", "5.bias")):
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)


# ----------------------------------------------------------------------------- reference
def _fps_numpy(xyz: np.ndarray, m: int, skip_origin: bool = False) -> np.ndarray:
    """Start at 0; next = argmax of min squared distance (lowest index on ties). ``skip_origin``:
    pointnet2_ops' kernel, which never picks a point with float32 |p|^2 <= 1e-3 after the first."""
    p32 = xyz.astype(np.float32)
    skipped = ((p32 * p32).sum(1, dtype=np.float32) <= 1e-3) if skip_origin else np.zeros(len(xyz), bool)
    chosen = [0]
    mind = np.full(len(xyz), np.inf)
    for _ in range(m - 1):
        mind = np.minimum(mind, ((xyz - xyz[chosen[-1]]) ** 2).sum(1))
        chosen.append(int(np.argmax(np.where(skipped, -1.0, mind))))
    return np.array(chosen)


def _reference_forward(model: PointTransformer, points: torch.Tensor) -> torch.Tensor:
    """The official finetuning forward, written out with explicit softmax attention (eval mode)."""
    sd = {k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    s = model.settings
    G, K, D, H = s["num_group"], s["group_size"], s["trans_dim"], s["num_heads"]
    pts = points.double().numpy()
    groups, centers = [], []
    for cloud in pts:
        cidx = _fps_numpy(cloud[:, :3], G, s["fps_skip_origin"])
        c = cloud[cidx, :3]
        d2 = ((c[:, None, :] - cloud[None, :, :3]) ** 2).sum(-1)
        nn_idx = np.argsort(d2, axis=1, kind="stable")[:, :K]
        nb = cloud[nn_idx].copy()
        nb[..., :3] -= c[:, None, :]
        groups.append(nb)
        centers.append(c)
    nb = torch.from_numpy(np.stack(groups))  # B G K C
    center = torch.from_numpy(np.stack(centers))
    B = nb.shape[0]

    def conv(x, pre):
        return torch.einsum("oc,bck->bok", sd[pre + ".weight"][..., 0], x) + sd[pre + ".bias"][:, None]

    def bn(x, pre):
        return F.batch_norm(x, sd[pre + ".running_mean"], sd[pre + ".running_var"], sd[pre + ".weight"],
                            sd[pre + ".bias"], False, 0.0, 1e-5)

    x = nb.reshape(B * G, K, -1).transpose(1, 2)
    f = conv(torch.relu(bn(conv(x, "encoder.first_conv.0"), "encoder.first_conv.1")), "encoder.first_conv.3")
    f = torch.cat([f.max(2, keepdim=True)[0].expand(-1, -1, K), f], 1)
    f = conv(torch.relu(bn(conv(f, "encoder.second_conv.0"), "encoder.second_conv.1")), "encoder.second_conv.3")
    tok = f.max(2)[0].reshape(B, G, -1)
    if "reduce_dim.weight" in sd:
        tok = tok @ sd["reduce_dim.weight"].T + sd["reduce_dim.bias"]

    def lin(x, pre):
        return x @ sd[pre + ".weight"].T + (sd[pre + ".bias"] if pre + ".bias" in sd else 0)

    def ln(x, pre):
        return F.layer_norm(x, (D,), sd[pre + ".weight"], sd[pre + ".bias"], 1e-5)

    pos = lin(0.5 * (1 + torch.erf(lin(center, "pos_embed.0") / 2 ** 0.5)) * lin(center, "pos_embed.0"),
              "pos_embed.2")
    x = torch.cat([sd["cls_token"].expand(B, -1, -1), tok], 1)
    pos = torch.cat([sd["cls_pos"].expand(B, -1, -1), pos], 1)
    for i in range(s["depth"]):
        p = f"blocks.blocks.{i}"
        x = x + pos
        qkv = lin(ln(x, p + ".norm1"), p + ".attn.qkv").reshape(B, G + 1, 3, H, D // H).permute(2, 0, 3, 1, 4)
        a = torch.softmax(qkv[0] @ qkv[1].transpose(-1, -2) * (D // H) ** -0.5, -1)
        x = x + lin((a @ qkv[2]).transpose(1, 2).reshape(B, G + 1, D), p + ".attn.proj")
        h = lin(ln(x, p + ".norm2"), p + ".mlp.fc1")
        x = x + lin(F.gelu(h), p + ".mlp.fc2")
    x = ln(x, "norm")
    feat = torch.cat([x[:, 0], x[:, 1:].max(1)[0]], -1)
    head = [k for k in sd if k.startswith("cls_head_finetune.") and k.endswith(".weight")]
    idx = sorted({int(k.split(".")[1]) for k in head})
    for j, i in enumerate(idx):
        pre = f"cls_head_finetune.{i}"
        if sd[pre + ".weight"].ndim == 2:
            feat = lin(feat, pre)
            if j < len(idx) - 1 and f"cls_head_finetune.{i + 1}.running_mean" not in sd:
                feat = torch.relu(feat)
        else:  # BatchNorm1d then ReLU
            feat = torch.relu(F.batch_norm(feat, sd[pre + ".running_mean"], sd[pre + ".running_var"],
                                           sd[pre + ".weight"], sd[pre + ".bias"], False, 0.0, 1e-5))
    return feat


@pytest.mark.parametrize("name", ["pointmae", "pointbert"])
def test_forward_matches_official_reference(name):
    model = tiny(name).double().eval()
    _randomise(model)
    pts = torch.randn(3, 40, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        out = model(pts)
    ref = _reference_forward(model, pts)
    assert out.shape == (3, 5)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["pointmae", "pointbert"])
def test_fps_skip_origin_gives_pointnet2_ops_centres(name):
    """Clouds with points at and near the origin: model.fps_skip_origin reproduces the official
    (pointnet2_ops) centres and logits; without it the origin point can become a centre."""
    pts = torch.randn(3, 40, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    pts = pts / pts.norm(dim=-1, keepdim=True)  # a shell: the centre is far from every other point
    pts[:, 5] = 0.0
    pts[:, 11] = torch.tensor([0.01, -0.02, 0.015], dtype=torch.float64)
    pts[0, 17] = torch.tensor([0.0, 0.0, 0.04], dtype=torch.float64)  # outside the skip ball
    official = tiny(name, fps_skip_origin=True).double().eval()
    _randomise(official)
    plain = tiny(name).double().eval()
    plain.load_state_dict(official.state_dict())
    centres = official.group_divider.indices(pts)[0]
    for b in range(3):
        np.testing.assert_array_equal(centres[b].numpy(), _fps_numpy(pts[b].numpy(), 8, skip_origin=True))
    assert not ((centres == 5) | (centres == 11)).any()
    assert (plain.group_divider.indices(pts)[0] == 5).any()  # the plain rule picks the origin point
    with torch.no_grad():
        torch.testing.assert_close(official(pts), _reference_forward(official, pts), rtol=1e-10, atol=1e-10)
        assert not torch.allclose(official(pts), plain(pts), atol=1e-6)
    with pytest.raises(ValueError, match="model.fps_skip_origin must be true or false"):
        tiny(name, fps_skip_origin="yes")


@pytest.mark.parametrize("path", ["configs/modelnet40/pointbert.yaml", "configs/modelnet40/pointmae.yaml",
                                  "configs/scanobjectnn/pointbert.yaml", "configs/scanobjectnn/pointmae.yaml"])
def test_reproduction_configs_sample_like_pointnet2_ops(path):
    """The configs that reproduce official checkpoints use pointnet2_ops' FPS (origin skip) for the
    group centres and for every fps_subsample transform."""
    from pathlib import Path

    from pointdr2.config import load_config
    from pointdr2.data.transforms import FPSSubsample, build_transforms

    cfg = load_config(Path(__file__).resolve().parents[2] / path)
    assert cfg.model.fps_skip_origin is True
    model = tiny(cfg.model.name, fps_skip_origin=cfg.model.fps_skip_origin)
    assert model.group_divider.skip_origin
    for split in ("train", "test"):
        fps = [t for t in build_transforms(cfg.dataset.transforms[split]).transforms if isinstance(t, FPSSubsample)]
        assert all(t.skip_origin for t in fps)


def test_extra_input_channels_follow_relative_xyz():
    model = tiny("pointmae", in_channels=5).double().eval()
    _randomise(model)
    pts = torch.randn(2, 30, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(pts), _reference_forward(model, pts), rtol=1e-10, atol=1e-10)


def test_variants_and_official_sizes():
    bert = build_model({"name": "pointbert"})
    mae = build_model({"name": "pointmae"})
    assert bert.encoder.out_channels == 256 and bert.reduce_dim.weight.shape == (384, 256)
    assert mae.encoder.out_channels == 384 and mae.reduce_dim is None
    assert len(bert.blocks.blocks) == 12 and bert.blocks.blocks[0].attn.qkv.bias is None
    # Point-BERT head: Linear ReLU Dropout Linear; Point-MAE: two BN hidden layers.
    assert [type(m).__name__ for m in bert.cls_head_finetune] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert [type(m).__name__ for m in mae.cls_head_finetune][1] == "BatchNorm1d"
    # drop-path rates rise linearly to 0.1
    rates = [getattr(b.drop_path, "p", 0.0) for b in mae.blocks.blocks]
    np.testing.assert_allclose(rates, np.linspace(0, 0.1, 12), atol=1e-7)
    for model in (bert, mae):
        n = sum(p.numel() for p in model.parameters())
        assert 21.5e6 < n < 22.5e6


def test_bad_inputs_raise_one_line_errors():
    model = tiny().eval()
    with pytest.raises(ValueError, match="at least"):
        model(torch.randn(1, 7, 3))
    bad = torch.randn(1, 40, 3)
    bad[0, 5, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(bad)
    with pytest.raises(ValueError, match=r"\[B, N, 3\]"):
        model(torch.randn(1, 40, 6))
    with pytest.raises(ValueError, match="model.num_heads"):
        build_model({"name": "pointmae", "num_haeds": 4})
    with pytest.raises(ValueError, match="encoder_dims"):
        build_model({"name": "pointmae", "trans_dim": 96, "num_heads": 6})
    with pytest.raises(ValueError, match="unknown model.name"):
        build_model({"name": "pointmea"})


def test_eval_is_deterministic_and_train_drop_path_is_per_sample():
    model = tiny(drop_path_rate=0.5).eval()
    pts = torch.randn(4, 40, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(pts), model(pts), rtol=0, atol=0)
    block = model.blocks.blocks[1]
    block.train()
    torch.manual_seed(0)
    x = torch.ones(64, 3, 24)
    y = block.drop_path(x)
    kept = y[:, 0, 0]
    assert set(kept.unique().tolist()) <= {0.0, 2.0}  # dropped or scaled by 1/keep
    assert (y == y[:, :1, :1]).all()  # one decision per sample
