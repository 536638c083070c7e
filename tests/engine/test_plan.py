"""Memory plan: measured bytes per mode, extrapolation checked against an independent measurement, the
choice under a budget, the guard's memory cap, and bad input."""

import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from engine_tiny import blobs_fn, engine_config, tiny_transformer_overrides

from pointdr2.cli import main
from pointdr2.config import ConfigError, load_config, parse_size
from pointdr2.engine.evaluator import forward_batch
from pointdr2.engine.network import build_network, coefficient_schedule
from pointdr2.engine.plan import (
    Affine,
    MemoryBudgetError,
    MemoryPlan,
    ModeRow,
    choose_fit,
    measure_plan,
    synthetic_sample,
)
from pointdr2.engine.trainer import train
from pointdr2.models import build_model
from pointdr2.reversible import PrecisionGuard, choose_cache_every, iter_stacks

TINY = ["+model.name=point_transformer", "+model.trans_dim=32", "+model.depth=4", "+model.num_heads=2",
        "+model.num_group=8", "+model.group_size=8", "+model.encoder_dims=32", "+model.drop_path_rate=0.1",
        "+model.head_hidden=32", "+model.num_classes=3", "+dataset.num_points=64", "train.num_workers=0"]


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # memory does not depend on it; time on a shared 2-core machine does
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny_plan():
    torch.set_num_threads(1)
    cfg = load_config(None, TINY)
    return cfg, measure_plan(cfg)


def _independent_saved(cfg, ft_mode: str, alpha: float, beta: float, batch: int, backprop: str = "auto") -> tuple:
    """Bytes saved for backward by one training forward of the trainer's network, counted with a meter of
    this test's own (every saved tensor's storage once, parameters and buffers left out)."""
    torch.manual_seed(0)
    model = build_model(cfg.model)
    ft = {**cfg.finetune, "mode": ft_mode, "backprop": backprop}
    net = build_network(model, ft, alpha, beta, train=True).train()
    batch_d = torch.utils.data.default_collate([synthetic_sample(cfg, "classification", 64, i) for i in range(batch)])
    params = {p.untyped_storage().data_ptr() for p in list(net.parameters()) + list(net.buffers())}
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(forward_batch(net, batch_d, "classification", torch.device("cpu")), batch_d["label"])
    loss.backward()
    return sum(storages.values()), [s.last_cache_every for s in iter_stacks(net)]


def test_static_bytes_are_weights_grads_and_adamw_state(tiny_plan):
    cfg, plan = tiny_plan
    params = list(build_model(cfg.model).parameters())
    # float32 weight + gradient + AdamW exp_avg + exp_avg_sq, and one float32 step counter per tensor
    expected = sum(4 * p.numel() * (1 + 1 + 2) for p in params) + 4 * len(params)
    for row in plan.rows:
        assert row.static == expected, row.label


def test_saved_bytes_extrapolate_to_an_unmeasured_batch(tiny_plan):
    cfg, plan = tiny_plan
    assert plan.probe_batches == (2, 4)
    sched = coefficient_schedule(cfg.finetune)
    a0, b0 = sched(0.0)
    a1, b1 = sched(float(cfg.finetune.end_epoch))
    cases = [("conventional", None, 1.0, 0.0), ("checkpoint", None, 1.0, 0.0),
             ("dr2net", "worst", a0, b0), ("dr2net", "end", a1, b1)]
    for mode, point, alpha, beta in cases:
        measured, ks = _independent_saved(cfg, mode, alpha, beta, 7)
        row = plan.row(mode, point)
        assert row.saved_bytes(7, 64) == pytest.approx(measured, rel=0.02), row.label
        if mode == "dr2net":  # the trainer's guard picks the plan's spacing at that schedule point
            assert ks == [row.cache_every]
    # the guard's spacing at the schedule's start (alpha 0.9, beta 0.1) and at its end (fully reversible)
    assert plan.row("dr2net", "worst").cache_every == choose_cache_every(a0, b0, 4, torch.float32) == 3
    assert plan.row("dr2net", "end").cache_every == 4
    conv, dr2 = plan.row("conventional"), plan.row("dr2net", "end")
    assert dr2.saved_bytes(32, 64) < 0.5 * conv.saved_bytes(32, 64)


