"""AdamW parameter groups and the cosine schedule with warm-up."""

import math

import pytest
import torch
from torch import nn

from pointdr2.config import load_config
from pointdr2.engine.optim import CosineWarmup, build_lr_schedule, build_optimizer, param_groups


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_no_decay_on_1d_params_biases_and_tokens():
    groups = param_groups(Tiny().named_parameters(), 0.05)
    by_decay = {g["weight_decay"]: sorted(g["names"]) for g in groups}
    # a Linear inside a module called pos_embed is a weight like any other (as in Point-BERT/MAE);
    # a parameter *named* like a token is not decayed
    assert by_decay[0.05] == ["fc.weight", "pos_embed.weight"]
    assert by_decay[0.0] == ["cls_token", "fc.bias", "norm.bias", "norm.weight", "pos_embed.bias"]


def test_build_optimizer_adamw_applies_decay_only_where_asked():
    cfg = load_config(None, ["train.lr=0.1", "train.weight_decay=0.5"])
    model = Tiny()
    opt = build_optimizer(model, cfg.train)
    assert isinstance(opt, torch.optim.AdamW)
    w0, b0 = model.fc.weight.detach().clone(), model.fc.bias.detach().clone()
    # zero gradients: AdamW's update is then the decoupled decay alone, lr * wd * w
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(model.fc.weight.detach(), w0 * (1 - 0.1 * 0.5))
    torch.testing.assert_close(model.fc.bias.detach(), b0)
    with pytest.raises(ValueError, match="train.optimizer"):
        build_optimizer(model, load_config(None, ["train.optimizer=lamb"]).train)


def test_cosine_warmup_values_and_resume():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = CosineWarmup(opt, base_lr=1.0, total_steps=10, warmup_steps=4, min_lr=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    expected = [0.25, 0.5, 0.75, 1.0] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert lrs == pytest.approx(expected)
    assert sched.get_last_lr() == pytest.approx(0.1)
    opt2 = torch.optim.SGD([p], lr=1.0)
    s2 = CosineWarmup(opt2, base_lr=1.0, total_steps=10, warmup_steps=4, min_lr=0.1)
    s2.load_state_dict({"last_step": 5, "base_lr": 1.0, "min_lr": 0.1, "total_steps": 10, "warmup_steps": 4})
    assert opt2.param_groups[0]["lr"] == pytest.approx(expected[5])
    with pytest.raises(ValueError, match="warmup_steps"):
        CosineWarmup(opt, 1.0, total_steps=3, warmup_steps=4)


def _lrs(train, steps_per_epoch, n):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_lr_schedule(opt, train, steps_per_epoch)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        sched.step()
    return out, sched


def test_cosine_shorter_than_training_stays_at_min_lr():
    # Point-MAE's part segmentation: the cosine reaches its minimum at epoch 100 of 300 (here 4 of 8 epochs)
    train = load_config(None, ["train.epochs=8", "train.lr=1.0", "train.min_lr=0.1", "train.warmup_epochs=1",
                               "train.cosine_epochs=4"]).train
    lrs, _ = _lrs(train, 2, 16)
    expected = [0.5, 1.0] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)] + [0.1] * 8
    assert lrs == pytest.approx(expected)
    with pytest.raises(ValueError, match="train.cosine_epochs"):
        build_lr_schedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0),
                          load_config(None, ["train.cosine_epochs=0.5", "train.warmup_epochs=1"]).train, 2)


def test_multistep_decays_at_epoch_starts_and_resumes():
    # openpoints' multistep (PointNeXt ShapeNetPart: x0.1 at epochs 210 and 270), here at epochs 2 and 3 of 4
    train = load_config(None, ["train.epochs=4", "train.lr=2.0", "train.warmup_epochs=0",
                               "train.scheduler=multistep", "train.decay_epochs=[2, 3]", "train.decay_rate=0.1"]).train
    lrs, sched = _lrs(train, 3, 12)
    assert lrs == pytest.approx([2.0] * 6 + [0.2] * 3 + [0.02] * 3)
    state = sched.state_dict()
    assert state == {"last_step": 12, "base_lr": 2.0, "milestones": [6, 9], "rate": 0.1, "warmup_steps": 0}
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    again = build_lr_schedule(opt, train, 3)
    again.load_state_dict({**state, "last_step": 7})
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)
    for bad in (["train.scheduler=multistep"], ["train.scheduler=multistep", "train.decay_epochs=[270, 210]"]):
        with pytest.raises(ValueError, match="train.decay_epochs must be an increasing list"):
            build_lr_schedule(opt, load_config(None, bad).train, 3)
    with pytest.raises(ValueError, match="train.scheduler: expected one of cosine, multistep"):
        load_config(None, ["train.scheduler=step"])
