"""Stage 5 of the study: PNG plots (matplotlib, Agg backend; no display needed).

Every function takes plain numbers (as stored in ``study.json``) and writes one PNG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

MODE_COLORS = {"conventional": "tab:blue", "checkpoint": "tab:orange", "dr2net": "tab:green",
               "dr2net-exact": "tab:purple", "scratch": "tab:gray"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_curves(path: str | Path, curves: Mapping[str, Sequence[Sequence[float]]], ylabel: str, title: str) -> Path:
    """Validation metric per epoch: mean over seeds (line) and +-1 std (shaded), one colour per mode.

    ``curves[mode]`` is a list (one per seed) of per-epoch values; seeds are cut to the shortest.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, runs in curves.items():
        runs = [list(r) for r in runs if len(r)]
        if not runs:
            continue
        n = min(len(r) for r in runs)
        arr = np.asarray([r[:n] for r in runs], dtype=np.float64)
        mean = arr.mean(axis=0)
        std = arr.std(axis=0, ddof=1) if len(arr) > 1 else np.zeros(n)
        epochs = np.arange(1, n + 1)
        color = MODE_COLORS.get(mode)
        ax.plot(epochs, mean, label=f"{mode} ({len(arr)} seeds)", color=color, marker="o", ms=3)
        ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_memory_sweep(path: str | Path, xs: Sequence[float], series: Mapping[str, Sequence[float]], xlabel: str,
                      title: str) -> Path:
    """Activation memory (MiB saved for backward) against ``xs``, one line per mode."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, values in series.items():
        ax.plot(xs, np.asarray(values, dtype=np.float64) / 2**20, marker="o", label=mode, color=MODE_COLORS.get(mode))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("activation memory (MiB saved for backward)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_grad_grid(path: str | Path, alphas: Sequence[float], betas: Sequence[float], errors: Sequence[Sequence[float]],
                   auto_labels: Sequence[Sequence[str]], title: str) -> Path:
    """Heatmap of log10 relative gradient error (reversible vs standard); cells annotated with auto mode's choice.

    ``errors[i][j]`` belongs to ``alphas[i]``, ``betas[j]``.
    """
    plt = _pyplot()
    err = np.asarray(errors, dtype=np.float64)
    logerr = np.log10(np.clip(err, 1e-12, None))
    fig, ax = plt.subplots(figsize=(1.3 * len(betas) + 2.5, 0.9 * len(alphas) + 1.8))
    im = ax.imshow(logerr, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_xlabel("beta")
    ax.set_ylabel("alpha")
    for i in range(len(alphas)):
        for j in range(len(betas)):
            value = err[i, j]
            text = f"{value:.0e}" if math.isfinite(value) else "inf"
            ax.text(j, i, f"{text}\n{auto_labels[i][j]}", ha="center", va="center", fontsize=7,
                    color="white" if logerr[i, j] < np.nanmedian(logerr) else "black")
    fig.colorbar(im, ax=ax, label="log10 relative gradient error")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_guard(path: str | Path, tracks: Mapping[str, Mapping[str, Mapping[str, Sequence]]]) -> Path:
    """Per track: the anchor spacing k the precision guard chose for every stack (stage) over training
    (1 = checkpointing, depth = fully reversible), and the measured reconstruction error.

    ``tracks[track][stack]`` has equal-length lists ``step``, ``k``, ``error`` (None where not measured).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(len(tracks), 2, figsize=(11, 3.2 * max(len(tracks), 1)), squeeze=False)
    for row, (name, stacks) in zip(axes, tracks.items()):
        for stack, s in stacks.items():
            steps = np.asarray(s.get("step", []), dtype=np.float64)
            k = np.asarray([np.nan if v is None else v for v in s.get("k", [])], dtype=np.float64)
            err = np.asarray([np.nan if v is None else v for v in s.get("error", [])], dtype=np.float64)
            if len(steps):
                row[0].step(steps, k, where="post", lw=1.2, label=f"{stack} (depth {s.get('depth', '?')})")
                row[1].semilogy(steps, np.clip(err, 1e-12, None), lw=0.8, label=stack)
        row[0].set_title(f"{name}: anchor spacing k per stack (dr2net, seed 0)", fontsize=9)
        row[0].set_xlabel("optimizer step")
        row[0].set_ylabel("k (1 = checkpointing)")
        row[1].set_title(f"{name}: measured reconstruction error", fontsize=9)
        row[1].set_xlabel("optimizer step")
        row[1].set_ylabel("relative error")
        for ax in row:
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    return _save(fig, path)


def plot_intervals(path: str | Path, rows: Sequence[Mapping], margin: float, title: str) -> Path:
    """Paired differences with their 95% intervals (one row per comparison), the +-margin band shaded.

    ``rows``: dicts with ``label``, ``estimate``, ``low``, ``high``, ``decision``.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(rows) + 1.4))
    ax.axvspan(-margin, margin, color="tab:green", alpha=0.12, label=f"±{margin:g} point(s)")
    ax.axvline(0.0, color="black", lw=0.8)
    colors = {"equivalent": "tab:green", "not equivalent": "tab:red", "undecided": "tab:orange"}
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        ax.errorbar(r["estimate"], y, xerr=[[r["estimate"] - r["low"]], [r["high"] - r["estimate"]]], fmt="o",
                    color=colors.get(r.get("decision"), "black"), capsize=4)
        ax.text(r["high"] + 0.1, y, r.get("decision", ""), va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r["label"] for r in reversed(rows)], fontsize=8)
    ax.set_xlabel("paired difference (points), 95% bootstrap interval")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_preservation(path: str | Path, tracks: Mapping[str, Mapping]) -> Path:
    """Per track: the pretrained model's validation metric through the surrogate along the schedule, one line
    per recipe variant, the pretrained model's own value dashed (no finetuning anywhere)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tracks), figsize=(5.5 * len(tracks), 3.6), squeeze=False)
    for ax, (name, p) in zip(axes[0], tracks.items()):
        metric = p["metric"]
        for variant, v in p["variants"].items():
            ts = [r["t"] for r in v["points"]]
            ax.plot(ts, [r[metric] for r in v["points"]], marker="o",
                    label=f"{variant}: alpha {v['alpha']}, beta {v['beta']}, {v['output']}, {v['residual']}")
        ax.axhline(p["pretrained"], color="black", ls="--", lw=0.8, label="pretrained model")
        ax.set_xlabel("schedule progress (0 = start, 1 = alpha, beta at their final values)")
        ax.set_ylabel(f"val {metric} % before finetuning")
        ax.set_title(f"{name}: the pretrained function through the surrogate", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return _save(fig, path)