def test_spacing_cost_follows_the_kept_anchor_states(tiny_plan):
    cfg, plan = tiny_plan
    worst, end = plan.row("dr2net", "worst"), plan.row("dr2net", "end")
    # the worst row priced at the end's spacing is the end row (anchors are the only difference)
    assert worst.saved_bytes(16, 64, cache_every=end.cache_every) == pytest.approx(end.saved_bytes(16, 64), rel=0.02)
    # spacing 1 keeps every block input: 4 blocks -> states x_0..x_3 kept (x_0 shared with the input)
    state = worst.stacks[0][1](1, 64) - worst.stacks[0][1](0, 64)
    assert state == pytest.approx(4 * 9 * 32, rel=1e-6)  # 8 groups + cls token, width 32, float32
    assert worst.saved_bytes(8, 64, cache_every=1) > worst.saved_bytes(8, 64)


def test_points_extrapolation_for_pointnext():
    cfg = load_config("pointdr2/configs/s3dis/pointnext-l.yaml",
                      ["model.width=8", "model.blocks=[1,2,2,1,1]"])
    plan = measure_plan(cfg, points=1536, probe_points=1024, modes=("conventional",))
    assert plan.probe_points == (1024, 512)
    row = plan.row("conventional")
    direct = measure_plan(cfg, points=1536, probe_batches=(2, 3), modes=("conventional",)).row("conventional")
    measured = direct.probes[0]["saved_bytes"]  # batch 2 at 1536 points: neither batch nor points were probed
    assert row.saved_bytes(2, 1536) == pytest.approx(measured, rel=0.05)
    with pytest.raises(ValueError, match="measured at 1536 points only"):
        direct.saved_bytes(2, 2048)


def _fake_plan(conv: float, dr2: float, ckpt: float, static: float = 1e6, state: float = 1e4) -> MemoryPlan:
    """Rows with known per-sample costs: total(b) = static + b * per-sample."""
    def row(mode, per, point=None, k=None, stacks=()):
        return ModeRow(mode, point, None, None, k, int(static), Affine(0.0, per, 0.0, 100), Affine(0.0, 0.0, 0.0, 100),
                       list(stacks), backprop="auto" if mode == "dr2net" else None)

    stacks = [(12, Affine(0.0, state, 0.0, 100))]
    return MemoryPlan("m", "classification", "cpu", 100, "none",
                      [row("conventional", conv), row("checkpoint", ckpt),
                       row("dr2net", dr2, "worst", 3, stacks), row("dr2net", dr2 * 0.8, "end", 12, stacks)],
                      (2, 4), (100,))


def test_choose_fit_prefers_conventional_then_dr2net_then_accumulates():
    plan = _fake_plan(conv=1e6, dr2=0.2e6, ckpt=0.3e6)
    fit = choose_fit(plan, 40e6, mode="auto", batch_size=32)  # conventional at 32: 33 MB
    assert (fit.mode, fit.micro_batch, fit.accumulate, fit.batch_size) == ("conventional", 32, 1, 32)
    fit = choose_fit(plan, 20e6, mode="auto", batch_size=32)  # dr2net at 32: 7.4 MB (+ anchors); conv 33 MB
    assert (fit.mode, fit.micro_batch, fit.accumulate) == ("dr2net", 32, 1)
    fit = choose_fit(plan, 20e6, mode="conventional", batch_size=32)  # 16 -> 17 MB fits, x2 accumulation
    assert (fit.mode, fit.micro_batch, fit.accumulate, fit.batch_size) == ("conventional", 16, 2, 32)
    fit = choose_fit(plan, 20e6, mode="conventional", batch_size="auto")
    assert (fit.micro_batch, fit.accumulate) == (19, 1)  # 1 MB + 19 x 1 MB <= 20 MB < 1 MB + 20 x 1 MB
    fit = choose_fit(plan, 20e6, mode="conventional", batch_size=32, processes=2)  # 16 per process
    assert (fit.micro_batch, fit.accumulate, fit.batch_size) == (16, 1, 32)


