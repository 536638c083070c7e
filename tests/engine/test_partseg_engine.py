"""Part segmentation through pointdr2 train / eval / visualize on synthetic ShapeNetPart files: the shipped
config shrunk by overrides, metrics against a hand computation from the model's own logits, voting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pointdr2.cli import main
from pointdr2.config import load_config
from pointdr2.data.classes import SHAPENETPART_CATEGORIES, SHAPENETPART_PARTS
from pointdr2.data.synthetic import write_layout
from pointdr2.engine.evaluator import evaluate, partseg_vote_scales, task_of
from pointdr2.engine.inference import load_for_eval

CONFIGS = Path(__file__).resolve().parents[2] / "pointdr2" / "configs" / "shapenetpart"

CONFIG = """\
_base_: {base}
dataset: {{root: {root}, num_points: 128}}
model: {{trans_dim: 32, depth: 2, num_heads: 2, encoder_dims: {enc}, encoder_hidden: 16, num_group: 16,
        group_size: 8, feature_blocks: [1, 2], propagation_mlp: [32, 32], seg_hidden: [32, 16], label_dim: 8,
        fps_skip_origin: false}}
finetune: {{end_epoch: 1}}
train: {{epochs: 1, batch_size: 8, lr: 0.002, warmup_epochs: 0, num_workers: 0}}
eval: {{batch_size: 8}}
run: {{dir: {run}, progress: false, log_every: 1, tensorboard: false}}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("partseg")
    write_layout("shapenetpart", base / "data", size="test", seed=0)
    cfg = base / "tiny.yaml"
    cfg.write_text(CONFIG.format(base=CONFIGS / "pointmae.yaml", root=base / "data", run=base / "runs" / "a",
                                 enc=32))
    assert main(["train", str(cfg)]) == 0
    return base, cfg, base / "runs" / "a"


def _hand_metrics(net, dataset, votes: int = 1, seed: int = 0) -> dict:
    """Instance / class mIoU as Point-MAE's main.py computes them, from the network's logits per shape."""
    shape_ious = {c: [] for c in range(16)}
    correct = total = 0
    for i in range(len(dataset)):
        s = dataset[i]
        cat, pts = int(s["category"]), s["points"][None]
        with torch.no_grad():
            if votes == 1:
                score = net(pts, torch.tensor([cat]))[0]
            else:
                scale = partseg_vote_scales([i], votes, seed)
                score = sum(net(pts * scale[v].float(), torch.tensor([cat]))[0].softmax(dim=0) for v in range(votes))
        parts = list(SHAPENETPART_PARTS[cat])
        pred = np.asarray(parts)[score.numpy()[parts].argmax(axis=0)]
        seg = s["label"].numpy()
        ious = [1.0 if not ((seg == p).any() or (pred == p).any()) else
                ((seg == p) & (pred == p)).sum() / ((seg == p) | (pred == p)).sum() for p in parts]
        shape_ious[cat].append(np.mean(ious))
        correct += int((pred == seg).sum())
        total += seg.size
    every = [v for ious in shape_ious.values() for v in ious]
    per_cat = [100 * np.mean(v) for v in shape_ious.values() if v]
    return {"ins_miou": 100 * np.mean(every), "cls_miou": np.mean(per_cat), "oa": 100 * correct / total}


def test_train_writes_partseg_metrics(setup):
    _, _, run = setup
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["select_on"] == "val" and metrics["best_epoch"] == 1
    test = metrics["test"]
    assert test["task"] == "partseg" and test["count"] == 16
    assert 0.0 <= test["cls_miou"] <= 100.0 and 0.0 <= test["ins_miou"] <= 100.0
    assert list(test["iou_per_category"]) == list(SHAPENETPART_CATEGORIES)
    log = (run / "train.log").read_text()
    assert "task partseg" in log and "ins_miou" in log


