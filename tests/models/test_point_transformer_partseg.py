"""Point-MAE / Point-BERT part segmentation against an independent module-by-module reference of the
official model (Point-MAE ``segmentation/models/pt.py``: its module names, so its state dict is an official
checkpoint), the official checkpoint layouts, and the Dr2Net surrogate against plain autograd."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pointdr2.models import build_model, load_pretrained, to_dr2net
from pointdr2.models.point_transformer_partseg import HEAD_MODULES, PointTransformerPartSeg

TINY = {"trans_dim": 24, "encoder_dims": 24, "encoder_hidden": 8, "depth": 3, "num_heads": 2, "num_group": 8,
        "group_size": 5, "propagation_mlp": [20, 16], "seg_hidden": [12, 10], "label_dim": 6,
        "drop_path_rate": 0.0}
N_POINTS = 40


def tiny(name: str = "pointmae-partseg", **kw) -> PointTransformerPartSeg:
    torch.manual_seed(0)
    cfg = {"name": name, **TINY, **kw}
    if name == "pointbert-partseg" and "encoder_dims" not in kw:
        cfg["encoder_dims"] = 16
    return build_model(cfg)


def clouds(b: int = 3, n: int = N_POINTS, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Points on a noisy sphere of radius ~1 (none near the origin, where FPS variants differ)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(b, n, 3, generator=g, dtype=torch.float64)
    return (d / d.norm(dim=-1, keepdim=True) * (1 + 0.1 * torch.rand(b, n, 1, generator=g, dtype=torch.float64))).to(dtype)


# ----------------------------------------------------------------------------- the official model, restated
class RefEncoder(nn.Module):
    def __init__(self, c: int, h: int) -> None:
        super().__init__()
        self.first_conv = nn.Sequential(nn.Conv1d(3, h, 1), nn.BatchNorm1d(h), nn.ReLU(), nn.Conv1d(h, 2 * h, 1))
        self.second_conv = nn.Sequential(nn.Conv1d(4 * h, 4 * h, 1), nn.BatchNorm1d(4 * h), nn.ReLU(),
                                         nn.Conv1d(4 * h, c, 1))

    def forward(self, groups):  # [B, G, K, 3] -> [B, G, C]
        b, g, k, _ = groups.shape
        f = self.first_conv(groups.reshape(b * g, k, 3).transpose(2, 1))
        f = torch.cat([f.max(dim=2, keepdim=True)[0].expand(-1, -1, k), f], dim=1)
        return self.second_conv(f).max(dim=2)[0].reshape(b, g, -1)


class RefAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class RefMlp(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class RefBlock(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = nn.LayerNorm(d), RefAttention(d, heads), nn.LayerNorm(d), RefMlp(d)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RefBlocks(nn.Module):
    def __init__(self, d: int, depth: int, heads: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(RefBlock(d, heads) for _ in range(depth))


class RefFP(nn.Module):
    """PointNetFeaturePropagation of the PointNet++ port: squared distances by expansion, sorted."""

    def __init__(self, cin: int, mlp: list[int]) -> None:
        super().__init__()
        widths = [cin, *mlp]
        self.mlp_convs = nn.ModuleList(nn.Conv1d(widths[i], widths[i + 1], 1) for i in range(len(mlp)))
        self.mlp_bns = nn.ModuleList(nn.BatchNorm1d(w) for w in mlp)

    def forward(self, xyz1, xyz2, points1, points2):  # channel-first, as the official layer
        xyz1, xyz2, points2 = xyz1.permute(0, 2, 1), xyz2.permute(0, 2, 1), points2.permute(0, 2, 1)
        b, n, _ = xyz1.shape
        d = -2 * xyz1 @ xyz2.permute(0, 2, 1) + (xyz1 ** 2).sum(-1)[:, :, None] + (xyz2 ** 2).sum(-1)[:, None]
        d, idx = d.sort(dim=-1)
        d, idx = d[:, :, :3], idx[:, :, :3]
        w = 1.0 / (d + 1e-8)
        w = w / w.sum(dim=2, keepdim=True)
        gathered = torch.stack([points2[i][idx[i]] for i in range(b)])  # [B, N, 3, C]
        f = torch.cat([points1.permute(0, 2, 1), (gathered * w[..., None]).sum(2)], dim=-1).permute(0, 2, 1)
        for conv, bn in zip(self.mlp_convs, self.mlp_bns):
            f = F.relu(bn(conv(f)))
        return f


class RefPartSeg(nn.Module):
    """Point-MAE's part-segmentation ``get_model`` at the TINY widths (official: 384, 12 blocks, 128 x 32)."""

    def __init__(self, s: dict, cls_dim: int = 50) -> None:
        super().__init__()
        d, self.g, self.k = s["trans_dim"], s["num_group"], s["group_size"]
        self.fetch = [b - 1 for b in s["feature_blocks"]]  # 0-based, as fetch_idx [3, 7, 11]
        self.encoder = RefEncoder(d, s["encoder_hidden"])
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, d))
        self.blocks = RefBlocks(d, s["depth"], s["num_heads"])
        self.norm = nn.LayerNorm(d)
        f = len(self.fetch) * d
        self.label_conv = nn.Sequential(nn.Conv1d(16, s["label_dim"], 1, bias=False), nn.BatchNorm1d(s["label_dim"]),
                                        nn.LeakyReLU(0.2))
        self.propagation_0 = RefFP(f + 3, s["propagation_mlp"])
        h1, h2 = s["seg_hidden"]
        self.convs1 = nn.Conv1d(s["propagation_mlp"][-1] + 2 * f + s["label_dim"], h1, 1)
        self.convs2, self.convs3 = nn.Conv1d(h1, h2, 1), nn.Conv1d(h2, cls_dim, 1)
        self.bns1, self.bns2 = nn.BatchNorm1d(h1), nn.BatchNorm1d(h2)

    def group(self, xyz):
        centres, hoods = [], []
        for p in xyz:  # FPS from index 0, then the group_size nearest points of each centre
            chosen, mind = [0], torch.full((len(p),), float("inf"), dtype=p.dtype)
            for _ in range(self.g - 1):
                mind = torch.minimum(mind, ((p - p[chosen[-1]]) ** 2).sum(1))
                chosen.append(int(mind.argmax()))
            c = p[chosen]
            nn_idx = ((c[:, None] - p[None]) ** 2).sum(-1).argsort(dim=1)[:, :self.k]
            centres.append(c)
            hoods.append(p[nn_idx] - c[:, None])
        return torch.stack(hoods), torch.stack(centres)

    def forward(self, pts, cls_label):  # pts [B, 3, N], cls_label one-hot [B, 16] -> log-probs [B, N, 50]
        b, _, n = pts.shape
        hood, center = self.group(pts.transpose(1, 2))
        x, pos = self.encoder(hood), self.pos_embed(center)
        feats = []
        for i, blk in enumerate(self.blocks.blocks):
            x = blk(x + pos)
            if i in self.fetch:
                feats.append(self.norm(x).transpose(-1, -2))
        x = torch.cat(feats, dim=1)
        glob = torch.cat([x.max(2)[0][..., None].repeat(1, 1, n), x.mean(2)[..., None].repeat(1, 1, n),
                          self.label_conv(cls_label.view(b, 16, 1)).repeat(1, 1, n)], 1)
        f0 = self.propagation_0(pts, center.transpose(-1, -2), pts, x)
        x = torch.cat([f0, glob], 1)
        x = F.relu(self.bns2(self.convs2(F.relu(self.bns1(self.convs1(x))))))
        return F.log_softmax(self.convs3(x), dim=1).permute(0, 2, 1)


