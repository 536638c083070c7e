"""PointNeXt part segmentation (ShapeNetPart): the official BasePartSeg key layout of the three shipped
configs, official checkpoints loading with every key used, the forward against a NumPy float64 reading of
openpoints' PointNextEncoder + PointNextPartDecoder + SegHead, and the Dr2Net surrogate (exact at alpha=1,
beta=0; gradients of its backprop modes against plain autograd)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pointnext import NpNet, _bn, np_interp, random_state
from torch import nn

from pointdr2.config import load_config
from pointdr2.models import build_model, load_pretrained, to_dr2net
from pointdr2.models.pointnext import PointNeXtDr2Net, PointNeXtPartSeg
from pointdr2.reversible import Dr2Stack

CONFIGS = Path(__file__).resolve().parents[2] / "pointdr2" / "configs" / "shapenetpart"
OFFICIAL = ("pointnext-s", "pointnext-s_c64", "pointnext-s_c160")


def official_partseg_layout(width, blocks, in_channels=7, num_classes=50, sa_layers=3, cls_map="curvenet",
                            categories=16, expansion=4):
    """Key -> shape of openpoints' BasePartSeg(PointNextEncoder(sa_use_res), PointNextPartDecoder, SegHead
    (globals max,avg)), written from openpoints' module structure: stride-1 stem + stride-2 stages."""
    chans = [width * 2 ** i for i in range(len(blocks))]
    out = {"encoder.encoder.0.0.convs.0.0.weight": (chans[0], in_channels, 1),
           "encoder.encoder.0.0.convs.0.0.bias": (chans[0],)}
    for i in range(1, len(blocks)):
        c, prev = chans[i], chans[i - 1]
        widths = [prev + 3] + [c // 2] * (sa_layers - 1) + [c]
        for j in range(sa_layers):
            out[f"encoder.encoder.{i}.0.convs.{j}.0.weight"] = (widths[j + 1], widths[j], 1, 1)
            out.update(_bn(f"encoder.encoder.{i}.0.convs.{j}.1", widths[j + 1]))
        out[f"encoder.encoder.{i}.0.skipconv.0.weight"] = (c, prev, 1)
        out[f"encoder.encoder.{i}.0.skipconv.0.bias"] = (c,)
        for j in range(1, blocks[i]):
            b = f"encoder.encoder.{i}.{j}"
            out[f"{b}.convs.convs.0.0.weight"] = (c, c + 3, 1, 1)
            out.update(_bn(f"{b}.convs.convs.0.1", c))
            out[f"{b}.pwconv.0.0.weight"] = (c * expansion, c, 1)
            out.update(_bn(f"{b}.pwconv.0.1", c * expansion))
            out[f"{b}.pwconv.1.0.weight"] = (c, c * expansion, 1)
            out.update(_bn(f"{b}.pwconv.1.1", c))
    # the category enters as its one-hot (curvenet, pointnet2) or its part indicator, 50 wide (pointnext, pointnext1)
    code = categories if cls_map in ("curvenet", "pointnet2") else num_classes
    if cls_map in ("curvenet", "pointnext"):  # global_conv2 on the last stage (2 x fp_channels[-1]), conv1 before
        out["decoder.global_conv2.0.0.weight"] = (128, chans[-1], 1)
        out["decoder.global_conv2.0.0.bias"] = (128,)
        out["decoder.global_conv1.0.0.weight"] = (64, chans[-2], 1)
        out["decoder.global_conv1.0.0.bias"] = (64,)
        extra = 64 + 128 + code
    else:
        out["decoder.convc.0.0.weight"] = (64, code, 1)
        out["decoder.convc.0.0.bias"] = (64,)
        extra = 64
    for k in range(len(blocks) - 1):
        d = f"decoder.decoder.{k}.0.convs"
        out[f"{d}.0.0.weight"] = (chans[k], chans[k] + chans[k + 1] + (extra if k == 0 else 0), 1)
        out.update(_bn(f"{d}.0.1", chans[k]))
        out[f"{d}.1.0.weight"] = (chans[k], chans[k], 1)
        out.update(_bn(f"{d}.1.1", chans[k]))
    head = 3 * chans[0]
    out["head.head.0.0.weight"] = (head, head, 1)
    out.update(_bn("head.head.0.1", head))
    out["head.head.2.0.weight"] = (num_classes, head, 1)
    out["head.head.2.0.bias"] = (num_classes,)
    return out


def _shipped(name):
    return load_config(CONFIGS / f"{name}.yaml").model


@pytest.mark.parametrize("name,width", [("pointnext-s", 32), ("pointnext-s_c64", 64), ("pointnext-s_c160", 160)])
def test_shipped_configs_have_the_official_layout(name, width):
    cfg = _shipped(name)
    assert cfg.width == width
    model = build_model(cfg)
    assert isinstance(model, PointNeXtPartSeg)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_partseg_layout(width, [1, 1, 1, 1, 1])
    radii = [stage[0].radius for stage in model.encoder.encoder[1:]]
    np.testing.assert_allclose(radii, [0.1, 0.25, 0.625, 1.5625])  # radius 0.1, scaling 2.5 per stage
    assert {stage[0].nsample for stage in model.encoder.encoder[1:]} == {32}


def test_official_checkpoint_loads_with_every_key_used(tmp_path):
    layout = official_partseg_layout(32, [1, 1, 1, 1, 1])
    sd = random_state(layout, seed=1)
    path = tmp_path / "ckpt_best.pth"
    # openpoints' save_checkpoint: {model, optimizer, scheduler, epoch} + extras; DDP's module. prefix
    torch.save({"model": {"module." + k: v.float() for k, v in sd.items()}, "optimizer": {}, "scheduler": {},
                "epoch": 299, "ins_miou": 86.7, "cls_miou": 84.4}, path)
    model = build_model(_shipped("pointnext-s"))
    report = load_pretrained(model, path)
    assert report.missing == [] and report.unexpected == [] and report.replaced_head == []
    assert sorted(report.loaded) == sorted(layout)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k].float()), k
    # the surrogate has exactly the model's keys: the same file loads into it
    sur = to_dr2net(build_model(_shipped("pointnext-s")), 1.0, 0.0, mode="standard")
    report = load_pretrained(sur, path)
    assert report.missing == [] and report.unexpected == []