def test_choose_fit_caps_the_guard_spacing_at_what_the_budget_allows():
    plan = _fake_plan(conv=1e6, dr2=0.2e6, ckpt=0.3e6, state=1e4)
    row = plan.fit_row("dr2net")
    b = 32
    # 12 blocks: spacing 3 keeps 5 states (pairs every 4 and x_0), spacing 2 keeps 7, spacing 1 keeps 11
    budget = row.total_bytes(b, 100, cache_every=2) + 1
    fit = choose_fit(plan, budget, mode="dr2net", batch_size=b)
    assert fit.min_cache_every == 2
    assert row.total_bytes(b, 100, cache_every=1) > budget
    assert choose_fit(plan, 1e9, mode="dr2net", batch_size=b).min_cache_every is None  # every spacing fits


def test_choose_fit_names_the_smallest_budget_when_nothing_fits():
    plan = _fake_plan(conv=1e6, dr2=0.2e6, ckpt=0.3e6)
    with pytest.raises(MemoryBudgetError) as exc:
        choose_fit(plan, 1.1e6, mode="auto", batch_size=32)
    msg = str(exc.value)
    # cheapest at batch 1: dr2net at its worst schedule point (1 MB static + 0.2 MB)
    need = plan.fit_row("dr2net").total_bytes(1, 100)
    assert "smallest budget that would work is" in msg and "\n" not in msg
    stated = parse_size(msg.rsplit(" ", 1)[1], "x")
    assert need <= stated <= need + 2**20


def test_guard_never_goes_below_the_memory_cap(caplog):
    guard = PrecisionGuard(1e-4, min_cache_every=5)
    assert choose_cache_every(0.9, 0.1, 12, torch.float32) == 3
    assert guard.choose(0.9, 0.1, 12, torch.float32) == 5 and guard.capped == 1
    assert "memory budget allows no fewer than every 5" in caplog.text
    assert guard.choose(0.0, 1.0, 12, torch.float32) == 12  # the precision's own choice when it is larger
    assert PrecisionGuard(min_cache_every=20).choose(0.9, 0.1, 12, torch.float32) == 12  # at most the depth
    with pytest.raises(ValueError, match="min_cache_every"):
        PrecisionGuard(min_cache_every=0)


def test_parse_size_and_config_key_errors():
    assert parse_size("12GB") == 12 * 10**9 and parse_size("512MiB") == 512 * 2**20
    assert parse_size("1.5G") == 3 * 2**29 and parse_size(4096) == 4096
    for bad in ("12XB", "abc", "-1GB", "0", True):
        with pytest.raises(ConfigError, match="train.memory_budget"):
            load_config(None, [f"train.memory_budget={bad}"])
    assert load_config(None, ["train.memory_budget=12GB", "train.batch_size=auto"]).train.batch_size == "auto"
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config(None, ["train.batch_size=lots"])


def test_trainer_needs_a_budget_for_auto(tmp_path):
    for override in ("finetune.mode=auto", "train.batch_size=auto"):
        with pytest.raises(ValueError, match="needs train.memory_budget"):
            train(engine_config(tmp_path / "r", *tiny_transformer_overrides(), override), dataset_fn=blobs_fn())
    assert not (tmp_path / "r").exists()


