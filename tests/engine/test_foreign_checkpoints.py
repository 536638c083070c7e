"""Official checkpoints through every entry point: the one loading policy (weights-only with harmless
NumPy globals, full unpickling only when trusted) and a head trained for another label set (an official
Point-BERT ScanObjectNN checkpoint's 40-way head) in ``pointdr2 eval`` and in finetuning."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from pointdr2.cli import main
from pointdr2.config import load_config
from pointdr2.data import build_dataset
from pointdr2.data.synthetic import write_layout
from pointdr2.engine.checkpoint import load_checkpoint
from pointdr2.models import build_model, load_pretrained
from pointdr2.models.checkpoints import read_checkpoint

MODEL = {"name": "pointbert", "trans_dim": 32, "depth": 2, "num_heads": 2, "encoder_dims": 16, "num_group": 8,
         "group_size": 8, "head_hidden": 32, "drop_path_rate": 0.0}
CONFIG = """\
dataset: {{name: scanobjectnn, root: {root}, variant: OBJ_BG, num_points: 64}}
model: {{name: pointbert, num_classes: 15, trans_dim: 32, depth: 2, num_heads: 2, encoder_dims: 16, num_group: 8,
        group_size: 8, head_hidden: 32, drop_path_rate: 0.0}}
finetune: {{mode: conventional}}
train: {{epochs: 1, batch_size: 16, lr: 0.001, warmup_epochs: 0, num_workers: 0}}
eval: {{batch_size: 32}}
run: {{dir: {run}, progress: false, log_every: 1}}
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("foreign")
    write_layout("scanobjectnn", base / "data", size="test", seed=0)
    cfg = base / "tiny.yaml"
    cfg.write_text(CONFIG.format(root=base / "data", run=base / "runs" / "a"))
    return base, cfg