def test_checkpoint_of_another_size_is_refused_naming_the_key(tmp_path):
    path = tmp_path / "c64.pth"
    torch.save({"model": random_state(official_partseg_layout(64, [1, 1, 1, 1, 1]))}, path)
    with pytest.raises(ValueError, match="shape mismatch for 'encoder.encoder.0.0.convs.0.0.weight'"):
        load_pretrained(build_model(_shipped("pointnext-s")), path)


# ----------------------------------------------------------------------------- NumPy reference


def np_partseg(ref, points, category, blocks, radius, k, cls_map="curvenet", categories=16):
    """openpoints' BasePartSeg forward in eval mode for one cloud ``points [N, 6]`` (xyz, normals)."""
    p = points[:, :3]
    f = np.concatenate([p.T, points[:, 3:6].T, (p[:, 1] - p[:, 1].min())[None]], 0)  # pos, x, heights
    ps, fs = ref.encoder(p, f, blocks, [1, 2, 2, 2, 2], radius, k, layers=3, use_res=True, scaling=2.5)
    code = np.eye(categories)[category]
    if cls_map in ("pointnext", "pointnext1"):  # cls2partembed[category]: 1 on the category's parts, written out
        first = [0, 4, 6, 8, 12, 16, 19, 22, 24, 28, 30, 36, 38, 41, 44, 47, 50][category:category + 2]
        code = np.zeros(50)
        code[first[0]:first[1]] = 1.0
    if cls_map in ("curvenet", "pointnext"):
        emb1 = np.maximum(ref.conv(fs[-2], "decoder.global_conv1.0.0", bias=True), 0).max(-1)
        emb2 = np.maximum(ref.conv(fs[-1], "decoder.global_conv2.0.0", bias=True), 0).max(-1)
        emb = np.concatenate([emb1, emb2, code])
    else:
        emb = np.maximum(ref.conv(code[:, None], "decoder.convc.0.0", bias=True), 0)[:, 0]
    up = fs[5]
    for s in range(3, -1, -1):
        key = f"decoder.decoder.{s}.0.convs"
        skip = fs[s + 1] if s else np.concatenate([np.repeat(emb[:, None], len(p), 1), fs[1]], 0)
        x = np.concatenate([skip, np_interp(ps[s + 1], ps[s + 2], up)], 0)
        up = ref.cbr(ref.cbr(x, f"{key}.0"), f"{key}.1")
    pooled = np.concatenate([up, np.repeat(up.max(1, keepdims=True), len(p), 1),
                             np.repeat(up.mean(1, keepdims=True), len(p), 1)], 0)
    return ref.conv(ref.cbr(pooled, "head.head.0"), "head.head.2.0", bias=True)


