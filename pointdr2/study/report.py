"""Stage 6 of the study: ``results.md`` and the console summary, from ``study.json``'s numbers only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pointdr2.study.settings import MODES, TRACKS, VARIANTS

NAMES = {"oa": "test OA %", "macc": "test mAcc %", "miou": "test mIoU %"}


def _pm(stat: Mapping) -> str:
    return "-" if stat.get("mean") is None else f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:.2f}"


def accuracy_table(track: Mapping[str, Any]) -> str:
    metric = TRACKS[track["name"]].metric
    keys = ("oa", "macc") if metric == "oa" else ("miou", "oa", "macc")
    rows = []
    for mode in [*MODES, "scratch"]:
        r = track["modes"].get(mode)
        if not r:
            continue
        label = "conventional from scratch (no pretraining)" if mode == "scratch" else mode
        rows.append([label, *(_pm(r[k]) for k in keys), ", ".join(f"{v:.2f}" for v in r[keys[0]]["per_seed"]),
                     "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"])
    return md_table(["finetuning", *(NAMES[k] for k in keys), f"{keys[0]} per seed", "train s (mean)"], rows)


def comparison_table(track: Mapping[str, Any]) -> str:
    rows = [[f"{c['a']} − {c['b']}", c["what"], f"{c['estimate']:+.2f}", f"[{c['low']:+.2f}, {c['high']:+.2f}]",
             f"**{c['decision']}**"] for c in track["comparisons"]]
    return md_table(["paired difference", "measures", "estimate (points)", "95% interval", "decision"], rows)


def memory_table(rows: Sequence[Mapping]) -> str:
    conv = next(r for r in rows if r["label"] == "conventional")
    out = []
    for r in rows:
        k = r.get("cache_every")
        out.append([r["label"], f"{r['alpha']:g}/{r['beta']:g}", "-" if k is None else str(k),
                    _mib(r["saved_bytes"]), f"{r['saved_bytes'] / conv['saved_bytes']:.3f}",
                    _mib(r["peak_bytes"]), f"{r['peak_bytes'] / max(conv['peak_bytes'], 1):.2f}",
                    f"{1e3 * r['step_s']:.0f}", f"{r['step_s'] / conv['step_s']:.2f}"])
    return md_table(["mode", "alpha/beta", "k", "saved MiB", "/conv", "peak MiB", "/conv", "step ms", "/conv"], out)


def guard_table(guard: Mapping[str, Mapping]) -> str:
    rows = []
    for name, g in guard.items():
        frac = "-" if g["checkpoint_fraction"] is None else f"{100 * g['checkpoint_fraction']:.0f}%"
        rows.append([name or "stack", str(g["depth"]), str(g["k_first"]), f"{g['k_min']}..{g['k_max']}",
                     "-" if g["k_median"] is None else f"{g['k_median']:g}", frac,
                     "never" if g["first_step_k_gt_1"] is None else str(g["first_step_k_gt_1"]),
                     "-" if g["error_max"] is None else f"{g['error_max']:.1e}"])
    return md_table(["stack", "units", "k at step 1", "k min..max", "k median", "steps as checkpointing",
                     "first step with k > 1", "max rec. error"], rows)


def ablation_md(ab: Mapping[str, Any], metric: str) -> str:
    rows = []
    for name, r in ab["variants"].items():
        delta = "-" if r["minus_recipe"] is None else f"{r['minus_recipe']:+.2f}"
        rows.append([name, VARIANTS[name]["what"], _pm(r), ", ".join(f"{v:.2f}" for v in r["per_seed"]), delta])
    return md_table(["variant", "what changes", NAMES[metric], "per seed", "− recipe (paired mean)"], rows)


def track_size(track: Mapping[str, Any]) -> str:
    ft = track["finetune_config"]
    m, d, tr, f = ft["model"], ft["dataset"], ft["train"], ft["finetune"]
    if track["name"] == "transformer":
        size = (f"{m['name']} layout: depth {m['depth']}, width {m['trans_dim']} (384 in the paper), {m['num_heads']} "
                f"heads, tokenizer width {m.get('encoder_hidden', 128)} (128), {m['num_group']} groups x "
                f"{m['group_size']} points from {d['num_points']} points (2048)")
    else:
        size = (f"{m['name']}: blocks {m['blocks']} (InvResMLP blocks per stage: {[b - 1 for b in m['blocks'][1:]]}), "
                f"width {m['width']} (32 in the paper), {d['crop_points']}-point crops (24,000), voxel {d['voxel_size']}")
    recipe = (f"dr2net recipe: alpha {f['alpha']} / beta {f['beta']} ({f['shape']}, until epoch {f['end_epoch']} of "
              f"{tr['epochs']}), output {f['output']}, residual unit {f['residual']}, gain {f.get('gain', 'plain')}, "
              f"backprop {f['backprop']}, "
              f"tolerance {f['tolerance']:g}; batch {tr['batch_size']}, lr {tr['lr']:g}")
    tested = {"last": "the final weights tested (no model selection)",
              "val": f"the best epoch on a {100 * float(tr.get('val_fraction', 0.1)):.0f}% validation carve tested",
              "test": "the best epoch on the test set (optimistic)"}.get(tr.get("select_on", "val"), "")
    return f"{size}. {recipe}; {tested}."


def results_markdown(study: Mapping[str, Any], pngs: Mapping[str, str]) -> str:
    m = study["machine"]
    lines = ["# pointdr2 evidence study: does Dr²Net finetuning match conventional finetuning?", "",
             "Generated by `pointdr2 bench study`; every number below was measured in that run.", "",
             f"- command: `{study['command']}`",
             f"- machine: {m['cpu']} ({m['cpus']} CPUs), torch {m['torch']}, Python {m['python']}; training runs "
             f"{study['workers']} at a time with {study['threads']} thread(s) each, memory and time measured alone",
             f"- wall time: {study['wall_seconds_total'] / 60:.1f} min over {len(study['invocations'])} invocation(s) "
             f"({'quick' if study['quick'] else 'full'} sizes, {study['seeds']} seeds per mode)",
             f"- decision rule (fixed before the run): {study['decision_rule']}. Intervals: paired two-level "
             f"bootstrap ({study['bootstrap']} replicates) over seeds and test items (objects / rooms), the same "
             "seeds and items for both modes.", ""]
    for name, t in study["tracks"].items():
        claim = next((c for c in t["comparisons"] if (c["a"], c["b"]) == ("dr2net", "conventional")), None)
        lines += [f"## {name} track", "", TRACKS[name].description + ".", "", track_size(t), "",
                  f"Pretraining: best val {t['pretrain']['metric']} {t['pretrain']['best_val']:.2f}% "
                  f"({t['pretrain']['seconds'] / 60:.1f} min). Test set: {t['test_items']} "
                  f"{'objects' if TRACKS[name].item_metric == 'accuracy' else 'rooms'}.", "",
                  accuracy_table(t), ""]
        for mode, red in (t.get("reduced_modes") or {}).items():
            same = red.get("identical_to_conventional", {})
            verdict = "; ".join(f"seed {k}: {'identical to' if v else 'differs from'} conventional's, item by item"
                                for k, v in same.items())
            verdict = verdict or "no conventional run of that seed"
            lines += [f"{mode} ran {len(red['seeds'])} seed(s) on this track ({verdict}); its paired differences "
                      "use the seeds it has.", ""]
        if claim is not None:
            lines += [f"**Decision ({name}): dr2net − conventional = {claim['estimate']:+.2f} points, 95% interval "
                      f"[{claim['low']:+.2f}, {claim['high']:+.2f}]: {claim['decision']} (margin ±{claim['margin']:g}).**",
                      ""]
        lines += [comparison_table(t), ""]
        if t.get("preservation"):
            p = t["preservation"]
            rows = [[v, ", ".join(f"{r[p['metric']]:.1f}" for r in d["points"])] for v, d in p["variants"].items()]
            lines += [f"Before any finetuning: the pretrained model ({p['metric']} {p['pretrained']:.2f}% on its own "
                      f"validation split) through the surrogate at {len(rows[0][1].split(','))} points of the "
                      "schedule (start ... end):", "", md_table(["variant", f"val {p['metric']} % along the schedule"],
                                                             rows), ""]
        if f"intervals_{name}" in pngs:
            lines += [f"![{name} intervals]({Path(pngs[f'intervals_{name}']).name})", ""]
        if f"curves_{name}" in pngs:
            lines += [f"![{name} curves]({Path(pngs[f'curves_{name}']).name})", ""]
        if t.get("guard"):
            lines += ["What the precision guard chose per stack over training (dr2net runs, all seeds; k = units "
                      "between kept states, 1 = checkpointing, k = depth = fully reversible):", "",
                      guard_table(t["guard"]), ""]
        if t.get("memory"):
            how = ("in this process (--quick: not a fresh process's peak)" if study["quick"]
                   else "a fresh subprocess per row")
            lines += [f"One training step of this configuration (memory harness, {how}; saved = bytes kept for "
                      "backward, peak = peak RSS above the post-warm-up baseline; dr2net = auto mode at the "
                      "start and at the end of its schedule):", "", memory_table(t["memory"]), ""]
        if t.get("ablation"):
            ab = t["ablation"]
            lines += ["### Recipe ablation", "", f"dr2net with backprop exact (each variant's change of function "
                      f"alone), {ab['seeds']} seed(s) per variant:", "", ablation_md(ab, TRACKS[name].metric), ""]
            spread = t["modes"].get("dr2net-exact", {}).get(TRACKS[name].metric, {}).get("per_seed", [])
            if len(spread) > 1:
                lines += [f"Scale: the recipe itself (the main dr2net-exact runs) spans {min(spread):.2f} .. "
                          f"{max(spread):.2f} over {len(spread)} seeds ({max(spread) - min(spread):.2f} points), so a "
                          f"variant's difference smaller than that, on {ab['seeds']} seed(s), is within the "
                          "seed-to-seed noise and ranks nothing.", ""]
    if "preservation" in pngs:
        lines += ["## The pretrained function through the surrogate", "", "![preservation](preservation.png)", ""]
    if "guard" in pngs:
        lines += ["## The precision guard over training", "", "![guard](guard.png)", ""]
    for key, title in (("memory_depth", "transformer depth"), ("memory_points", "PointNeXt points per sample")):
        if key in pngs:
            lines += [f"## Activation memory against {title}", "", "Bytes saved for backward in one forward "
                      "(`SavedTensorMeter`; dr2net fully reversible at alpha 0, beta 1):", "",
                      f"![{key}]({Path(pngs[key]).name})", ""]
    if "grad_error" in pngs:
        g = study["grad_grid"]
        lines += ["## Gradient error against alpha/beta", "", f"Pretrained transformer surrogate ({g['units']} units, "
                  f"residual {g['residual']}, output {g['output']}, gain {g.get('gain', 'plain')}), float32, batch {g['batch']}: relative error of the "
                  "whole-stack reversible gradient against plain autograd; each cell also says what auto mode "
                  "chose there.", "", "![grad error](grad_error.png)", ""]
    return "\n".join(lines)


def summary_lines(study: Mapping[str, Any]) -> list[str]:
    out = [f"pointdr2 bench study ({'quick' if study['quick'] else 'full'}): {study['seeds']} seeds, "
           f"{study['wall_seconds'] / 60:.1f} min", f"decision rule: {study['decision_rule']}", ""]
    for name, t in study["tracks"].items():
        out += [f"{name}:", accuracy_table(t), comparison_table(t)]
        if t.get("memory"):
            out.append(memory_table(t["memory"]))
        out.append("")
    return out