def test_trainer_fits_mode_and_batch_to_the_budget(tmp_path, monkeypatch):
    import pointdr2.engine.plan as plan_mod

    plan = _fake_plan(conv=1e6, dr2=0.2e6, ckpt=0.3e6)
    monkeypatch.setattr(plan_mod, "measure_plan", lambda *a, **k: plan)
    base = [*tiny_transformer_overrides(), "finetune.mode=auto", "train.epochs=1"]
    # fits conventional at the configured batch 8 (1 MB + 8 MB)
    res = train(engine_config(tmp_path / "conv", *base, "train.memory_budget=9.5MB"), dataset_fn=blobs_fn())
    log = (tmp_path / "conv" / "train.log").read_text()
    assert "finetune.mode conventional, batch 8 = 8 x 1 accumulation" in log and res.global_step == 3
    # only dr2net fits batch 8 (conventional 9 MB, checkpoint 3.4 MB, dr2net 2.6 MB); anchors cap the spacing at 2
    res = train(engine_config(tmp_path / "dr2", *base, "train.memory_budget=3MB"), dataset_fn=blobs_fn())
    log = (tmp_path / "dr2" / "train.log").read_text()
    assert "finetune.mode dr2net, batch 8 = 8 x 1 accumulation" in log
    saved = yaml.safe_load((tmp_path / "dr2" / "config.yaml").read_text())
    assert saved["finetune"]["mode"] == "dr2net" and saved["train"]["batch_size"] == 8
    assert "Dr2Net anchor spacing kept >= 2" in log
    # conventional only, below its batch-8 cost: batch 8 = 2 x 4 accumulation steps (1 MB + 2 MB <= 3.5 MB)
    res = train(engine_config(tmp_path / "acc", *base[:-2], "train.epochs=1", "finetune.mode=conventional",
                              "train.memory_budget=3.5MB"), dataset_fn=blobs_fn())
    assert "batch 8 = 2 x 4 accumulation" in (tmp_path / "acc" / "train.log").read_text() and res.global_step == 3


def test_trainer_real_plan_under_a_budget_nothing_fits(tmp_path):
    run = tmp_path / "run"
    cfg = engine_config(run, *tiny_transformer_overrides(), "finetune.mode=auto", "train.memory_budget=1MiB")
    with pytest.raises(MemoryBudgetError) as exc:
        train(cfg, dataset_fn=blobs_fn())
    assert "the smallest budget that would work is" in str(exc.value) and not run.exists()
    need = parse_size(str(exc.value).rsplit(" ", 1)[1], "x")
    assert 4 * 2**20 < need < 64 * 2**20  # weights+grads+AdamW of the tiny transformer alone are ~2 MiB x 4


