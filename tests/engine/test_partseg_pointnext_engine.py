"""PointNeXt-S part segmentation through pointdr2 train / eval on synthetic ShapeNetPart files: the shipped
configs/shapenetpart/pointnext-s.yaml shrunk by overrides (conventional, as shipped, and dr2net on a variant
with InvResMLP blocks), eval's metrics against a hand computation from the network's own logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_partseg_engine import _hand_metrics

from pointdr2.cli import main
from pointdr2.config import load_config
from pointdr2.data import build_dataset
from pointdr2.data.synthetic import write_layout
from pointdr2.engine.inference import load_for_eval
from pointdr2.models import build_model, load_pretrained

CONFIG = Path(__file__).resolve().parents[2] / "pointdr2" / "configs" / "shapenetpart" / "pointnext-s.yaml"

TINY = """\
_base_: {base}
dataset: {{root: {root}, num_points: 128}}
model: {{width: 8, nsample: 8, blocks: {blocks}}}
finetune: {finetune}
train: {{epochs: 1, batch_size: 8, lr: 0.002, num_workers: 0}}
eval: {{batch_size: 8}}
run: {{dir: {run}, progress: false, log_every: 1, tensorboard: false}}
"""

RUNS = {
    "conventional": ([1, 1, 1, 1, 1], "{mode: conventional}", "PointNeXtPartSeg"),
    "dr2net": ([1, 1, 2, 1, 1], "{mode: dr2net, alpha: [0.5, 0.0], beta: [0.5, 1.0], end_epoch: 1, backprop: auto}",
               "PointNeXtDr2Net"),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("pointnext_partseg")
    write_layout("shapenetpart", base / "data", size="test", seed=0)
    return base


@pytest.mark.parametrize("run", sorted(RUNS))
def test_train_then_eval_equals_the_hand_computed_metrics(data, run, capsys):
    blocks, finetune, net_type = RUNS[run]
    cfg = data / f"{run}.yaml"
    cfg.write_text(TINY.format(base=CONFIG, root=data / "data", blocks=blocks, finetune=finetune,
                               run=data / "runs" / run))
    assert main(["train", str(cfg)]) == 0
    run_dir = data / "runs" / run
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert test["task"] == "partseg" and test["count"] == 16
    capsys.readouterr()
    assert main(["eval", str(cfg), "--checkpoint", str(run_dir / "best.pth"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    dataset, _, net, _, _ = load_for_eval(load_config(cfg), run_dir / "best.pth")
    assert type(net).__name__ == net_type
    assert dataset[0]["points"].shape == (128, 7)  # xyz, normals, height: the official 7 input channels
    hand = _hand_metrics(net.eval(), dataset)
    for key in ("ins_miou", "cls_miou", "oa"):
        assert out[key] == pytest.approx(hand[key], abs=1e-9), key
        assert out[key] == pytest.approx(test[key]), key


def test_eval_of_an_official_checkpoint_equals_its_model_by_hand(data, capsys):
    """An openpoints checkpoint ({model, optimizer, scheduler, epoch, ...}) evaluated as it is."""
    cfg = data / "official.yaml"
    cfg.write_text(TINY.format(base=CONFIG, root=data / "data", blocks=[1, 1, 1, 1, 1],
                               finetune="{mode: conventional}", run=data / "runs" / "official"))
    config = load_config(cfg)
    g = torch.Generator().manual_seed(0)
    official = {k: (v if k.endswith("num_batches_tracked") else
                    (torch.rand(v.shape, generator=g) + 0.5 if k.endswith("running_var") else
                     0.3 * torch.randn(v.shape, generator=g)))
                for k, v in build_model(config.model).state_dict().items()}
    path = data / "pointnext-s_ckpt_best.pth"
    torch.save({"model": official, "optimizer": {}, "scheduler": {}, "epoch": 299, "ins_miou": 0.0}, path)
    capsys.readouterr()
    assert main(["eval", str(cfg), "--checkpoint", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    model = build_model(config.model)
    report = load_pretrained(model, path)
    assert report.missing == [] and report.unexpected == []
    hand = _hand_metrics(model.eval(), build_dataset(config.dataset, "test"))
    for key in ("ins_miou", "cls_miou", "oa"):
        assert out[key] == pytest.approx(hand[key], abs=1e-9), key
