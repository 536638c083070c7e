"""finetune.mode -> network: the exact-backprop control, the structured metrics stream, per-item test records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from engine_tiny import blobs_fn, engine_config, tiny_transformer_overrides

from pointdr2.engine.evaluator import load_items
from pointdr2.engine.inference import evaluation_network
from pointdr2.engine.logger import read_records
from pointdr2.engine.trainer import build_network, train
from pointdr2.models import build_model, to_dr2net
from pointdr2.reversible import iter_stacks


def _small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model({"name": "pointmae", "num_classes": 5, "trans_dim": 32, "depth": 3, "num_heads": 2,
                         "encoder_dims": 32, "encoder_hidden": 16, "num_group": 8, "group_size": 8,
                         "head_hidden": 32, "drop_path_rate": 0.0})
    return model.double().train()


def _grads(net, model, points):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same head-dropout masks for every network
    net(points).square().sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _graph_nodes(t: torch.Tensor) -> set[str]:
    seen, todo, names = set(), [t.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo.extend(f for f, _ in fn.next_functions)
    return names


@pytest.mark.parametrize("residual,output,gain", [("block", "sum", "plain"), ("branch", "last", "plain"),
                                                  ("block", "sum", "balanced")])
def test_exact_backprop_is_plain_autograd_through_the_same_surrogate(residual, output, gain):
    model = _small_model()
    points = torch.randn(4, 64, 3, dtype=torch.float64)
    ft = {"mode": "dr2net", "backprop": "exact", "output": output, "residual": residual, "gain": gain,
          "recompute_stem": True}
    net = build_network(model, ft, 0.4, 0.6, train=True)
    assert [s.mode for s in iter_stacks(net)] == ["standard"]
    assert not net.recompute_stem  # nothing recomputed: the control keeps every activation
    names = _graph_nodes(net(points).sum())
    assert not any("Reversible" in n or "Checkpoint" in n or "Chunked" in n for n in names)
    exact = _grads(net, model, points)
    standard = _grads(to_dr2net(model, 0.4, 0.6, mode="standard", output=output, residual=residual, gain=gain), model,
                      points)
    # and the reversible (auto) network of the same surrogate reaches the same gradients up to reconstruction
    ft_auto = {**ft, "backprop": "auto"}
    auto = _grads(build_network(model, ft_auto, 0.4, 0.6, train=True), model, points)
    assert exact.keys() == standard.keys() == auto.keys() and len(exact) == len(list(model.parameters()))
    flat = {k: torch.cat([g[n].reshape(-1) for n in sorted(standard)]) for k, g in
            (("exact", exact), ("standard", standard), ("auto", auto))}
    ref = flat["standard"].norm()
    assert float((flat["exact"] - flat["standard"]).norm() / ref) <= 1e-12
    assert float((flat["auto"] - flat["standard"]).norm() / ref) <= 1e-6


def test_balanced_gain_needs_block_units_and_is_kept_for_evaluation(tmp_path):
    with pytest.raises(ValueError, match="residual='block'"):
        build_network(_small_model(), {"mode": "dr2net", "backprop": "exact", "residual": "branch", "gain": "balanced"},
                      0.4, 0.6)
    run = tmp_path / "run"
    cfg = engine_config(run, *tiny_transformer_overrides(), "finetune.mode=dr2net", "finetune.end_epoch=1",
                        "finetune.alpha=[0.9, 0.2]", "finetune.beta=[0.1, 0.8]", "finetune.gain=balanced")
    train(cfg, dataset_fn=blobs_fn())
    ckpt = torch.load(run / "best.pth", weights_only=True)
    assert ckpt["finetune"]["gain"] == "balanced" and ckpt["finetune"]["beta"] == pytest.approx(0.8)
    model = build_model({**cfg.model.to_dict(), "num_classes": 3})
    model.load_state_dict(ckpt["model"])
    net = evaluation_network(model, ckpt).eval()
    (stack,) = iter_stacks(net)
    assert stack.gain == "balanced" and (stack.alpha, stack.beta) == pytest.approx((0.2, 0.8))
    points = torch.stack([blobs_fn()(None, "test")[i]["points"] for i in range(3)])
    with torch.no_grad():
        got = net(points)
        balanced = to_dr2net(model, 0.2, 0.8, mode="standard", output="sum", residual="block", gain="balanced").eval()(points)
        plain = to_dr2net(model, 0.2, 0.8, mode="standard", output="sum", residual="block").eval()(points)
    assert float((got - balanced).abs().max()) <= 1e-6 < float((got - plain).abs().max())


def test_unknown_backprop_is_refused():
    with pytest.raises(ValueError, match="finetune.backprop must be one of auto, reversible, exact"):
        build_network(_small_model(), {"mode": "dr2net", "backprop": "plain"}, 1.0, 0.1)


def test_metrics_stream_and_test_items_agree_with_metrics_json(tmp_path):
    run = tmp_path / "run"
    train(engine_config(run, *tiny_transformer_overrides(), "finetune.mode=dr2net", "finetune.shape=linear",
                        "finetune.end_epoch=2", "finetune.alpha=[0.9, 0.0]", "finetune.beta=[0.1, 1.0]",
                        "finetune.output=sum"), dataset_fn=blobs_fn())
    steps = read_records(run / "metrics.jsonl", "step")
    epochs = read_records(run / "metrics.jsonl", "epoch")
    tests = read_records(run / "metrics.jsonl", "test")
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in epochs] == [1, 2] and all("val" in r for r in epochs)
    first = steps[0]
    assert first["alpha"] == pytest.approx(0.9) and first["beta"] == pytest.approx(0.1)
    (name, report), = first["stacks"].items()  # one stack in the point transformer surrogate
    assert report["mode"] in ("reversible", "checkpoint") and report["depth"] == 2 and report["cache_every"] >= 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert tests[-1]["oa"] == pytest.approx(metrics["test"]["oa"])
    items = load_items(run / "test_items.npz")
    assert np.array_equal(items["index"], np.arange(13))  # every test item once, in dataset order
    assert 100.0 * float(np.mean(items["pred"] == items["label"])) == pytest.approx(metrics["test"]["oa"])