def test_eval_json_equals_the_hand_computed_metrics(setup, capsys):
    _, cfg, run = setup
    capsys.readouterr()
    assert main(["eval", str(cfg), "--checkpoint", str(run / "best.pth"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "partseg" and out["vote"] == 1 and out["count"] == 16
    assert set(out["iou_per_category"]) == set(SHAPENETPART_CATEGORIES)
    dataset, _, net, _, _ = load_for_eval(load_config(cfg), run / "best.pth")
    assert type(net).__name__ == "PartSegDr2"  # finetuned with dr2net: evaluated as the surrogate
    hand = _hand_metrics(net.eval(), dataset)
    for key in ("ins_miou", "cls_miou", "oa"):
        assert out[key] == pytest.approx(hand[key], abs=1e-9), key
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert out["ins_miou"] == pytest.approx(test["ins_miou"]) and out["cls_miou"] == pytest.approx(test["cls_miou"])


def test_voting_averages_scaled_copies(setup, capsys):
    _, cfg, run = setup
    scales = partseg_vote_scales([3, 9], 4, seed=0)
    assert torch.equal(scales[0], torch.ones(2, 1, 3))
    assert bool(((scales[1:] >= 0.87) & (scales[1:] <= 1.15)).all()) and len(set(scales[1:, 0].flatten().tolist())) == 9
    assert torch.equal(partseg_vote_scales([9], 4, seed=0)[:, 0], scales[:, 1])  # per index, whatever the batch
    capsys.readouterr()
    assert main(["eval", str(cfg), "--checkpoint", str(run / "best.pth"), "--vote", "3", "--json"]) == 0
    voted = json.loads(capsys.readouterr().out)
    dataset, _, net, _, _ = load_for_eval(load_config(cfg), run / "best.pth")
    hand = _hand_metrics(net.eval(), dataset, votes=3)
    assert voted["vote"] == 3 and voted["ins_miou"] == pytest.approx(hand["ins_miou"], abs=1e-9)
    assert voted["cls_miou"] == pytest.approx(hand["cls_miou"], abs=1e-9)


def test_items_hold_each_shapes_iou(setup):
    _, cfg, run = setup
    dataset, _, net, _, device = load_for_eval(load_config(cfg), run / "best.pth")
    m = evaluate(net, dataset, device=device, batch_size=5, progress=False, items=True)
    items = m["items"]
    assert items["index"].tolist() == list(range(16))
    assert items["category"].tolist() == [int(dataset[i]["category"]) for i in range(16)]
    assert 100 * float(items["iou"].mean()) == pytest.approx(m["ins_miou"], abs=1e-9)


def test_task_and_visualize(setup, tmp_path):
    import matplotlib.image as mpimg

    _, cfg, run = setup
    dataset, _, _, _, _ = load_for_eval(load_config(cfg), run / "best.pth")
    assert task_of(dataset[0]) == "partseg"
    out = tmp_path / "parts.png"
    assert main(["visualize", str(cfg), "--checkpoint", str(run / "best.pth"), "--index", "2", "--out", str(out),
                 "--window", "no"]) == 0
    img = mpimg.imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > img.shape[0]  # prediction beside truth
    assert (tmp_path / "parts_gt.ply").stat().st_size > 0


def test_pointbert_config_trains_conventionally(setup, tmp_path):
    base, _, _ = setup
    cfg = tmp_path / "bert.yaml"
    cfg.write_text(CONFIG.format(base=CONFIGS / "pointbert.yaml", root=base / "data", run=tmp_path / "run", enc=16))
    assert main(["train", str(cfg), "finetune.mode=conventional"]) == 0
    test = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert {"ins_miou", "cls_miou", "oa"} <= set(test)


def test_memory_budget_fits_a_part_segmentation_run(setup, tmp_path):
    base, _, _ = setup
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(CONFIG.format(base=CONFIGS / "pointmae.yaml", root=base / "data", run=tmp_path / "run", enc=32))
    assert main(["train", str(cfg), "finetune.mode=auto", "train.memory_budget=1GiB"]) == 0
    assert "finetune.mode conventional, batch 8 = 8 x 1 accumulation" in (tmp_path / "run" / "train.log").read_text()


def test_eval_reads_an_official_part_seg_checkpoint(setup, tmp_path, capsys):
    """A checkpoint in the layout of Point-MAE's segmentation/main.py ({"model_state_dict", "epoch", metrics as
    NumPy scalars}) is evaluated as published: conventional model, every key loaded."""
    from pointdr2.models import build_model

    _, cfg, _ = setup
    conf = load_config(cfg)
    conf.model["num_classes"] = 50
    torch.manual_seed(3)
    model = build_model(conf.model)
    path = tmp_path / "best_model.pth"
    torch.save({"epoch": 12, "class_avg_iou": np.float64(0.5), "inctance_avg_iou": np.float64(0.6),
                "model_state_dict": model.state_dict(), "optimizer_state_dict": {}}, path)
    capsys.readouterr()
    assert main(["eval", str(cfg), "--checkpoint", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    dataset, _, net, _, _ = load_for_eval(load_config(cfg), path)
    assert type(net).__name__ == "PointTransformerPartSeg"
    hand = _hand_metrics(model.eval(), dataset)
    assert out["ins_miou"] == pytest.approx(hand["ins_miou"], abs=1e-9)
    assert out["cls_miou"] == pytest.approx(hand["cls_miou"], abs=1e-9)