def _randomise(module: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5)
            elif name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif t.is_floating_point():
                scale = 0.3 if t.ndim > 1 else 0.1
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * scale + (1.0 if name.endswith(
                    ("norm1.weight", "norm2.weight", "norm.weight")) else 0.0))


@pytest.fixture()
def official():
    model = tiny()
    ref = RefPartSeg(model.settings).double()
    _randomise(ref)
    return model, ref.eval()


def test_official_checkpoint_loads_completely_and_logits_equal(official, tmp_path):
    model, ref = official
    assert set(ref.state_dict()) == set(model.state_dict())  # the official key layout, nothing more or less
    path = tmp_path / "best_model.pth"
    torch.save({"epoch": 299, "train_acc": np.float64(0.95), "inctance_avg_iou": np.float64(0.861),
                "model_state_dict": ref.state_dict(), "optimizer_state_dict": {}}, path)
    report = load_pretrained(model, path)
    assert report.layout == "model_state_dict"
    assert report.missing == [] and report.unexpected == [] and report.replaced_head == []
    model = model.double().eval()
    pts = clouds(dtype=torch.float64)
    category = torch.tensor([0, 7, 15])
    with torch.no_grad():
        ours = model(pts, category)
        theirs = ref(pts.transpose(1, 2), F.one_hot(category, 16).double())
    assert ours.shape == (3, 50, N_POINTS)
    torch.testing.assert_close(F.log_softmax(ours, dim=1).permute(0, 2, 1), theirs, rtol=1e-7, atol=1e-7)
    # a one-hot category gives the same logits as its label
    with torch.no_grad():
        torch.testing.assert_close(model(pts, F.one_hot(category, 16).double()), ours, rtol=0, atol=0)


