"""PNG plots of ``pointdr2 bench study`` (matplotlib, Agg backend; no display needed).

Every function takes plain numbers (as stored in ``study.json``) and writes one PNG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

MODE_COLORS = {"conventional": "tab:blue", "checkpoint": "tab:orange", "dr2net": "tab:green"}


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


def plot_dr2net_training(path: str | Path, tracks: Mapping[str, Mapping[str, Sequence[float]]]) -> Path:
    """Per track: reconstruction error (log scale) and auto mode's anchor spacing over training steps.

    ``tracks[name]`` has equal-length lists ``step``, ``reconstruction_error``, ``cache_every``, ``alpha``.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(len(tracks), 1, figsize=(7, 3 * max(len(tracks), 1)), squeeze=False)
    for ax, (name, s) in zip(axes[:, 0], tracks.items()):
        steps = np.asarray(s.get("step", []), dtype=np.float64)
        rec = np.asarray(s.get("reconstruction_error", []), dtype=np.float64)
        if len(steps):
            ax.semilogy(steps, np.clip(rec, 1e-12, None), color="tab:red", lw=1, label="reconstruction error")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("relative reconstruction error", color="tab:red")
        ax.set_title(f"{name}: dr2net (auto), seed 0")
        ax.grid(alpha=0.3)
        twin = ax.twinx()
        k = np.asarray(s.get("cache_every", []), dtype=np.float64)
        if len(steps):
            twin.step(steps, k, where="post", color="tab:blue", lw=1, label="anchor spacing k")
            alpha = np.asarray(s.get("alpha", []), dtype=np.float64)
            if len(alpha) == len(steps):
                twin.plot(steps, alpha * max(np.nanmax(k), 1), color="gray", lw=0.8, ls="--",
                          label="alpha (scaled to max k)")
        twin.set_ylabel("anchor spacing k (1 = checkpointing)", color="tab:blue")
        lines = ax.get_legend_handles_labels()
        lines2 = twin.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="upper right")
    return _save(fig, path)