def _official_model(classes: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model({**MODEL, "num_classes": classes}).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for name, buf in model.named_buffers():  # non-trivial BN statistics, as a trained model has
        if name.endswith("running_mean"):
            buf.copy_(0.1 * torch.randn(buf.shape, generator=g))
        elif name.endswith("running_var"):
            buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
    return model


def _save_official(model: torch.nn.Module, path, **extra) -> None:
    """The official Point-BERT finetuned layout: ``base_model`` with DataParallel's ``module.`` prefix."""
    torch.save({"base_model": {f"module.{k}": v for k, v in model.state_dict().items()}, "optimizer": {},
                "epoch": 300, "metrics": {"acc": 88.1}, "best_metrics": {"acc": 88.1}, **extra}, path)


def _fails(argv, capsys, match):
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and match in err[0], err
    return err[0]


# ----------------------------------------------------------------------------- loading policy
def test_harmless_numpy_metadata_loads_without_trust(tmp_path, monkeypatch):
    monkeypatch.delenv("POINTDR2_TRUST_CHECKPOINTS", raising=False)
    model = _official_model(15)
    path = tmp_path / "np.pth"
    _save_official(model, path, best_metrics={"acc": np.float64(88.12), "epoch": np.int64(212)},
                   acc_per_class=np.array([0.5, 0.75], dtype=np.float32), dtype=np.dtype("float32"))
    for read in (read_checkpoint, load_checkpoint):  # one reader under both names
        obj = read(path)
        assert obj["best_metrics"]["acc"] == 88.12 and isinstance(obj["best_metrics"]["acc"], np.float64)
        np.testing.assert_array_equal(obj["acc_per_class"], [0.5, 0.75])
    fresh = build_model({**MODEL, "num_classes": 15})
    report = load_pretrained(fresh, path)
    assert report.missing == [] and report.unexpected == []
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_pickled_objects_need_trust_and_the_refusal_names_the_global(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("POINTDR2_TRUST_CHECKPOINTS", raising=False)
    path = tmp_path / "custom.pth"
    _save_official(_official_model(15), path, args=argparse.Namespace(lr=5e-4, epochs=300),
                   best_metrics={"acc": np.float64(1.0)})
    for read in (read_checkpoint, load_checkpoint):
        with pytest.raises(ValueError, match="argparse.Namespace") as exc:
            read(path)
        message = str(exc.value)
        assert "\n" not in message and str(path) in message and "POINTDR2_TRUST_CHECKPOINTS=1" in message
        assert "numpy" not in message  # the harmless globals are not what blocks it
    monkeypatch.setenv("POINTDR2_TRUST_CHECKPOINTS", "1")
    with caplog.at_level(logging.WARNING, logger="pointdr2"):
        obj = load_checkpoint(path)
    assert obj["args"].lr == 5e-4
    assert "full unpickling" in caplog.text and "argparse.Namespace" in caplog.text


def test_trusted_checkpoints_load_through_eval_and_pretrained(data, tmp_path, monkeypatch, capsys):
    """``pointdr2 eval --checkpoint`` and ``model.pretrained=`` in train follow the same policy."""
    base, cfg = data
    monkeypatch.delenv("POINTDR2_TRUST_CHECKPOINTS", raising=False)
    path = tmp_path / "custom.pth"
    _save_official(_official_model(15), path, args=argparse.Namespace(lr=5e-4))
    _fails(["eval", str(cfg), "--checkpoint", str(path), "--json"], capsys, "argparse.Namespace")
    _fails(["train", str(cfg), f"model.pretrained={path}", f"run.dir={tmp_path / 'r1'}"], capsys,
           "argparse.Namespace")
    monkeypatch.setenv("POINTDR2_TRUST_CHECKPOINTS", "1")
    capsys.readouterr()
    assert main(["eval", str(cfg), "--checkpoint", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 30
    assert main(["train", str(cfg), f"model.pretrained={path}", f"run.dir={tmp_path / 'r2'}"]) == 0
    assert (tmp_path / "r2" / "best.pth").is_file()


# ----------------------------------------------------------------------------- a head for another label set
def test_eval_of_an_official_40_way_checkpoint_uses_its_head(data, tmp_path, capsys, caplog):
    """Official Point-BERT ScanObjectNN checkpoints carry a 40-way head: ``pointdr2 eval`` with the
    15-class config loads them as published and scores argmax over all 40 outputs."""
    base, cfg = data
    official = _official_model(40, seed=3)
    dataset = build_dataset(load_config(cfg).dataset, "test")
    points = torch.stack([dataset[i]["points"] for i in range(len(dataset))])
    with torch.no_grad():  # about half the predictions land on class 20, beyond the dataset's 15: wrong
        logits = official(points)
        margin = logits[:, :15].max(dim=1).values - logits[:, 20]
        # halfway between the two middle margins: no test object sits on a tie (torch.median of an even
        # count is one of the margins, which made that object's argmax a matter of rounding)
        middle = margin.sort().values[len(margin) // 2 - 1:len(margin) // 2 + 1]
        official.cls_head_finetune[3].bias[20] += middle.mean()
    path = tmp_path / "scan_objbg.pth"
    _save_official(official, path)
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="pointdr2"):
        assert main(["eval", str(cfg), "--checkpoint", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "40-way head" in caplog.text
    # independent reference: the official model itself on the test split, argmax over its 40 logits
    with torch.no_grad():
        preds = [int(official(dataset[i]["points"].unsqueeze(0)).argmax()) for i in range(len(dataset))]
    labels = [int(dataset[i]["label"]) for i in range(len(dataset))]
    assert any(p >= 15 for p in preds) and any(p < 15 for p in preds)
    assert out["count"] == len(labels) == 30
    assert out["oa"] == pytest.approx(100.0 * np.mean([p == t for p, t in zip(preds, labels)]))
    per_class = [100.0 * np.mean([p == c for p, t in zip(preds, labels) if t == c]) for c in sorted(set(labels))]
    assert out["macc"] == pytest.approx(np.mean(per_class))
    assert len(out["acc_per_class"]) == 15
    # visualize loads it the same way, and colours a prediction beyond the dataset's classes (in a
    # subprocess: Open3D loaded into this process would make a later first import of triton crash)
    beyond = next(i for i, p in enumerate(preds) if p >= 15)
    png = tmp_path / "vis.png"
    done = subprocess.run([sys.executable, "-m", "pointdr2", "visualize", str(cfg), "--checkpoint", str(path),
                           "--index", str(beyond), "--out", str(png), "--color", "pred", "--window", "no",
                           "--width", "160", "--height", "120"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert png.is_file()

    # a head with fewer classes than the dataset cannot be this dataset's model
    small = tmp_path / "ten.pth"
    _save_official(_official_model(10), small)
    _fails(["eval", str(cfg), "--checkpoint", str(small)], capsys, "predicts 10 classes but dataset")


def test_finetuning_from_a_40_way_checkpoint_replaces_the_head(data, tmp_path, caplog):
    official = _official_model(40, seed=4)
    path = tmp_path / "scan_objbg.pth"
    _save_official(official, path)
    torch.manual_seed(9)
    model = build_model({**MODEL, "num_classes": 15})
    init_head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("cls_head_finetune.")}
    with caplog.at_level(logging.INFO, logger="pointdr2"):
        report = load_pretrained(model, path)
    head = sorted(init_head)
    assert sorted(report.replaced_head) == head and report.checkpoint_classes == 40
    assert sorted(report.expected_missing) == head and report.unexpected_missing == [] and report.unexpected == []
    assert "head is replaced" in caplog.text
    sd = model.state_dict()
    for k, v in official.state_dict().items():
        assert torch.equal(sd[k], init_head[k] if k in init_head else v), k

    # ... and through train: model.pretrained= with the 15-class config finetunes
    _, cfg = data
    assert main(["train", str(cfg), f"model.pretrained={path}", f"run.dir={tmp_path / 'run'}"]) == 0


def test_a_different_model_is_still_a_clear_error(tmp_path):
    # the tokenizer width differs (and the head too): the error names the first non-head key
    other = build_model({**MODEL, "num_classes": 40, "encoder_dims": 24})
    path = tmp_path / "other.pth"
    _save_official(other, path)
    with pytest.raises(ValueError, match=r"shape mismatch for 'encoder.second_conv.3.weight': checkpoint "
                                         r"\[24, 512, 1\], model \[16, 512, 1\]") as exc:
        load_pretrained(build_model({**MODEL, "num_classes": 15}), path)
    assert "\n" not in str(exc.value)


def test_evaluating_a_checkpoint_whose_head_does_not_fit_names_the_fix(tmp_path):
    from pointdr2.engine.trainer import load_model_weights

    path = tmp_path / "forty.pth"
    _save_official(_official_model(40), path)
    with pytest.raises(ValueError, match=r"'cls_head_finetune.3.weight': checkpoint \[40, 32\], model \[15, 32\]\); "
                                         r"evaluate it with model.num_classes=40"):
        load_model_weights(build_model({**MODEL, "num_classes": 15}), path)
    wide = build_model({**MODEL, "num_classes": 15, "head_hidden": 48})
    _save_official(wide, path)
    with pytest.raises(ValueError, match=r"checkpoint \[48, 64\], model \[32, 64\]\); its head layers have other"):
        load_model_weights(build_model({**MODEL, "num_classes": 15}), path)