def _tiny(cls_map="curvenet", blocks=(1, 2, 1, 1, 1)):
    return {"name": "pointnext-s", "task": "partseg", "width": 8, "blocks": list(blocks), "nsample": 8,
            "cls_map": cls_map}


def _shapes(b=2, n=256, seed=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(b, n, 3, generator=g, dtype=torch.float64) * 2 - 1
    normals = torch.nn.functional.normalize(torch.randn(b, n, 3, generator=g, dtype=torch.float64), dim=-1)
    return torch.cat([xyz, normals], -1).to(dtype)


@pytest.mark.parametrize("cls_map", ["curvenet", "pointnet2", "pointnext", "pointnext1"])
def test_forward_matches_numpy_reference_of_openpoints(cls_map):
    blocks = [1, 2, 1, 1, 1]  # one InvResMLP (stage 1, radius 0.25) covers the block path too
    sd = random_state(official_partseg_layout(8, blocks, cls_map=cls_map), seed=2)
    model = build_model(_tiny(cls_map, blocks)).double().eval()
    model.load_state_dict(sd)
    points, category = _shapes(), torch.tensor([4, 15])
    with torch.no_grad():
        logits = model(points, category)
    assert logits.shape == (2, 50, 256) and logits.dtype == torch.float64
    ref = NpNet(sd)
    for b in range(2):
        expected = np_partseg(ref, points[b].numpy(), int(category[b]), blocks, 0.1, 8, cls_map)
        np.testing.assert_allclose(logits[b].numpy(), expected, rtol=1e-9, atol=1e-9)
    # the 7 input channels given explicitly (xyz, normals, height) and a one-hot category: the same logits
    height = points[..., 1:2] - points[..., 1:2].min(dim=1, keepdim=True).values
    one_hot = torch.nn.functional.one_hot(category, 16).double()
    with torch.no_grad():
        torch.testing.assert_close(model(torch.cat([points, height], -1), one_hot), logits)


def test_category_changes_the_logits_and_bad_inputs_raise():
    model = build_model(_tiny()).eval()
    points = _shapes(dtype=torch.float32)
    with torch.no_grad():
        a, b = model(points, torch.tensor([0, 1])), model(points, torch.tensor([3, 1]))
    assert not torch.allclose(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="use_normals"):
        model(points[..., :3], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="category labels must lie in 0..15"):
        model(points, torch.tensor([0, 16]))
    with pytest.raises(ValueError, match="category must be int64 labels"):
        model(points, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="model.cls_map"):
        build_model({**_tiny(), "cls_map": "pointnext2"})
    with pytest.raises(ValueError, match="model.cls_map=pointnext needs the parts of each category"):
        build_model({**_tiny(), "cls_map": "pointnext", "num_classes": 40})
    with pytest.raises(ValueError, match="model.strides for part segmentation"):
        build_model({**_tiny(), "blocks": [1, 1], "strides": [1, 2]})
    with pytest.raises(ValueError, match="model.head_globals"):
        build_model({**_tiny(), "head_globals": ["sum"]})


# ----------------------------------------------------------------------------- Dr2Net surrogate


def _randomise_bn(model, seed):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return model


@pytest.mark.parametrize("name", OFFICIAL)
def test_to_dr2net_at_alpha1_beta0_equals_the_model_in_eval(name):
    torch.manual_seed(0)
    model = _randomise_bn(build_model(_shipped(name)), 1).eval()
    points, category = _shapes(n=256, dtype=torch.float32), torch.tensor([2, 9])
    with torch.no_grad():
        expected = model(points, category)
        for mode in ("standard", "checkpoint", "auto"):
            sur = to_dr2net(model, 1.0, 0.0, mode=mode).eval()
            assert isinstance(sur, PointNeXtDr2Net) and list(sur.state_dict()) == list(model.state_dict())
            torch.testing.assert_close(sur(points, category), expected, rtol=1e-5, atol=1e-5)
    assert not [m for m in sur.modules() if isinstance(m, Dr2Stack)]  # PointNeXt-S has no InvResMLP blocks


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _step(net, points, category, target):
    torch.manual_seed(123)  # the head's dropout mask
    points = points.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(net(points, category), target)
    loss.backward()
    return loss.detach(), points.grad


# a stack of two InvResMLP blocks in stage 3 (the "better" 1,1,1,2,1 of the official config, one more)
STACKED = {**_tiny(blocks=(1, 1, 1, 3, 1)), "radius": 0.15}


@pytest.mark.parametrize("mode,alpha,beta,reference", [
    ("standard", 1.0, 0.0, "model"),       # finetune.backprop exact: plain autograd through the surrogate
    ("checkpoint", 1.0, 0.0, "model"),
    ("auto", 1.0, 0.0, "model"),           # the guard keeps the exact path while beta is 0
    ("auto", 0.2, 0.9, "standard"),
    ("reversible", 0.0, 1.0, "standard"),
])
def test_surrogate_gradients_match_plain_autograd_in_float64(mode, alpha, beta, reference):
    torch.manual_seed(5)
    base = _randomise_bn(build_model(STACKED), 6).double().train()
    ref_model, test_model = base, copy.deepcopy(base)
    points, category = _shapes(n=192, seed=7), torch.tensor([5, 12])
    target = torch.randint(0, 50, (2, 192), generator=torch.Generator().manual_seed(8))
    ref_net = ref_model if reference == "model" else to_dr2net(ref_model, alpha, beta, mode="standard")
    loss_ref, gin_ref = _step(ref_net, points, category, target)
    sur = to_dr2net(test_model, alpha, beta, mode=mode)
    assert [len(s.blocks) for s in sur.modules() if isinstance(s, Dr2Stack)] == [2]
    loss, gin = _step(sur, points, category, target)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gin, gin_ref, rtol=1e-6, atol=1e-9)
    g_ref, g = _grads(ref_model), _grads(test_model)
    assert set(g) == {n for n, _ in ref_model.named_parameters()} == set(g_ref)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-6, atol=1e-9, msg=name)
    # BatchNorm running statistics: one update per step, as without recomputation
    for (k, a), b in zip(test_model.state_dict().items(), ref_model.state_dict().values()):
        if "running" in k or "num_batches" in k:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=k)


