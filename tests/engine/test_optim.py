"""AdamW parameter groups and the cosine schedule with warm-up."""

import math

import pytest
import torch
from torch import nn

from pointdr2.config import load_config
from pointdr2.engine.optim import CosineWarmup, build_optimizer, param_groups


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