def test_plan_command_json_and_bad_input(capsys):
    code = main(["plan", "pointdr2/configs/scanobjectnn/pointmae.yaml", *[o.lstrip("+") for o in TINY
                 if not o.startswith(("+model.name", "+model.head_hidden", "+dataset", "train."))],
                 "dataset.num_points=64", "--batch-sizes", "8,16", "--memory", "64MiB", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    data = json.loads(out)
    assert [r["label"] for r in data["rows"]] == ["conventional", "checkpoint", "dr2net@worst", "dr2net@end"]
    assert [b["batch"] for b in data["rows"][0]["batches"]] == [8, 16]
    assert data["choice"]["mode"] in ("conventional", "dr2net", "checkpoint") and data["budget_bytes"] == 64 * 2**20
    for r in data["rows"]:
        b8 = r["batches"][0]
        assert b8["total_bytes"] == pytest.approx(r["static_bytes"] + b8["saved_bytes"] + b8["transient_bytes"], abs=2)
    for argv, key in ((["--memory", "12XB"], "--memory"), (["--batch-sizes", "8,x"], "--batch-sizes"),
                      (["train.memory_budget=abc"], "train.memory_budget")):
        code = main(["plan", "scanobjectnn/pointmae.yaml", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and key in err[0], err


def test_trainer_real_plan_under_a_roomy_budget_trains_conventionally_and_resumes_with_it(tmp_path):
    from pointdr2.engine.checkpoint import load_checkpoint

    run = tmp_path / "run"
    over = [*tiny_transformer_overrides(), "finetune.mode=auto", "train.memory_budget=1GiB"]
    res = train(engine_config(run, *over, "train.epochs=1"), dataset_fn=blobs_fn())
    assert res.global_step == 3
    fit = load_checkpoint(run / "last.pth")["memory_fit"]
    assert (fit["mode"], fit["micro_batch"], fit["accumulate"]) == ("conventional", 8, 1)
    assert 4 * 2**20 < fit["total_bytes"] < 2**30
    log = (run / "train.log").read_text()
    assert "train.memory_budget 1.00 GiB: finetune.mode conventional, batch 8 = 8 x 1 accumulation" in log
    # the resumed run keeps the start's choice without measuring again
    train(engine_config(run, *over, "train.epochs=2"), resume=True, dataset_fn=blobs_fn())
    assert "resuming with the choice of the run's start (finetune.mode conventional" in (run / "train.log").read_text()


def test_segment_peak_is_its_floor_plus_the_growth_capped_at_one_chunk():
    from pointdr2.engine.plan import Segment

    seg = Segment("backward sa", full=Affine(1e6, 0.0, 100.0), floor=Affine(1e6, 0.0, 20.0))
    # below the cap: the full fit; above it: floor + cap (hand-computed)
    assert seg.peak(2, 1000, cap=1e6) == pytest.approx(1e6 + 2 * 100.0 * 1000)  # growth 160,000 < cap
    assert seg.peak(2, 100_000, cap=1e6) == pytest.approx(1e6 + 2 * 20.0 * 100_000 + 1e6)
    assert seg.peak(2, 100_000, cap=None) == pytest.approx(1e6 + 2 * 100.0 * 100_000)
    below = Segment("forward head", full=Affine(0.0, 0.0, 10.0), floor=Affine(0.0, 0.0, 12.0))
    assert below.peak(1, 1000, cap=5.0) == pytest.approx(12_000)  # noise below the floor adds nothing
    # the probes saw 3e6 grow above the floor (more than the chunk cap): never predict less than they measured
    seen = Segment("backward sa", full=Affine(0.0, 0.0, 100.0), floor=Affine(0.0, 0.0, 20.0), seen=3e6)
    assert seen.peak(1, 25_000, cap=1e6) == pytest.approx(100.0 * 25_000)  # growth 2e6 < seen: the full fit
    assert seen.peak(1, 100_000, cap=1e6) == pytest.approx(20.0 * 100_000 + 3e6)


def test_per_point_fit_without_a_per_sample_term_is_least_squares_through_three_probes():
    exact = Affine.fit([(1, 2000, 5e5 + 30.0 * 2000), (1, 4000, 5e5 + 30.0 * 4000), (2, 4000, 5e5 + 30.0 * 8000)],
                       per_sample=False)
    assert (exact.fixed, exact.per_sample, exact.per_point) == pytest.approx((5e5, 0.0, 30.0))
    # one noisy probe: the slope of the least-squares line through (b*n, value), computed by hand
    xs, ys = [2000.0, 4000.0, 8000.0], [1000.0, 3000.0, 4000.0]
    mx, my = sum(xs) / 3, sum(ys) / 3
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    fit = Affine.fit([(1, 2000, 1000.0), (1, 4000, 3000.0), (2, 4000, 4000.0)], per_sample=False)
    assert fit.per_point == pytest.approx(slope) and fit.fixed == pytest.approx(my - slope * mx)


def test_row_from_probes_takes_the_largest_segment_and_caps_chunked_growth():
    from pointdr2.engine.plan import _row_from

    cap = 256 * 2**20 // 4  # the chunk budget at the default 256 MiB ops budget

    def probe(b, n, budget_chunk):
        bn = b * n
        chunked = 8000.0 * bn if budget_chunk is None else min(8000.0 * bn, budget_chunk)
        return {"batch": b, "points": n, "saved_bytes": int(400 * bn), "transient_bytes": 0, "peak_at": None,
                "state_bytes": [], "segments": {"backward sa": int(2e6 + 300 * bn + chunked),  # chunked layer
                                                "backward head": int(1e6 + 600 * bn)}}  # grows with the points

    sizes = [(1, 4000), (2, 4000), (1, 2000)]
    measured = {"probes": [probe(b, n, None) for b, n in sizes], "static": 0, "depths": [],
                "floor_probes": [probe(b, n, 2 * 2**20) for b, n in sizes]}
    row = _row_from("checkpoint", None, None, None, None, None, measured)
    assert row.chunk_cap == cap and [s.label for s in row.segments] == ["backward sa", "backward head"]
    # the floor probes chunk the layer at 2 MiB (floor 2e6 + 300 bn + 2 MiB), the probes at the ops budget do
    # not (2e6 + 8,300 bn); at 8,000 points x 2 the growth above the floor (128 MB - 2 MiB) is capped at one chunk
    b, n = 2, 8000
    sa = 2e6 + 300 * b * n + 2 * 2**20 + cap
    head = 1e6 + 600 * b * n
    assert row.peak_segment(b, n)[0] == "backward sa" and sa > head
    assert row.transient_bytes(b, n) == pytest.approx(max(sa, head) - 400 * b * n, rel=1e-6)
    b, n = 4, 100_000  # the head's backward wins at large sizes
    assert row.peak_segment(b, n)[0] == "backward head"
    assert row.transient_bytes(b, n) == pytest.approx(1e6 + 200 * b * n, rel=1e-6)


def test_part_segmentation_plan_matches_an_independent_count():
    # shapenetpart/pointmae.yaml shrunk: the plan feeds shapes with a category and parts of that category
    cfg = load_config("configs/shapenetpart/pointmae.yaml",
                      ["model.trans_dim=32", "model.depth=4", "model.num_heads=2", "model.encoder_dims=32",
                       "model.num_group=16", "model.group_size=8", "model.feature_blocks=[1, 2, 4]",
                       "model.propagation_mlp=[32, 32]", "model.seg_hidden=[32, 16]", "dataset.num_points=128",
                       "model.drop_path_rate=0.0"])
    plan = measure_plan(cfg)
    assert plan.task == "partseg"
    sample = synthetic_sample(cfg, "partseg", 128, 5)
    parts = range(16, 19)  # category 5 (earphone) owns parts 16..18
    assert int(sample["category"]) == 5 and set(sample["label"].tolist()) <= set(parts)
    batch = torch.utils.data.default_collate([synthetic_sample(cfg, "partseg", 128, i) for i in range(6)])
    for mode in ("conventional", "dr2net"):
        torch.manual_seed(0)
        a, b = (1.0, 0.0) if mode == "conventional" else coefficient_schedule(cfg.finetune)(0.0)
        net = build_network(build_model(cfg.model), {**cfg.finetune, "mode": mode}, a, b, train=True).train()
        params = {p.untyped_storage().data_ptr() for p in list(net.parameters()) + list(net.buffers())}
        storages = {}

        def pack(t, storages=storages, params=params):
            s = t.untyped_storage()
            if s.data_ptr() not in params:
                storages[s.data_ptr()] = s.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):  # the loss's log-softmax counts too
            logits = forward_batch(net, batch, "partseg", torch.device("cpu"))
            loss = F.cross_entropy(logits, batch["label"])
        assert logits.shape == (6, 50, 128)
        loss.backward()
        row = plan.row(mode, "worst" if mode == "dr2net" else None)
        assert row.saved_bytes(6, 128) == pytest.approx(sum(storages.values()), rel=0.02), mode


@pytest.mark.parametrize("budget,fits", [("1GiB", True), ("1MiB", False)])
def test_memory_fit_under_two_gloo_processes(tmp_path, budget, fits):
    # rank 0 measures the plan and every rank trains with its choice; when nothing fits, every rank stops
    # with the same one-line error (none waits for a peer) and nothing is written
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parents[1]), str(here)]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(here / "ddp_plan_worker.py"), str(tmp_path), budget]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    if fits:
        assert all("error" not in r for r in reports), reports
        assert reports[0]["fit"] == reports[1]["fit"] and reports[0]["fit"]["mode"] == "conventional"
        assert [(r["world"], r["micro"], r["mode"], r["steps"]) for r in reports] == [(2, 4, "conventional", 3)] * 2
        assert "x 2 processes" in (tmp_path / "run" / "train.log").read_text()
    else:
        assert [r["error"].split(":")[0] for r in reports] == ["MemoryBudgetError"] * 2
        assert reports[0]["error"] == reports[1]["error"] and "smallest budget that would work" in reports[0]["error"]
        assert not (tmp_path / "run").exists()