def test_float32_logits_match_the_reference(official, tmp_path):
    model, ref = official
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ref.state_dict().items()})
    pts = clouds()
    category = torch.tensor([3, 3, 12])
    with torch.no_grad():
        ours = F.log_softmax(model.eval()(pts, category), dim=1).permute(0, 2, 1).double()
        theirs = ref(pts.double().transpose(1, 2), F.one_hot(category, 16).double())
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def _encoder_keys(model: nn.Module) -> list[str]:
    return [k for k in model.state_dict() if k.split(".")[0] not in HEAD_MODULES]


def test_pointmae_pretrain_loads_the_encoder_and_expects_the_head(official, tmp_path, caplog):
    model, ref = official
    enc = {k: v.float() for k, v in ref.state_dict().items() if k.split(".")[0] not in HEAD_MODULES}
    sd = {f"module.MAE_encoder.{k}": v for k, v in enc.items()}
    sd.update({"module.mask_token": torch.zeros(1, 1, 24), "module.decoder_pos_embed.0.weight": torch.zeros(128, 3),
               "module.MAE_decoder.blocks.0.norm1.weight": torch.zeros(24), "module.increase_dim.0.weight": torch.zeros(9, 24, 1)})
    path = tmp_path / "pretrain.pth"
    torch.save({"base_model": sd, "epoch": 300}, path)
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k.split(".")[0] in HEAD_MODULES}
    with caplog.at_level(logging.WARNING):
        report = load_pretrained(model, path)
    assert sorted(report.loaded) == sorted(_encoder_keys(model))
    # (BatchNorm fills a missing num_batches_tracked itself: never reported missing)
    assert sorted(report.expected_missing) == sorted(head_before)
    assert sorted(report.missing) == sorted(k for k in head_before if not k.endswith("num_batches_tracked"))
    assert report.unexpected == [] and report.unexpected_missing == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    for k, v in enc.items():
        assert torch.equal(model.state_dict()[k], v), k
    for k, v in head_before.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_pointbert_pretrain_loads_the_query_encoder(tmp_path):
    model = tiny("pointbert-partseg")
    enc = {k: torch.randn(v.shape) for k, v in model.state_dict().items()
           if k.split(".")[0] not in HEAD_MODULES and v.is_floating_point()}
    assert "reduce_dim.weight" in enc
    sd = {f"transformer_q.{k}": v for k, v in enc.items()}
    sd.update({"transformer_q.cls_token": torch.zeros(1, 1, 24), "transformer_q.cls_pos": torch.zeros(1, 1, 24),
               "transformer_q.cls_head_finetune.0.weight": torch.zeros(4, 48),
               "transformer_q.lm_head.weight": torch.zeros(8, 24), "transformer_k.norm.weight": torch.zeros(24),
               "dvae.encoder.0.weight": torch.zeros(3), "queue": torch.zeros(24, 16)})
    path = tmp_path / "Point-BERT.pth"
    torch.save({"base_model": sd}, path)
    report = load_pretrained(model, path)
    assert report.unexpected == [] and report.unexpected_missing == []
    assert {k for k in report.missing if not k.endswith("num_batches_tracked")} == \
        {k for k in model.state_dict() if k.split(".")[0] in HEAD_MODULES and not k.endswith("num_batches_tracked")}
    for k, v in enc.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_checkpoint_of_another_size_names_the_key(official, tmp_path):
    model, ref = official
    sd = dict(ref.state_dict())
    sd["convs3.weight"] = torch.zeros(13, 10, 1)
    path = tmp_path / "other.pth"
    torch.save({"model_state_dict": sd}, path)
    with pytest.raises(ValueError, match=r"convs3\.weight.*\[13, 10, 1\]"):
        load_pretrained(model, path)


@pytest.mark.parametrize("cfg, match", [
    ({"feature_blocks": [2, 5]}, r"model\.feature_blocks"),
    ({"seg_hidden": [4]}, r"model\.seg_hidden"),
    ({"head": "pointmae"}, r"unknown config key 'model\.head'"),
    ({"num_group": 2}, r"model\.num_group must be >= 3"),
])
def test_config_errors_name_the_key(cfg, match):
    with pytest.raises(ValueError, match=match):
        tiny(**cfg)