def test_memory_bench_case_rows_are_the_same_network_and_recomputation_saves_bytes():
    """bench memory --model pointnext-s-partseg: the shipped model on xyz + normals + height; with no InvResMLP
    block every row computes the same logits, and the recomputed set abstractions keep far fewer bytes."""
    from pointdr2.bench import memory
    from pointdr2.bench.cases_pointnext import build_case

    logits = {}
    for mode in ("conventional", "checkpoint", "dr2net"):
        torch.manual_seed(0)
        module, inputs, loss_fn = build_case("pointnext-s-partseg", mode, None, 2, 256, 0.0, 1.0, torch.device("cpu"))
        assert module.training and inputs[0].shape == (2, 256, 7) and inputs[1].shape == (2,)
        module.eval()
        with torch.no_grad():
            logits[mode] = module(*inputs)
        assert logits[mode].shape == (2, 50, 256) and loss_fn(logits[mode]).ndim == 0
    torch.testing.assert_close(logits["checkpoint"], logits["conventional"])
    torch.testing.assert_close(logits["dr2net"], logits["conventional"])
    base = {"model": "pointnext-s-partseg", "batch": 2, "points": 256, "steps": 1, "device": "cpu", "threads": 1,
            "alpha": 0.0, "beta": 1.0, "measure": ["saved"], "depth": None}
    saved = {m: memory.measure_row({**base, "mode": m, "label": m})["saved_bytes"] for m in ("conventional", "checkpoint")}
    assert saved["checkpoint"] < 0.2 * saved["conventional"]  # 0.12 measured (also at 2,048 points)