def test_default_sizes_are_the_official_ones():
    m = build_model({"name": "pointmae-partseg"})
    assert m.feature_blocks == (4, 8, 12) and m.group_divider.num_group == 128 and m.group_divider.group_size == 32
    assert m.convs1.in_channels == 3392 and m.propagation_0.mlp_convs[0].in_channels == 1155
    assert [c.out_channels for c in m.propagation_0.mlp_convs] == [1536, 1024] and m.convs3.out_channels == 50
    assert build_model({"name": "pointmae-partseg", "depth": 24}).feature_blocks == (8, 16, 24)


def test_bad_category_is_one_line_error():
    model = tiny().eval()
    with pytest.raises(ValueError, match=r"category labels must lie in 0\.\.15"):
        model(clouds(), torch.tensor([0, 1, 16]))
    with pytest.raises(ValueError, match=r"int64 labels \[B=3\]"):
        model(clouds(), torch.tensor([0, 1]))


# ----------------------------------------------------------------------------- Dr2Net
@pytest.mark.parametrize("residual", ["block", "branch"])
def test_surrogate_at_alpha1_beta0_equals_the_model(official, residual):
    model, ref = official
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ref.state_dict().items()})
    model.eval()
    sur = to_dr2net(model, alpha=1.0, beta=0.0, mode="standard", residual=residual)
    assert {id(p) for p in sur.parameters()} == {id(p) for p in model.parameters()}
    pts, cat = clouds(), torch.tensor([1, 2, 3])
    with torch.no_grad():
        torch.testing.assert_close(sur(pts, cat), model(pts, cat), rtol=1e-5, atol=1e-5)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _train_step(net: nn.Module, model: nn.Module, pts, cat, weights) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # the head's dropout draws the same mask in every network
    out = net(pts, cat)
    (out * weights).sum().backward()
    return out.detach(), _grads(model)


@pytest.mark.parametrize("residual, output", [("block", "last"), ("branch", "last"), ("block", "sum")])
def test_reversible_gradients_with_taps_equal_plain_autograd(residual, output):
    """Train mode (batch-statistics BN, head dropout), float64, alpha=0 beta=1: the reversible backward with
    the head's taps entering mid-stack, the recomputed tokenizer and the checkpointed head give plain
    autograd's gradients of every parameter, and BN running statistics are updated once."""
    model = tiny(seg_dropout=0.5).double().train()
    _randomise(model, seed=3)
    pts, cat = clouds(dtype=torch.float64), torch.tensor([4, 0, 9])
    weights = torch.randn(3, 50, N_POINTS, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    plain = copy.deepcopy(model)
    exact = to_dr2net(plain, alpha=0.0, beta=1.0, mode="standard", residual=residual, output=output)
    rev = to_dr2net(model, alpha=0.0, beta=1.0, mode="reversible", residual=residual, output=output,
                    recompute_stem=True, stem_chunk_groups=3)
    assert rev.recompute_head and rev.taps[-1] == len(rev.stack.blocks)
    out_e, g_e = _train_step(exact, plain, pts, cat, weights)
    out_r, g_r = _train_step(rev, model, pts, cat, weights)
    torch.testing.assert_close(out_r, out_e, rtol=1e-10, atol=1e-10)
    assert set(g_r) == set(g_e) and len(g_e) == len(list(model.parameters()))
    for k in g_e:
        torch.testing.assert_close(g_r[k], g_e[k], rtol=1e-7, atol=1e-9, msg=k)
    for (k, a), b in zip(model.named_buffers(), plain.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=k)  # BN statistics updated exactly once
    assert rev.stack.last_reconstruction_error < 1e-10


def test_tap_gradients_reach_the_blocks_they_read():
    """Only block 1's output feeds the head (feature_blocks [1]): block 1 gets gradients, blocks 2-3 none,
    in the reversible surrogate as through plain autograd."""
    model = tiny(feature_blocks=[1]).double().train()
    pts, cat = clouds(dtype=torch.float64), torch.tensor([1, 1, 1])
    weights = torch.randn(3, 50, N_POINTS, dtype=torch.float64)
    plain = copy.deepcopy(model)
    _, g_e = _train_step(to_dr2net(plain, alpha=0.0, beta=1.0, mode="standard", residual="block"), plain, pts, cat,
                         weights)
    rev = to_dr2net(model, alpha=0.0, beta=1.0, mode="reversible", residual="block")
    _, g_r = _train_step(rev, model, pts, cat, weights)
    assert any(k.startswith("blocks.blocks.0.") for k in g_e)
    for k in g_e:
        if k.startswith(("blocks.blocks.1.", "blocks.blocks.2.")):
            assert k not in g_r or torch.count_nonzero(g_r[k]) == 0, k
            continue
        torch.testing.assert_close(g_r[k], g_e[k], rtol=1e-7, atol=1e-9, msg=k)
